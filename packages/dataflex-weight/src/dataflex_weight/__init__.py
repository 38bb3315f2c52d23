"""DataFlex weight: per-sample loss weighters.

Names are imported lazily (PEP 562), so that plugin discovery, which imports
``dataflex_weight.plugin`` and therefore this package, stays cheap. torch is imported only when
a weighter receives a torch tensor.

Example:
    >>> import numpy as np
    >>> from dataflex_core import WeightFeedback
    >>> from dataflex_weight import UniformWeighter
    >>> UniformWeighter().weigh(WeightFeedback(step=0, losses=np.array([1.0, 2.0]))).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> defining module
_LAZY: dict[str, str] = {
    "UniformWeighter": "dataflex_weight.weighters",
    "uniform_weights": "dataflex_weight.weighters",
}

__all__ = [
    "UniformWeighter",
    "uniform_weights",
]

if TYPE_CHECKING:
    from dataflex_weight.weighters import UniformWeighter, uniform_weights


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataflex_weight' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
