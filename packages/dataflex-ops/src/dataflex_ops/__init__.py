"""DataFlex ops: model-dependent operations (per-sample losses, and later embeddings and
per-sample gradients).

Names are imported lazily (PEP 562): plugin discovery imports ``dataflex_ops.plugin`` and
therefore this package, and must not pay for importing torch.

Example:
    >>> import torch
    >>> from dataflex_ops import per_sample_loss
    >>> logits = torch.zeros(1, 3, 2)
    >>> labels = torch.tensor([[-100, 0, 0]])
    >>> per_sample_loss(logits, labels)[0]
    tensor([0.6931])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> defining module
_LAZY: dict[str, str] = {
    "PerSampleLoss": "dataflex_ops.loss",
    "PerSampleLossConfig": "dataflex_ops.loss",
    "PerSampleLossUnavailable": "dataflex_ops.loss",
    "per_sample_loss": "dataflex_ops.loss",
    "token_counts": "dataflex_ops.loss",
}

__all__ = [
    "PerSampleLoss",
    "PerSampleLossConfig",
    "PerSampleLossUnavailable",
    "per_sample_loss",
    "token_counts",
]

if TYPE_CHECKING:
    from dataflex_ops.loss import (
        PerSampleLoss,
        PerSampleLossConfig,
        PerSampleLossUnavailable,
        per_sample_loss,
        token_counts,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataflex_ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
