"""Helpers shared by the ops: eval mode, model inputs, batching, parameter names.

Private to ``dataflex_ops``; the public names are re-exported where they belong
(:func:`dataflex_ops.grads.canonical_name`, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from dataflex_ops.loss import SIDE_KEYS

__all__ = [
    "WRAPPER_PREFIXES",
    "canonical_name",
    "eval_mode",
    "model_inputs",
    "unwrap_model",
    "is_zero3_model",
    "select_parameters",
    "parameter_hash",
    "pad_collate",
    "iter_batches",
    "batch_size_of",
    "compact_rows",
    "check_token_batch",
]

#: Prefixes that wrappers add to parameter names (DDP / DeepSpeed engine ``module.``, PEFT
#: ``base_model.model.``, ``torch.compile`` ``_orig_mod.``). Stripped repeatedly from the front.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "base_model.model.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """Strip wrapper prefixes (:data:`WRAPPER_PREFIXES`) from a parameter name.

    Example:
        >>> canonical_name("module.base_model.model.model.layers.0.q_proj.lora_A.default.weight")
        'model.layers.0.q_proj.lora_A.default.weight'
    """
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (dropout off) and restore the caller's mode, even on error.

    The mode of every submodule is restored individually, so a caller that froze part of the
    model in eval mode keeps that arrangement.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def unwrap_model(model: Any) -> torch.nn.Module:
    """The module inside DDP / DeepSpeed engine / ``torch.compile`` wrappers (not PEFT)."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "module", None)
        if isinstance(inner, torch.nn.Module) and type(model).__name__ in {
            "DistributedDataParallel",
            "DataParallel",
            "DeepSpeedEngine",
            "PipelineEngine",
            "FullyShardedDataParallel",
        }:
            model = inner
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            break
        seen += 1
    return model


def is_zero3_model(model: Any) -> bool:
    """True when the module's parameters are partitioned by DeepSpeed ZeRO-3.

    ZeRO-3 tags every managed parameter with ``ds_id`` and ``ds_status``; nothing else does.
    """
    module = unwrap_model(model)
    for p in module.parameters():
        return hasattr(p, "ds_id") and hasattr(p, "ds_status")
    return False


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without ``labels`` and the DataFlex side keys (never passed to the model)."""
    return {k: v for k, v in batch.items() if k not in SIDE_KEYS}


def select_parameters(
    model: torch.nn.Module, params: str | Sequence[str] = "trainable"
) -> list[tuple[str, torch.nn.Parameter]]:
    """The feature parameter set ``θ_f`` (spec §1.3), in ``named_parameters()`` order.

    Args:
        model: The (possibly wrapped) model.
        params: ``"trainable"`` (``requires_grad``), ``"lora"`` (canonical names containing
            ``lora_``), ``"all"``, or a list of regular expressions searched in the canonical
            name (a plain substring is a valid pattern).

    Returns:
        ``[(canonical_name, parameter), ...]``.

    Raises:
        ValueError: when nothing matches, naming a few parameters that exist.
    """
    module = unwrap_model(model)
    named = [(canonical_name(n), p) for n, p in module.named_parameters()]
    if isinstance(params, str):
        if params == "trainable":
            chosen = [(n, p) for n, p in named if p.requires_grad]
        elif params == "lora":
            chosen = [(n, p) for n, p in named if "lora_" in n]
        elif params == "all":
            chosen = named
        else:
            chosen = [(n, p) for n, p in named if re.search(params, n)]
    else:
        patterns = [re.compile(x) for x in params]
        chosen = [(n, p) for n, p in named if any(r.search(n) for r in patterns)]
        unmatched = [r.pattern for r in patterns if not any(r.search(n) for n, _ in named)]
        if chosen and unmatched:
            # a module the config names but the model lacks (a typo, another architecture, or
            # LoRA target modules that were not adapted) must not silently shrink θ_f
            sample = ", ".join(n for n, _ in named[:5])
            raise ValueError(
                f"the parameter pattern(s) {unmatched} match no parameter of "
                f"{type(module).__name__}, so the model lacks those modules; parameters look "
                f"like: {sample}. Fix or drop the pattern(s) so that every one names a module "
                "of this model."
            )
    if not chosen:
        sample = ", ".join(n for n, _ in named[:5])
        raise ValueError(
            f"the parameter filter {params!r} matches no parameter of {type(module).__name__}; "
            f"parameters look like: {sample}. Use 'trainable', 'lora', 'all' or a list of "
            "regular expressions."
        )
    return chosen


def check_token_batch(input_ids: Any, what: str) -> None:
    """Raise a :class:`dataflex_core.DataError` for a batch without samples or without tokens.

    Per-sample ops mask individual samples without a supervised token (``valid = False``), but
    a ``[0, T]`` or ``[B, 0]`` batch means the examples were dropped or tokenised to nothing
    upstream; the model would fail on it with an unrelated shape error.
    """
    from dataflex_core import DataError

    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
        raise DataError(f"{what} needs input_ids of shape [B, T], got {shape}.")
    b, t = input_ids.shape
    if b == 0:
        raise DataError(
            f"{what} got a batch with no samples (input_ids has shape [0, {t}]); check the "
            "indices or the filter that built the batch, and skip empty batches."
        )
    if t == 0:
        raise DataError(
            f"{what} got {b} empty sequences (input_ids has shape [{b}, 0]): no sample has a "
            "token. Check the tokenisation and cutoff_len, and drop empty examples before "
            "computing features."
        )


def parameter_hash(names_and_shapes: Iterable[tuple[str, Sequence[int]]]) -> str:
    """``sha256`` of ``"name:d0xd1x..."`` lines: the identity of a feature parameter list."""
    h = hashlib.sha256()
    for name, shape in names_and_shapes:
        h.update(f"{name}:{'x'.join(str(int(s)) for s in shape)}\n".encode())
    return h.hexdigest()


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Number of samples of a batch (the first dimension of ``input_ids`` or any tensor)."""
    value = batch.get("input_ids")
    if value is None:
        value = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    if value is None:
        raise ValueError("the batch holds no tensor; expected at least 'input_ids'.")
    return int(value.shape[0])


def compact_rows(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    extra: Mapping[str, torch.Tensor] | None = None,
    pad_id: int = 0,
    pad_values: Mapping[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Move each row's unmasked tokens to the front (right padding) and trim to the longest row.

    This makes per-sample computations independent of the padding side: a left-padded row and
    a right-padded row of the same tokens become identical, with positions ``0..n-1``.

    Args:
        input_ids: ``[B, T]`` token ids.
        attention_mask: ``[B, T]`` 0/1 mask, or None (all tokens real).
        extra: Other ``[B, T]`` tensors that travel with the tokens (``labels``).
        pad_id: Filler for ``input_ids``.
        pad_values: Filler per key of ``extra`` (default 0; give ``{"labels": -100}``).

    Returns:
        ``(input_ids, attention_mask, extra, lengths)`` with ``T' = max(lengths)``.
    """
    b, t = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    width = max(int(lengths.max().item()) if b else 0, 1)
    # stable order: real tokens first (in their order), then padding
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    keep = torch.arange(width, device=input_ids.device)[None, :] < lengths[:, None]
    ids = torch.where(keep, input_ids.gather(1, order), torch.full_like(order, pad_id))
    out_extra: dict[str, torch.Tensor] = {}
    for key, value in (extra or {}).items():
        fill = (pad_values or {}).get(key, 0)
        out_extra[key] = torch.where(
            keep, value.gather(1, order), torch.full_like(order, fill, dtype=value.dtype)
        )
    return ids, keep.to(attention_mask.dtype), out_extra, lengths


def pad_collate(
    examples: Sequence[Mapping[str, Any]], pad_id: int = 0, label_pad: int = -100
) -> dict[str, torch.Tensor]:
    """Right-pad tokenised examples (``input_ids`` lists or 1-D tensors) into a batch.

    ``attention_mask`` is built when absent; ``labels`` are padded with ``label_pad``; other
    sequence keys with 0; scalar keys are stacked; text columns are dropped.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples.")
    lengths = [len(ex["input_ids"]) for ex in examples]
    width = max(lengths)
    out: dict[str, torch.Tensor] = {}
    keys = list(examples[0].keys())
    if "attention_mask" not in keys:
        keys.append("attention_mask")
    for key in keys:
        first = examples[0].get(key)
        if isinstance(first, str) or (
            isinstance(first, (list, tuple)) and first and isinstance(first[0], str)
        ):
            continue  # raw text columns are not model inputs
        rows = []
        for ex, n in zip(examples, lengths, strict=True):
            value = ex.get(key)
            if key == "attention_mask" and value is None:
                value = [1] * n
            tensor = torch.as_tensor(value)
            rows.append(tensor)
        if rows[0].dim() == 0:
            out[key] = torch.stack(rows)
            continue
        fill = pad_id if key == "input_ids" else (label_pad if key == "labels" else 0)
        padded = torch.full((len(rows), width), fill, dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            padded[i, : row.shape[0]] = row
        out[key] = padded
    return out


def _is_batch(item: Any) -> bool:
    if not isinstance(item, Mapping):
        return False
    ids = item.get("input_ids")
    return isinstance(ids, torch.Tensor) and ids.dim() == 2


def iter_batches(
    data: Any,
    batch_size: int,
    collate_fn: Callable[[Sequence[Any]], Mapping[str, Any]] | None = None,
    indices: Sequence[int] | None = None,
) -> tuple[Iterator[Mapping[str, Any]], int | None]:
    """Batches of ``data`` and their number (None when unknown).

    ``data`` is either an iterable of ready batches (mappings whose ``input_ids`` is a 2-D
    tensor, e.g. a ``DataLoader``), or an indexable dataset of examples that are collated
    ``batch_size`` at a time with ``collate_fn`` (default :func:`pad_collate`). ``indices``
    (datasets only) restricts and orders the rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    collate = collate_fn or pad_collate
    is_dataset = hasattr(data, "__getitem__") and hasattr(data, "__len__")
    if is_dataset and not isinstance(data, Mapping) and len(data) > 0 and not _is_batch(data[0]):
        rows = list(range(len(data))) if indices is None else [int(i) for i in indices]
        count = (len(rows) + batch_size - 1) // batch_size

        def gen() -> Iterator[Mapping[str, Any]]:
            for start in range(0, len(rows), batch_size):
                yield collate([data[i] for i in rows[start : start + batch_size]])

        return gen(), count
    if indices is not None:
        raise ValueError("indices need an indexable dataset of examples, not ready batches.")
    total = len(data) if hasattr(data, "__len__") else None
    return iter(data), total
