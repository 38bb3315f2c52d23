"""The documentation site builds strictly, documents every hook, and shows real plugin code."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from dataflex_core import DataflexPluginManager, hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOKS_PAGE = DOCS / "hooks.md"
ACME = ROOT / "tests" / "fixtures" / "acme-dataflex-plugin"


def _load_generator() -> ModuleType:
    name = "dataflex_tools_gen_hooks_doc"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "gen_hooks_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _hook_names() -> list[str]:
    """Hook names as pluggy sees them (independent of the generator's own discovery)."""
    pm = DataflexPluginManager()
    return sorted(n for n in vars(pm.hook) if n.startswith("dataflex_"))


def _mkdocs() -> str:
    beside = Path(sys.executable).with_name("mkdocs")
    if beside.exists():
        return str(beside)
    found = shutil.which("mkdocs")
    if found is None:
        pytest.skip("mkdocs is not installed (uv sync installs it with the dev group)")
    return found


def test_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [
            _mkdocs(),
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in (
        "index",
        "install",
        "concepts",
        "configuration",
        "plugins",
        "hooks",
        "cli",
        "benchmarks",
    ):
        assert (tmp_path / "site" / page / "index.html").is_file() or (
            page == "index" and (tmp_path / "site" / "index.html").is_file()
        ), page


@pytest.mark.parametrize("name", _hook_names())
def test_every_hook_is_documented_with_its_signature(name: str) -> None:
    gen = _load_generator()
    page = HOOKS_PAGE.read_text(encoding="utf-8")
    fn = getattr(hookspecs, name)
    signature = gen.render_signature(fn)
    assert f"def {signature}:" in page, (
        f"docs/hooks.md lacks {signature}; run `python tools/gen_hooks_doc.py`"
    )
    assert f"### `{name}`" in page
    first_line = (inspect.getdoc(fn) or "").splitlines()[0]
    assert gen.markdown_doc(first_line) in page


def test_signature_rendering_keeps_source_annotations() -> None:
    gen = _load_generator()
    rendered = gen.render_signature(hookspecs.dataflex_make_featurizer)
    assert rendered == (
        "dataflex_make_featurizer(model: Any, kind: str, context: Mapping[str, Any]) -> Any | None"
    )
    assert gen.render_signature(hookspecs.dataflex_register_mixers) == (
        "dataflex_register_mixers() -> list[ComponentSpec]"
    )


def test_generator_finds_every_hook() -> None:
    gen = _load_generator()
    assert sorted(fn.__name__ for fn in gen.hookspec_functions()) == _hook_names()


def test_hooks_page_is_up_to_date() -> None:
    gen = _load_generator()
    assert HOOKS_PAGE.read_text(encoding="utf-8") == gen.render_page(), (
        "docs/hooks.md is out of date; run `python tools/gen_hooks_doc.py`"
    )


_TITLED_BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)\n```$', re.MULTILINE | re.DOTALL)


def test_plugin_guide_shows_the_fixture_plugin_verbatim() -> None:
    page = (DOCS / "plugins.md").read_text(encoding="utf-8")
    blocks = _TITLED_BLOCK.findall(page)
    titles = [title for title, _ in blocks]
    assert {
        "pyproject.toml",
        "src/acme_dataflex_plugin/plugin.py",
        "src/acme_dataflex_plugin/mixer.py",
        "tests/test_acme.py",
    } <= set(titles)
    for title, code in blocks:
        source = (ACME / title).read_text(encoding="utf-8").rstrip("\n")
        assert code == source, f"docs/plugins.md's copy of {title} differs from the fixture"


def test_docs_mention_the_plugin_environment_variables() -> None:
    page = (DOCS / "plugins.md").read_text(encoding="utf-8")
    for needle in (
        "DATAFLEX_STRICT_PLUGINS",
        "DATAFLEX_DISABLE_PLUGINS",
        "fresh_plugin_manager",
        "MixerConformance",
        "[project.entry-points.dataflex]",
    ):
        assert needle in page, needle
