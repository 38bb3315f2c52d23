"""Coefficient-weighted gradients of groups of sequences (NICE target features, spec §2.7 step 4).

NICE's policy-gradient estimate of a target prompt is linear in the per-generation gradients,
``ĝ(x) = Σ_m coef_m ∇_θ NLL(y_m | x)``, so it never needs the per-generation gradients
themselves: :func:`grouped_sequence_grads` computes, for each group ``g`` (one prompt),

``G_g = ∇_θ Σ_{b ∈ g} coef_b · NLL_b``

with **one** forward and **one** backward per group (``torch.autograd.grad`` over the chosen
parameters; ``p.grad`` is never touched). ``NLL_b`` is the causal-LM loss of row ``b`` over its
supervised labels (the prompt is masked with ``ignore_index``), token-summed (``reduction:
sum``, NICE's ``NLL_sum``) or token-mean (``mean``, ``nll_normalize: true``).

The model runs in eval mode (dropout off; the caller's mode is restored). Rows are compacted
(real tokens first) so the padding side does not matter, and each group is trimmed to its
longest row. A row without a supervised token contributes nothing.

Distributed: under DeepSpeed ZeRO-3 every rank must run the same number of forward/backward
passes, so groups are never skipped there (a group with only zero coefficients runs with a zero
loss); otherwise such groups are skipped and give zero rows. Shard the prompts across ranks so
that every rank has the same number of groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from dataflex_ops._common import eval_mode, is_zero3_model, select_parameters, unwrap_model
from dataflex_ops.grads import (
    GradStrategyError,
    _forward_kwargs,
    _full_shape,
    _prepare,
    _requiring_grad,
    _valid_of,
)
from dataflex_ops.loss import _logits_of, per_sample_loss

__all__ = ["grouped_sequence_grads"]


def _as_vector(x: Any, n: int, dtype: torch.dtype, what: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype).reshape(-1)
    if t.shape[0] != n:
        raise ValueError(f"{what} has {t.shape[0]} entries for a batch of {n} rows.")
    return t


def grouped_sequence_grads(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    coefficients: Sequence[float] | torch.Tensor,
    groups: Sequence[int] | torch.Tensor,
    num_groups: int,
    *,
    params: str | Sequence[str] = "trainable",
    reduction: Literal["sum", "mean"] = "sum",
    ignore_index: int = -100,
) -> dict[str, torch.Tensor]:
    """``G_g = ∇_θ Σ_{b∈g} coef_b · NLL_b`` for every group ``g`` (one backward per group).

    Args:
        model: An HF causal LM (plain, PEFT, DDP-wrapped, or a DeepSpeed ZeRO-3 module).
        batch: ``input_ids`` ``[B, T]``, ``labels`` ``[B, T]`` (``ignore_index`` on prompt and
            padding), optional ``attention_mask``.
        coefficients: ``[B]`` float coefficient of each row's NLL.
        groups: ``[B]`` int group of each row, in ``[0, num_groups)``.
        num_groups: Number of groups; a group without rows (or with only zero coefficients)
            gets a zero row.
        params: The parameter filter (``trainable``, ``lora``, ``all`` or regular expressions;
            see :func:`dataflex_ops.grads.select_parameters`).
        reduction: ``sum`` (token-summed NLL, NICE's default) or ``mean`` (token mean).
        ignore_index: Label value of unsupervised positions.

    Returns:
        ``{canonical_name: [num_groups, numel]}`` float32 tensors on the model's device, in
        ``named_parameters()`` order (feed them to a ``dataflex_ops`` projector as they are).

    Raises:
        ValueError: on mismatched lengths, a group id out of range, or a bad ``reduction``.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
    if num_groups < 0:
        raise ValueError(f"num_groups must be >= 0, got {num_groups}.")
    module = unwrap_model(model)
    chosen = select_parameters(module, params)
    device = next(module.parameters()).device
    ids, mask, labels, extra = _prepare(batch, device, ignore_index)
    b = ids.shape[0]
    coef = _as_vector(coefficients, b, torch.float64, "coefficients")
    grp = _as_vector(groups, b, torch.int64, "groups")
    if b and (int(grp.min()) < 0 or int(grp.max()) >= num_groups):
        raise ValueError(
            f"group ids must lie in [0, {num_groups}), got {int(grp.min())}..{int(grp.max())}."
        )
    if not torch.all(torch.isfinite(coef)):
        raise ValueError("coefficients must be finite (drop rows without a reward first).")
    valid = _valid_of(labels, ignore_index).cpu()  # row bookkeeping stays on the CPU
    shapes = {name: _full_shape(p) for name, p in chosen}
    out = {
        name: torch.zeros(
            num_groups, int(torch.Size(shape).numel()), dtype=torch.float32, device=device
        )
        for name, shape in shapes.items()
    }
    lockstep = is_zero3_model(module)
    tensors = [p for _, p in chosen]
    fkw = _forward_kwargs(module)
    with eval_mode(module), _requiring_grad(tensors), torch.enable_grad():
        for g in range(num_groups):
            rows = torch.nonzero(grp == g).flatten()
            active = rows[(coef[rows] != 0) & valid[rows]] if rows.numel() else rows
            if active.numel() == 0 and not lockstep:
                continue
            if active.numel() == 0:
                # ZeRO-3: run a pass anyway (parameters are gathered collectively) on one row
                active = rows[:1] if rows.numel() else torch.zeros(1, dtype=torch.int64)
                weights = torch.zeros(active.numel(), dtype=torch.float64)
            else:
                weights = coef[active]
            idx = active.to(device)
            width = max(int(mask[idx].sum(dim=1).max().item()), 1)
            kwargs = {k: v[idx, :width] for k, v in extra.items()}
            output = module(
                input_ids=ids[idx, :width], attention_mask=mask[idx, :width], **kwargs, **fkw
            )
            logits = _logits_of(output)
            if logits is None:
                raise GradStrategyError(f"{type(module).__name__} returned no logits.")
            losses, ok = per_sample_loss(
                logits, labels[idx, :width], reduction=reduction, ignore_index=ignore_index
            )
            w = weights.to(device=device, dtype=torch.float32)
            terms = torch.where(ok, losses, torch.zeros_like(losses)) * w
            total = terms.sum()
            if not total.requires_grad:  # nothing supervised: a zero loss that has a graph
                total = logits.float().sum() * 0.0
            grads = torch.autograd.grad(total, tensors, allow_unused=True)
            for (name, _), gr in zip(chosen, grads, strict=True):
                if gr is not None:
                    out[name][g] = gr.detach().float().reshape(-1)
    return out
