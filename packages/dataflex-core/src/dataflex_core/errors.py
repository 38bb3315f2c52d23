"""The one DataFlex error hierarchy.

Every message says what is wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "DataflexError",
    "ConfigError",
    "PluginError",
    "ComponentNotFound",
    "StateError",
    "DataError",
]


class DataflexError(Exception):
    """Base class of every error raised by DataFlex."""


class ConfigError(DataflexError, ValueError):
    """A configuration value or key is invalid (unknown key, wrong type, out of range)."""


class PluginError(DataflexError):
    """A plugin failed to load, registered a duplicate name, or declared an unknown kind."""


class ComponentNotFound(DataflexError, LookupError):
    """No registered component has the requested kind and name."""

    def __str__(self) -> str:  # LookupError/KeyError would quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class StateError(DataflexError):
    """A saved state cannot be restored (wrong schema, other domains, other component)."""


class DataError(DataflexError, ValueError):
    """Input data is unusable (missing file, empty domain, missing column)."""
