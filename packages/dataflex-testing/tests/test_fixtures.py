"""The pytest fixtures registered through the ``pytest11`` entry point."""

from __future__ import annotations

import os

import dataflex_core
from dataflex_core import ComponentSpec, DataflexPluginManager, Registry, hookimpl


def test_strict_plugins_sets_the_variable(strict_plugins) -> None:
    assert os.environ["DATAFLEX_STRICT_PLUGINS"] == "1"
    from dataflex_core.plugins import strict_plugins as is_strict

    assert is_strict()


def test_fresh_plugin_manager_loads_entry_points(fresh_plugin_manager) -> None:
    assert isinstance(fresh_plugin_manager, DataflexPluginManager)
    # Not the process-wide manager: that one was reset and is rebuilt on demand.
    assert dataflex_core.get_plugin_manager() is not fresh_plugin_manager
    assert all(info.loaded for info in fresh_plugin_manager.infos.values())


class _Plugin:
    @hookimpl
    def dataflex_register_weighters(self) -> list[ComponentSpec]:
        return [ComponentSpec(kind="weighter", name="fixture_test_weighter", factory="x.y:Z")]


def test_in_process_plugins_do_not_leak_part_1(fresh_plugin_manager) -> None:
    fresh_plugin_manager.register_plugin(_Plugin(), name="fixture-test")
    assert "fixture_test_weighter" in Registry(fresh_plugin_manager).names("weighter")


def test_in_process_plugins_do_not_leak_part_2(fresh_registry) -> None:
    assert "fixture_test_weighter" not in fresh_registry.names("weighter")
    assert "fixture_test_weighter" not in dataflex_core.get_registry().names("weighter")
