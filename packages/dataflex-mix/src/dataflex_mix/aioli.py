"""The ``aioli`` mixer: Aioli's LearnParams / update rounds as a per-step state machine (§3.6).

Reference: Chen, Hu, Lourie, Cho, Ré, "Aioli: A Unified Optimization Framework for Language
Model Data Mixing", ICLR 2025, arXiv 2411.05735. Official code: HazyResearch/aioli.

A round is ``lp_rounds·K·lp_steps + update_steps`` optimizer steps:

1. **LearnParams.** ``A ← 0`` (rows: eval domains ``j``; columns: training domains ``i``). For
   ``r = 1..lp_rounds`` and ``i`` in the permutation ``Generator(PCG64(derive(seed, "aioli",
   round, r))).permutation(K)``: train ``lp_steps`` steps on the smoothed one-hot mixture
   ``w^(i) = f·e_i + ((1-f)/(K-1))·(1 - e_i)`` and add ``L^prev - L^new`` (the per-domain eval
   losses before and after the block) to column ``i``. Then ``A ← A/lp_rounds``.
2. **Un-smooth.** Each row ``a`` of ``A`` becomes ``W⁻¹a`` (``W`` has rows ``w^(i)``).
3. **Normalise** (``normalize_A``): shift by ``-min A`` if negative, divide by ``ΣA``.
4. **Update.** ``p ← normalise(p ⊙ exp(η·Σ_j A[j, :]))``.
5. Train ``update_steps`` steps on ``p``.

The state machine is driven by :meth:`AioliMixer.step`, called once per optimizer step
(``cadence: every_step``). Each decision is the mixture to train on next: a smoothed one-hot
during LearnParams, ``p`` during the update phase. Eval losses ``feedback.eval_loss`` are read
only at phase boundaries (:attr:`AioliMixer.eval_due` says when): at the first call (the
``L^prev`` of the first block), after every LearnParams block, and after the update phase (the
``L^prev`` of the next round). Consecutive blocks share one eval: the ``L^new`` of a block is the
``L^prev`` of the next, since no training happens between them. Rounds are numbered from 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

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
from numpy.typing import ArrayLike, NDArray

from dataflex_mix._common import (
    check_count,
    check_positive,
    check_unit_interval,
    softmax,
    state_choice,
    state_int,
    state_matrix,
    state_vector,
)
from dataflex_mix.mixers import _check_state_domains, check_domains, check_feedback

__all__ = [
    "AioliMixerConfig",
    "AioliMixerState",
    "AioliMixer",
    "init_aioli",
    "update_aioli",
    "aioli_eval_due",
    "smoothed_one_hot",
    "unsmooth_and_normalize",
    "aioli_update",
    "aioli_permutation",
]

_WHAT = "mixer 'aioli'"
Phase = Literal["start", "learn", "update"]
_PHASES: tuple[str, ...] = ("start", "learn", "update")


@dataclass(frozen=True)
class AioliMixerConfig:
    """Config of the ``aioli`` mixer (spec §3.6). Defaults are the paper's.

    Attributes:
        lp_rounds: Sweeps over the K domains per LearnParams phase (>= 1).
        lp_steps: Optimizer steps per LearnParams block (>= 1).
        eta: Step size ``η`` of the update (> 0).
        one_hot_factor: ``f``, the weight of the trained domain in a LearnParams mixture, in
            ``(0, 1]`` and ``!= 1/K`` (else ``W`` is singular).
        update_steps: Optimizer steps trained on ``p`` after each LearnParams phase (>= 1).
        normalize_A: Shift and normalise ``A`` before the update.
        ema: Optional EMA factor in [0, 1) of the normalised ``A`` across rounds, as in the
            official trainer: ``Ā ← (1-ema)·A + ema·Ā`` and ``p = normalise(exp(η·Σ_j Ā[j,:]))``
            from uniform (not multiplicative). Semantics unverified against the paper, so off.
        seed: Base seed of the LearnParams permutations; null means the run seed.
    """

    lp_rounds: int = 4
    lp_steps: int = 4
    eta: float = 0.2
    one_hot_factor: float = 0.625
    update_steps: int = 250
    normalize_A: bool = True
    ema: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        check_count(self.lp_rounds, "lp_rounds", 1, "the paper uses 4.")
        check_count(self.lp_steps, "lp_steps", 1, "the paper uses 4.")
        check_positive(self.eta, "eta", "the paper uses 0.2.")
        if not (math.isfinite(self.one_hot_factor) and 0 < self.one_hot_factor <= 1):
            raise ConfigError(
                f"one_hot_factor must lie in (0, 1], got {self.one_hot_factor!r}; it is the "
                "weight of the trained domain in a LearnParams mixture (the paper uses 0.625)."
            )
        check_count(self.update_steps, "update_steps", 1, "the paper uses 250.")
        if self.ema is not None:
            check_unit_interval(
                self.ema, "ema", "use null to disable the EMA of A.", closed_right=False
            )
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0 or null (the run seed), got {self.seed!r}.")


@dataclass(frozen=True, eq=False)
class AioliMixerState:
    """State of the ``aioli`` mixer (spec §5.5).

    Attributes:
        domains: Domain names, config order.
        p: The learned mixture.
        phase: ``start`` (waiting for the first eval), ``learn`` or ``update``.
        round: Index of the current round (0-based).
        block: LearnParams block within the round, ``0 .. lp_rounds·K - 1``.
        block_step: Steps done in the current block or update phase.
        A: The LearnParams accumulator ``K x K`` (rows: eval domains, columns: trained domain);
            after LearnParams, the normalised matrix the update used. A float64 array that is
            never modified in place (updates copy it), so states stay snapshots.
        loss_prev: ``L^prev``, the eval losses at the start of the current block (None in start).
        A_ema: The EMA of the normalised ``A`` (only with ``ema``).
        updates: Number of ``p`` updates.
        decision: The mixture in force (what the last decision said to train on).
    """

    domains: tuple[str, ...]
    p: tuple[float, ...]
    phase: str
    round: int
    block: int
    block_step: int
    A: NDArray[np.float64]
    loss_prev: tuple[float, ...] | None
    A_ema: NDArray[np.float64] | None
    updates: int
    decision: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "domains": list(self.domains),
            "p": list(self.p),
            "phase": self.phase,
            "round": self.round,
            "block": self.block,
            "block_step": self.block_step,
            "A": self.A.tolist(),
            "loss_prev": None if self.loss_prev is None else list(self.loss_prev),
            "A_ema": None if self.A_ema is None else self.A_ema.tolist(),
            "updates": self.updates,
            "decision": list(self.decision),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], domains: tuple[str, ...]) -> AioliMixerState:
        """Restore from :meth:`to_dict`, checking the domain names against ``domains``."""
        _check_state_domains(state, domains, _WHAT)
        k = len(domains)
        p = state_vector(state, "p", k, _WHAT, nonnegative=True)
        decision = state_vector(state, "decision", k, _WHAT, nonnegative=True)
        loss_prev = state_vector(state, "loss_prev", k, _WHAT, optional=True)
        a = state_matrix(state, "A", k, _WHAT)
        a_ema = state_matrix(state, "A_ema", k, _WHAT, optional=True)
        assert p is not None and decision is not None and a is not None
        for key, v in (("p", p), ("decision", decision)):
            if not math.isclose(float(v.sum()), 1.0, abs_tol=1e-9):
                raise StateError(f"{_WHAT}: the saved {key!r} {v.tolist()} does not sum to 1.")
        ints = {key: state_int(state, key, _WHAT) for key in ("round", "block", "block_step")}
        updates = state_int(state, "updates", _WHAT)
        assert updates is not None
        return cls(
            domains=domains,
            p=tuple(p.tolist()),
            phase=state_choice(state, "phase", _PHASES, _WHAT),
            round=int(ints["round"] or 0),
            block=int(ints["block"] or 0),
            block_step=int(ints["block_step"] or 0),
            A=a,
            loss_prev=None if loss_prev is None else tuple(loss_prev.tolist()),
            A_ema=a_ema,
            updates=updates,
            decision=tuple(decision.tolist()),
        )


# --------------------------------------------------------------------------- pure math


def smoothed_one_hot(i: int, k: int, f: float) -> NDArray[np.float64]:
    """``w^(i) = f·e_i + ((1-f)/(K-1))·(1 - e_i)``."""
    w = np.full(k, (1.0 - f) / (k - 1))
    w[i] = f
    return w


def unsmooth_and_normalize(A: ArrayLike, f: float, normalize: bool = True) -> NDArray[np.float64]:
    """Un-smooth the LearnParams matrix and (optionally) normalise it (steps 2 and 3).

    Each row ``a`` of ``A`` becomes ``W⁻¹a``, where ``W`` has the rows ``w^(i)`` (symmetric,
    invertible when ``f != 1/K``). With ``normalize``: if ``min A < 0``, ``A ← A - min A``; then
    ``A ← A/ΣA`` (an all-zero ``A`` stays zero).

    Example (spec §3.6): ``f = 0.75``, ``A = [[0.3, 0.1], [0.1, 0.2]]`` gives
    ``[[0.4, 0], [0.05, 0.25]]``, normalised by 0.7.

    Args:
        A: The ``K x K`` LearnParams matrix (rows: eval domains, columns: trained domains).
        f: ``one_hot_factor``.
        normalize: Apply step 3.

    Returns:
        A float64 ``K x K`` matrix.
    """
    a = np.asarray(A, dtype=np.float64)
    k = a.shape[0]
    # W = (f - g)·I + g·11ᵀ with g = (1-f)/(K-1), and f + (K-1)·g = 1, so by Sherman-Morrison
    # W⁻¹a = (a - g·Σa)/(f - g): O(K²) for all rows instead of an O(K³) solve, and exact on
    # the spec's example. f - g = 0 exactly when f = 1/K (W singular).
    g = (1.0 - f) / (k - 1)
    if math.isclose(f, g, rel_tol=0.0, abs_tol=1e-12):
        raise ConfigError(
            f"one_hot_factor = {f!r} equals 1/K for K = {k}: W is singular; choose another value."
        )
    out = (a - g * a.sum(axis=1, keepdims=True)) / (f - g)
    if normalize:
        lo = float(out.min())
        if lo < 0:
            out = out - lo
        total = float(out.sum())
        if total > 0:
            out = out / total
    return out


def aioli_update(p: ArrayLike, A: ArrayLike, eta: float) -> NDArray[np.float64]:
    """``p ← normalise(p ⊙ exp(η·Σ_j A[j, :]))``, computed max-shifted in log space.

    Example (spec §3.6): uniform ``p``, column sums ``[0.642857, 0.357143]``, ``η = 1`` give
    ``[0.570947, 0.429053]``.
    """
    prev = np.asarray(p, dtype=np.float64)
    col = np.asarray(A, dtype=np.float64).sum(axis=0)
    with np.errstate(divide="ignore"):
        return softmax(np.log(prev) + eta * col)


def aioli_permutation(seed: int, round_index: int, r: int, k: int) -> NDArray[np.int64]:
    """The training-domain order of sweep ``r`` (1-based) of round ``round_index`` (0-based)."""
    rng = np.random.Generator(np.random.PCG64(derive(seed, "aioli", round_index, r)))
    return rng.permutation(k).astype(np.int64)


def _block_domain(config: AioliMixerConfig, seed: int, round_index: int, block: int, k: int) -> int:
    r = block // k + 1
    return int(aioli_permutation(seed, round_index, r, k)[block % k])


def aioli_eval_due(config: AioliMixerConfig, state: AioliMixerState) -> bool:
    """Whether the next :func:`update_aioli` call ends a phase and needs ``eval_loss``."""
    if state.phase == "start":
        return True
    limit = config.lp_steps if state.phase == "learn" else config.update_steps
    return state.block_step + 1 >= limit


def init_aioli(config: AioliMixerConfig, domains: Sequence[str]) -> AioliMixerState:
    """Uniform ``p``, phase ``start`` (the first eval starts round 0).

    Raises:
        ConfigError: if there are fewer than 2 domains or ``one_hot_factor == 1/K``.
    """
    k = len(domains)
    if k < 2:
        raise ConfigError(
            f"{_WHAT} needs at least 2 domains, got {k}; with one domain there is nothing to mix."
        )
    if math.isclose(config.one_hot_factor, 1.0 / k, rel_tol=0, abs_tol=1e-9):
        raise ConfigError(
            f"{_WHAT}: one_hot_factor = {config.one_hot_factor!r} equals 1/K for K = {k}, which "
            "makes every LearnParams mixture uniform and W singular; choose another value "
            "(the paper uses 0.625)."
        )
    p = tuple(np.full(k, 1.0 / k).tolist())
    return AioliMixerState(
        domains=tuple(domains),
        p=p,
        phase="start",
        round=0,
        block=0,
        block_step=0,
        A=np.zeros((k, k)),
        loss_prev=None,
        A_ema=None,
        updates=0,
        decision=p,
    )


def _begin_round(
    config: AioliMixerConfig, state: AioliMixerState, seed: int, round_index: int, loss: np.ndarray
) -> AioliMixerState:
    k = len(state.domains)
    i = _block_domain(config, seed, round_index, 0, k)
    return replace(
        state,
        phase="learn",
        round=round_index,
        block=0,
        block_step=0,
        A=np.zeros((k, k)),
        loss_prev=tuple(loss.tolist()),
        decision=tuple(smoothed_one_hot(i, k, config.one_hot_factor).tolist()),
    )


def _finish_learn_params(config: AioliMixerConfig, state: AioliMixerState) -> AioliMixerState:
    a = state.A / config.lp_rounds
    a = unsmooth_and_normalize(a, config.one_hot_factor, config.normalize_A)
    a_ema = state.A_ema
    if config.ema is None:
        p = aioli_update(state.p, a, config.eta)
    else:
        # Official trainer: EMA of the normalised matrix, weights from uniform each round.
        smoothed = a if a_ema is None else (1 - config.ema) * a + config.ema * a_ema
        a_ema = smoothed
        k = len(state.domains)
        p = aioli_update(np.full(k, 1.0 / k), smoothed, config.eta)
    p_t = tuple(p.tolist())
    return replace(
        state,
        phase="update",
        block_step=0,
        A=a,
        A_ema=a_ema,
        p=p_t,
        updates=state.updates + 1,
        decision=p_t,
    )


def update_aioli(
    config: AioliMixerConfig, state: AioliMixerState, feedback: MixFeedback | None, seed: int
) -> tuple[MixDecision, AioliMixerState]:
    """Advance the state machine by one optimizer step.

    Args:
        config: The mixer config.
        state: The current state.
        feedback: The step's feedback; ``eval_loss`` is required when
            :func:`aioli_eval_due` is True. None leaves the state unchanged.
        seed: Base seed of the LearnParams permutations.

    Returns:
        The decision (the mixture to train on next) and the new state.

    Raises:
        DataError: if an eval loss is due and ``feedback.eval_loss`` is missing or malformed.
    """
    if feedback is None:
        return MixDecision(proportions=state.decision), state
    k = len(state.domains)
    loss: np.ndarray | None = None
    if aioli_eval_due(config, state):
        if feedback.eval_loss is None:
            raise DataError(
                f"{_WHAT}: step {feedback.step} ends a {state.phase!r} phase and needs the "
                "per-domain eval losses, but feedback.eval_loss is missing. Aioli measures them "
                "on `mixer_eval_dataset` (one `<domain>_eval` set per domain); configure it and "
                "pass the token-mean eval loss of each domain whenever mixer.eval_due is True."
            )
        loss = np.asarray(feedback.eval_loss, dtype=np.float64)
        if loss.shape != (k,):
            raise DataError(
                f"{_WHAT}: feedback.eval_loss has shape {loss.shape}, expected ({k},): one "
                "token-mean eval loss per domain, in config order."
            )
    if state.phase == "start":
        assert loss is not None
        state = _begin_round(config, state, seed, state.round, loss)
    elif state.phase == "learn":
        state = replace(state, block_step=state.block_step + 1)
        if loss is not None:
            assert state.loss_prev is not None
            i = _block_domain(config, seed, state.round, state.block, k)
            a = state.A.copy()  # states are snapshots: never modify one in place
            a[:, i] += np.asarray(state.loss_prev) - loss
            block = state.block + 1
            state = replace(state, A=a, loss_prev=tuple(loss.tolist()), block=block)
            if block == config.lp_rounds * k:
                state = _finish_learn_params(config, state)
            else:
                nxt = _block_domain(config, seed, state.round, block, k)
                state = replace(
                    state,
                    block_step=0,
                    decision=tuple(smoothed_one_hot(nxt, k, config.one_hot_factor).tolist()),
                )
    else:  # update phase
        state = replace(state, block_step=state.block_step + 1)
        if loss is not None:
            state = _begin_round(config, state, seed, state.round + 1, loss)
    return MixDecision(proportions=state.decision), state


# --------------------------------------------------------------------------- shell


class AioliMixer:
    """Aioli (spec §3.6): learns the mixing law online from short one-hot-ish training blocks.

    Call :meth:`step` after **every** optimizer step (``cadence = "every_step"``) and train the
    next step on the returned proportions. Before each call check :attr:`eval_due`; when it is
    True, measure the token-mean eval loss of every domain on ``mixer_eval_dataset`` *after* the
    step and pass it as ``feedback.eval_loss``.

    Args:
        config: An :class:`AioliMixerConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts: ``domains`` (at least 2) and ``seed`` (unless ``config.seed``).
    """

    config_class = AioliMixerConfig
    #: The integration must call :meth:`step` after every optimizer step.
    cadence: ClassVar[str] = "every_step"

    def __init__(
        self,
        config: AioliMixerConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: AioliMixerConfig = parse_config(AioliMixerConfig, config, where=_WHAT)
        self.context = context if context is not None else ComponentContext()
        self.domains = check_domains(self.context, _WHAT)
        self.seed = self.config.seed if self.config.seed is not None else int(self.context.seed)
        self._state = init_aioli(self.config, self.domains)

    @property
    def proportions(self) -> tuple[float, ...]:
        """The mixture to train on now (smoothed one-hot in LearnParams, else ``p``)."""
        return self._state.decision

    @property
    def learned_proportions(self) -> tuple[float, ...]:
        """``p``, the mixture learned so far."""
        return self._state.p

    @property
    def phase(self) -> str:
        """``start``, ``learn`` or ``update``."""
        return self._state.phase

    @property
    def eval_due(self) -> bool:
        """True when the next :meth:`step` needs ``feedback.eval_loss``."""
        return aioli_eval_due(self.config, self._state)

    @property
    def round_length(self) -> int:
        """Optimizer steps per round: ``lp_rounds·K·lp_steps + update_steps``."""
        c = self.config
        return c.lp_rounds * len(self.domains) * c.lp_steps + c.update_steps

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        """Advance by one optimizer step and return the mixture for the next one.

        Non-finite feedback (losses, or a due eval loss) is skipped with a warning: the state
        does not advance, so the current block lasts one step longer.

        Raises:
            DataError: if an eval loss is due and missing (configure ``mixer_eval_dataset``).
        """
        if feedback is not None:
            if not check_feedback(feedback, len(self.domains), _WHAT):
                return MixDecision(proportions=self._state.decision)
            if self.eval_due and feedback.eval_loss is not None:
                ev = np.asarray(feedback.eval_loss, dtype=np.float64)
                if not np.all(np.isfinite(ev)):
                    warnings.warn(
                        f"{_WHAT}: eval losses of step {feedback.step} are not finite "
                        f"{ev.tolist()!r:.120}; the step is skipped and the mixture is kept.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return MixDecision(proportions=self._state.decision)
        decision, self._state = update_aioli(self.config, self._state, feedback, self.seed)
        return decision

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: p, phase, round, block, position, A, L^prev, EMA, decision."""
        return self._state.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the domain names must match this run's."""
        self._state = AioliMixerState.from_dict(state, self.domains)
