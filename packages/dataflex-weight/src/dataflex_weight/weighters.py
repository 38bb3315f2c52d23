"""The ``uniform`` weighter: every valid sample counts once (spec §4.0).

A baseline that goes through the weighting path: it returns ones, except 0 for invalid
samples (no supervised token) and for non-finite losses. Weights keep the type and device of
the losses: numpy in, numpy out; a torch tensor in, a detached tensor out. torch is imported
only when a tensor arrives, so the package works without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from dataflex_core import ComponentContext, DataError, EmptyConfig, WeightFeedback, parse_config

__all__ = ["UniformWeighter", "uniform_weights", "is_torch_tensor"]


def is_torch_tensor(x: Any) -> bool:
    """True when ``x`` is a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch")


def _warn_nonfinite(count: int, step: int) -> None:
    warnings.warn(
        f"weighter 'uniform': {count} valid sample(s) of step {step} have a non-finite loss; "
        "they get weight 0.",
        RuntimeWarning,
        stacklevel=4,
    )


def _check_length(n_valid: int, n: int) -> None:
    if n_valid != n:
        raise DataError(
            f"weighter: feedback.valid has {n_valid} entries but there are {n} losses; give one "
            "validity flag per sample."
        )


def mean_objective(feedback: WeightFeedback, weights: Any) -> Any:
    """``sum_{i local} w_i l_i / |B_mu|``: this rank's share of the global sample mean.

    ``|B_mu|`` counts the valid samples of the global micro-batch (all ranks); invalid samples
    and zero weights contribute nothing (their NaN losses are masked, not multiplied).
    """
    losses = feedback.losses
    gvalid = feedback.global_valid if feedback.global_valid is not None else feedback.valid
    if is_torch_tensor(losses):
        import torch

        w = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device).detach()
        if gvalid is None:
            n = int(torch.isfinite(losses.detach()).sum().item())
        else:
            n = int(torch.as_tensor(gvalid, dtype=torch.bool).sum().item())
        safe = torch.where(w > 0, losses, torch.zeros_like(losses))
        return (w * safe).sum() / max(n, 1)
    arr = np.asarray(losses, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    n = int(np.isfinite(arr).sum()) if gvalid is None else int(np.asarray(gvalid, dtype=bool).sum())
    return float(np.sum(np.where(w > 0, w * np.where(np.isfinite(arr), arr, 0.0), 0.0)) / max(n, 1))


def uniform_weights(feedback: WeightFeedback) -> Any:
    """Ones shaped like ``feedback.losses``; 0 where invalid or where the loss is not finite.

    Invalid samples carry NaN losses by design (spec §1.1) and get 0 silently; a NaN or
    infinite loss of a sample marked valid also gets 0, with a warning.

    Args:
        feedback: The micro-batch's per-sample signals.

    Returns:
        A numpy float64 array, or for a tensor input a detached tensor of the losses' dtype and
        device.
    """
    losses = feedback.losses
    if is_torch_tensor(losses):
        import torch  # only when a tensor arrived: the package does not depend on torch

        weights = torch.ones_like(losses).detach()
        if feedback.valid is not None:
            valid = torch.as_tensor(feedback.valid, dtype=torch.bool, device=losses.device)
            _check_length(valid.numel(), losses.numel())
            valid = valid.reshape(losses.shape)
        else:
            valid = torch.ones_like(losses, dtype=torch.bool)
        bad = valid & ~torch.isfinite(losses.detach())
        n_bad = int(bad.sum().item())
        if n_bad:
            _warn_nonfinite(n_bad, feedback.step)
        return weights.masked_fill(~valid | bad, 0.0)

    arr = np.asarray(losses, dtype=np.float64)
    weights = np.ones_like(arr)
    if feedback.valid is not None:
        valid = np.asarray(feedback.valid, dtype=bool)
        _check_length(valid.size, arr.size)
        valid = valid.reshape(arr.shape)
    else:
        valid = np.ones(arr.shape, dtype=bool)
    bad = valid & ~np.isfinite(arr)
    if bad.any():
        _warn_nonfinite(int(bad.sum()), feedback.step)
    weights[~valid | bad] = 0.0
    return weights


class UniformWeighter:
    """Weight 1 for every valid sample (spec §4.0): the unweighted baseline.

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
        self.config: EmptyConfig = parse_config(EmptyConfig, config, where="weighter 'uniform'")
        self.context = context if context is not None else ComponentContext()

    def weigh(self, feedback: WeightFeedback) -> Any:
        """Return detached weights of the same type, device and length as ``feedback.losses``."""
        return uniform_weights(feedback)

    def objective(self, feedback: WeightFeedback, weights: Any) -> Any:
        """This rank's share of the sample-mean objective ``(1/|B_mu|) sum_i w_i l_i``."""
        return mean_objective(feedback, weights)

    def state_dict(self) -> dict[str, Any]:
        """The uniform weighter has no state (spec §5.5): an empty dict."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore; any mapping is accepted."""
