"""DataFlex select: data selectors and the shared sampling primitives.

Never imports torch or faiss. Names are imported lazily (PEP 562), so that plugin discovery,
which imports ``dataflex_select.plugin`` and therefore this package, does not pay for numpy.

Example:
    >>> from dataflex_core import SelectRequest
    >>> from dataflex_select import RandomSelector
    >>> sel = RandomSelector({"seed": 0})
    >>> len(sel.select(SelectRequest(step=0, epoch=0, update=0, n=4, num_samples=100)))
    4
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> defining module
_LAZY: dict[str, str] = {
    "StaticSelector": "dataflex_select.selectors",
    "StaticSelectorConfig": "dataflex_select.selectors",
    "RandomSelector": "dataflex_select.selectors",
    "RandomSelectorConfig": "dataflex_select.selectors",
    "warmup_indices": "dataflex_select.selectors",
    "generator": "dataflex_select.primitives",
    "top_k": "dataflex_select.primitives",
    "sample_without_replacement": "dataflex_select.primitives",
    "sample_with_replacement": "dataflex_select.primitives",
    "largest_remainder": "dataflex_select.primitives",
    "blend_indices": "dataflex_select.primitives",
    "normalize_proportions": "dataflex_select.primitives",
}

__all__ = [
    "RandomSelector",
    "RandomSelectorConfig",
    "StaticSelector",
    "StaticSelectorConfig",
    "blend_indices",
    "generator",
    "largest_remainder",
    "normalize_proportions",
    "sample_with_replacement",
    "sample_without_replacement",
    "top_k",
    "warmup_indices",
]

if TYPE_CHECKING:
    from dataflex_select.primitives import (
        blend_indices,
        generator,
        largest_remainder,
        normalize_proportions,
        sample_with_replacement,
        sample_without_replacement,
        top_k,
    )
    from dataflex_select.selectors import (
        RandomSelector,
        RandomSelectorConfig,
        StaticSelector,
        StaticSelectorConfig,
        warmup_indices,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataflex_select' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
