"""Per-sample causal-LM loss (algorithms spec §1.1).

Logits at position ``t`` predict the label at ``t+1``. With ``m_{i,t} = [label_{i,t+1} != -100]``
and ``CE_{i,t} = -log softmax(logits_{i,t})[label_{i,t+1}]``:

* ``reduction="mean"``: ``ℓ_i = Σ_t m·CE / n_i`` with ``n_i = Σ_t m`` (the default);
* ``reduction="sum"``: ``ℓ_i = Σ_t m·CE``;
* ``per_token=True``: the masked matrix ``CE ⊙ m`` (DoReMi's excess loss needs it).

A sample without a supervised token is invalid: ``ℓ_i = NaN`` and ``valid_i = False``.

The HF batch loss ``Σ m·CE / Σ n_i`` is a token-weighted mean, **not** the mean of ``ℓ_i``; it
equals ``Σ_i n_i·ℓ_i / Σ_i n_i``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from dataflex_core import ComponentContext, ConfigError, DataflexError, parse_config
from torch.utils.checkpoint import checkpoint

__all__ = [
    "PerSampleLossUnavailable",
    "PerSampleLossConfig",
    "PerSampleLoss",
    "per_sample_loss",
    "token_counts",
    "SIDE_KEYS",
]

#: Batch keys that DataFlex adds beside the model inputs; they are never passed to the model.
SIDE_KEYS: tuple[str, ...] = (
    "labels",
    "domain_id",
    "domain_ids",
    "sample_id",
    "sample_ids",
    "index",
)


class PerSampleLossUnavailable(DataflexError):
    """The model returned no logits (e.g. a fused cross-entropy kernel), so per-sample losses
    cannot be computed. Raised instead of silently falling back to the batch loss."""


def _chunk_ce(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Masked CE of one sequence chunk, in float32: ``[B, L, V]``, ``[B, L]`` -> ``[B, L]``."""
    b, length, vocab = logits.shape
    ce = F.cross_entropy(
        logits.float().reshape(b * length, vocab),
        targets.reshape(b * length),
        ignore_index=ignore_index,
        reduction="none",
    )
    return ce.view(b, length)


def per_sample_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: Literal["mean", "sum"] = "mean",
    per_token: bool = False,
    ignore_index: int = -100,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (or per-token) cross-entropy of a causal LM, from its unshifted logits.

    The logits are upcast to float32 one sequence chunk at a time, so the full-vocabulary
    float32 logits are never materialised. When gradients are recorded and the logits are in a
    lower precision, each chunk is checkpointed: backward recomputes its float32 softmax
    instead of keeping every chunk's (float32 logits keep it, as the standard loss does).
    The autograd graph is kept, so the result can feed a weighted loss in ``compute_loss``.

    Args:
        logits: ``[B, T, V]`` logits as the model returns them (any float dtype).
        labels: ``[B, T]`` labels, unshifted; ``ignore_index`` marks unsupervised positions.
        reduction: ``"mean"`` (token mean per sample) or ``"sum"``.
        per_token: Return the masked ``[B, T-1]`` matrix ``CE ⊙ m`` (column ``t`` is the loss of
            predicting ``labels[:, t+1]``) instead of one value per sample.
        ignore_index: Label value of unsupervised positions.
        chunk_size: Sequence positions upcast at a time.

    Returns:
        ``(values, valid)``: float32 values (``[B]``, or ``[B, T-1]`` with ``per_token``; NaN for
        invalid samples when reduced) and a ``[B]`` bool mask of samples with at least one
        supervised token.

    Raises:
        ConfigError: on an unknown ``reduction`` or a ``chunk_size`` < 1.
        ValueError: when the shapes of ``logits`` and ``labels`` do not match.
    """
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size!r}.")
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    b, t, _ = logits.shape
    labels = labels.to(logits.device)
    targets = labels[:, 1:]
    mask = targets != ignore_index
    counts = mask.sum(dim=1)
    valid = counts > 0

    # Checkpointing saves the float32 upcast of low-precision logits; float32 logits have no
    # upcast to save (cross-entropy keeps the same softmax the standard HF loss keeps), so
    # recomputing it in backward would only cost time.
    use_checkpoint = (
        torch.is_grad_enabled() and logits.requires_grad and logits.dtype != torch.float32
    )
    pieces: list[torch.Tensor] = []
    for start in range(0, t - 1, chunk_size):
        end = min(start + chunk_size, t - 1)
        lg, tg = logits[:, start:end], targets[:, start:end]
        if use_checkpoint:
            ce = checkpoint(
                _chunk_ce, lg, tg, ignore_index, use_reentrant=False, preserve_rng_state=False
            )
        else:
            ce = _chunk_ce(lg, tg, ignore_index)
        pieces.append(ce)
    if pieces:
        matrix = torch.cat(pieces, dim=1)
    else:  # T <= 1: nothing is predicted
        matrix = logits.new_zeros((b, 0), dtype=torch.float32)

    if per_token:
        # cross_entropy already gives 0 at ignored positions; the explicit mask also zeroes a
        # NaN from a position the caller ignored.
        return torch.where(mask, matrix, torch.zeros_like(matrix)), valid
    sums = torch.where(mask, matrix, torch.zeros_like(matrix)).sum(dim=1)
    values = sums / counts.clamp(min=1).to(sums.dtype) if reduction == "mean" else sums
    # torch.where keeps the gradient of valid rows clean (no 0/0 in the graph).
    return torch.where(valid, values, torch.full_like(values, math.nan)), valid


def token_counts(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Supervised tokens per sample: ``n_i = Σ_t [label_{i,t+1} != ignore_index]``, int64 ``[B]``.

    Accepts the same unshifted ``[B, T]`` labels as :func:`per_sample_loss`.
    """
    return (labels[:, 1:] != ignore_index).sum(dim=1)


@dataclass(frozen=True)
class PerSampleLossConfig:
    """Config of the ``per_sample_loss`` featurizer.

    Attributes:
        reduction: ``mean`` (token mean per sample) or ``sum``.
        chunk_size: Sequence positions upcast to float32 at a time (spec ``loss_chunk_size``).
        ignore_index: Label value of unsupervised positions.
    """

    reduction: Literal["mean", "sum"] = "mean"
    chunk_size: int = 1024
    ignore_index: int = -100

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError(
                f"chunk_size must be >= 1, got {self.chunk_size!r}; 1024 keeps the float32 "
                "logits of a chunk small."
            )


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (dropout off) and restore the caller's mode, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _logits_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    return logits


class PerSampleLoss:
    """Featurizer: per-sample losses of a batch under a model (spec §1.1).

    Runs the model under ``torch.no_grad()`` in eval mode and restores the caller's mode. Each
    row's unmasked tokens are moved to the front first, so the padding side does not change a
    loss. The batch is a mapping with ``labels`` and the model inputs; ``labels`` and the
    DataFlex side keys (:data:`SIDE_KEYS`) are not passed to the model, which then skips its own
    loss and returns logits even when patched with a fused cross-entropy kernel.

    Args:
        config: A :class:`PerSampleLossConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts (unused).
    """

    config_class = PerSampleLossConfig

    def __init__(
        self,
        config: PerSampleLossConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: PerSampleLossConfig = parse_config(
            PerSampleLossConfig, config, where="featurizer 'per_sample_loss'"
        )
        self.context = context if context is not None else ComponentContext()

    def __call__(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Compute the batch's per-sample losses.

        Returns:
            ``{"values": [B] float32, "valid": [B] bool, "token_counts": [B] int64}``, on the
            model's output device, detached.

        Raises:
            PerSampleLossUnavailable: when the model returns no logits.
            KeyError: when the batch has no ``labels``.
        """
        if "labels" not in batch:
            raise KeyError(
                "per_sample_loss needs a batch with 'labels' (-100 marks ignored positions)."
            )
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k not in SIDE_KEYS}
        ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
        if ids is not None:
            from dataflex_ops._common import check_token_batch  # _common imports this module

            check_token_batch(ids, "per_sample_loss")
        if (
            isinstance(ids, torch.Tensor)
            and isinstance(mask, torch.Tensor)
            and ids.dim() == 2
            and tuple(labels.shape) == tuple(ids.shape)
        ):
            # real tokens first, so left padding does not shift the positions the model sees
            from dataflex_ops._common import compact_rows  # _common imports this module

            seq = {
                k: v
                for k, v in inputs.items()
                if k not in ("input_ids", "attention_mask")
                and isinstance(v, torch.Tensor)
                and v.shape[:2] == ids.shape
            }
            seq["labels"] = labels.to(ids.device)
            ids, mask, seq, _ = compact_rows(
                ids, mask, seq, pad_values={"labels": self.config.ignore_index}
            )
            labels = seq.pop("labels")
            inputs.update(seq, input_ids=ids, attention_mask=mask)
        with _eval_mode(model), torch.no_grad():
            output = model(**inputs)
            logits = _logits_of(output)
            if logits is None:
                raise PerSampleLossUnavailable(
                    f"{type(model).__name__} returned no logits, so per-sample losses cannot be "
                    "computed; disable fused cross-entropy (e.g. Liger's "
                    "fused_linear_cross_entropy) for DataFlex components that need them."
                )
            values, valid = per_sample_loss(
                logits,
                labels,
                reduction=self.config.reduction,
                ignore_index=self.config.ignore_index,
                chunk_size=self.config.chunk_size,
            )
            counts = token_counts(labels.to(values.device), self.config.ignore_index)
        return {"values": values, "valid": valid, "token_counts": counts}
