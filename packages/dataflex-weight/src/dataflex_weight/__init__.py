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
    "mean_objective": "dataflex_weight.weighters",
    "LossWeighter": "dataflex_weight.loss",
    "LossWeighterConfig": "dataflex_weight.loss",
    "TemperatureSchedule": "dataflex_weight.loss",
    "loss_weights": "dataflex_weight.loss",
    "AdaptWeighter": "dataflex_weight.adapt",
    "AdaptWeighterConfig": "dataflex_weight.adapt",
    "adapt_weights": "dataflex_weight.adapt",
    "mean_anchor": "dataflex_weight.adapt",
    "CustomWeighter": "dataflex_weight.custom",
    "CustomWeighterBase": "dataflex_weight.custom",
    "CustomWeighterConfig": "dataflex_weight.custom",
    "template_weights": "dataflex_weight.custom",
    "pool_embeddings": "dataflex_weight.pooling",
    "position_weighted_pool": "dataflex_weight.pooling",
    "normalized_objective": "dataflex_weight.common",
}

__all__ = [
    "AdaptWeighter",
    "AdaptWeighterConfig",
    "CustomWeighter",
    "CustomWeighterBase",
    "CustomWeighterConfig",
    "LossWeighter",
    "LossWeighterConfig",
    "TemperatureSchedule",
    "UniformWeighter",
    "adapt_weights",
    "loss_weights",
    "mean_anchor",
    "mean_objective",
    "normalized_objective",
    "pool_embeddings",
    "position_weighted_pool",
    "template_weights",
    "uniform_weights",
]

if TYPE_CHECKING:
    from dataflex_weight.adapt import AdaptWeighter, AdaptWeighterConfig, adapt_weights, mean_anchor
    from dataflex_weight.common import normalized_objective
    from dataflex_weight.custom import (
        CustomWeighter,
        CustomWeighterBase,
        CustomWeighterConfig,
        template_weights,
    )
    from dataflex_weight.loss import (
        LossWeighter,
        LossWeighterConfig,
        TemperatureSchedule,
        loss_weights,
    )
    from dataflex_weight.pooling import pool_embeddings, position_weighted_pool
    from dataflex_weight.weighters import UniformWeighter, mean_objective, uniform_weights


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataflex_weight' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
