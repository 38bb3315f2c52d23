"""DataFlex mix: domain mixers and the shared sampling primitives (numpy only, never torch).

Names are imported lazily (PEP 562), so that plugin discovery, which imports
``dataflex_mix.plugin`` and therefore this package, does not pay for numpy.

Example:
    >>> from dataflex_core import ComponentContext
    >>> from dataflex_mix import RandomMixer
    >>> mixer = RandomMixer({"seed": 0}, ComponentContext(domains=("code", "math")))
    >>> len(mixer.step().proportions)
    2
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> defining module
_LAZY: dict[str, str] = {
    "StaticMixer": "dataflex_mix.mixers",
    "StaticMixerConfig": "dataflex_mix.mixers",
    "RandomMixer": "dataflex_mix.mixers",
    "RandomMixerConfig": "dataflex_mix.mixers",
    "generator": "dataflex_mix.primitives",
    "top_k": "dataflex_mix.primitives",
    "sample_without_replacement": "dataflex_mix.primitives",
    "sample_with_replacement": "dataflex_mix.primitives",
    "largest_remainder": "dataflex_mix.primitives",
    "blend_indices": "dataflex_mix.primitives",
    "normalize_proportions": "dataflex_mix.primitives",
    "MixtureSampler": "dataflex_mix.sampler",
    "StreamingMixture": "dataflex_mix.streaming",
    "DoremiMixer": "dataflex_mix.doremi",
    "DoremiMixerConfig": "dataflex_mix.doremi",
    "proxy_loss_weights": "dataflex_mix.doremi",
    "proxy_objective": "dataflex_mix.doremi",
    "OdmMixer": "dataflex_mix.odm",
    "OdmMixerConfig": "dataflex_mix.odm",
    "AioliMixer": "dataflex_mix.aioli",
    "AioliMixerConfig": "dataflex_mix.aioli",
    "unsmooth_and_normalize": "dataflex_mix.aioli",
    "aioli_update": "dataflex_mix.aioli",
    "DynamicMoeMixer": "dataflex_mix.dynamic_moe",
    "DynamicMoeMixerConfig": "dataflex_mix.dynamic_moe",
    "gate_load_distances": "dataflex_mix.dynamic_moe",
    "feedback_from_samples": "dataflex_mix.feedback",
}

__all__ = [
    "AioliMixer",
    "AioliMixerConfig",
    "DoremiMixer",
    "DoremiMixerConfig",
    "DynamicMoeMixer",
    "DynamicMoeMixerConfig",
    "MixtureSampler",
    "OdmMixer",
    "OdmMixerConfig",
    "RandomMixer",
    "RandomMixerConfig",
    "StaticMixer",
    "StaticMixerConfig",
    "StreamingMixture",
    "aioli_update",
    "blend_indices",
    "feedback_from_samples",
    "gate_load_distances",
    "generator",
    "largest_remainder",
    "normalize_proportions",
    "proxy_loss_weights",
    "proxy_objective",
    "sample_with_replacement",
    "sample_without_replacement",
    "top_k",
    "unsmooth_and_normalize",
]

if TYPE_CHECKING:
    from dataflex_mix.aioli import (
        AioliMixer,
        AioliMixerConfig,
        aioli_update,
        unsmooth_and_normalize,
    )
    from dataflex_mix.doremi import (
        DoremiMixer,
        DoremiMixerConfig,
        proxy_loss_weights,
        proxy_objective,
    )
    from dataflex_mix.dynamic_moe import (
        DynamicMoeMixer,
        DynamicMoeMixerConfig,
        gate_load_distances,
    )
    from dataflex_mix.feedback import feedback_from_samples
    from dataflex_mix.mixers import RandomMixer, RandomMixerConfig, StaticMixer, StaticMixerConfig
    from dataflex_mix.odm import OdmMixer, OdmMixerConfig
    from dataflex_mix.primitives import (
        blend_indices,
        generator,
        largest_remainder,
        normalize_proportions,
        sample_with_replacement,
        sample_without_replacement,
        top_k,
    )
    from dataflex_mix.sampler import MixtureSampler
    from dataflex_mix.streaming import StreamingMixture


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataflex_mix' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
