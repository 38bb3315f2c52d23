"""The ``static`` and ``random`` selectors (algorithms spec §2.1, §2.2).

Both are pure functions of (config, seed, request): every draw is seeded by
``derive(seed, purpose, epoch, ...)``, so they keep no state beyond a selection counter kept for
logging. The shells still implement ``state_dict``/``load_state_dict`` so that every selector
resumes the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    SelectRequest,
    StateError,
    derive,
    parse_config,
)
from numpy.typing import NDArray

from dataflex_select.primitives import (
    generator,
    sample_with_replacement,
    sample_without_replacement,
)

__all__ = [
    "StaticSelectorConfig",
    "StaticSelector",
    "static_permutation",
    "select_static",
    "RandomSelectorConfig",
    "RandomSelector",
    "select_random",
    "warmup_indices",
    "check_request",
    "WARMUP_SAMPLES_KEY",
]

#: Key of ``SelectRequest.extras`` holding ``w₀ = G·warmup_step``, the number of entries of the
#: epoch's permutation that the warmup draw consumed (static selector, spec §2.1).
WARMUP_SAMPLES_KEY = "warmup_samples"


def check_request(request: SelectRequest, what: str) -> None:
    """Raise :class:`DataError` when a request cannot be answered (empty pool, bad counts)."""
    if request.num_samples < 1:
        raise DataError(
            f"{what}: the training pool is empty (num_samples = {request.num_samples}); check "
            "the dataset configuration."
        )
    if request.n < 0:
        raise DataError(f"{what}: asked for n = {request.n} indices; n must be >= 0.")
    if not request.warmup and request.update < 0:
        raise DataError(
            f"{what}: request.update = {request.update} is only valid for the warmup draw "
            "(warmup=True); window updates are numbered from 0."
        )


def warmup_indices(seed: int, epoch: int, n: int, num_samples: int) -> NDArray[np.int64]:
    """The warmup draw of an epoch (spec §2.2): uniform, seeded by ``derive(seed, "warmup", e)``.

    Without replacement, unless ``n`` exceeds the pool size ``N``: then with replacement.
    """
    uniform = np.ones(num_samples)
    return sample_without_replacement(
        uniform, n, derive(seed, "warmup", epoch), replacement=n > num_samples
    )


class _SeededSelector:
    """Shared shell: effective seed, selection counter, state round trip."""

    name = ""

    def __init__(self, config: Any, context: ComponentContext | None) -> None:
        self.context = context if context is not None else ComponentContext()
        self.seed: int = config.seed if config.seed is not None else int(self.context.seed)
        self.selections = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: the effective ``seed`` and the number of ``selections`` made.

        The draws themselves are derived from the seed, the epoch and the step, so nothing
        else is needed to resume; the counter is kept for logging.
        """
        return {"seed": self.seed, "selections": self.selections}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the seed must match this run's."""
        what = f"selector {self.name!r}"
        seed = state.get("seed")
        if seed != self.seed:
            raise StateError(
                f"{what}: the saved state was made with seed {seed!r} but this run has seed "
                f"{self.seed}; resume with `seed: {seed}` (or the same run seed) to continue the "
                "same draws."
            )
        selections = state.get("selections", 0)
        if isinstance(selections, bool) or not isinstance(selections, int) or selections < 0:
            raise StateError(f"{what}: invalid 'selections' in the saved state: {selections!r}.")
        self.selections = selections


# --------------------------------------------------------------------------- static


@dataclass(frozen=True)
class StaticSelectorConfig:
    """Config of the ``static`` selector (spec §2.1).

    Attributes:
        shuffle: Walk a seeded permutation of the pool per Flex epoch; False walks it in order.
        seed: Base seed; None means the run seed (``context.seed``).
    """

    shuffle: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0 or null (the run seed), got {self.seed!r}.")


def static_permutation(
    config: StaticSelectorConfig, seed: int, epoch: int, num_samples: int
) -> NDArray[np.int64]:
    """``π_e = permutation(N, derive(seed, "static", e))``, or ``arange(N)`` without shuffle."""
    if not config.shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return generator(derive(seed, "static", epoch)).permutation(num_samples).astype(np.int64)


def select_static(
    config: StaticSelectorConfig,
    seed: int,
    request: SelectRequest,
    permutation: NDArray[np.int64] | None = None,
) -> NDArray[np.int64]:
    """The static selector's answer to ``request`` (spec §2.1).

    * Warmup draw (``request.warmup``): ``π_e[0 : n]``, the first ``w₀ = n`` entries. A prefix of a
      seeded permutation is a uniform draw without replacement (the §2.2 warmup rule), and taking
      it from ``π_e`` keeps the epoch a single pass over the data.
    * Window ``u = request.update``: ``π_e[w₀ + u·n : w₀ + (u+1)·n]``, positions modulo ``N``,
      where ``w₀ = request.extras["warmup_samples"]`` (default 0): the number of entries the
      warmup draw of this epoch took (``G·warmup_step``).

    Args:
        config: The selector's config.
        seed: The effective base seed.
        request: The request.
        permutation: ``π_e`` if the caller cached it (must match ``static_permutation``).
    """
    check_request(request, "selector 'static'")
    n, size = request.n, request.num_samples
    perm = (
        permutation
        if permutation is not None
        else static_permutation(config, seed, request.epoch, size)
    )
    if request.warmup:
        start = 0
    else:
        w0 = request.extras.get(WARMUP_SAMPLES_KEY, 0)
        if isinstance(w0, bool) or not isinstance(w0, (int, np.integer)) or w0 < 0:
            raise DataError(
                f"selector 'static': request.extras[{WARMUP_SAMPLES_KEY!r}] must be an integer "
                f">= 0 (G * warmup_step), got {w0!r}."
            )
        start = int(w0) + request.update * n
    positions = (start + np.arange(n, dtype=np.int64)) % size
    return perm[positions]


class StaticSelector(_SeededSelector):
    """All data, walked window by window through a seeded permutation per Flex epoch (§2.1).

    A baseline that goes through the selection path with the same step accounting as the
    model-driven selectors. See :func:`select_static` for the window arithmetic, including the
    ``request.extras["warmup_samples"]`` key.

    Args:
        config: A :class:`StaticSelectorConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts; ``context.seed`` is the seed unless ``config.seed`` is set.
    """

    config_class = StaticSelectorConfig
    name = "static"

    def __init__(
        self,
        config: StaticSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: StaticSelectorConfig = parse_config(
            StaticSelectorConfig, config, where="selector 'static'"
        )
        super().__init__(self.config, context)
        # π_e of the current epoch: recomputing a permutation of N at every update is wasteful.
        self._cache: tuple[int, int, NDArray[np.int64]] | None = None

    def _permutation(self, epoch: int, num_samples: int) -> NDArray[np.int64]:
        if self._cache is None or self._cache[:2] != (epoch, num_samples):
            perm = static_permutation(self.config, self.seed, epoch, num_samples)
            self._cache = (epoch, num_samples, perm)
        return self._cache[2]

    def select(self, request: SelectRequest) -> list[int]:
        """Return the ``request.n`` indices of this window (or the epoch's warmup draw)."""
        check_request(request, "selector 'static'")
        perm = self._permutation(request.epoch, request.num_samples)
        indices = select_static(self.config, self.seed, request, perm)
        self.selections += 1
        return indices.tolist()


# --------------------------------------------------------------------------- random


@dataclass(frozen=True)
class RandomSelectorConfig:
    """Config of the ``random`` selector (spec §2.2).

    Attributes:
        seed: Base seed; None means the run seed (the predecessor defaulted to 42).
        replacement: Draw with replacement (``sample_with_replacement``); the default draws
            distinct indices and needs ``n <= N``.
    """

    seed: int | None = None
    replacement: bool = False

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0 or null (the run seed), got {self.seed!r}.")


def select_random(
    config: RandomSelectorConfig, seed: int, request: SelectRequest
) -> NDArray[np.int64]:
    """The random selector's answer to ``request`` (spec §2.2).

    Windows draw ``sample_without_replacement(uniform, n, derive(seed, "random", epoch, step))``
    (or ``sample_with_replacement`` with ``replacement: true``). The warmup draw is
    :func:`warmup_indices`.
    """
    check_request(request, "selector 'random'")
    n, size = request.n, request.num_samples
    if request.warmup:
        return warmup_indices(seed, request.epoch, n, size)
    uniform = np.ones(size)
    draw_seed = derive(seed, "random", request.epoch, request.step)
    if config.replacement:
        return sample_with_replacement(uniform, n, draw_seed)
    if n > size:
        raise DataError(
            f"selector 'random': a window of n = {n} distinct indices cannot be drawn from a pool "
            f"of N = {size}; set `replacement: true`, or lower update_step or the batch size."
        )
    return sample_without_replacement(uniform, n, draw_seed)


class RandomSelector(_SeededSelector):
    """Uniformly random windows (spec §2.2), each seeded by the epoch and the step.

    Args:
        config: A :class:`RandomSelectorConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts; ``context.seed`` is the seed unless ``config.seed`` is set.
    """

    config_class = RandomSelectorConfig
    name = "random"

    def __init__(
        self,
        config: RandomSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: RandomSelectorConfig = parse_config(
            RandomSelectorConfig, config, where="selector 'random'"
        )
        super().__init__(self.config, context)

    def select(self, request: SelectRequest) -> list[int]:
        """Return ``request.n`` uniformly drawn indices in ``[0, request.num_samples)``."""
        indices = select_random(self.config, self.seed, request)
        self.selections += 1
        return indices.tolist()
