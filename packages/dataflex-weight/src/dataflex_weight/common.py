"""Shared machinery of the weighters: the batch view, objective normalisation, weight checks.

Every weighter works on numpy arrays **and** on torch tensors. The numpy path computes in
float64 and returns numpy arrays and Python floats. The torch path stays on the losses' own
device and returns tensors; torch is imported only when a tensor arrives, so this module (and
the whole package) imports without torch.

Weights of the torch path have the *weight dtype* of the losses (:func:`weight_dtype`): float64
for float64 losses, float32 otherwise (bf16/fp16 losses would round a softmax to 2-3 digits).
Multiplying low-precision losses by them promotes the objective to float32, which backpropagates
into the losses' own dtype.

Host synchronisation in the torch path (a ``.item()``, ``bool(t)`` or a device-to-host copy
waits for the device): :func:`warn_nonfinite` does **one** ``bool(bad.any())`` per ``weigh``
call, to decide whether to warn about non-finite inputs of valid samples (the warning is part of
the contract: a silent NaN would stop weighting that sample unnoticed). Masks and counts given as
Python lists or numpy arrays are copied to the device (host to device); pass them as tensors on
the losses' device to avoid the copy. Nothing else in the per-step path leaves the device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from dataflex_core import DataError, WeightFeedback

__all__ = [
    "LossNormalization",
    "LOSS_NORMALIZATIONS",
    "BatchView",
    "batch_view",
    "is_torch_tensor",
    "weight_dtype",
    "as_weights",
    "normalized_objective",
    "valid_count",
    "warn_nonfinite",
    "weighted_sum",
]

#: How an objective divides ``sum_i w_i l_i`` (spec §4.2, §4.3).
LossNormalization = Literal["mean", "weight_sum", "sum"]
LOSS_NORMALIZATIONS: tuple[str, ...] = ("mean", "weight_sum", "sum")


def is_torch_tensor(x: Any) -> bool:
    """True when ``x`` is a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def weight_dtype(losses: Any) -> Any:
    """The dtype weights are computed and returned in, for tensor ``losses``.

    float64 losses give float64 weights; every other dtype (float32, bf16, fp16) gives float32.
    """
    import torch

    return torch.float64 if losses.dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class BatchView:
    """One micro-batch seen by a weighter: local and global losses and validity, detached.

    Attributes:
        is_torch: True when the losses are a torch tensor (all arrays below are then tensors on
            the losses' device, in :func:`weight_dtype`); False for numpy float64 arrays.
        losses: This rank's losses ``l_i``, detached (NaN where invalid).
        valid: This rank's *effective* validity: ``feedback.valid`` and a finite loss.
        global_losses: The losses of ``B_mu`` (all ranks), detached; None when the caller gave
            only ``global_valid``.
        global_valid: Effective validity over ``B_mu``: ``global_valid`` (all True when absent)
            and a finite global loss; this rank's slice is overwritten with :attr:`valid`.
        offset: Where this rank's samples start in the global arrays.
        n: Number of local samples.
        world_size: Number of ranks (from the feedback).
        nonfinite: Local samples flagged valid whose loss is not finite (they are not in
            :attr:`valid`; :func:`warn_nonfinite` reports them).
    """

    is_torch: bool
    losses: Any
    valid: Any
    global_losses: Any
    global_valid: Any
    offset: int
    n: int
    world_size: int
    nonfinite: Any

    @property
    def global_size(self) -> int:
        """``|B_mu|`` including invalid (padding) samples."""
        return int(self.global_valid.shape[0])

    def local_slice(self, x: Any) -> Any:
        """This rank's part ``x[offset : offset + n]`` of a global array."""
        return x[self.offset : self.offset + self.n]


def warn_nonfinite(
    view: BatchView, what: str, step: int, extra: Any = None, extra_name: str = ""
) -> None:
    """Warn (``RuntimeWarning``) about valid local samples that get weight 0 for bad inputs.

    ``view.nonfinite`` (non-finite losses) and, when given, ``extra`` (a local mask of other bad
    inputs, named ``extra_name``, e.g. non-finite embeddings) are checked with **one** host
    sync in the torch path; the counts are read only when there is something to report.
    """
    bad = view.nonfinite if extra is None else view.nonfinite | extra
    if not bool(bad.any()):  # the one host sync of a torch step (see the module doc)
        return
    parts = []
    n_loss = int(view.nonfinite.sum())
    if n_loss:
        parts.append(f"{n_loss} valid sample(s) of step {step} have a non-finite loss")
    if extra is not None:
        n_extra = int(extra.sum())
        if n_extra:
            parts.append(f"{n_extra} valid sample(s) of step {step} have a non-finite {extra_name}")
    warnings.warn(
        f"{what}: {'; '.join(parts)}; they get weight 0. A NaN or infinite per-sample value "
        "usually means a diverged model or a broken label mask.",
        RuntimeWarning,
        stacklevel=3,
    )


def _length_error(what: str, field: str, got: int, want: int, hint: str) -> DataError:
    unit = "validity flag" if "valid" in field else "entry"
    return DataError(
        f"{what}: feedback.{field} has {got} entries but {hint} {want}; give one {unit} per sample."
    )


def _np_1d(x: Any, what: str, field: str, dtype: Any) -> np.ndarray:
    if is_torch_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1:
        raise DataError(
            f"{what}: feedback.{field} must be one-dimensional (one entry per sample), got "
            f"shape {arr.shape}."
        )
    return arr


def _torch_1d(x: Any, like: Any, dtype: Any, what: str, field: str) -> Any:
    import torch

    if is_torch_tensor(x):
        t = x.detach().to(device=like.device, dtype=dtype)
    else:  # a host copy: pass device tensors to avoid it
        t = torch.as_tensor(np.asarray(x), dtype=dtype, device=like.device)
    if t.dim() != 1:
        raise DataError(
            f"{what}: feedback.{field} must be one-dimensional (one entry per sample), got "
            f"shape {tuple(t.shape)}."
        )
    return t


def batch_view(
    feedback: WeightFeedback,
    what: str,
    *,
    warn: bool = True,
    require_global: bool = True,
) -> BatchView:
    """Check ``feedback`` and return its :class:`BatchView`.

    Args:
        feedback: The micro-batch's per-sample signals (spec §4.0).
        what: The weighter, for messages (``"weighter 'loss'"``).
        warn: Warn (``RuntimeWarning``) when valid local samples have a non-finite loss
            (:func:`warn_nonfinite`). Costs one host synchronisation in the torch path; the
            objectives pass False, and a weighter with more inputs to check passes False and
            calls :func:`warn_nonfinite` once with all of them.
        require_global: Raise when ``world_size > 1`` and neither ``global_losses`` nor
            ``global_valid`` is given (every normalisation over ``B_mu`` needs them).

    Raises:
        DataError: on a length or shape mismatch, a local slice outside the global arrays, or
            missing global fields with ``world_size > 1``.
    """
    losses = feedback.losses
    torch_path = is_torch_tensor(losses)
    if torch_path:
        import torch

        dtype = weight_dtype(losses)
        local = losses.detach().to(dtype)
        if local.dim() != 1:
            raise DataError(
                f"{what}: feedback.losses must be one-dimensional (one loss per sample), got "
                f"shape {tuple(local.shape)}."
            )
        n = int(local.shape[0])
        if feedback.valid is None:
            flags = torch.ones(n, dtype=torch.bool, device=local.device)
        else:
            flags = _torch_1d(feedback.valid, local, torch.bool, what, "valid")
            if flags.shape[0] != n:
                raise _length_error(what, "valid", flags.shape[0], n, "there are")
        finite = torch.isfinite(local)
        bad = flags & ~finite
        valid = flags & finite
    else:
        local = _np_1d(losses, what, "losses", np.float64)
        n = local.shape[0]
        if feedback.valid is None:
            flags = np.ones(n, dtype=bool)
        else:
            flags = _np_1d(feedback.valid, what, "valid", bool)
            if flags.shape[0] != n:
                raise _length_error(what, "valid", flags.shape[0], n, "there are")
        finite = np.isfinite(local)
        bad = flags & ~finite
        valid = flags & finite

    world_size = int(feedback.world_size)
    if world_size < 1:
        raise DataError(f"{what}: feedback.world_size must be >= 1, got {world_size}.")
    offset = int(feedback.local_offset)
    has_global = feedback.global_losses is not None or feedback.global_valid is not None
    if not has_global:
        if world_size > 1 and require_global:
            raise DataError(
                f"{what}: feedback.world_size is {world_size} but feedback.global_losses and "
                "feedback.global_valid are None; the weights are normalised over the global "
                "micro-batch B_mu, so all-gather the losses and validity flags of every rank "
                "(padded, with a mask) and pass them with local_offset."
            )
        if offset != 0:
            raise DataError(
                f"{what}: feedback.local_offset is {offset} but no global fields are given; "
                "local_offset indexes into global_losses/global_valid."
            )
        view = BatchView(torch_path, local, valid, local, valid, 0, n, world_size, bad)
        if warn:
            warn_nonfinite(view, what, feedback.step)
        return view

    g_losses = None
    if torch_path:
        import torch

        if feedback.global_losses is not None:
            g_losses = _torch_1d(feedback.global_losses, local, local.dtype, what, "global_losses")
        size = (
            int(g_losses.shape[0])
            if g_losses is not None
            else int(np.shape(feedback.global_valid)[0])
        )
        if feedback.global_valid is None:
            g_valid = torch.ones(size, dtype=torch.bool, device=local.device)
        else:
            g_valid = _torch_1d(feedback.global_valid, local, torch.bool, what, "global_valid")
    else:
        if feedback.global_losses is not None:
            g_losses = _np_1d(feedback.global_losses, what, "global_losses", np.float64)
        size = int(g_losses.shape[0]) if g_losses is not None else len(feedback.global_valid)
        if feedback.global_valid is None:
            g_valid = np.ones(size, dtype=bool)
        else:
            g_valid = _np_1d(feedback.global_valid, what, "global_valid", bool)
    if g_valid.shape[0] != size:
        raise _length_error(what, "global_valid", g_valid.shape[0], size, "global_losses has")
    if offset < 0 or offset + n > size:
        raise DataError(
            f"{what}: this rank's {n} samples at local_offset {offset} do not fit in the "
            f"{size} global samples; local_offset + len(losses) must be <= len(global_losses)."
        )
    if g_losses is not None:
        g_valid = g_valid & (torch.isfinite(g_losses) if torch_path else np.isfinite(g_losses))
    # This rank knows its own samples best (a global_valid without global_losses cannot see a
    # local NaN): its slice of the global validity is its own effective validity.
    g_valid = g_valid.clone() if torch_path else g_valid.copy()
    g_valid[offset : offset + n] = valid
    view = BatchView(torch_path, local, valid, g_losses, g_valid, offset, n, world_size, bad)
    if warn:
        warn_nonfinite(view, what, feedback.step)
    return view


def valid_count(view: BatchView) -> Any:
    """``|B_mu|``: valid samples of the global micro-batch (a 0-d tensor or a float), >= 1."""
    if view.is_torch:
        return view.global_valid.sum().clamp_min(1).to(view.losses.dtype)
    return float(max(int(view.global_valid.sum()), 1))


def as_weights(weights: Any, view: BatchView, what: str) -> Any:
    """``weights`` in the view's backend (detached; device and weight dtype for tensors).

    Raises:
        DataError: when there is not one weight per local sample.
    """
    if view.is_torch:
        w = _torch_1d(weights, view.losses, view.losses.dtype, what, "weights")
    else:
        w = _np_1d(weights, what, "weights", np.float64)
    if w.shape[0] != view.n:
        raise DataError(
            f"{what}: got {w.shape[0]} weights for {view.n} local losses; pass the weights "
            "that weigh() returned for this feedback."
        )
    return w


def normalized_objective(
    feedback: WeightFeedback,
    weights: Any,
    mode: str,
    what: str,
    *,
    global_weight_sum: Any = None,
    eps: float = 1e-8,
) -> Any:
    """This rank's share ``J_r`` of ``J_mu`` under a ``loss_normalization`` (spec §4.2, §4.3).

    With ``S = sum_{i local} w_i l_i`` over this rank's valid samples (invalid and non-finite
    losses are masked out, never multiplied, so their NaN cannot reach the gradient):

    * ``mean``: ``J_r = S / |B_mu|`` with ``|B_mu|`` the valid samples of all ranks;
    * ``weight_sum``: ``J_r = S / max(sum_{j in B_mu} w_j, eps)``. The global weight sum is
      ``global_weight_sum`` (all-reduce the local sums of the weights); when it is None the
      local sum is used, which is only right with one process, so ``world_size > 1`` raises;
    * ``sum``: ``J_r = S`` (the predecessor's form; its scale grows with the batch size).

    Summing ``J_r`` over ranks gives ``J_mu`` in each case, because every denominator is the
    same global quantity on every rank.

    Returns:
        A 0-d tensor connected to ``feedback.losses``' graph (even when every weight is 0, so
        backward runs on every rank), or a float for numpy losses.

    Raises:
        DataError: on a bad ``mode`` or weight shape, or ``weight_sum`` without
            ``global_weight_sum`` when ``world_size > 1``.
    """
    if mode not in LOSS_NORMALIZATIONS:
        raise DataError(
            f"{what}: unknown loss_normalization {mode!r}; valid: {', '.join(LOSS_NORMALIZATIONS)}."
        )
    view = batch_view(feedback, what, warn=False, require_global=mode == "mean")
    w = as_weights(weights, view, what)
    total = weighted_sum(feedback.losses, w, view)
    if mode == "sum":
        return total
    if mode == "mean":
        return total / valid_count(view)
    # weight_sum
    if global_weight_sum is None:
        if view.world_size > 1:
            raise DataError(
                f"{what}: loss_normalization 'weight_sum' divides by the weight sum over all "
                f"{view.world_size} ranks; all-reduce the sum of the local weights and pass it "
                "as objective(feedback, weights, global_weight_sum=...)."
            )
        if view.is_torch:
            import torch

            denom = torch.where(view.valid, w, torch.zeros_like(w)).sum()
        else:
            denom = float(np.where(view.valid, w, 0.0).sum())
    else:
        denom = global_weight_sum
    if view.is_torch and is_torch_tensor(denom):
        return total / denom.detach().to(device=w.device, dtype=w.dtype).clamp_min(eps)
    # a Python number divides a tensor without a host-to-device copy
    return total / max(float(denom), eps)


def weighted_sum(losses: Any, weights: Any, view: BatchView) -> Any:
    """``sum_{i local, valid} w_i l_i``, keeping the losses' graph; NaN losses are masked."""
    # Both factors are masked: a NaN loss (invalid sample) or a NaN weight given for an invalid
    # sample must not reach the sum, and torch.where keeps the gradient of the rest clean.
    if view.is_torch:
        import torch

        safe = torch.where(view.valid, losses, torch.zeros_like(losses))
        w = torch.where(view.valid, weights, torch.zeros_like(weights))
        return (w * safe).sum()
    arr = np.asarray(losses, dtype=np.float64)
    safe = np.where(view.valid, arr, 0.0)
    return float(np.sum(np.where(view.valid, weights, 0.0) * safe))
