"""The DataFlex plugin manager: pluggy plus guarded entry-point discovery.

Plugins (ours and third parties') are modules or objects exposed through the entry-point group
``dataflex``. Loading is guarded: a plugin that fails to import or does not fit the hookspecs is
skipped with a warning naming it and its distribution. Environment variables:

* ``DATAFLEX_STRICT_PLUGINS=1`` turns those warnings into :class:`PluginError`.
* ``DATAFLEX_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point or distribution name.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import pluggy

from dataflex_core import hookspecs
from dataflex_core.errors import PluginError
from dataflex_core.markers import PROJECT

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "DataflexPluginManager",
    "get_plugin_manager",
    "reset_plugin_manager",
    "strict_plugins",
    "disabled_plugins",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dataflex"


def strict_plugins() -> bool:
    """True when ``DATAFLEX_STRICT_PLUGINS`` is set to a true value."""
    return os.environ.get("DATAFLEX_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes"}


def disabled_plugins() -> set[str]:
    """Names listed in ``DATAFLEX_DISABLE_PLUGINS`` (comma or whitespace separated)."""
    raw = os.environ.get("DATAFLEX_DISABLE_PLUGINS", "")
    return {x.strip() for x in raw.replace(",", " ").split() if x.strip()}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from and whether it loaded."""

    name: str
    distribution: str
    version: str
    entry_point: str
    loaded: bool
    error: str = ""


class DataflexPluginManager(pluggy.PluginManager):
    """A pluggy manager with the DataFlex hookspecs and a record of every plugin's origin."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    @property
    def load_errors(self) -> list[PluginInfo]:
        """Plugins that were found but could not be loaded."""
        return [i for i in self.infos.values() if not i.loaded]

    def source_of(self, plugin_name: str) -> str:
        """Human-readable origin of a registered plugin: ``"name (dist version)"``."""
        info = self.infos.get(plugin_name)
        if info is None:
            return plugin_name
        return f"{info.name} ({info.distribution} {info.version})"

    def _skip(self, info: PluginInfo, exc: BaseException) -> None:
        self.infos[info.name] = info
        if strict_plugins():
            raise PluginError(info.error) from exc
        warnings.warn(info.error, RuntimeWarning, stacklevel=3)

    def load_entrypoints(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Load and register every plugin of the entry-point ``group``, guarded.

        Returns:
            The number of plugins registered.
        """
        blocked = disabled_plugins()
        count = 0
        eps = sorted(md.entry_points(group=group), key=lambda e: (e.name, e.value))
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if ep.name in blocked or dist in blocked:
                self.set_blocked(ep.name)
                continue
            if self.has_plugin(ep.name):
                other = self.infos.get(ep.name)
                if other is not None and other.distribution == dist:
                    continue  # the same distribution seen twice on sys.path
                raise PluginError(
                    f"two distributions register the DataFlex plugin name {ep.name!r}: "
                    f"{other.distribution if other else '?'} and {dist}. Uninstall one, or "
                    f"block one with DATAFLEX_DISABLE_PLUGINS={ep.name}."
                )
            base = PluginInfo(ep.name, dist, version, ep.value, loaded=False)
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported
                self._skip(
                    PluginInfo(
                        **{**base.__dict__, "error": (
                            f"DataFlex plugin {ep.name!r} ({ep.value}) from distribution "
                            f"{dist} {version} failed to import: {type(exc).__name__}: {exc}. "
                            f"It was skipped. Fix or uninstall {dist}, or set "
                            f"DATAFLEX_DISABLE_PLUGINS={ep.name} to skip it silently."
                        )}
                    ),
                    exc,
                )
                continue
            try:
                self.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:
                if self.has_plugin(ep.name):  # hooks verified before the bad one stay: undo
                    self.unregister(name=ep.name)
                self._skip(
                    PluginInfo(
                        **{**base.__dict__, "error": (
                            f"DataFlex plugin {ep.name!r} from distribution {dist} {version} "
                            f"does not fit the hookspecs: {exc}. It was skipped; see "
                            "the hooks reference for valid hook names and signatures."
                        )}
                    ),
                    exc,
                )
                continue
            unknown = self.unknown_hooks(ep.name)
            if unknown:
                self.unregister(name=ep.name)
                self._skip(
                    PluginInfo(
                        **{**base.__dict__, "error": (
                            f"DataFlex plugin {ep.name!r} from distribution {dist} {version} "
                            f"implements unknown hook(s) {', '.join(unknown)}; they would never "
                            "run. It was skipped; check the names against the hooks reference."
                        )}
                    ),
                    PluginError(", ".join(unknown)),
                )
                continue
            self.infos[ep.name] = PluginInfo(ep.name, dist, version, ep.value, loaded=True)
            count += 1
        return count

    def unknown_hooks(self, plugin_name: str) -> list[str]:
        """Hook implementations of ``plugin_name`` that match no hookspec (e.g. a misspelling)."""
        plugin = self.get_plugin(plugin_name)
        if plugin is None:
            return []
        return sorted(hc.name for hc in (self.get_hookcallers(plugin) or []) if hc.spec is None)

    def register_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Register an in-process plugin (tests, notebooks); returns its name."""
        registered = self.register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin {name!r} is blocked (DATAFLEX_DISABLE_PLUGINS?).")
        unknown = self.unknown_hooks(registered)
        if unknown:
            self.unregister(name=registered)
            raise PluginError(
                f"plugin {registered!r} implements unknown hook(s) {', '.join(unknown)}; check "
                "the names against the hooks reference."
            )
        self.infos[registered] = PluginInfo(registered, "(in-process)", "", repr(plugin), True)
        return registered


_lock = threading.Lock()
_default: DataflexPluginManager | None = None


def get_plugin_manager(*, fresh: bool = False) -> DataflexPluginManager:
    """Return the process-wide plugin manager, with entry points loaded on first use.

    Args:
        fresh: Build and return a new manager without touching the process-wide one.
    """
    global _default
    if fresh:
        pm = DataflexPluginManager()
        pm.load_entrypoints()
        return pm
    with _lock:
        if _default is None:
            pm = DataflexPluginManager()
            pm.load_entrypoints()
            _default = pm
        return _default


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (and registry); the next use rediscovers plugins."""
    global _default
    with _lock:
        _default = None
    from dataflex_core import registry

    registry._reset_default()
