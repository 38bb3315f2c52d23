"""Model identities for cache keys (algorithms spec §1.7, §5.6).

A feature store key hashes the model identity together with the data fingerprint and the
config (:func:`dataflex_ops.store.store_key`). The identity is either the run id and the global
step of a live run, or a content hash of the weights / checkpoint files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from dataflex_ops._common import canonical_name, parameter_hash, unwrap_model

__all__ = ["model_identity", "checkpoint_identity"]


def model_identity(
    model: torch.nn.Module,
    *,
    run_id: str | None = None,
    step: int | None = None,
    content_hash: bool = False,
) -> dict[str, Any]:
    """JSON-safe identity of a model.

    Args:
        model: The (possibly wrapped) model.
        run_id: The run's id (with ``step``, identifies the weights of a live run).
        step: Completed optimizer steps ``s``.
        content_hash: Also hash every parameter's bytes (reads all weights once; under ZeRO-3
            only the local partitions would be read, so gather first or use the run id).

    Returns:
        ``{"class", "param_hash", "run_id", "step"[, "content_sha256"]}``.
    """
    module = unwrap_model(model)
    named = [(canonical_name(n), p) for n, p in module.named_parameters()]
    ident: dict[str, Any] = {
        "class": type(module).__name__,
        "param_hash": parameter_hash(
            (n, tuple(getattr(p, "ds_shape", None) or p.shape)) for n, p in named
        ),
        "run_id": run_id,
        "step": step,
    }
    if content_hash:
        h = hashlib.sha256()
        for name, p in named:
            data = p.detach().cpu().contiguous()
            h.update(f"{name}:{data.dtype}:{tuple(data.shape)}\n".encode())
            h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        ident["content_sha256"] = h.hexdigest()
    return ident


def checkpoint_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity of a checkpoint folder: its absolute path and a hash of its weight files.

    Hashes ``*.safetensors``, ``*.bin`` and ``*.pt`` files (sorted by name) except optimizer,
    scheduler and RNG state, which do not change the model.
    """
    folder = Path(path).resolve()
    skip = ("optimizer", "scheduler", "rng_state", "training_args")
    h = hashlib.sha256()
    files = sorted(
        f
        for f in folder.iterdir()
        if f.is_file()
        and f.suffix in (".safetensors", ".bin", ".pt")
        and not f.name.startswith(skip)
    )
    for f in files:
        h.update(f.name.encode() + b"\n")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return {
        "checkpoint": str(folder),
        "content_sha256": h.hexdigest(),
        "files": [f.name for f in files],
    }
