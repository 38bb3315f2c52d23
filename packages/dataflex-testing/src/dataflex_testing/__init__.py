"""DataFlex testing: conformance suites and pytest fixtures for components and plugins.

Subclass :class:`MixerConformance`, :class:`SelectorConformance` or
:class:`WeighterConformance` in a ``Test...`` class to run the shared checks on a component;
call :func:`check_primitives` on a package's copy of the sampling primitives. The fixtures
(``fresh_plugin_manager``, ``fresh_registry``, ``strict_plugins``) are registered with pytest
through the ``pytest11`` entry point when this package is installed.
"""

from __future__ import annotations

import pytest

# The suites use plain asserts; have pytest rewrite them for readable failures. Must run before
# the module is imported.
pytest.register_assert_rewrite("dataflex_testing.conformance")

from dataflex_testing.conformance import (  # noqa: E402
    UNKNOWN_KEY,
    ComponentConformance,
    MixerConformance,
    SelectorConformance,
    WeighterConformance,
    check_primitives,
)
from dataflex_testing.fixtures import (  # noqa: E402
    fresh_plugin_manager,
    fresh_registry,
    strict_plugins,
)

__version__ = "0.1.0"

__all__ = [
    "UNKNOWN_KEY",
    "ComponentConformance",
    "MixerConformance",
    "SelectorConformance",
    "WeighterConformance",
    "check_primitives",
    "fresh_plugin_manager",
    "fresh_registry",
    "strict_plugins",
]
