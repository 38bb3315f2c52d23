"""The ``uniform`` weighter: every valid sample counts once (spec §4.0).

A baseline that goes through the weighting path: it returns ones, except 0 for invalid
samples (no supervised token) and for non-finite losses, and its objective is the sample mean
over the global micro-batch ``B_mu``. Weights keep the kind and device of the losses: numpy in,
numpy float64 out; a torch tensor in, a detached tensor in the weight dtype
(:func:`~dataflex_weight.common.weight_dtype`) on the same device out. torch is imported only
when a tensor arrives, so the package works without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataflex_core import ComponentContext, EmptyConfig, WeightFeedback, parse_config

from dataflex_weight.common import batch_view, is_torch_tensor, normalized_objective

__all__ = ["UniformWeighter", "uniform_weights", "mean_objective", "is_torch_tensor"]

_WHAT = "weighter 'uniform'"


def uniform_weights(feedback: WeightFeedback, *, what: str = _WHAT) -> Any:
    """Ones shaped like ``feedback.losses``; 0 where invalid or where the loss is not finite.

    Invalid samples carry NaN losses by design (spec §1.1) and get 0 silently; a NaN or
    infinite loss of a sample marked valid also gets 0, with a warning.

    Args:
        feedback: The micro-batch's per-sample signals (global fields are not needed).
        what: The weighter, for messages.

    Returns:
        A numpy float64 array, or for a tensor input a detached tensor on the losses' device.
    """
    view = batch_view(feedback, what, require_global=False)
    if view.is_torch:
        return view.valid.to(view.losses.dtype)
    return view.valid.astype("float64")


def mean_objective(feedback: WeightFeedback, weights: Any, *, what: str = _WHAT) -> Any:
    """``sum_{i local} w_i l_i / |B_mu|``: this rank's share of the global sample mean.

    ``|B_mu|`` counts the valid samples of the global micro-batch (all ranks, from
    ``feedback.global_valid``/``global_losses``); invalid samples contribute nothing (their NaN
    losses are masked, not multiplied). Summed over ranks this is ``(1/|B_mu|) sum w_i l_i``.
    """
    return normalized_objective(feedback, weights, "mean", what)


class UniformWeighter:
    """Weight 1 for every valid sample (spec §4.0): the unweighted baseline.

    ``objective`` is the sample mean ``(1/|B_mu|) sum_i l_i`` over the global micro-batch, the
    same form as the ``loss`` weighter's ``sample_mean`` base with its ``uniform`` strategy.

    Args:
        config: ``EmptyConfig`` (this weighter takes no keys), an empty mapping, or None.
        context: Runtime facts (unused).
    """

    config_class = EmptyConfig

    def __init__(
        self,
        config: EmptyConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: EmptyConfig = parse_config(EmptyConfig, config, where=_WHAT)
        self.context = context if context is not None else ComponentContext()

    def weigh(self, feedback: WeightFeedback) -> Any:
        """Return detached weights of the same kind, device and length as ``feedback.losses``."""
        return uniform_weights(feedback)

    def objective(self, feedback: WeightFeedback, weights: Any) -> Any:
        """This rank's share of the sample-mean objective ``(1/|B_mu|) sum_i w_i l_i``."""
        return mean_objective(feedback, weights)

    def state_dict(self) -> dict[str, Any]:
        """The uniform weighter has no state (spec §5.5): an empty dict."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore; any mapping is accepted."""
