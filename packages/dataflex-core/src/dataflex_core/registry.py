"""The component registry: every spec from every plugin, and ``create(kind, name, **config)``."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from typing import Any

from dataflex_core.config import EmptyConfig, closest, parse_config
from dataflex_core.errors import ComponentNotFound, ConfigError, PluginError
from dataflex_core.plugins import DataflexPluginManager, get_plugin_manager
from dataflex_core.specs import KINDS, ComponentContext, ComponentSpec

__all__ = ["Registry", "get_registry", "create", "load_object"]

#: Registration hook of each kind.
REGISTRATION_HOOKS: dict[str, str] = {
    "selector": "dataflex_register_selectors",
    "mixer": "dataflex_register_mixers",
    "weighter": "dataflex_register_weighters",
    "featurizer": "dataflex_register_featurizers",
    "index": "dataflex_register_index_backends",
    "reward": "dataflex_register_reward_backends",
}


def load_object(path: str, what: str = "object") -> Any:
    """Import ``"package.module:Attr.sub"`` and return the attribute.

    Raises:
        PluginError: naming the path and the import error (e.g. a missing optional dependency).
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {path!r} must be written as 'package.module:ClassName'.")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(
            f"cannot import module {module_name!r} for {what} {path!r}: {exc}. Install the "
            "package that provides it (or its extra, e.g. `pip install dataflex-select[faiss]`)."
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no attribute {attr!r} ({what}).") from None
    return obj


class Registry:
    """All component specs registered through a plugin manager's registration hooks."""

    def __init__(self, pm: DataflexPluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()
        self._specs: dict[tuple[str, str], ComponentSpec] = {}
        self._collect()

    def _collect(self) -> None:
        for kind, hook_name in REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            # Call implementations one by one so a duplicate can name both plugins.
            for impl in caller.get_hookimpls():
                plugin = impl.plugin_name
                source = self.pm.source_of(plugin) if hasattr(self.pm, "source_of") else plugin
                try:
                    specs = impl.function()
                except Exception as exc:
                    raise PluginError(
                        f"plugin {source} failed in {hook_name}(): {type(exc).__name__}: {exc}"
                    ) from exc
                if specs is None:
                    continue
                if isinstance(specs, ComponentSpec):
                    specs = [specs]
                for spec in specs:
                    if not isinstance(spec, ComponentSpec):
                        raise PluginError(
                            f"plugin {source}: {hook_name}() must return ComponentSpec objects, "
                            f"got {type(spec).__name__}."
                        )
                    spec.validate(source)
                    if spec.kind != kind:
                        raise PluginError(
                            f"plugin {source} returns {spec.kind} {spec.name!r} from {hook_name}(); "
                            f"register it from {REGISTRATION_HOOKS[spec.kind]}() instead."
                        )
                    key = (spec.kind, spec.name)
                    if key in self._specs:
                        raise PluginError(
                            f"{spec.kind} name {spec.name!r} is registered twice: by "
                            f"{self._specs[key].source} and by {source}. Rename one, or disable "
                            "one plugin with DATAFLEX_DISABLE_PLUGINS."
                        )
                    self._specs[key] = spec.with_source(source)

    def specs(self, kind: str | None = None) -> list[ComponentSpec]:
        """Every spec (of ``kind``), sorted by kind then name."""
        if kind is not None:
            self._check_kind(kind)
        return sorted(
            (s for s in self._specs.values() if kind is None or s.kind == kind),
            key=lambda s: (KINDS.index(s.kind), s.name),
        )

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``."""
        return [s.name for s in self.specs(kind)]

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ComponentNotFound(f"unknown component kind {kind!r}; valid kinds: {', '.join(KINDS)}.")

    def get(self, kind: str, name: str) -> ComponentSpec:
        """The spec registered as ``(kind, name)``.

        ``name`` may also be a ``"package.module:Class"`` path, which is used directly.
        """
        self._check_kind(kind)
        spec = self._specs.get((kind, name))
        if spec is not None:
            return spec
        if ":" in name:
            return ComponentSpec(kind=kind, name=name, factory=name, source="(direct path)")
        valid = self.names(kind)
        hint = closest(name, valid)
        msg = f"no {kind} named {name!r}"
        if hint:
            msg += f"; did you mean {hint!r}?"
        msg += f" Registered {kind}s: {', '.join(valid) if valid else '(none)'}."
        msg += " Run `dataflex-cli components` to list them, or name a class as 'package.module:Class'."
        raise ComponentNotFound(msg)

    def config_class(self, spec: ComponentSpec) -> type:
        """The config dataclass of ``spec`` (imports the factory if the spec does not name one)."""
        if spec.config is not None:
            if isinstance(spec.config, str):
                return load_object(spec.config, f"config of {spec.kind} {spec.name!r}")
            return spec.config
        factory = self.factory(spec)
        return getattr(factory, "config_class", EmptyConfig)

    def factory(self, spec: ComponentSpec) -> Any:
        """Import and return the factory of ``spec``."""
        if isinstance(spec.factory, str):
            return load_object(spec.factory, f"{spec.kind} {spec.name!r} from {spec.source}")
        return spec.factory

    def parse(self, kind: str, name: str, config: Mapping[str, Any] | None = None) -> Any:
        """Validate ``config`` strictly against the component's config class."""
        spec = self.get(kind, name)
        return parse_config(self.config_class(spec), config, where=f"{kind} {name!r}")

    def create(
        self,
        kind: str,
        name: str,
        /,
        *,
        context: ComponentContext | None = None,
        **config: Any,
    ) -> Any:
        """Build the component ``(kind, name)`` from keyword config values.

        Args:
            kind: One of ``selector``, ``mixer``, ``weighter``, ``featurizer``, ``index``.
            name: A registered name, or ``"package.module:Class"``.
            context: Runtime facts (seed, domains, pool size); defaults to an empty context.
            **config: Hyperparameters, validated strictly (unknown keys are errors).

        Returns:
            ``factory(config, context)``.
        """
        spec = self.get(kind, name)
        cfg = parse_config(self.config_class(spec), config, where=f"{kind} {name!r}")
        ctx = context if context is not None else ComponentContext()
        if not ctx.name:
            ctx = ComponentContext(**{**ctx.__dict__, "name": name})
        return self.factory(spec)(cfg, ctx)


_lock = threading.Lock()
_default: Registry | None = None


def get_registry() -> Registry:
    """The registry of the process-wide plugin manager (built once)."""
    global _default
    with _lock:
        if _default is None:
            _default = Registry(get_plugin_manager())
        return _default


def _reset_default() -> None:
    global _default
    with _lock:
        _default = None


def create(kind: str, name: str, /, *, context: ComponentContext | None = None, **config: Any) -> Any:
    """Shortcut for ``get_registry().create(kind, name, context=context, **config)``."""
    return get_registry().create(kind, name, context=context, **config)
