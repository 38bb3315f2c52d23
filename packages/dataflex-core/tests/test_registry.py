"""The component registry and ``create``: specs, duplicates, kinds, strict configs, lookups."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from dataflex_core import (
    KINDS,
    ComponentContext,
    ComponentNotFound,
    ComponentSpec,
    ConfigError,
    DataflexPluginManager,
    EmptyConfig,
    PluginError,
    Registry,
    create,
    get_registry,
    hookimpl,
)
from dataflex_core.registry import REGISTRATION_HOOKS, load_object

WriteModule = Callable[[str, str], str]


@dataclass(frozen=True)
class ConstantConfig:
    """Config of the test mixer."""

    value: float = 1.0
    num_domains: int = 2

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError(f"value must be > 0, got {self.value}")


class ConstantMixer:
    """A tiny mixer used as a callable factory."""

    config_class = ConstantConfig

    def __init__(self, config: ConstantConfig, context: ComponentContext) -> None:
        self.config = config
        self.context = context


class NoConfigMixer:
    """A factory without ``config_class``: its config is EmptyConfig."""

    def __init__(self, config: Any, context: ComponentContext) -> None:
        self.config = config
        self.context = context


class Plugin:
    """An in-process plugin registering the given specs from the matching hooks."""

    def __init__(self, *specs: ComponentSpec) -> None:
        self.specs = specs

    def _of(self, kind: str) -> list[ComponentSpec]:
        return [s for s in self.specs if s.kind == kind]

    @hookimpl
    def dataflex_register_selectors(self) -> list[ComponentSpec]:
        return self._of("selector")

    @hookimpl
    def dataflex_register_mixers(self) -> list[ComponentSpec]:
        return self._of("mixer")

    @hookimpl
    def dataflex_register_weighters(self) -> list[ComponentSpec]:
        return self._of("weighter")

    @hookimpl
    def dataflex_register_featurizers(self) -> list[ComponentSpec]:
        return self._of("featurizer")

    @hookimpl
    def dataflex_register_index_backends(self) -> list[ComponentSpec]:
        return self._of("index")


def constant_spec(name: str = "constant", **kw: Any) -> ComponentSpec:
    return ComponentSpec("mixer", name, factory=ConstantMixer, summary="constant", **kw)


@pytest.fixture
def registry(pm: DataflexPluginManager) -> Registry:
    pm.register_plugin(
        Plugin(
            constant_spec(),
            constant_spec("constant_two"),
            ComponentSpec("mixer", "bare", factory=NoConfigMixer),
            ComponentSpec("selector", "random", factory=NoConfigMixer, paper="arXiv:0000.00000"),
            ComponentSpec("weighter", "loss", factory=NoConfigMixer),
            ComponentSpec("featurizer", "per_sample_loss", factory=NoConfigMixer),
            ComponentSpec("index", "numpy", factory=NoConfigMixer),
        ),
        name="firstparty",
    )
    return Registry(pm)


# --------------------------------------------------------------------------- collection


def test_registration_hooks_cover_every_kind() -> None:
    assert set(REGISTRATION_HOOKS) == set(KINDS)
    assert KINDS == ("selector", "mixer", "weighter", "featurizer", "index", "reward")


def test_specs_are_collected_with_their_source(registry: Registry) -> None:
    assert registry.names("mixer") == ["bare", "constant", "constant_two"]
    assert registry.names("selector") == ["random"]
    spec = registry.get("mixer", "constant")
    assert spec.source.startswith("firstparty")
    assert spec.summary == "constant"
    assert [s.kind for s in registry.specs()] == [
        "selector",
        "mixer",
        "mixer",
        "mixer",
        "weighter",
        "featurizer",
        "index",
    ]


def test_unknown_kind_in_lookups_lists_kinds(registry: Registry) -> None:
    with pytest.raises(ComponentNotFound) as exc:
        registry.names("reranker")
    for kind in KINDS:
        assert kind in str(exc.value)
    with pytest.raises(ComponentNotFound, match="unknown component kind 'mixers'"):
        registry.get("mixers", "constant")


def test_duplicate_name_names_both_plugins(pm: DataflexPluginManager) -> None:
    pm.register_plugin(Plugin(constant_spec("static")), name="dataflex_mix")
    pm.register_plugin(Plugin(constant_spec("static")), name="acme_plugin")
    with pytest.raises(PluginError) as exc:
        Registry(pm)
    msg = str(exc.value)
    assert "'static'" in msg
    assert "dataflex_mix" in msg and "acme_plugin" in msg
    assert "DATAFLEX_DISABLE_PLUGINS" in msg


def test_same_name_of_different_kinds_is_fine(pm: DataflexPluginManager) -> None:
    pm.register_plugin(Plugin(constant_spec("loss")), name="a")
    pm.register_plugin(Plugin(ComponentSpec("selector", "loss", factory=NoConfigMixer)), name="b")
    registry = Registry(pm)
    assert registry.get("mixer", "loss").kind == "mixer"
    assert registry.get("selector", "loss").kind == "selector"


def test_unknown_kind_names_the_plugin_and_lists_valid_kinds(pm: DataflexPluginManager) -> None:
    class BadKind:
        @hookimpl
        def dataflex_register_selectors(self) -> list[ComponentSpec]:
            return [ComponentSpec("reranker", "rr", factory="x:Y")]

    pm.register_plugin(BadKind(), name="badkind")
    with pytest.raises(PluginError) as exc:
        Registry(pm)
    msg = str(exc.value)
    assert "badkind" in msg
    assert "'reranker'" in msg
    assert "valid kinds are selector, mixer, weighter, featurizer, index" in msg


def test_spec_returned_from_the_wrong_hook(pm: DataflexPluginManager) -> None:
    class WrongHook:
        @hookimpl
        def dataflex_register_mixers(self) -> list[ComponentSpec]:
            return [ComponentSpec("selector", "misplaced", factory="x:Y")]

    pm.register_plugin(WrongHook(), name="wronghook")
    with pytest.raises(PluginError) as exc:
        Registry(pm)
    msg = str(exc.value)
    assert "wronghook" in msg
    assert "dataflex_register_mixers()" in msg
    assert "dataflex_register_selectors()" in msg


def test_non_spec_return_is_an_error(pm: DataflexPluginManager) -> None:
    class NotSpecs:
        @hookimpl
        def dataflex_register_mixers(self) -> list[Any]:
            return [{"name": "dict"}]

    pm.register_plugin(NotSpecs(), name="notspecs")
    with pytest.raises(PluginError, match="notspecs.*must return ComponentSpec objects, got dict"):
        Registry(pm)


def test_failing_registration_hook_names_the_plugin(pm: DataflexPluginManager) -> None:
    class Crashes:
        @hookimpl
        def dataflex_register_weighters(self) -> list[ComponentSpec]:
            raise KeyError("oops")

    pm.register_plugin(Crashes(), name="crashes")
    with pytest.raises(PluginError, match=r"crashes.*dataflex_register_weighters\(\).*KeyError"):
        Registry(pm)


def test_single_spec_and_none_are_accepted(pm: DataflexPluginManager) -> None:
    class Single:
        @hookimpl
        def dataflex_register_mixers(self) -> ComponentSpec:
            return constant_spec("single")

        @hookimpl
        def dataflex_register_selectors(self) -> None:
            return None

    pm.register_plugin(Single(), name="single")
    assert Registry(pm).names("mixer") == ["single"]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (ComponentSpec("mixer", "bad name", factory="m:C"), "invalid name 'bad name'"),
        (ComponentSpec("mixer", "1abc", factory="m:C"), "invalid name '1abc'"),
        (ComponentSpec("mixer", "ok", factory="m.C"), "'package.module:ClassName'"),
        (ComponentSpec("mixer", "ok", factory=3), "must be a 'module:Class' string or a callable"),  # type: ignore[arg-type]
    ],
)
def test_malformed_specs_name_the_plugin(
    pm: DataflexPluginManager, spec: ComponentSpec, fragment: str
) -> None:
    pm.register_plugin(Plugin(spec), name="malformed")
    with pytest.raises(PluginError) as exc:
        Registry(pm)
    assert "malformed" in str(exc.value)
    assert fragment in str(exc.value)


def test_spec_helpers() -> None:
    spec = ComponentSpec("mixer", "m", factory=ConstantMixer)
    assert spec.factory_path.endswith(":ConstantMixer")
    assert ComponentSpec("mixer", "m", factory="a.b:C").factory_path == "a.b:C"
    assert spec.with_source("here").source == "here"
    assert spec.source == ""


# --------------------------------------------------------------------------- lookup


def test_component_not_found_suggests_the_closest_name(registry: Registry) -> None:
    with pytest.raises(ComponentNotFound) as exc:
        registry.get("mixer", "constnt")
    msg = str(exc.value)
    assert "no mixer named 'constnt'" in msg
    assert "did you mean 'constant'?" in msg
    assert "bare, constant, constant_two" in msg
    assert "dataflex-cli components" in msg
    assert not msg.startswith('"')  # not quoted like a KeyError


def test_component_not_found_is_a_lookup_error(registry: Registry) -> None:
    with pytest.raises(LookupError):
        registry.get("weighter", "zzzzzz")


def test_component_not_found_with_no_registrations(pm: DataflexPluginManager) -> None:
    with pytest.raises(ComponentNotFound, match=r"Registered mixers: \(none\)"):
        Registry(pm).get("mixer", "doremi")


# --------------------------------------------------------------------------- create


def test_create_builds_with_strict_config_and_context(registry: Registry) -> None:
    ctx = ComponentContext(seed=7, domains=("a", "b"))
    mixer = registry.create("mixer", "constant", context=ctx, value=2, num_domains=3)
    assert isinstance(mixer, ConstantMixer)
    assert mixer.config == ConstantConfig(value=2.0, num_domains=3)
    assert mixer.context.name == "constant"  # filled in from the entry name
    assert mixer.context.seed == 7 and mixer.context.domains == ("a", "b")


def test_create_keeps_an_explicit_context_name(registry: Registry) -> None:
    mixer = registry.create("mixer", "constant", context=ComponentContext(name="loss_high"))
    assert mixer.context.name == "loss_high"


def test_create_default_context(registry: Registry) -> None:
    mixer = registry.create("mixer", "constant")
    assert mixer.context == ComponentContext(name="constant")


def test_create_rejects_unknown_keys_with_did_you_mean(registry: Registry) -> None:
    with pytest.raises(ConfigError) as exc:
        registry.create("mixer", "constant", valeu=2)
    msg = str(exc.value)
    assert "unknown key 'valeu' in mixer 'constant'" in msg
    assert "did you mean 'value'?" in msg


def test_create_rejects_wrong_types_and_bad_values(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="key 'num_domains' must be int, got bool"):
        registry.create("mixer", "constant", num_domains=True)
    with pytest.raises(ConfigError, match=r"mixer 'constant': value must be > 0"):
        registry.create("mixer", "constant", value=-1)


def test_create_without_config_class_uses_empty_config(registry: Registry) -> None:
    bare = registry.create("mixer", "bare")
    assert bare.config == EmptyConfig()
    with pytest.raises(ConfigError, match="takes no keys"):
        registry.create("mixer", "bare", anything=1)


def test_parse_validates_without_building(registry: Registry) -> None:
    assert registry.parse("mixer", "constant", {"value": 3}) == ConstantConfig(value=3.0)
    with pytest.raises(ConfigError, match="did you mean 'num_domains'"):
        registry.parse("mixer", "constant", {"num_domain": 3})


def test_module_level_create_uses_the_process_registry(registry: Registry) -> None:
    mixer = create("mixer", "constant", value=4)
    assert mixer.config.value == 4.0
    assert get_registry() is get_registry()
    with pytest.raises(ComponentNotFound, match="did you mean 'constant'"):
        create("mixer", "constnt")


# --------------------------------------------------------------------------- lazy factories


ACME_MODULE = textwrap.dedent(
    """
    from __future__ import annotations

    from dataclasses import dataclass

    IMPORTED = True


    @dataclass(frozen=True)
    class DirectConfig:
        scale: float = 1.0


    class Direct:
        config_class = DirectConfig

        def __init__(self, config, context):
            self.config = config
            self.context = context


    class Plain:
        def __init__(self, config, context):
            self.config = config
            self.context = context
    """
)


def test_direct_module_class_names(registry: Registry, module_dir: WriteModule) -> None:
    mod = module_dir("direct_components", ACME_MODULE)
    obj = registry.create("mixer", f"{mod}:Direct", scale=2)
    assert type(obj).__name__ == "Direct"
    assert obj.config.scale == 2.0
    assert obj.context.name == f"{mod}:Direct"
    spec = registry.get("selector", f"{mod}:Plain")
    assert spec.source == "(direct path)"
    with pytest.raises(ConfigError, match="did you mean 'scale'"):
        registry.create("mixer", f"{mod}:Direct", scael=2)
    assert type(registry.create("weighter", f"{mod}:Plain").config).__name__ == "EmptyConfig"


def test_direct_path_to_missing_module(registry: Registry) -> None:
    with pytest.raises(PluginError, match="cannot import module 'no_such_module_xyz'"):
        registry.create("mixer", "no_such_module_xyz:Thing")


def test_string_factory_is_imported_only_on_create(
    pm: DataflexPluginManager, module_dir: WriteModule
) -> None:
    import sys

    mod = module_dir("lazy_components", ACME_MODULE)
    pm.register_plugin(
        Plugin(
            ComponentSpec("mixer", "lazy", factory=f"{mod}:Direct", config=f"{mod}:DirectConfig")
        ),
        name="lazy",
    )
    registry = Registry(pm)
    assert registry.names("mixer") == ["lazy"]
    assert mod not in sys.modules  # discovery did not import the factory
    obj = registry.create("mixer", "lazy", scale=0.5)
    assert mod in sys.modules
    assert obj.config.scale == 0.5


def test_config_given_as_a_class(pm: DataflexPluginManager) -> None:
    pm.register_plugin(
        Plugin(ComponentSpec("mixer", "cls", factory=NoConfigMixer, config=ConstantConfig)),
        name="cls",
    )
    assert Registry(pm).create("mixer", "cls", value=5).config == ConstantConfig(value=5.0)


def test_missing_factory_module_names_the_spec_source_and_fix(pm: DataflexPluginManager) -> None:
    pm.register_plugin(
        Plugin(ComponentSpec("index", "faiss", factory="not_installed_faiss_mod:Index")),
        name="selectplug",
    )
    registry = Registry(pm)
    with pytest.raises(PluginError) as exc:
        registry.create("index", "faiss")
    msg = str(exc.value)
    assert "not_installed_faiss_mod" in msg
    assert "selectplug" in msg
    assert "pip install" in msg


def test_load_object(module_dir: WriteModule) -> None:
    mod = module_dir("load_me", ACME_MODULE)
    assert load_object(f"{mod}:DirectConfig").__name__ == "DirectConfig"
    assert load_object(f"{mod}:Direct.config_class").__name__ == "DirectConfig"
    with pytest.raises(PluginError, match="has no attribute 'Missing'"):
        load_object(f"{mod}:Missing")
    with pytest.raises(ConfigError, match="'package.module:ClassName'"):
        load_object(f"{mod}.Direct")
    with pytest.raises(ConfigError):
        load_object(":Direct")
