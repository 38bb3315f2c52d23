"""Fixtures for the dataflex-core unit tests.

These tests need only dataflex-core, pluggy and pytest: no numpy, no other dataflex package, and
no entry points from the surrounding environment (each test builds its own plugin manager).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dataflex_core import plugins as plugins_mod
from dataflex_core import registry as registry_mod
from dataflex_core.plugins import DataflexPluginManager


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every test without the plugin environment variables and with no cached manager."""
    monkeypatch.delenv("DATAFLEX_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("DATAFLEX_DISABLE_PLUGINS", raising=False)
    monkeypatch.setattr(plugins_mod, "_default", None)
    monkeypatch.setattr(registry_mod, "_default", None)
    yield


@pytest.fixture
def pm(monkeypatch: pytest.MonkeyPatch) -> DataflexPluginManager:
    """An empty plugin manager (no entry points) installed as the process-wide default.

    Module-level helpers such as :func:`dataflex_core.create` then use it.
    """
    manager = DataflexPluginManager()
    monkeypatch.setattr(plugins_mod, "_default", manager)
    monkeypatch.setattr(registry_mod, "_default", None)
    return manager


@dataclass
class FakeEntryPoint:
    """Quacks like :class:`importlib.metadata.EntryPoint` for the plugin loader."""

    name: str
    value: str
    target: Any = None
    error: BaseException | None = None
    dist_name: str | None = "fake-dist"
    dist_version: str = "1.2.3"
    group: str = "dataflex"

    @property
    def dist(self) -> Any:
        if self.dist_name is None:
            return None
        return SimpleNamespace(name=self.dist_name, version=self.dist_version)

    def load(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.target


@pytest.fixture
def fake_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., list[FakeEntryPoint]]:
    """Replace entry-point discovery with fake entry points.

    Returns a function; call it with one mapping per entry point, holding the keyword arguments
    of :class:`FakeEntryPoint` (``name``, ``value``, ``target`` or ``error``, ``dist_name``...).
    """

    def install(*specs: dict[str, Any]) -> list[FakeEntryPoint]:
        listed = [FakeEntryPoint(**spec) for spec in specs]

        def entry_points(*, group: str | None = None, **_: Any) -> list[FakeEntryPoint]:
            return [ep for ep in listed if group is None or ep.group == group]

        monkeypatch.setattr(plugins_mod.md, "entry_points", entry_points)
        return listed

    return install


@pytest.fixture
def module_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], str]]:
    """Write an importable module into a temporary folder on ``sys.path``; returns its name."""
    folder = tmp_path / "mods"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (folder / f"{name}.py").write_text(source, encoding="utf-8")
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)
