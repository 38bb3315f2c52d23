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
    "LossSelector": "dataflex_select.loss",
    "LossSelectorConfig": "dataflex_select.loss",
    "loss_probabilities": "dataflex_select.loss",
    "DeltaLossSelector": "dataflex_select.delta_loss",
    "DeltaLossSelectorConfig": "dataflex_select.delta_loss",
    "delta_loss_window": "dataflex_select.delta_loss",
    "NearSelector": "dataflex_select.near",
    "NearSelectorConfig": "dataflex_select.near",
    "near_round_robin": "dataflex_select.near",
    "TsdsSelector": "dataflex_select.tsds",
    "TsdsSelectorConfig": "dataflex_select.tsds",
    "tsds_probabilities": "dataflex_select.tsds",
    "DsirSelector": "dataflex_select.dsir",
    "DsirSelectorConfig": "dataflex_select.dsir",
    "dsir_scores": "dataflex_select.dsir",
    "LessSelector": "dataflex_select.less",
    "LessSelectorConfig": "dataflex_select.less",
    "less_influence": "dataflex_select.less",
    "ClusterLessSelector": "dataflex_select.cluster_less",
    "ClusterLessSelectorConfig": "dataflex_select.cluster_less",
    "cluster_embeddings": "dataflex_select.cluster_less",
    "NiceSelector": "dataflex_select.nice",
    "NiceSelectorConfig": "dataflex_select.nice",
    "nice_coefficients": "dataflex_select.nice",
    "nice_aggregate": "dataflex_select.nice",
    "nice_group_plan": "dataflex_select.nice",
    "ScoredSelector": "dataflex_select.base",
    "ScoredSelectorConfig": "dataflex_select.base",
    "budget_count": "dataflex_select.base",
    "generator": "dataflex_select.primitives",
    "top_k": "dataflex_select.primitives",
    "sample_without_replacement": "dataflex_select.primitives",
    "sample_with_replacement": "dataflex_select.primitives",
    "largest_remainder": "dataflex_select.primitives",
    "blend_indices": "dataflex_select.primitives",
    "normalize_proportions": "dataflex_select.primitives",
}

__all__ = sorted(_LAZY)

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
