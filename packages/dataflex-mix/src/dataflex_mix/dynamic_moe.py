"""The ``dynamic_moe`` mixer: gate-load redundancy mixing for MoE instruction tuning (spec §3.5).

Reference: Zhu, Dong, Qu, Ruan, Chen, Cheng, "Dynamic Data Mixing Maximizes Instruction Tuning
for Mixture-of-Experts", NAACL 2025, arXiv 2406.11256.

A domain whose tokens are routed to the experts differently from the other domains carries less
redundant information, so it is sampled more. From per-domain expert gate loads
``c[i, l, e]`` (tokens of domain ``i`` routed to expert ``e`` in MoE layer ``l``, summed over a
fixed eval set):

* ``O_i^l = c_i^l / ‖c_i^l‖₁``;
* ``Δ_i = (1/K) Σ_j (1/L) Σ_l ‖O_i^l - O_j^l‖₂`` (the self term, 0, is included);
* ``w ← softmax(log w + ηΔ)``, then ``w ← (1-c)·w + c/K``.

The gate loads come from a model adapter in the integration (``feedback.extras["gate_loads"]``);
a missing adapter is an error, never a silent uniform fallback (the predecessor's behaviour).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from dataflex_core import ComponentContext, DataError, MixDecision, MixFeedback, parse_config
from numpy.typing import ArrayLike, NDArray

from dataflex_mix._common import (
    check_count,
    check_positive,
    check_unit_interval,
    softmax,
    state_int,
    state_vector,
)
from dataflex_mix.mixers import _check_state_domains, check_domains, check_feedback

__all__ = [
    "DynamicMoeMixerConfig",
    "DynamicMoeMixerState",
    "DynamicMoeMixer",
    "init_dynamic_moe",
    "update_dynamic_moe",
    "gate_load_distances",
    "dynamic_moe_weights_update",
    "GATE_LOADS_KEY",
]

_WHAT = "mixer 'dynamic_moe'"

#: The ``MixFeedback.extras`` key holding the gate loads, array-like ``[K, L, E]``.
GATE_LOADS_KEY = "gate_loads"

# Rows of the pairwise-distance computation per chunk: bounds memory at K=1024 domains
# (chunk x K x E floats) while keeping exact differences (no ‖a‖²+‖b‖²-2ab cancellation).
_CHUNK = 128


@dataclass(frozen=True)
class DynamicMoeMixerConfig:
    """Config of the ``dynamic_moe`` mixer (spec §3.5).

    Attributes:
        eta: Step size ``η`` of the multiplicative update (> 0).
        c: Uniform smoothing in ``w ← (1-c)·w + c/K``, in [0, 1].
        collect_steps: Eval batches per domain the integration runs to collect gate loads
            (paper 5; the code used 10).
        eval_samples: Rows per domain split off for the eval set when there is no
            ``mixer_eval_dataset`` (integration).
        eval_batch_size: Batch size of the gate-load collection (integration).
        gate_layers: ``all`` averages the distance over every MoE layer; ``last`` uses the last
            layer only (the predecessor).
    """

    eta: float = 10.0
    c: float = 0.05
    collect_steps: int = 5
    eval_samples: int = 1000
    eval_batch_size: int = 32
    gate_layers: Literal["all", "last"] = "all"

    def __post_init__(self) -> None:
        check_positive(self.eta, "eta", "it is the step size of the update; the paper uses 10.")
        check_unit_interval(self.c, "c", "it is the uniform smoothing; the paper uses 0.05.")
        check_count(self.collect_steps, "collect_steps", 1, "the paper uses 5.")
        check_count(self.eval_samples, "eval_samples", 1, "the default is 1000.")
        check_count(self.eval_batch_size, "eval_batch_size", 1, "the default is 32.")


@dataclass(frozen=True)
class DynamicMoeMixerState:
    """State of the ``dynamic_moe`` mixer: domains, ``w``, last ``Δ``, update count."""

    domains: tuple[str, ...]
    weights: tuple[float, ...]
    delta: tuple[float, ...] | None = None
    updates: int = 0
    last_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "domains": list(self.domains),
            "weights": list(self.weights),
            "delta": None if self.delta is None else list(self.delta),
            "updates": self.updates,
            "last_step": self.last_step,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], domains: tuple[str, ...]) -> DynamicMoeMixerState:
        """Restore from :meth:`to_dict`, checking the domain names against ``domains``."""
        _check_state_domains(state, domains, _WHAT)
        k = len(domains)
        w = state_vector(state, "weights", k, _WHAT, nonnegative=True)
        delta = state_vector(state, "delta", k, _WHAT, optional=True)
        assert w is not None
        updates = state_int(state, "updates", _WHAT)
        assert updates is not None
        return cls(
            domains=domains,
            weights=tuple(w.tolist()),
            delta=None if delta is None else tuple(delta.tolist()),
            updates=updates,
            last_step=state_int(state, "last_step", _WHAT, optional=True),
        )


# --------------------------------------------------------------------------- pure math


def _as_gate_loads(gate_loads: Any, k: int) -> NDArray[np.float64]:
    if hasattr(gate_loads, "detach"):  # a torch tensor, without importing torch
        gate_loads = gate_loads.detach().cpu().numpy()
    try:
        arr = np.asarray(gate_loads, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"{_WHAT}: feedback.extras['gate_loads'] is not numeric: {gate_loads!r:.120}."
        ) from None
    if arr.ndim == 2:  # one MoE layer given as [K, E]
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[0] != k or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise DataError(
            f"{_WHAT}: gate_loads must have shape [K={k} domains, L layers, E experts], got "
            f"{arr.shape}; pass token counts per domain, MoE layer and expert."
        )
    return arr


def gate_load_distances(
    gate_loads: ArrayLike, gate_layers: Literal["all", "last"] = "all"
) -> NDArray[np.float64]:
    """``Δ_i = (1/K) Σ_j (1/L) Σ_l ‖O_i^l - O_j^l‖₂`` with ``O_i^l = c_i^l/‖c_i^l‖₁``.

    Args:
        gate_loads: Token counts ``[K, L, E]`` (or ``[K, E]`` for one layer), non-negative.
        gate_layers: ``all`` (average over layers) or ``last``.

    Returns:
        ``Δ``, a float64 vector of length ``K``.

    Raises:
        DataError: on a negative count or a (domain, layer) with no routed token.
    """
    arr = np.asarray(gate_loads, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if np.any(arr < 0):
        raise DataError(f"{_WHAT}: gate_loads has negative token counts.")
    if gate_layers == "last":
        arr = arr[:, -1:, :]
    totals = arr.sum(axis=2)  # [K, L]
    if np.any(totals <= 0):
        i, layer = (int(x) for x in np.argwhere(totals <= 0)[0])
        raise DataError(
            f"{_WHAT}: domain {i} routed no token to any expert in MoE layer {layer}; its eval set "
            "is empty or the gate_load adapter returned zeros. Give every domain eval rows."
        )
    o = arr / totals[:, :, None]
    k, n_layers, _ = o.shape
    delta = np.zeros(k)
    for start in range(0, k, _CHUNK):
        block = o[start : start + _CHUNK]  # [b, L, E]
        diff = block[:, None, :, :] - o[None, :, :, :]  # [b, K, L, E]
        dist = np.sqrt(np.sum(diff * diff, axis=3))  # [b, K, L]
        delta[start : start + _CHUNK] = dist.mean(axis=2).mean(axis=1)
    return delta


def dynamic_moe_weights_update(
    weights: ArrayLike, delta: ArrayLike, eta: float, c: float
) -> NDArray[np.float64]:
    """``w ← softmax(log w + ηΔ)``, then ``w ← (1-c)·w + c/K``."""
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logits = np.log(w) + eta * np.asarray(delta, dtype=np.float64)
    new = (1.0 - c) * softmax(logits) + c / w.size
    return new / new.sum()


def init_dynamic_moe(config: DynamicMoeMixerConfig, domains: Sequence[str]) -> DynamicMoeMixerState:
    """Uniform ``w`` (Algorithm 1 of the paper)."""
    k = len(domains)
    return DynamicMoeMixerState(domains=tuple(domains), weights=tuple(np.full(k, 1.0 / k).tolist()))


def update_dynamic_moe(
    config: DynamicMoeMixerConfig, state: DynamicMoeMixerState, feedback: MixFeedback | None
) -> tuple[MixDecision, DynamicMoeMixerState]:
    """One update from ``feedback.extras["gate_loads"]``; None feedback keeps ``w``.

    Raises:
        DataError: when the gate loads are missing or malformed.
    """
    if feedback is None:
        return MixDecision(proportions=state.weights), state
    if GATE_LOADS_KEY not in feedback.extras or feedback.extras[GATE_LOADS_KEY] is None:
        raise DataError(
            f"{_WHAT}: feedback of step {feedback.step} has no extras['gate_loads']. dynamic_moe "
            "needs per-domain expert gate loads [K, L, E] from a gate_load adapter for this MoE "
            "architecture (there is no uniform fallback); register one, or pass the counts "
            "in MixFeedback.extras['gate_loads']."
        )
    loads = _as_gate_loads(feedback.extras[GATE_LOADS_KEY], len(state.domains))
    delta = gate_load_distances(loads, config.gate_layers)
    w = dynamic_moe_weights_update(state.weights, delta, config.eta, config.c)
    new = replace(
        state,
        weights=tuple(w.tolist()),
        delta=tuple(delta.tolist()),
        updates=state.updates + 1,
        last_step=int(feedback.step),
    )
    return MixDecision(proportions=new.weights), new


# --------------------------------------------------------------------------- shell


class DynamicMoeMixer:
    """Gate-load redundancy mixing for MoE models (spec §3.5).

    At each update the integration runs the current MoE model over each domain's fixed eval set
    (``collect_steps`` batches of ``eval_batch_size``), counts the tokens routed to each expert
    of each MoE layer, all-reduces the counts, and calls :meth:`step` with
    ``MixFeedback(..., extras={"gate_loads": counts})``, counts of shape ``[K, L, E]``.

    Args:
        config: A :class:`DynamicMoeMixerConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts; ``context.domains`` names the domains in config order.
    """

    config_class = DynamicMoeMixerConfig

    def __init__(
        self,
        config: DynamicMoeMixerConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: DynamicMoeMixerConfig = parse_config(
            DynamicMoeMixerConfig, config, where=_WHAT
        )
        self.context = context if context is not None else ComponentContext()
        self.domains = check_domains(self.context, _WHAT)
        self._state = init_dynamic_moe(self.config, self.domains)

    @property
    def proportions(self) -> tuple[float, ...]:
        """``w``, the current sampling proportions."""
        return self._state.weights

    @property
    def delta(self) -> tuple[float, ...] | None:
        """``Δ`` of the last update (None before the first)."""
        return self._state.delta

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        """Update ``w`` from the gate loads in ``feedback.extras`` and return it.

        Non-finite feedback (losses or gate loads) is skipped with a warning.

        Raises:
            DataError: if ``feedback.extras["gate_loads"]`` is missing or malformed.
        """
        if feedback is not None:
            if not check_feedback(feedback, len(self.domains), _WHAT):
                return MixDecision(proportions=self._state.weights)
            loads = feedback.extras.get(GATE_LOADS_KEY)
            if loads is not None:
                arr = _as_gate_loads(loads, len(self.domains))
                if not np.all(np.isfinite(arr)):
                    warnings.warn(
                        f"{_WHAT}: gate loads of step {feedback.step} are not finite; the "
                        "update is skipped and the proportions are kept.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return MixDecision(proportions=self._state.weights)
        decision, self._state = update_dynamic_moe(self.config, self._state, feedback)
        return decision

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: domains, w, last Δ, updates, last step."""
        return self._state.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the domain names must match this run's."""
        self._state = DynamicMoeMixerState.from_dict(state, self.domains)
