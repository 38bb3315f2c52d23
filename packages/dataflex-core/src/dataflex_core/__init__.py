"""DataFlex core: hookspecs, component specs, plugin manager, strict config and errors.

Depends on pluggy only; never imports numpy or torch.
"""

from __future__ import annotations

from dataflex_core.config import EmptyConfig, config_to_dict, parse_config
from dataflex_core.errors import (
    ComponentNotFound,
    ConfigError,
    DataError,
    DataflexError,
    PluginError,
    StateError,
)
from dataflex_core.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, truncate_jsonl
from dataflex_core.markers import hookimpl, hookspec
from dataflex_core.plugins import (
    DataflexPluginManager,
    get_plugin_manager,
    reset_plugin_manager,
)
from dataflex_core.protocols import Mixer, Selector, Stateful, Weighter
from dataflex_core.registry import Registry, create, get_registry
from dataflex_core.schedule import TRAIN_TYPES, Schedule
from dataflex_core.seeding import derive
from dataflex_core.specs import (
    KINDS,
    ComponentContext,
    ComponentSpec,
    MixDecision,
    MixFeedback,
    SIGNAL_KINDS,
    SelectRequest,
    SignalRequest,
    WeightFeedback,
)
from dataflex_core.state import check_json_safe

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "TRAIN_TYPES",
    "ComponentContext",
    "ComponentNotFound",
    "ComponentSpec",
    "ConfigError",
    "DataError",
    "DataflexError",
    "DataflexPluginManager",
    "EmptyConfig",
    "MixDecision",
    "MixFeedback",
    "Mixer",
    "PluginError",
    "Registry",
    "Schedule",
    "SIGNAL_KINDS",
    "SelectRequest",
    "SignalRequest",
    "Selector",
    "StateError",
    "Stateful",
    "WeightFeedback",
    "Weighter",
    "append_jsonl",
    "atomic_write_json",
    "atomic_write_text",
    "check_json_safe",
    "config_to_dict",
    "create",
    "derive",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "hookspec",
    "parse_config",
    "read_jsonl",
    "truncate_jsonl",
    "reset_plugin_manager",
]
