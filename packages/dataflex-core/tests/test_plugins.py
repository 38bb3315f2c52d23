"""The plugin manager: hookspecs, capability and event hooks, guarded entry-point loading."""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pluggy
import pytest
from dataflex_core import (
    ComponentSpec,
    DataflexPluginManager,
    PluginError,
    get_plugin_manager,
    hookimpl,
    hookspec,
    hookspecs,
    reset_plugin_manager,
)
from dataflex_core import plugins as plugins_mod
from dataflex_core import registry as registry_mod
from dataflex_core.plugins import ENTRY_POINT_GROUP, disabled_plugins, strict_plugins
from dataflex_core.registry import Registry

InstallEPs = Callable[..., list[Any]]

SPEC_NAMES = sorted(
    name for name, obj in vars(hookspecs).items() if name.startswith("dataflex_") and callable(obj)
)


def plugin_module(name: str, **functions: Callable[..., Any]) -> types.ModuleType:
    """A module object holding the given hook implementations (as an entry point would load)."""
    module = types.ModuleType(name)
    for fname, fn in functions.items():
        setattr(module, fname, fn)
    return module


def mixer_plugin(*names: str) -> types.ModuleType:
    @hookimpl
    def dataflex_register_mixers() -> list[ComponentSpec]:
        return [ComponentSpec("mixer", n, factory="mods:Factory") for n in names]

    return plugin_module("mixers", dataflex_register_mixers=dataflex_register_mixers)


def bad_signature_plugin() -> types.ModuleType:
    @hookimpl
    def dataflex_register_mixers(not_an_argument: int) -> list[ComponentSpec]:
        return []

    return plugin_module("bad", dataflex_register_mixers=dataflex_register_mixers)


# --------------------------------------------------------------------------- hookspecs


def test_markers_use_the_dataflex_project() -> None:
    assert isinstance(hookspec, pluggy.HookspecMarker)
    assert isinstance(hookimpl, pluggy.HookimplMarker)
    assert hookspec.project_name == hookimpl.project_name == ENTRY_POINT_GROUP == "dataflex"


def test_expected_hooks_exist() -> None:
    assert set(SPEC_NAMES) >= {
        "dataflex_register_selectors",
        "dataflex_register_mixers",
        "dataflex_register_weighters",
        "dataflex_register_featurizers",
        "dataflex_register_index_backends",
        "dataflex_make_featurizer",
        "dataflex_compute_features",
        "dataflex_on_train_begin",
        "dataflex_on_step_end",
        "dataflex_on_update",
        "dataflex_on_save",
        "dataflex_on_train_end",
    }


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_hookspec_is_documented_and_typed(name: str) -> None:
    fn = getattr(hookspecs, name)
    assert inspect.getdoc(fn), f"{name} needs a docstring"
    sig = inspect.signature(fn)
    assert sig.return_annotation is not inspect.Signature.empty, f"{name} needs a return type"
    for param in sig.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name}) untyped"


def test_capability_hooks_are_firstresult_and_others_are_not() -> None:
    pm = DataflexPluginManager()
    for name in SPEC_NAMES:
        firstresult = getattr(pm.hook, name).spec.opts["firstresult"]
        expected = name in {"dataflex_make_featurizer", "dataflex_compute_features"}
        assert firstresult is expected, name


def test_every_hook_is_named_dataflex() -> None:
    pm = DataflexPluginManager()
    hook_names = [n for n in vars(pm.hook) if not n.startswith("_")]
    assert hook_names
    assert all(n.startswith("dataflex_") for n in hook_names)
    assert sorted(hook_names) == SPEC_NAMES


# --------------------------------------------------------------------------- in-process hooks


class PlainFeaturizer:
    """Answers for every model; the trylast fallback."""

    @hookimpl(trylast=True)
    def dataflex_make_featurizer(self, model: Any, kind: str, context: Mapping[str, Any]) -> Any:
        return ("plain", kind)


class Zero3Featurizer:
    """Answers only for partitioned models."""

    @hookimpl
    def dataflex_make_featurizer(self, model: Any, kind: str) -> Any:  # a subset of the args
        return ("zero3", kind) if getattr(model, "partitioned", False) else None


def test_firstresult_capability_hook_with_trylast_fallback() -> None:
    pm = DataflexPluginManager()
    # The fallback is registered last, so without trylast it would be called first.
    pm.register_plugin(Zero3Featurizer(), name="zero3")
    pm.register_plugin(PlainFeaturizer(), name="plain")
    partitioned = types.SimpleNamespace(partitioned=True)
    plain = types.SimpleNamespace(partitioned=False)
    hook = pm.hook.dataflex_make_featurizer
    assert hook(model=partitioned, kind="per_sample_loss", context={}) == (
        "zero3",
        "per_sample_loss",
    )
    assert hook(model=plain, kind="embedding", context={}) == ("plain", "embedding")


def test_capability_hook_without_answer_is_none() -> None:
    pm = DataflexPluginManager()
    pm.register_plugin(Zero3Featurizer(), name="zero3")
    assert pm.hook.dataflex_make_featurizer(model=object(), kind="x", context={}) is None


def test_compute_features_first_result() -> None:
    class Loss:
        @hookimpl
        def dataflex_compute_features(
            self, model: Any, batch: Any, kind: str, options: Mapping[str, Any]
        ) -> Any:
            if kind != "per_sample_loss":
                return None
            return {"values": [0.5 * x for x in batch], "valid": [True] * len(batch)}

    pm = DataflexPluginManager()
    pm.register_plugin(Loss(), name="loss")
    out = pm.hook.dataflex_compute_features(
        model=None, batch=[1, 2], kind="per_sample_loss", options={}
    )
    assert out == {"values": [0.5, 1.0], "valid": [True, True]}
    assert (
        pm.hook.dataflex_compute_features(model=None, batch=[1], kind="grads", options={}) is None
    )


def test_event_hook_reaches_every_plugin() -> None:
    seen: list[tuple[str, int, str, str, Mapping[str, Any]]] = []

    class Logger:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @hookimpl
        def dataflex_on_update(
            self, step: int, kind: str, component: str, decision: Mapping[str, Any]
        ) -> None:
            seen.append((self.tag, step, kind, component, decision))

    pm = DataflexPluginManager()
    pm.register_plugin(Logger("a"), name="a")
    pm.register_plugin(Logger("b"), name="b")
    decision = {"proportions": [0.5, 0.5]}
    pm.hook.dataflex_on_update(step=3, kind="mixer", component="doremi", decision=decision)
    assert sorted(seen, key=lambda x: x[0]) == [
        ("a", 3, "mixer", "doremi", decision),
        ("b", 3, "mixer", "doremi", decision),
    ]


def test_register_plugin_records_in_process_origin() -> None:
    pm = DataflexPluginManager()
    name = pm.register_plugin(mixer_plugin("m"), name="mine")
    assert name == "mine"
    assert pm.infos["mine"].distribution == "(in-process)"
    assert pm.infos["mine"].loaded
    assert "mine" in pm.source_of("mine")
    assert pm.source_of("unknown-plugin") == "unknown-plugin"


def test_register_plugin_rejects_a_blocked_name() -> None:
    pm = DataflexPluginManager()
    pm.set_blocked("nope")
    with pytest.raises(PluginError, match="blocked"):
        pm.register_plugin(mixer_plugin("m"), name="nope")


def test_in_process_plugin_with_a_wrong_signature_is_rejected() -> None:
    pm = DataflexPluginManager()
    with pytest.raises(pluggy.PluginValidationError):
        pm.register_plugin(bad_signature_plugin(), name="bad")


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), (" 1 ", True), ("0", False), ("", False)],
)
def test_strict_plugins_env(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("DATAFLEX_STRICT_PLUGINS", value)
    assert strict_plugins() is expected


def test_strict_plugins_unset() -> None:
    assert strict_plugins() is False


def test_disabled_plugins_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert disabled_plugins() == set()
    monkeypatch.setenv("DATAFLEX_DISABLE_PLUGINS", "a, b  c,,d")
    assert disabled_plugins() == {"a", "b", "c", "d"}


# --------------------------------------------------------------------------- entry points


def test_entry_points_are_loaded_and_recorded(fake_entry_points: InstallEPs) -> None:
    fake_entry_points(
        {"name": "good", "value": "good_mod", "target": mixer_plugin("g"), "dist_name": "good-dist"}
    )
    pm = DataflexPluginManager()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pm.load_entrypoints() == 1
    assert pm.has_plugin("good")
    info = pm.infos["good"]
    assert (info.distribution, info.version, info.entry_point, info.loaded) == (
        "good-dist",
        "1.2.3",
        "good_mod",
        True,
    )
    assert pm.source_of("good") == "good (good-dist 1.2.3)"
    assert pm.load_errors == []
    assert Registry(pm).get("mixer", "g").source == "good (good-dist 1.2.3)"


def test_other_groups_are_ignored(fake_entry_points: InstallEPs) -> None:
    fake_entry_points(
        {"name": "other", "value": "x", "target": mixer_plugin("o"), "group": "pytest11"}
    )
    pm = DataflexPluginManager()
    assert pm.load_entrypoints() == 0
    assert not pm.has_plugin("other")


def test_entry_point_without_distribution(fake_entry_points: InstallEPs) -> None:
    fake_entry_points(
        {"name": "nodist", "value": "m", "target": mixer_plugin("n"), "dist_name": None}
    )
    pm = DataflexPluginManager()
    pm.load_entrypoints()
    assert pm.infos["nodist"].distribution == "?"


def test_broken_import_warns_naming_the_plugin_and_is_skipped(
    fake_entry_points: InstallEPs,
) -> None:
    fake_entry_points(
        {
            "name": "broken",
            "value": "broken_mod",
            "error": ImportError("No module named 'missing_dep'"),
            "dist_name": "broken-dist",
        },
        {"name": "good", "value": "good_mod", "target": mixer_plugin("g")},
    )
    pm = DataflexPluginManager()
    with pytest.warns(RuntimeWarning) as record:
        assert pm.load_entrypoints() == 1
    assert len(record) == 1
    msg = str(record[0].message)
    assert "'broken'" in msg
    assert "broken-dist" in msg
    assert "missing_dep" in msg
    assert "DATAFLEX_DISABLE_PLUGINS=broken" in msg
    assert not pm.has_plugin("broken")
    assert pm.has_plugin("good")
    assert [i.name for i in pm.load_errors] == ["broken"]
    assert Registry(pm).names("mixer") == ["g"]


def test_broken_import_raises_under_strict(
    fake_entry_points: InstallEPs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAFLEX_STRICT_PLUGINS", "1")
    fake_entry_points(
        {
            "name": "broken",
            "value": "broken_mod",
            "error": RuntimeError("boom at import"),
            "dist_name": "broken-dist",
        }
    )
    pm = DataflexPluginManager()
    with pytest.raises(PluginError) as exc:
        pm.load_entrypoints()
    assert "'broken'" in str(exc.value)
    assert "broken-dist" in str(exc.value)
    assert "boom at import" in str(exc.value)
    assert isinstance(exc.value.__cause__, RuntimeError)


def test_plugin_failing_hookspec_validation_is_skipped_with_a_warning(
    fake_entry_points: InstallEPs,
) -> None:
    fake_entry_points(
        {
            "name": "badsig",
            "value": "badsig_mod",
            "target": bad_signature_plugin(),
            "dist_name": "badsig-dist",
        },
        {"name": "good", "value": "good_mod", "target": mixer_plugin("g")},
    )
    pm = DataflexPluginManager()
    with pytest.warns(RuntimeWarning) as record:
        assert pm.load_entrypoints() == 1
    msg = str(record[0].message)
    assert "'badsig'" in msg and "badsig-dist" in msg
    assert "does not fit the hookspecs" in msg
    assert not pm.has_plugin("badsig")
    assert [i.name for i in pm.load_errors] == ["badsig"]
    # no half-registered hooks are left behind
    assert all(
        impl.plugin_name != "badsig" for impl in pm.hook.dataflex_register_mixers.get_hookimpls()
    )


def test_partially_valid_plugin_leaves_no_hooks(fake_entry_points: InstallEPs) -> None:
    class Partly:
        @hookimpl
        def dataflex_register_mixers(self) -> list[ComponentSpec]:
            return [ComponentSpec("mixer", "partly", factory="m:F")]

        # Verified after dataflex_register_mixers (pluggy walks names in sorted order), so the
        # mixer hook is already added when this one fails.
        @hookimpl
        def dataflex_register_selectors(self, nonsense: int) -> list[ComponentSpec]:
            return []

    fake_entry_points({"name": "partly", "value": "p", "target": Partly()})
    pm = DataflexPluginManager()
    with pytest.warns(RuntimeWarning, match="partly"):
        pm.load_entrypoints()
    assert not pm.has_plugin("partly")
    assert pm.hook.dataflex_register_mixers.get_hookimpls() == []
    assert Registry(pm).names("mixer") == []


def test_plugin_failing_hookspec_validation_raises_under_strict(
    fake_entry_points: InstallEPs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAFLEX_STRICT_PLUGINS", "1")
    fake_entry_points({"name": "badsig", "value": "badsig_mod", "target": bad_signature_plugin()})
    pm = DataflexPluginManager()
    with pytest.raises(PluginError, match="'badsig'.*does not fit the hookspecs"):
        pm.load_entrypoints()
    assert isinstance(pm.infos["badsig"].error, str)


@pytest.mark.parametrize("blocked", ["blockme", "blockme-dist"])
def test_disable_plugins_blocks_by_entry_point_or_distribution_name(
    fake_entry_points: InstallEPs, monkeypatch: pytest.MonkeyPatch, blocked: str
) -> None:
    monkeypatch.setenv("DATAFLEX_DISABLE_PLUGINS", f"someone-else,{blocked}")
    monkeypatch.setenv("DATAFLEX_STRICT_PLUGINS", "1")
    fake_entry_points(
        {
            "name": "blockme",
            "value": "blocked_mod",
            "error": ImportError("would fail if loaded"),
            "dist_name": "blockme-dist",
        },
        {"name": "good", "value": "good_mod", "target": mixer_plugin("g")},
    )
    pm = DataflexPluginManager()
    assert pm.load_entrypoints() == 1
    assert not pm.has_plugin("blockme")
    assert pm.is_blocked("blockme")
    assert pm.load_errors == []


def test_disable_plugins_unblocks_a_duplicate(
    fake_entry_points: InstallEPs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points(
        {"name": "first", "value": "a", "target": mixer_plugin("same"), "dist_name": "first-dist"},
        {
            "name": "second",
            "value": "b",
            "target": mixer_plugin("same"),
            "dist_name": "second-dist",
        },
    )
    with pytest.raises(PluginError, match="registered twice"):
        Registry(get_plugin_manager(fresh=True))
    monkeypatch.setenv("DATAFLEX_DISABLE_PLUGINS", "second-dist")
    registry = Registry(get_plugin_manager(fresh=True))
    assert registry.get("mixer", "same").source == "first (first-dist 1.2.3)"


def test_one_plugin_name_from_two_distributions_is_an_error(fake_entry_points: InstallEPs) -> None:
    fake_entry_points(
        {"name": "clash", "value": "a", "target": mixer_plugin("x"), "dist_name": "dist-one"},
        {"name": "clash", "value": "b", "target": mixer_plugin("y"), "dist_name": "dist-two"},
    )
    pm = DataflexPluginManager()
    with pytest.raises(PluginError) as exc:
        pm.load_entrypoints()
    assert "dist-one" in str(exc.value) and "dist-two" in str(exc.value)
    assert "'clash'" in str(exc.value)


def test_same_distribution_seen_twice_is_loaded_once(fake_entry_points: InstallEPs) -> None:
    target = mixer_plugin("x")
    fake_entry_points(
        {"name": "twice", "value": "a", "target": target, "dist_name": "dist-one"},
        {"name": "twice", "value": "a", "target": target, "dist_name": "dist-one"},
    )
    pm = DataflexPluginManager()
    assert pm.load_entrypoints() == 1
    assert Registry(pm).names("mixer") == ["x"]


# --------------------------------------------------------------------------- process-wide manager


def test_get_plugin_manager_is_cached_and_reset(fake_entry_points: InstallEPs) -> None:
    fake_entry_points({"name": "good", "value": "m", "target": mixer_plugin("g")})
    first = get_plugin_manager()
    assert get_plugin_manager() is first
    assert first.has_plugin("good")
    fresh = get_plugin_manager(fresh=True)
    assert fresh is not first
    assert get_plugin_manager() is first
    registry_mod.get_registry()
    assert registry_mod._default is not None
    reset_plugin_manager()
    assert plugins_mod._default is None
    assert registry_mod._default is None
    assert get_plugin_manager() is not first


def test_import_has_no_side_effects() -> None:
    # The autouse fixture reset the caches; nothing discovers plugins until asked.
    assert plugins_mod._default is None
    assert registry_mod._default is None


def test_misspelt_hook_is_rejected_in_process() -> None:
    import pytest
    from dataflex_core import PluginError, hookimpl
    from dataflex_core.plugins import DataflexPluginManager

    class Typo:
        @hookimpl
        def dataflex_on_updat(self, step: int) -> None:  # misspelt: would silently never run
            pass

    pm = DataflexPluginManager()
    with pytest.raises(PluginError, match="unknown hook.*dataflex_on_updat"):
        pm.register_plugin(Typo(), name="typo")
    assert not pm.has_plugin("typo")
