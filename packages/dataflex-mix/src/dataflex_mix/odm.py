"""The ``odm`` mixer: Online Data Mixing, an EXP3-style bandit over domains (spec §3.4).

Reference: Albalak, Pan, Raffel, Wang, "Efficient Online Data Mixing For Language Model
Pre-Training", arXiv 2312.02406. Official code: a GPT-NeoX fork, ``data_sampling_utils.py``.

Each domain is an arm; its reward is the training loss of the samples drawn from it. Per round:

1. ``t ← t+1``, ``ε_t = max(ε_min, min(1/K, √(ln K/(K·t))))``;
2. ``π_t = (1 - K ε_t)·softmax(ε_prev·R̂) + ε_t``;
3. train on samples drawn from ``π_t``;
4. for every domain ``i`` pulled in the step, ``L_i`` = token-mean loss of its samples and
   ``R̂_i ← α R̂_i + (1-α)·reward_scale·L_i/π_t(i)``;
5. ``ε_prev ← ε_t``.

Time in this module (how :meth:`OdmMixer.step` counts):

* ``feedback.step`` must be ``s``, the number of completed optimizer steps. The warmup ends at
  ``warmup_end = context.extras.get("warmup_step", 0) + warmup_steps`` (the trainer's warmup
  plus ODM's own, spec §3.4 "until warmup_step + warmup_steps"). Until then the policy is
  ``initial_proportions`` (or uniform) and ``R̂`` is not updated.
* Round 1 starts at construction when ``warmup_end == 0``, else at the first ``step`` whose
  ``feedback.step >= warmup_end``. ``R̂`` is updated only from feedback whose samples were drawn
  under a round policy, so the feedback that ends the warmup never enters ``R̂``.
* ``t_counter: rounds`` gives round ``r`` the time ``t = r``; ``global_step`` gives it
  ``t = s + 1``, where ``s`` is the step after which the round starts (2001 right after a
  2000-step warmup, as in the official code).

The importance weight ``1/π_t(i)`` uses the proportions the feedback's samples were actually
drawn with when the trainer reports them (``feedback.extras["proportions_used"]``), else the
policy in force, which is the same thing when the trainer samples by :attr:`OdmMixer.proportions`.
"""

from __future__ import annotations

import math
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
    parse_config,
)
from numpy.typing import ArrayLike, NDArray

from dataflex_mix._common import (
    check_count,
    check_positive,
    check_unit_interval,
    per_domain_proportions,
    softmax,
    state_float,
    state_int,
    state_vector,
)
from dataflex_mix.mixers import _check_state_domains, check_domains, check_feedback
from dataflex_mix.primitives import normalize_proportions

__all__ = [
    "OdmMixerConfig",
    "OdmMixerState",
    "OdmMixer",
    "init_odm",
    "update_odm",
    "odm_exploration_rate",
    "odm_policy",
    "odm_rewards_update",
    "domain_mean_losses",
    "PROPORTIONS_USED_KEY",
]

_WHAT = "mixer 'odm'"

#: ``MixFeedback.extras`` key: the proportions the feedback's samples were drawn with.
PROPORTIONS_USED_KEY = "proportions_used"
Variant = Literal[
    "paper", "official_exp3", "official_smoothed_mean", "official_smoothed_mean_group"
]
_VARIANTS: tuple[str, ...] = (
    "paper",
    "official_exp3",
    "official_smoothed_mean",
    "official_smoothed_mean_group",
)


@dataclass(frozen=True)
class OdmMixerConfig:
    """Config of the ``odm`` mixer (spec §3.4). Defaults are the paper's.

    Attributes:
        alpha: EMA factor ``α`` of the reward estimate, in [0, 1].
        reward_scale: Multiplies the reward ``L_i`` (> 0; predecessor 15). Ignored by the
            official variants.
        min_exploration_rate: ``ε_min``, a floor of the exploration rate, in ``[0, 1/K]``
            (predecessor 0.03).
        warmup_steps: ODM's own warmup in optimizer steps, on top of the trainer's
            ``warmup_step`` (predecessor and official 2000).
        initial_proportions: The policy during warmup, one non-negative number per domain
            (normalised). Null: uniform. After warmup it has no effect.
        arm_unit: What one arm pull is: ``micro_batch`` (each (rank, micro-step) micro-batch is
            domain-pure, its domain drawn from ``π_t``), ``global_batch`` (one domain per step,
            the paper) or ``mixed`` (ordinary mixed batches; needs ``importance_weighting:
            false``). The mixer's arithmetic is the same; the key tells the sampler how to draw.
        variant: ``paper`` (importance-weighted EMA), ``official_exp3``,
            ``official_smoothed_mean`` or ``official_smoothed_mean_group``. Null: implied by
            ``official_compat``.
        t_counter: ``rounds`` or ``global_step`` (official). Null: implied by ``official_compat``.
        importance_weighting: Divide the reward by ``π_t(i)`` (paper variant only).
        official_compat: True implies ``variant: official_smoothed_mean`` and
            ``t_counter: global_step``; explicit keys win.
    """

    alpha: float = 0.9
    reward_scale: float = 1.0
    min_exploration_rate: float = 0.0
    warmup_steps: int = 0
    initial_proportions: tuple[float, ...] | None = None
    arm_unit: Literal["micro_batch", "global_batch", "mixed"] = "micro_batch"
    variant: Variant | None = None
    t_counter: Literal["rounds", "global_step"] | None = None
    importance_weighting: bool = True
    official_compat: bool = False

    def __post_init__(self) -> None:
        check_unit_interval(self.alpha, "alpha", "it is the EMA factor of R̂; the paper uses 0.9.")
        check_positive(self.reward_scale, "reward_scale", "the paper uses 1.0.")
        check_unit_interval(
            self.min_exploration_rate,
            "min_exploration_rate",
            "it is the floor ε_min of the exploration rate (at most 1/K); 0 disables it.",
        )
        check_count(self.warmup_steps, "warmup_steps", 0, "use 0 for no ODM-internal warmup.")
        if self.initial_proportions is not None:
            normalize_proportions(
                self.initial_proportions,
                len(self.initial_proportions),
                key="initial_proportions",
            )
        if self.arm_unit == "mixed" and self.uses_importance_weights:
            raise ConfigError(
                f"arm_unit 'mixed' cannot be combined with importance weighting (variant "
                f"{self.resolved_variant!r}, importance_weighting {self.importance_weighting}): "
                "in a mixed batch every domain is pulled, so 1/π_t(i) has no meaning. Set "
                "importance_weighting: false (paper variant), or arm_unit: micro_batch."
            )

    @property
    def resolved_variant(self) -> str:
        """``variant``, or the value ``official_compat`` implies."""
        if self.variant is not None:
            return self.variant
        return "official_smoothed_mean" if self.official_compat else "paper"

    @property
    def resolved_t_counter(self) -> str:
        """``t_counter``, or the value ``official_compat`` implies."""
        if self.t_counter is not None:
            return self.t_counter
        return "global_step" if self.official_compat else "rounds"

    @property
    def uses_importance_weights(self) -> bool:
        """Whether the reward update divides by ``π_t(i)``."""
        v = self.resolved_variant
        return v == "official_exp3" or (v == "paper" and self.importance_weighting)


@dataclass(frozen=True)
class OdmMixerState:
    """State of the ``odm`` mixer (spec §5.5).

    Attributes:
        domains: Domain names, config order.
        rewards: ``R̂``, the estimated rewards.
        policy: ``π``, the policy in force (the samples of the next feedback are drawn by it).
        eps: ``ε_t`` of the round in force (``1/K`` during warmup).
        eps_prev: ``ε_prev``, the exploration rate of the last completed round (initially 1/K).
        t: The time ``t`` of the round in force (0 during warmup).
        rounds: Rounds started so far (0 during warmup).
        samples_seen: Per-domain samples reported in feedback so far.
        last_step: ``feedback.step`` of the last accepted feedback (None before any).
    """

    domains: tuple[str, ...]
    rewards: tuple[float, ...]
    policy: tuple[float, ...]
    eps: float
    eps_prev: float
    t: int
    rounds: int
    samples_seen: tuple[float, ...]
    last_step: int | None = None

    @property
    def in_round(self) -> bool:
        """True once round 1 has started (the warmup is over)."""
        return self.rounds > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "domains": list(self.domains),
            "rewards": list(self.rewards),
            "policy": list(self.policy),
            "eps": self.eps,
            "eps_prev": self.eps_prev,
            "t": self.t,
            "rounds": self.rounds,
            "samples_seen": list(self.samples_seen),
            "last_step": self.last_step,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], domains: tuple[str, ...]) -> OdmMixerState:
        """Restore from :meth:`to_dict`, checking the domain names against ``domains``."""
        _check_state_domains(state, domains, _WHAT)
        k = len(domains)
        policy = state_vector(state, "policy", k, _WHAT, nonnegative=True)
        rewards = state_vector(state, "rewards", k, _WHAT)
        seen = state_vector(state, "samples_seen", k, _WHAT, nonnegative=True)
        assert policy is not None and rewards is not None and seen is not None
        if not math.isclose(float(policy.sum()), 1.0, abs_tol=1e-9):
            raise StateError(f"{_WHAT}: the saved policy {policy.tolist()} does not sum to 1.")
        t, rounds = state_int(state, "t", _WHAT), state_int(state, "rounds", _WHAT)
        assert t is not None and rounds is not None
        return cls(
            domains=domains,
            rewards=tuple(rewards.tolist()),
            policy=tuple(policy.tolist()),
            eps=state_float(state, "eps", _WHAT),
            eps_prev=state_float(state, "eps_prev", _WHAT),
            t=t,
            rounds=rounds,
            samples_seen=tuple(seen.tolist()),
            last_step=state_int(state, "last_step", _WHAT, optional=True),
        )


# --------------------------------------------------------------------------- pure math


def odm_exploration_rate(t: int, k: int, eps_min: float = 0.0) -> float:
    """``ε_t = max(ε_min, min(1/K, √(ln K/(K·t))))`` for ``t >= 1``."""
    if t < 1:
        raise ValueError(f"the exploration rate needs t >= 1, got {t}.")
    return max(eps_min, min(1.0 / k, math.sqrt(math.log(k) / (k * t))))


def odm_policy(
    rewards: ArrayLike, eps_prev: float, eps: float, group: bool = False
) -> NDArray[np.float64]:
    """The policy ``π_t`` of a round.

    * standard (``group=False``): ``π = (1 - K ε_t)·softmax(ε_prev·R̂) + ε_t``. The max-shift of
      softmax makes any ``R̂`` safe (no clipping, no overflow);
    * ``group=True`` (``official_smoothed_mean_group``): linear weights
      ``w_i = R̂_i ε_prev (1 - Kε_t)/Σ_j R̂_j ε_prev + ε_t``, ``π = w/Σw``; while every ``R̂`` is 0
      the reward share is uniform.
    """
    r = np.asarray(rewards, dtype=np.float64)
    k = r.size
    if group:
        total = float(np.sum(r * eps_prev))
        share = r * eps_prev / total if total > 0 else np.full(k, 1.0 / k)
        w = share * (1.0 - k * eps) + eps
    else:
        w = (1.0 - k * eps) * softmax(eps_prev * r) + eps
    return w / w.sum()


def domain_mean_losses(
    loss_sum: ArrayLike, token_count: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Per-domain token-mean losses ``L_i = loss_sum_i / token_count_i`` and the pulled mask.

    A domain is pulled in the step when ``token_count_i > 0``; others get ``L_i = 0`` (unused).
    """
    s = np.asarray(loss_sum, dtype=np.float64)
    z = np.asarray(token_count, dtype=np.float64)
    pulled = z > 0
    return np.where(pulled, s / np.where(pulled, z, 1.0), 0.0), pulled


#: Largest exponent of the official ODM reward ``exp(L)`` (float64 overflows above ~709.78).
_MAX_EXP = 700.0


def odm_rewards_update(
    rewards: ArrayLike,
    losses: ArrayLike,
    pulled: ArrayLike,
    policy: ArrayLike,
    *,
    variant: str = "paper",
    alpha: float = 0.9,
    reward_scale: float = 1.0,
    importance_weighting: bool = True,
) -> NDArray[np.float64]:
    """Update ``R̂`` for the pulled domains; the others keep their estimate.

    * ``paper``: ``R̂_i ← α R̂_i + (1-α)·reward_scale·L_i/π_t(i)`` (no ``/π`` without importance
      weighting);
    * ``official_exp3``: ``R̂_i ← R̂_i + (L_i/10)/π_t(i)`` (cumulative);
    * ``official_smoothed_mean`` and ``..._group``: ``R̂_i ← α R̂_i + (1-α)·exp(L_i)``.
    """
    r = np.asarray(rewards, dtype=np.float64).copy()
    loss = np.asarray(losses, dtype=np.float64)
    mask = np.asarray(pulled, dtype=bool)
    pi = np.asarray(policy, dtype=np.float64)
    # A pulled domain always has π > 0 (it was drawn from π); guard anyway against a
    # caller that reports a domain it did not draw.
    safe_pi = np.where(pi > 0, pi, 1.0)
    if variant == "paper":
        reward = reward_scale * loss / (safe_pi if importance_weighting else 1.0)
        new = alpha * r + (1.0 - alpha) * reward
    elif variant == "official_exp3":
        new = r + (loss / 10.0) / safe_pi
    elif variant in ("official_smoothed_mean", "official_smoothed_mean_group"):
        # exp overflows float64 above ~709.78; a token-mean loss that large is already
        # meaningless, so the exponent is clipped there to keep the policy on the simplex.
        new = alpha * r + (1.0 - alpha) * np.exp(np.minimum(loss, _MAX_EXP))
    else:
        raise ConfigError(f"variant must be one of {list(_VARIANTS)}, got {variant!r}.")
    return np.where(mask, new, r)


def _warmup_policy(config: OdmMixerConfig, k: int) -> np.ndarray:
    if config.initial_proportions is None:
        return np.full(k, 1.0 / k)
    return per_domain_proportions(config.initial_proportions, k, "initial_proportions", _WHAT)


def _start_round(config: OdmMixerConfig, state: OdmMixerState, step: int) -> OdmMixerState:
    k = len(state.domains)
    rounds = state.rounds + 1
    t = rounds if config.resolved_t_counter == "rounds" else step + 1
    eps = odm_exploration_rate(t, k, config.min_exploration_rate)
    group = config.resolved_variant == "official_smoothed_mean_group"
    policy = odm_policy(state.rewards, state.eps_prev, eps, group=group)
    return replace(state, policy=tuple(policy.tolist()), eps=eps, t=t, rounds=rounds)


def init_odm(config: OdmMixerConfig, domains: Sequence[str], warmup_end: int = 0) -> OdmMixerState:
    """Initial state: ``R̂ = 0``, ``ε_prev = 1/K``; round 1 in force when ``warmup_end == 0``.

    Raises:
        ConfigError: if ``min_exploration_rate > 1/K`` or ``initial_proportions`` has the
            wrong length.
    """
    k = len(domains)
    if config.min_exploration_rate > 1.0 / k:
        raise ConfigError(
            f"{_WHAT}: min_exploration_rate = {config.min_exploration_rate!r} exceeds 1/K = "
            f"{1.0 / k:.6g} for K = {k} domains, which would make (1 - K·ε) negative; use a "
            f"value <= {1.0 / k:.6g} (0 disables the floor)."
        )
    state = OdmMixerState(
        domains=tuple(domains),
        rewards=tuple(np.zeros(k).tolist()),
        policy=tuple(_warmup_policy(config, k).tolist()),
        eps=1.0 / k,
        eps_prev=1.0 / k,
        t=0,
        rounds=0,
        samples_seen=tuple(np.zeros(k).tolist()),
    )
    return _start_round(config, state, 0) if warmup_end <= 0 else state


def _proportions_used(feedback: MixFeedback, k: int) -> np.ndarray | None:
    raw = feedback.extras.get(PROPORTIONS_USED_KEY)
    if raw is None:
        return None
    try:
        p = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        p = np.asarray([np.nan])
    if p.shape != (k,) or not np.all(np.isfinite(p)) or np.any(p < 0) or not p.sum() > 0:
        raise DataError(
            f"{_WHAT}: feedback.extras[{PROPORTIONS_USED_KEY!r}] = {raw!r:.120} is not a "
            f"distribution over {k} domains; pass the proportions the step's samples were "
            "drawn with, or leave the key out."
        )
    return p / p.sum()


def update_odm(
    config: OdmMixerConfig,
    state: OdmMixerState,
    feedback: MixFeedback | None,
    warmup_end: int = 0,
) -> tuple[MixDecision, OdmMixerState]:
    """Take one step's feedback; return the policy for the next step(s).

    During a round, the rewards of the domains pulled in the feedback are updated with the
    policy in force, or ``feedback.extras["proportions_used"]`` when given (steps 4, 5), then
    the next round starts (steps 1, 2). During warmup the
    rewards stay; the first round starts once ``feedback.step >= warmup_end``.
    """
    if feedback is None:
        return MixDecision(proportions=state.policy), state
    s = int(feedback.step)
    seen = np.asarray(state.samples_seen) + np.asarray(feedback.sample_count, dtype=np.float64)
    state = replace(state, samples_seen=tuple(seen.tolist()), last_step=s)
    drawn = _proportions_used(feedback, len(state.domains))
    if state.in_round:
        losses, pulled = domain_mean_losses(feedback.loss_sum, feedback.token_count)
        rewards = odm_rewards_update(
            state.rewards,
            losses,
            pulled,
            state.policy if drawn is None else drawn,
            variant=config.resolved_variant,
            alpha=config.alpha,
            reward_scale=config.reward_scale,
            importance_weighting=config.importance_weighting,
        )
        state = replace(state, rewards=tuple(rewards.tolist()), eps_prev=state.eps)
        state = _start_round(config, state, s)
    elif s >= warmup_end:
        state = _start_round(config, state, s)
    return MixDecision(proportions=state.policy), state


# --------------------------------------------------------------------------- shell


class OdmMixer:
    """Online Data Mixing (spec §3.4): a bandit over domains rewarded by their training loss.

    Call :meth:`step` after every update (``update_step: 1`` is the paper's cadence) with the
    all-reduced per-domain ``loss_sum`` and ``token_count`` of the samples drawn since the last
    call; the rewards credit each domain with **its own samples'** token-mean loss.

    Attributes:
        arm_unit: ``micro_batch`` / ``global_batch`` / ``mixed``: how the sampler must draw
            (domain-pure micro-batches, one domain per step, or mixed batches).
        warmup_end: The step ``s`` from which rounds start (trainer warmup + ``warmup_steps``).

    Args:
        config: An :class:`OdmMixerConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts: ``domains``; ``extras["warmup_step"]`` (the trainer's warmup,
            default 0), which the integration must pass when it is not 0.
    """

    config_class = OdmMixerConfig

    def __init__(
        self,
        config: OdmMixerConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: OdmMixerConfig = parse_config(OdmMixerConfig, config, where=_WHAT)
        self.context = context if context is not None else ComponentContext()
        self.domains = check_domains(self.context, _WHAT)
        trainer_warmup = self.context.extras.get("warmup_step", 0) or 0
        if isinstance(trainer_warmup, bool) or not isinstance(trainer_warmup, int):
            raise ConfigError(
                f"{_WHAT}: context.extras['warmup_step'] must be an int >= 0, got "
                f"{trainer_warmup!r}."
            )
        self.warmup_end: int = int(trainer_warmup) + self.config.warmup_steps
        self.arm_unit: str = self.config.arm_unit
        self._state = init_odm(self.config, self.domains, self.warmup_end)

    @property
    def proportions(self) -> tuple[float, ...]:
        """The policy in force: ``π_t`` in a round, ``initial_proportions`` during warmup."""
        return self._state.policy

    @property
    def rewards(self) -> tuple[float, ...]:
        """``R̂``, the estimated rewards."""
        return self._state.rewards

    @property
    def in_warmup(self) -> bool:
        """True until the first round starts."""
        return not self._state.in_round

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        """Update from ``feedback`` (see :func:`update_odm`) and return the next policy.

        Non-finite feedback is skipped with a warning (state untouched).
        """
        if feedback is not None and not check_feedback(feedback, len(self.domains), _WHAT):
            return MixDecision(proportions=self._state.policy)
        decision, self._state = update_odm(self.config, self._state, feedback, self.warmup_end)
        return decision

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: R̂, π, ε, ε_prev, t, rounds, samples seen, last step."""
        return self._state.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the domain names must match this run's."""
        self._state = OdmMixerState.from_dict(state, self.domains)
