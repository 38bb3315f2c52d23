"""The ``static`` and ``random`` mixers (algorithms spec §3.1, §3.2).

Each mixer is a pure core (``init_*`` and ``update_*``: no I/O, no globals, deterministic given
the state) inside a thin stateful shell with ``step``, ``state_dict`` and ``load_state_dict``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    MixDecision,
    MixFeedback,
    StateError,
    derive,
    parse_config,
)

from dataflex_mix.primitives import normalize_proportions

__all__ = [
    "StaticMixerConfig",
    "StaticMixerState",
    "StaticMixer",
    "init_static",
    "update_static",
    "RandomMixerConfig",
    "RandomMixerState",
    "RandomMixer",
    "init_random",
    "update_random",
    "check_feedback",
    "check_domains",
    "generator_state_to_json",
    "generator_from_json",
]

# --------------------------------------------------------------------------- shared helpers

_FEEDBACK_FIELDS = (
    "loss_sum",
    "token_count",
    "sample_count",
    "sample_loss_sum",
    "excess_loss_sum",
    "sample_losses",
)
_PER_DOMAIN_FIELDS = (
    "loss_sum",
    "token_count",
    "sample_count",
    "sample_loss_sum",
    "excess_loss_sum",
)


def check_domains(context: ComponentContext, what: str) -> tuple[str, ...]:
    """Return the context's domain names; raise :class:`ConfigError` when there are none."""
    domains = tuple(str(d) for d in context.domains)
    if len(domains) < 1:
        raise ConfigError(
            f"{what} needs at least one domain, got context.domains = {context.domains!r}; pass "
            "ComponentContext(domains=(...)) with one name per dataset, in config order."
        )
    return domains


def check_feedback(feedback: MixFeedback, num_domains: int, what: str) -> bool:
    """Check a mix feedback: False (with a warning) when it holds NaN or infinite values.

    A non-finite loss means a diverged or empty step; a mixer that learned from it would carry
    NaN forever, so the caller skips the update and keeps its decision.

    Raises:
        DataError: when a per-domain field does not have one entry per domain.
    """
    for name in _PER_DOMAIN_FIELDS:
        values = getattr(feedback, name)
        if values is not None and len(values) != num_domains:
            raise DataError(
                f"{what}: feedback.{name} has {len(values)} entries but there are {num_domains} "
                "domains; feedback must hold one entry per domain, in config order."
            )
    for name in _FEEDBACK_FIELDS:
        values = getattr(feedback, name)
        if values is None:
            continue
        arr = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            warnings.warn(
                f"{what}: feedback of step {feedback.step} has non-finite {name} "
                f"{arr.tolist()!r:.120}; the update is skipped and the proportions are kept.",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
    return True


def _check_state_domains(state: Mapping[str, Any], domains: tuple[str, ...], what: str) -> None:
    saved = state.get("domains")
    if saved is None:
        raise StateError(
            f"{what}: the saved state has no 'domains' entry; it is not a {what} state."
        )
    if list(saved) != list(domains):
        raise StateError(
            f"{what}: the saved state was made for domains {list(saved)!r} but this run has "
            f"domains {list(domains)!r}; resume with the same datasets in the same order."
        )


def _state_proportions(state: Mapping[str, Any], k: int, what: str) -> tuple[float, ...]:
    try:
        p = [float(x) for x in state["proportions"]]
    except (KeyError, TypeError, ValueError):
        raise StateError(f"{what}: the saved state has no valid 'proportions' list.") from None
    if len(p) != k or not all(math.isfinite(x) and x >= 0 for x in p) or not sum(p) > 0:
        raise StateError(
            f"{what}: the saved proportions {p!r} are not a distribution over {k} domains."
        )
    return tuple(p)


def _state_int(state: Mapping[str, Any], key: str, what: str) -> int:
    value = state.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"{what}: the saved state has an invalid {key!r}: {value!r}.")
    return value


def generator_state_to_json(bit_generator: np.random.PCG64) -> dict[str, Any]:
    """A PCG64 state as JSON-safe data.

    Its two 128-bit integers are stored as decimal strings: Python's json round-trips big ints,
    but other readers of ``dataflex_state.json`` (dashboards, jq) would round them to doubles.
    """
    st = bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": {"state": str(st["state"]["state"]), "inc": str(st["state"]["inc"])},
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def generator_from_json(data: Mapping[str, Any]) -> np.random.Generator:
    """Rebuild the generator saved by :func:`generator_state_to_json`."""
    try:
        if data["bit_generator"] != "PCG64":
            raise StateError(f"expected a PCG64 generator state, got {data['bit_generator']!r}.")
        bg = np.random.PCG64()
        bg.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(data["state"]["state"]), "inc": int(data["state"]["inc"])},
            "has_uint32": int(data["has_uint32"]),
            "uinteger": int(data["uinteger"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"invalid generator state {data!r:.200}: {exc}.") from None
    return np.random.Generator(bg)


def _as_config(cls: type, config: Any, where: str) -> Any:
    # Accept the dataclass itself, a plain mapping (validated strictly) or None (defaults).
    return parse_config(cls, config, where=where)


# --------------------------------------------------------------------------- static


@dataclass(frozen=True)
class StaticMixerConfig:
    """Config of the ``static`` mixer (spec §3.1).

    Attributes:
        proportions: One non-negative number per domain, in config order, normalised to sum to
            1. None means uniform.
    """

    proportions: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.proportions is not None:
            # The length is checked against the domains when the mixer is built.
            normalize_proportions(self.proportions, len(self.proportions), key="proportions")


@dataclass(frozen=True)
class StaticMixerState:
    """State of the ``static`` mixer: the domains, ``p`` and the number of updates."""

    domains: tuple[str, ...]
    proportions: tuple[float, ...]
    updates: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "domains": list(self.domains),
            "proportions": list(self.proportions),
            "updates": self.updates,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], domains: tuple[str, ...]) -> StaticMixerState:
        """Restore from :meth:`to_dict`, checking the domain names against ``domains``."""
        _check_state_domains(state, domains, "static mixer")
        return cls(
            domains=domains,
            proportions=_state_proportions(state, len(domains), "static mixer"),
            updates=_state_int(state, "updates", "static mixer"),
        )


def init_static(config: StaticMixerConfig, domains: Sequence[str]) -> StaticMixerState:
    """``p = normalise(proportions)`` (uniform when None)."""
    k = len(domains)
    if config.proportions is None:
        p = np.full(k, 1.0 / k)
    else:
        p = normalize_proportions(config.proportions, k, key="proportions")
    return StaticMixerState(domains=tuple(domains), proportions=tuple(p.tolist()))


def update_static(
    config: StaticMixerConfig, state: StaticMixerState, feedback: MixFeedback | None
) -> tuple[MixDecision, StaticMixerState]:
    """The static mixer ignores feedback; it only counts updates."""
    new = replace(state, updates=state.updates + 1)
    return MixDecision(proportions=new.proportions), new


class StaticMixer:
    """Fixed domain proportions (spec §3.1): a baseline that goes through the mixing path.

    Args:
        config: A :class:`StaticMixerConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts; ``context.domains`` must name at least one domain.

    Example:
        >>> from dataflex_core import ComponentContext
        >>> m = StaticMixer({"proportions": [2, 1, 1]}, ComponentContext(domains=("a", "b", "c")))
        >>> m.proportions
        (0.5, 0.25, 0.25)
    """

    config_class = StaticMixerConfig

    def __init__(
        self,
        config: StaticMixerConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: StaticMixerConfig = _as_config(StaticMixerConfig, config, "mixer 'static'")
        self.context = context if context is not None else ComponentContext()
        self.domains = check_domains(self.context, "mixer 'static'")
        self._state = init_static(self.config, self.domains)

    @property
    def proportions(self) -> tuple[float, ...]:
        """Current proportions, one per domain, summing to 1."""
        return self._state.proportions

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        """Return the (unchanged) decision; non-finite feedback is skipped with a warning."""
        if feedback is not None and not check_feedback(
            feedback, len(self.domains), "mixer 'static'"
        ):
            return MixDecision(proportions=self._state.proportions)
        decision, self._state = update_static(self.config, self._state, feedback)
        return decision

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: ``domains``, ``proportions``, ``updates``."""
        return self._state.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the domain names must match this run's."""
        self._state = StaticMixerState.from_dict(state, self.domains)


# --------------------------------------------------------------------------- random


@dataclass(frozen=True)
class RandomMixerConfig:
    """Config of the ``random`` mixer (spec §3.2).

    Attributes:
        seed: Base seed; None means the run seed (``context.seed``).
        distribution: ``dirichlet``: ``p ~ Dirichlet(concentration·1)``; ``uniform_normalized``:
            ``u ~ U(0,1)^K``, ``p = u / Σu`` (the predecessor's intent).
        concentration: Dirichlet concentration, > 0; 1 is uniform on the simplex.
    """

    seed: int | None = None
    distribution: Literal["dirichlet", "uniform_normalized"] = "dirichlet"
    concentration: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.concentration) and self.concentration > 0):
            raise ConfigError(
                f"concentration must be a finite number > 0, got {self.concentration!r}; "
                "1.0 draws uniformly on the simplex, smaller values favour sparse mixtures."
            )
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0 or null (the run seed), got {self.seed!r}.")


@dataclass(frozen=True)
class RandomMixerState:
    """State of the ``random`` mixer: domains, current ``p``, generator state, update count."""

    domains: tuple[str, ...]
    proportions: tuple[float, ...]
    generator: Mapping[str, Any]
    updates: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the generator's 128-bit integers as decimal strings)."""
        return {
            "domains": list(self.domains),
            "proportions": list(self.proportions),
            "generator": {
                "bit_generator": self.generator["bit_generator"],
                "state": dict(self.generator["state"]),
                "has_uint32": self.generator["has_uint32"],
                "uinteger": self.generator["uinteger"],
            },
            "updates": self.updates,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], domains: tuple[str, ...]) -> RandomMixerState:
        """Restore from :meth:`to_dict`, checking the domain names against ``domains``."""
        _check_state_domains(state, domains, "random mixer")
        if "generator" not in state:
            raise StateError("random mixer: the saved state has no 'generator' entry.")
        gen = generator_from_json(state["generator"])  # validates it
        return cls(
            domains=domains,
            proportions=_state_proportions(state, len(domains), "random mixer"),
            generator=generator_state_to_json(gen.bit_generator),
            updates=_state_int(state, "updates", "random mixer"),
        )


def init_random(config: RandomMixerConfig, domains: Sequence[str], seed: int) -> RandomMixerState:
    """Uniform ``p`` until the first update; generator ``PCG64(derive(seed, "random_mixer"))``."""
    k = len(domains)
    bg = np.random.PCG64(derive(seed, "random_mixer"))
    return RandomMixerState(
        domains=tuple(domains),
        proportions=tuple(np.full(k, 1.0 / k).tolist()),
        generator=generator_state_to_json(bg),
    )


def update_random(
    config: RandomMixerConfig, state: RandomMixerState, feedback: MixFeedback | None
) -> tuple[MixDecision, RandomMixerState]:
    """Draw the next proportions from the stored generator, advancing it (feedback unused)."""
    rng = generator_from_json(state.generator)
    k = len(state.domains)
    if config.distribution == "dirichlet":
        p = rng.dirichlet(np.full(k, config.concentration))
    else:
        u = rng.random(k)
        p = u / u.sum()
    p = np.asarray(p, dtype=np.float64)
    if not (np.all(np.isfinite(p)) and p.sum() > 0):
        # Only reachable if every gamma draw underflows (a tiny concentration on an old numpy);
        # a uniform vector keeps the run going where NaN would poison the sampler.
        p = np.full(k, 1.0 / k)
    p = p / p.sum()
    new = RandomMixerState(
        domains=state.domains,
        proportions=tuple(p.tolist()),
        generator=generator_state_to_json(rng.bit_generator),
        updates=state.updates + 1,
    )
    return MixDecision(proportions=new.proportions), new


class RandomMixer:
    """Random domain proportions (spec §3.2), from one stateful, seeded generator.

    The proportions are uniform until the first :meth:`step`; every step then draws a new
    vector, advancing the generator. The generator state is saved, so a resumed run continues
    the same sequence. numpy's global RNG is never touched.

    Args:
        config: A :class:`RandomMixerConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts; ``context.domains`` must name at least one domain, and
            ``context.seed`` is the seed unless ``config.seed`` is set.
    """

    config_class = RandomMixerConfig

    def __init__(
        self,
        config: RandomMixerConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: RandomMixerConfig = _as_config(RandomMixerConfig, config, "mixer 'random'")
        self.context = context if context is not None else ComponentContext()
        self.domains = check_domains(self.context, "mixer 'random'")
        self.seed = self.config.seed if self.config.seed is not None else int(self.context.seed)
        self._state = init_random(self.config, self.domains, self.seed)

    @property
    def proportions(self) -> tuple[float, ...]:
        """Current proportions, one per domain, summing to 1."""
        return self._state.proportions

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        """Draw and return new proportions; non-finite feedback is skipped with a warning."""
        if feedback is not None and not check_feedback(
            feedback, len(self.domains), "mixer 'random'"
        ):
            return MixDecision(proportions=self._state.proportions)
        decision, self._state = update_random(self.config, self._state, feedback)
        return decision

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: ``domains``, ``proportions``, ``generator``, ``updates``."""
        return self._state.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the domain names must match this run's."""
        self._state = RandomMixerState.from_dict(state, self.domains)
