"""pytest fixtures for DataFlex plugins (loaded through the ``pytest11`` entry point ``dataflex``).

Installing ``dataflex-testing`` makes these fixtures available in every test session:

* ``fresh_plugin_manager``: a new :class:`~dataflex_core.DataflexPluginManager` with the
  ``dataflex`` entry points loaded; the process-wide manager is reset before and after, so a
  test never sees another test's plugins;
* ``fresh_registry``: a :class:`~dataflex_core.Registry` over ``fresh_plugin_manager``;
* ``strict_plugins``: sets ``DATAFLEX_STRICT_PLUGINS=1`` for the test, so a plugin that fails to
  load raises instead of being skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dataflex_core import DataflexPluginManager, Registry, reset_plugin_manager

__all__ = ["fresh_plugin_manager", "fresh_registry", "strict_plugins"]


@pytest.fixture
def strict_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make plugin load failures raise :class:`~dataflex_core.PluginError` during the test."""
    monkeypatch.setenv("DATAFLEX_STRICT_PLUGINS", "1")
    yield


@pytest.fixture
def fresh_plugin_manager() -> Iterator[DataflexPluginManager]:
    """A new plugin manager with the ``dataflex`` entry points loaded.

    The process-wide manager (and its registry) is reset before the test and again after it,
    so plugins registered in-process by the test do not leak into later tests.
    """
    reset_plugin_manager()
    pm = DataflexPluginManager()
    pm.load_entrypoints()
    try:
        yield pm
    finally:
        reset_plugin_manager()


@pytest.fixture
def fresh_registry(fresh_plugin_manager: DataflexPluginManager) -> Registry:
    """A component registry over :func:`fresh_plugin_manager`."""
    return Registry(fresh_plugin_manager)
