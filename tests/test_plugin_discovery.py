"""Plugin discovery end to end: real distributions, real entry points, fresh virtual environments.

The fixture plugins under ``tests/fixtures/`` are installed next to ``dataflex-core`` and
``dataflex-mix`` in a new venv (uv, from its warm cache), and a small script run by that venv's
Python checks what a user would see:

* ``acme-dataflex-plugin``: discovered through its entry point; ``create("mixer",
  "acme_constant", ...)`` works; its spec's source names the distribution; its event hook runs.
* ``broken-dataflex-plugin``: skipped with a RuntimeWarning naming it; PluginError under
  ``DATAFLEX_STRICT_PLUGINS=1``.
* ``dup-dataflex-plugin``: a second ``static`` mixer; PluginError naming both distributions,
  unless ``DATAFLEX_DISABLE_PLUGINS=dup-dataflex-plugin``.
* ``badkind-dataflex-plugin``: kind ``reranker``; PluginError listing the valid kinds.

A third venv is a plugin author's: core, ``dataflex-testing``, pytest and the acme plugin, where
the plugin's own tests (``MixerConformance`` and the ``fresh_plugin_manager`` fixture, as shown
in ``docs/plugins.md``) must pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CORE = ROOT / "packages" / "dataflex-core"
MIX = ROOT / "packages" / "dataflex-mix"
TESTING = ROOT / "packages" / "dataflex-testing"
ACME = FIXTURES / "acme-dataflex-plugin"

SCRIPT = textwrap.dedent(
    '''
    """Run inside the fresh venv: python check.py SCENARIO."""
    import sys
    import warnings

    scenario = sys.argv[1]

    import dataflex_core
    from dataflex_core import (
        ComponentContext, ConfigError, PluginError, Registry, create, get_plugin_manager,
        get_registry,
    )


    def expect_plugin_error(build, *fragments):
        try:
            build()
        except PluginError as exc:
            msg = str(exc)
            missing = [f for f in fragments if f not in msg]
            assert not missing, f"PluginError lacks {missing}: {msg}"
            print("PluginError:", msg)
            return
        raise AssertionError(f"no PluginError (expected one naming {fragments})")


    if scenario == "acme":
        # DATAFLEX_DISABLE_PLUGINS=dup-dataflex-plugin; broken-dataflex-plugin is installed.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pm = get_plugin_manager()
        runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(runtime) == 1, runtime
        assert "broken" in runtime[0] and "broken-dataflex-plugin" in runtime[0], runtime
        assert not pm.has_plugin("broken")
        assert [i.name for i in pm.load_errors] == ["broken"]
        assert pm.is_blocked("dup")

        info = pm.infos["acme"]
        assert (info.distribution, info.version, info.loaded) == (
            "acme-dataflex-plugin", "0.1.0", True,
        ), info

        registry = get_registry()
        assert {"acme_constant", "static", "random"} <= set(registry.names("mixer"))
        spec = registry.get("mixer", "acme_constant")
        assert "acme-dataflex-plugin" in spec.source, spec.source
        assert "dataflex-mix" in registry.get("mixer", "static").source
        # discovery is lazy: neither the mixer module nor numpy was imported
        assert "acme_dataflex_plugin.mixer" not in sys.modules
        assert "numpy" not in sys.modules and "torch" not in sys.modules

        ctx = ComponentContext(domains=("code", "math"))
        mixer = create("mixer", "acme_constant", context=ctx, weights=[3, 1])
        assert mixer.proportions == (0.75, 0.25), mixer.proportions
        decision = mixer.step(None)
        assert decision.proportions == (0.75, 0.25)
        state = mixer.state_dict()
        assert state == {"domains": ["code", "math"], "proportions": [0.75, 0.25], "updates": 1}
        dataflex_core.check_json_safe(state)
        other = create("mixer", "acme_constant", context=ctx, weights=[1, 1])
        other.load_state_dict(state)
        assert other.proportions == (0.75, 0.25)
        try:
            create("mixer", "acme_constant", context=ctx, weigths=[1, 1])
        except ConfigError as exc:
            assert "did you mean 'weights'" in str(exc), exc
        else:
            raise AssertionError("unknown key accepted")

        # the first-party mixer still works next to the plugin
        static = create("mixer", "static", context=ctx, proportions=[1, 3])
        assert tuple(static.proportions) == (0.25, 0.75)

        # the event hook of the plugin runs
        from acme_dataflex_plugin.plugin import UPDATES

        pm.hook.dataflex_on_update(
            step=4, kind="mixer", component="acme_constant",
            decision={"proportions": list(decision.proportions)},
        )
        assert UPDATES == [{
            "step": 4, "kind": "mixer", "component": "acme_constant",
            "proportions": [0.75, 0.25],
        }], UPDATES

    elif scenario == "strict":
        # DATAFLEX_STRICT_PLUGINS=1, dup disabled: the broken plugin is now an error.
        expect_plugin_error(get_plugin_manager, "'broken'", "broken-dataflex-plugin",
                            "acme_missing_dependency")

    elif scenario == "strict-clean":
        # DATAFLEX_STRICT_PLUGINS=1 with broken and dup disabled: everything loads, no warning.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            registry = get_registry()
        assert "acme_constant" in registry.names("mixer")

    elif scenario == "dup":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the broken plugin
            pm = get_plugin_manager()
        expect_plugin_error(lambda: Registry(pm), "'static'", "dataflex-mix",
                            "dup-dataflex-plugin", "DATAFLEX_DISABLE_PLUGINS")

    elif scenario == "badkind":
        expect_plugin_error(get_registry, "badkind-dataflex-plugin", "'reranker'",
                            "selector, mixer, weighter, featurizer, index")

    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print("OK", scenario)
    '''
)


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    return uv


def make_venv(path: Path, *requirements: Path | str) -> Path:
    """Create a venv at ``path`` with ``requirements`` installed; return its Python.

    Installs run offline from uv's cache when they can and fall back to PyPI otherwise (uv
    needs the index to resolve registry packages such as numpy, even when their wheels are
    cached). ``--no-sources`` keeps the workspace's ``{workspace = true}`` sources out: the
    local packages are installed from the paths given, as wheels, like a user's install.
    """
    uv = _uv()
    subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(path)],
        check=True,
        capture_output=True,
        cwd=path.parent,
    )
    python = path / "bin" / "python"
    base = [uv, "pip", "install", "--quiet", "--no-sources", "--python", str(python)]
    reqs = [str(r) for r in requirements]
    offline = subprocess.run(
        [*base, "--offline", *reqs], capture_output=True, text=True, cwd=path.parent
    )
    if offline.returncode != 0:
        online = subprocess.run([*base, *reqs], capture_output=True, text=True, cwd=path.parent)
        assert online.returncode == 0, f"uv pip install failed:\n{online.stderr}"
    return python


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three venvs: acme, broken and dup next to core and mix; badkind; a plugin author's."""
    root = tmp_path_factory.mktemp("discovery")
    (root / "check.py").write_text(SCRIPT, encoding="utf-8")
    main = make_venv(
        root / "main",
        CORE,
        MIX,
        ACME,
        FIXTURES / "broken-dataflex-plugin",
        FIXTURES / "dup-dataflex-plugin",
    )
    badkind = make_venv(root / "badkind", CORE, FIXTURES / "badkind-dataflex-plugin")
    author = make_venv(root / "author", CORE, TESTING, ACME, "pytest")
    return {"main": main, "badkind": badkind, "author": author, "script": root / "check.py"}


def run_scenario(
    venvs: dict[str, Path], venv: str, scenario: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATAFLEX_STRICT_PLUGINS", "DATAFLEX_DISABLE_PLUGINS", "PYTHONPATH"}
    }
    environ.update(env)
    proc = subprocess.run(
        [str(venvs[venv]), str(venvs["script"]), scenario],
        capture_output=True,
        text=True,
        env=environ,
        cwd=venvs["script"].parent,
        timeout=120,
    )
    assert proc.returncode == 0, f"scenario {scenario} failed:\n{proc.stdout}\n{proc.stderr}"
    assert f"OK {scenario}" in proc.stdout
    return proc


def test_acme_plugin_is_discovered_and_works(venvs: dict[str, Path]) -> None:
    run_scenario(venvs, "main", "acme", DATAFLEX_DISABLE_PLUGINS="dup-dataflex-plugin")


def test_broken_plugin_raises_under_strict(venvs: dict[str, Path]) -> None:
    run_scenario(
        venvs,
        "main",
        "strict",
        DATAFLEX_STRICT_PLUGINS="1",
        DATAFLEX_DISABLE_PLUGINS="dup-dataflex-plugin",
    )


def test_strict_passes_when_the_bad_plugins_are_disabled(venvs: dict[str, Path]) -> None:
    run_scenario(
        venvs,
        "main",
        "strict-clean",
        DATAFLEX_STRICT_PLUGINS="1",
        DATAFLEX_DISABLE_PLUGINS="broken-dataflex-plugin,dup-dataflex-plugin",
    )


def test_duplicate_name_names_both_distributions(venvs: dict[str, Path]) -> None:
    proc = run_scenario(venvs, "main", "dup")
    assert "dup-dataflex-plugin" in proc.stdout


def test_unknown_kind_lists_valid_kinds(venvs: dict[str, Path]) -> None:
    run_scenario(venvs, "badkind", "badkind", DATAFLEX_STRICT_PLUGINS="1")


def test_plugin_authors_tests_pass_with_dataflex_testing(venvs: dict[str, Path]) -> None:
    """The acme plugin's own tests (the plugin guide's example) pass where it is installed."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATAFLEX_STRICT_PLUGINS", "DATAFLEX_DISABLE_PLUGINS", "PYTHONPATH"}
    }
    environ["DATAFLEX_STRICT_PLUGINS"] = "1"
    proc = subprocess.run(
        [
            str(venvs["author"]),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(ACME),
            "--confcutdir",
            str(ACME),
            str(ACME / "tests"),
        ],
        capture_output=True,
        text=True,
        env=environ,
        cwd=venvs["script"].parent,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed is not None and int(passed.group(1)) >= 10, proc.stdout
    assert "failed" not in proc.stdout
