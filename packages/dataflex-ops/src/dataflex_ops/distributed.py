"""Sharded feature passes under DDP and DeepSpeed ZeRO-3 (algorithms spec §1.3, §5.3).

* The pool is split into ``W`` contiguous shards of ``⌈N/W⌉`` indices
  (:func:`shard_indices`); a short shard is padded by repeating its last index, so every rank
  runs the **same number** of batches and forward passes — required under ZeRO-3, whose
  parameter all-gathers are collectives.
* Each rank computes per-sample features of its shard; :func:`gather_by_index` all-gathers
  ``(index, row)`` pairs and places rows by index into dataset order on every rank: duplicates
  from the padding are dropped (first occurrence wins) and a missing index is an error.
* Per-sample quantities stay per sample: gradients come from :mod:`dataflex_ops.grads`, never
  from ``p.grad`` after a DDP/ZeRO backward, and are never averaged over ranks.

ZeRO-3: ``torch.func.vmap`` cannot run over a ZeRO-3 module (its parameter hooks have no
batching rule). Per-sample gradients therefore use the ``loop`` strategy directly on the
partitioned module: each sample's forward gathers the parameters layer by layer through
DeepSpeed's hooks and ``torch.autograd.grad(ℓ_i, θ_f)`` returns full-shape gradients without
``engine.backward`` (so no reduce-scatter and no rank averaging). Embeddings and losses are
plain forward passes. Both need lockstep, which the equal shard lengths provide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from dataflex_core import ConfigError, DataError

from dataflex_ops._common import iter_batches
from dataflex_ops.embed import Embedding
from dataflex_ops.grads import PerSampleGrad

__all__ = [
    "shard_indices",
    "assemble_by_index",
    "gather_by_index",
    "sharded_features",
    "Zero3PerSampleGrad",
    "Zero3Embedding",
]

log = logging.getLogger(__name__)


def shard_indices(n: int, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s contiguous shard of ``range(n)``, padded to ``⌈n/world⌉`` indices.

    Padding repeats the shard's last index (or ``n − 1`` for an empty shard); the duplicates
    are dropped by :func:`gather_by_index`.

    Example:
        >>> [shard_indices(5, r, 2).tolist() for r in range(2)]
        [[0, 1, 2], [3, 4, 4]]
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}.")
    per = -(-n // world)
    start = min(rank * per, n)
    stop = min(start + per, n)
    idx = np.arange(start, stop, dtype=np.int64)
    fill = idx[-1] if len(idx) else n - 1
    return np.concatenate([idx, np.full(per - len(idx), fill, dtype=np.int64)])


def assemble_by_index(indices: Sequence[Any], values: Sequence[Any], n: int) -> Any:
    """Place rows by index into an ``[n, ...]`` result (torch or numpy, as given).

    Args:
        indices: Per part, the row indices ``[m_k]``.
        values: Per part, the rows ``[m_k, ...]``.
        n: Dataset size.

    Returns:
        ``[n, ...]`` rows in dataset order; for a duplicated index the first occurrence wins.

    Raises:
        DataError: when an index is out of range or missing.
    """
    if len(indices) != len(values) or not indices:
        raise ValueError("need one index array per value array, and at least one of each.")
    idx = np.concatenate([np.asarray(_np(i), dtype=np.int64).reshape(-1) for i in indices])
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DataError(
            f"gathered index out of range [0, {n}): {int(idx.min())}..{int(idx.max())}."
        )
    _, first = np.unique(idx, return_index=True)
    seen = np.zeros(n, dtype=bool)
    seen[idx] = True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise DataError(
            f"{len(missing)} of {n} indices were computed by no rank (first: "
            f"{missing[:5].tolist()}); every index must be in some shard."
        )
    order = first[np.argsort(idx[first], kind="stable")]
    if isinstance(values[0], torch.Tensor):
        cat = torch.cat([v.reshape(v.shape[0], *v.shape[1:]) for v in values])
        return cat[torch.as_tensor(order, device=cat.device)]
    cat_np = np.concatenate([np.asarray(v) for v in values])
    return cat_np[order]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _dist() -> Any | None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def gather_by_index(indices: Any, values: torch.Tensor, n: int, group: Any = None) -> torch.Tensor:
    """All-gather ``(indices, values)`` from every rank and assemble ``[n, ...]`` rows.

    Without an initialised process group this only assembles the local rows (and therefore
    checks that they cover ``range(n)``).

    Args:
        indices: ``[m]`` indices of this rank's rows.
        values: ``[m, ...]`` rows (any dtype, bool included).
        n: Dataset size.
        group: Process group (default: the world).

    Returns:
        ``[n, ...]`` on every rank, on the device of ``values``.
    """
    idx = torch.as_tensor(_np(indices), dtype=torch.int64)
    if idx.shape[0] != values.shape[0]:
        raise ValueError(f"{idx.shape[0]} indices for {values.shape[0]} rows.")
    dist = _dist()
    if dist is None:
        return assemble_by_index([idx], [values], n)
    world = dist.get_world_size(group)
    device = values.device
    # the gloo and nccl collectives need the communication device and equal shapes
    comm_device = (
        torch.device("cuda", torch.cuda.current_device())
        if (dist.get_backend(group) == "nccl")
        else torch.device("cpu")
    )
    sizes = [torch.zeros(1, dtype=torch.int64, device=comm_device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([idx.shape[0]], device=comm_device), group=group)
    counts = [int(s.item()) for s in sizes]
    m = max(counts)
    is_bool = values.dtype == torch.bool
    send = values.to(torch.uint8) if is_bool else values
    pad_v = torch.zeros((m, *send.shape[1:]), dtype=send.dtype, device=comm_device)
    pad_v[: send.shape[0]] = send.to(comm_device)
    pad_i = torch.zeros(m, dtype=torch.int64, device=comm_device)
    pad_i[: idx.shape[0]] = idx.to(comm_device)
    got_v = [torch.empty_like(pad_v) for _ in range(world)]
    got_i = [torch.empty_like(pad_i) for _ in range(world)]
    dist.all_gather(got_v, pad_v.contiguous(), group=group)
    dist.all_gather(got_i, pad_i, group=group)
    out = assemble_by_index(
        [gi[:c].cpu() for gi, c in zip(got_i, counts, strict=True)],
        [gv[:c] for gv, c in zip(got_v, counts, strict=True)],
        n,
    )
    out = out.to(device)
    return out.bool() if is_bool else out


def sharded_features(
    featurizer: Callable[[torch.nn.Module, Mapping[str, Any]], Mapping[str, Any]],
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = 8,
    collate_fn: Callable[[Sequence[Any]], Mapping[str, Any]] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    keys: Sequence[str] = ("values", "valid"),
    progress: bool = True,
    desc: str = "features",
    group: Any = None,
) -> dict[str, Any]:
    """Run ``featurizer`` over this rank's shard of ``dataset`` and gather into dataset order.

    Every rank gets the full ``[N, ...]`` result. Ranks run the same number of batches (equal
    padded shards), which ZeRO-3 requires. String entries of the featurizer's output (e.g.
    ``param_hash``) are checked to agree across ranks and returned as they are.

    Args:
        featurizer: A featurizer (``Embedding``, ``PerSampleGrad``, ``PerSampleLoss``, ...).
        model: The model (plain, DDP-wrapped, or ZeRO-3 partitioned).
        dataset: Indexable dataset of tokenised examples.
        batch_size: Rows per featurizer call.
        collate_fn: Builds a batch from examples (default: right padding).
        rank: This rank (default: from ``torch.distributed``, else 0).
        world_size: Number of ranks (default: from ``torch.distributed``, else 1).
        keys: Tensor entries of the featurizer output to gather.
        progress: Show a tqdm bar (rank 0 only).
        desc: The bar's label.
        group: Process group.

    Returns:
        ``{key: [N, ...]}`` for ``keys``, plus the featurizer's string entries.
    """
    from tqdm.auto import tqdm

    dist = _dist()
    if rank is None:
        rank = dist.get_rank(group) if dist is not None else 0
    if world_size is None:
        world_size = dist.get_world_size(group) if dist is not None else 1
    n = len(dataset)
    local = shard_indices(n, rank, world_size)
    batches, total = iter_batches(dataset, batch_size, collate_fn, indices=local.tolist())
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    extras: dict[str, Any] = {}
    for batch in tqdm(
        batches, total=total, desc=desc, disable=not progress or rank != 0, leave=False
    ):
        out = featurizer(model, batch)
        for k in keys:
            if k not in out:
                raise ConfigError(f"the featurizer returned no {k!r}; it returned {sorted(out)}.")
            value = out[k]
            parts[k].append(
                value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            )
        for k, v in out.items():
            if isinstance(v, str):
                extras[k] = v
    result: dict[str, Any] = {}
    for k in keys:
        result[k] = gather_by_index(local, torch.cat(parts[k]), n, group=group)
    valid = result.get("valid")
    if isinstance(valid, torch.Tensor) and valid.dtype == torch.bool and not bool(valid.any()):
        # every rank sees the same gathered mask, so every rank raises
        raise DataError(
            f"none of the {n} samples gave a valid feature: per-sample losses and gradients "
            "need at least one supervised token (a label other than -100 after the first "
            "position), embeddings at least one unmasked token. Check the label masking "
            "(prompt masking, cutoff_len truncating every response) and drop empty examples."
        )
    if dist is not None and extras:
        seen: list[Any] = [None] * world_size
        dist.all_gather_object(seen, extras, group=group)
        if any(s != extras for s in seen):
            raise DataError(f"ranks disagree on feature metadata: {seen}.")
    result.update(extras)
    return result


class Zero3PerSampleGrad(PerSampleGrad):
    """``per_sample_grad`` on a DeepSpeed ZeRO-3 module: ``loop`` (or ``hooks``) in lockstep.

    ``auto`` resolves to ``loop``; ``vmap`` is rejected up front; ``factorized`` and ``hooks``
    run their single forward/backward on the partitioned module.
    """

    def __init__(self, config: Any = None, context: Any = None) -> None:
        super().__init__(config, context)
        if self.config.strategy == "vmap":
            raise ConfigError(
                "strategy 'vmap' cannot run on a ZeRO-3 partitioned model (DeepSpeed's parameter "
                "hooks have no vmap support); use 'auto' or 'loop'."
            )
        if self.config.strategy == "auto":
            self._strategy = "loop"


class Zero3Embedding(Embedding):
    """``embedding`` on a ZeRO-3 module: plain forwards; callers keep ranks in lockstep
    (:func:`sharded_features` does)."""
