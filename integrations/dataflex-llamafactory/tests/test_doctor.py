"""``dataflex-cli doctor``: every check isolated, a fix line for every failure, exit codes, JSON."""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from dataflex_core import ComponentSpec, hookimpl, reset_plugin_manager
from dataflex_core import plugins as plugins_mod
from dataflex_llamafactory import doctor
from dataflex_llamafactory.cli import main
from dataflex_llamafactory.doctor import FAIL, OK, WARN, Check, Probe, run_checks

STATUSES = {OK, WARN, FAIL}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """Private caches, default plugin settings, and no process-wide manager leaking either way."""
    monkeypatch.setenv("DATAFLEX_CACHE_DIR", str(tmp_path / "dataflex-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("DATAFLEX_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("DATAFLEX_DISABLE_PLUGINS", raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


def _rows(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    rc = main(["doctor", "--json", *argv])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def _by_name(rows: list[Check] | list[dict[str, Any]], name: str) -> Any:
    found = [r for r in rows if (r["name"] if isinstance(r, dict) else r.name) == name]
    assert found, f"no row {name!r} in {rows}"
    return found[0]


def _only(*titles: str) -> list[Any]:
    return [(t, fn) for t, fn in doctor.CHECKS if t in titles]


# --------------------------------------------------------------------------- the real environment


def test_doctor_passes_in_this_environment(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["doctor"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.splitlines()[0].split() == ["check", "status", "detail"]
    for name in (
        "python",
        "torch",
        "transformers",
        "llamafactory",
        "deepspeed",
        "faiss",
        "torch.distributed",
        "dataflex packages",
        "plugins",
        "components",
        "DATAFLEX_CACHE_DIR",
        "HF_HOME",
    ):
        assert any(line.startswith(name + " ") for line in out.splitlines()), (name, out)
    assert " 0 FAIL" in out
    assert "Traceback" not in out


def test_json_output_parses_and_lists_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    rc, payload = _rows(capsys)
    assert rc == 0
    assert payload["ok"] is True
    assert set(payload["summary"]) == STATUSES and payload["summary"][FAIL] == 0
    checks = payload["checks"]
    assert {tuple(sorted(c)) for c in checks} == {("detail", "fix", "name", "status")}
    assert {c["status"] for c in checks} <= STATUSES
    names = [c["name"] for c in checks]
    for expected in (
        "python",
        "torch",
        "transformers",
        "llamafactory",
        "datasets",
        "peft",
        "accelerate",
        "deepspeed",
        "faiss",
        "numpy",
        "pluggy",
        "torch.distributed",
        "dataflex packages",
        "plugins",
        "components",
        "hf offline",
        "HF_HOME",
        "DATAFLEX_CACHE_DIR",
    ):
        assert expected in names, expected
    assert any(n.startswith("disk") for n in names)
    # the real registry: every first-party kind has components, counted per kind
    comps = _by_name(checks, "components")["detail"]
    for kind in ("selector", "mixer", "weighter", "featurizer", "index"):
        assert kind in comps
    assert "dataflex-core" not in _by_name(checks, "dataflex packages")["detail"]  # shortened
    assert "core " in _by_name(checks, "dataflex packages")["detail"]
    assert "supported" in _by_name(checks, "llamafactory")["detail"]


# --------------------------------------------------------------------------- missing packages


@pytest.mark.parametrize(
    ("module", "title", "fix_part"),
    [
        ("faiss", "faiss", "dataflex-select[faiss]"),
        ("deepspeed", "deepspeed", "deepspeed"),
        ("peft", "peft", "peft"),
        ("datasets", "datasets", "datasets"),
        ("torch", "torch", "torch"),
    ],
)
def test_a_blocked_import_is_a_fail_row_with_a_fix(
    monkeypatch: pytest.MonkeyPatch, module: str, title: str, fix_part: str
) -> None:
    # installed (metadata present) but not importable: what a broken wheel looks like
    monkeypatch.setitem(sys.modules, module, None)
    row = _by_name(run_checks(checks=_only(title)), title)
    assert row.status == FAIL, row
    assert "ImportError" in row.detail or "import" in row.detail
    assert fix_part in row.fix


@pytest.mark.parametrize(
    ("module", "dist", "status", "fix_part"),
    [
        ("faiss", "faiss-cpu", WARN, "pip install 'dataflex-select[faiss]'"),
        ("deepspeed", "deepspeed", WARN, "pip install 'dataflex-llamafactory[deepspeed]'"),
        ("peft", "peft", FAIL, "pip install 'dataflex-llamafactory'"),
        ("torch", "torch", FAIL, "pip install torch"),
        ("transformers", "transformers", FAIL, "pip install 'dataflex-llamafactory'"),
    ],
)
def test_an_uninstalled_package_is_reported_through_an_injected_importer(
    module: str, dist: str, status: str, fix_part: str
) -> None:
    def importer(name: str) -> Any:
        if name == module or name.startswith(module + "."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return __import__("importlib").import_module(name)

    def version_of(name: str) -> str:
        if name in {dist, "faiss-gpu", "faiss"}:
            raise md.PackageNotFoundError(name)
        return md.version(name)

    title = "faiss" if module == "faiss" else module
    row = _by_name(
        run_checks(Probe(importer=importer, version_of=version_of), checks=_only(title)), title
    )
    assert row.status == status, row
    assert "not installed" in row.detail
    assert row.fix == fix_part


def test_missing_deepspeed_through_the_cli_is_a_row_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    rc, payload = _rows(capsys)
    assert rc == 1
    row = _by_name(payload["checks"], "deepspeed")
    assert row["status"] == FAIL and row["fix"]
    assert payload["ok"] is False and payload["summary"][FAIL] >= 1


def test_the_table_prints_a_fix_line_under_a_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setattr(doctor, "CHECKS", _only("python", "faiss"))
    assert main(["doctor"]) == 1
    lines = capsys.readouterr().out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("faiss "))
    assert " FAIL " in lines[i]
    assert lines[i + 1].strip().startswith("fix: ") and "dataflex-select[faiss]" in lines[i + 1]
    assert "1 ok, 0 warn, 1 FAIL" in "\n".join(lines)


def test_a_crashing_check_becomes_a_fail_row() -> None:
    def boom(probe: Probe) -> Check:
        raise RuntimeError("kaboom")

    rows = run_checks(checks=[("boom", boom), *_only("python")])
    assert rows[0] == Check(
        "boom",
        FAIL,
        "the check itself failed: RuntimeError: kaboom",
        "report this with the output of `dataflex-cli version`",
    )
    assert rows[1].status == OK


def test_old_python_and_out_of_range_versions_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe(python=(3, 10, 12))
    row = run_checks(probe, checks=_only("python"))[0]
    assert row.status == FAIL and "3.10.12" in row.detail and "3.11" in row.fix

    def version_of(name: str) -> str:
        return "0.9.3" if name == "llamafactory" else md.version(name)

    row = run_checks(Probe(version_of=version_of), checks=_only("llamafactory"))[0]
    assert row.status == FAIL and "0.9.3" in row.detail and "llamafactory==0.9.5" in row.fix
    bypass = Probe(version_of=version_of, environ={"DATAFLEX_DISABLE_VERSION_CHECK": "1"})
    assert run_checks(bypass, checks=_only("llamafactory"))[0].status == WARN


def test_unwritable_cache_fails_with_an_export_fix(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    probe = Probe(environ={"DATAFLEX_CACHE_DIR": str(blocker / "sub"), "HF_HOME": str(blocker)})
    rows = run_checks(probe, checks=_only("HF_HOME", "DATAFLEX_CACHE_DIR"))
    assert [r.status for r in rows] == [FAIL, FAIL]
    assert rows[0].fix.startswith("export HF_HOME=")
    assert rows[1].fix.startswith("export DATAFLEX_CACHE_DIR=")


def test_partial_offline_settings_warn() -> None:
    probe = Probe(environ={"TRANSFORMERS_OFFLINE": "1"})
    row = run_checks(probe, checks=_only("hf offline"))[0]
    assert row.status == WARN and "HF_HUB_OFFLINE=1" in row.fix
    full = Probe(environ={k: "1" for k in doctor._OFFLINE})
    assert run_checks(full, checks=_only("hf offline"))[0].status == OK


# --------------------------------------------------------------------------- plugins


@dataclass
class _FakeEntryPoint:
    """Quacks like ``importlib.metadata.EntryPoint`` for the plugin loader."""

    name: str
    value: str
    target: Any = None
    error: BaseException | None = None
    dist: Any = None
    group: str = "dataflex"

    def load(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.target


def _add_entry_points(monkeypatch: pytest.MonkeyPatch, *fakes: _FakeEntryPoint) -> None:
    real = md.entry_points

    def entry_points(**kw: Any) -> list[Any]:
        found = list(real(**kw))
        return found + [f for f in fakes if kw.get("group") in (None, f.group)]

    monkeypatch.setattr(plugins_mod.md, "entry_points", entry_points)


def _dist(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, version="9.9.9")


def test_a_broken_plugin_is_reported_with_its_name_and_a_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _add_entry_points(
        monkeypatch,
        _FakeEntryPoint(
            "acme_broken",
            "acme_broken.plugin",
            error=ImportError("No module named 'missing_dep'"),
            dist=_dist("acme-broken"),
        ),
    )
    rc, payload = _rows(capsys)
    assert rc == 1
    row = _by_name(payload["checks"], "plugin acme_broken")
    assert row["status"] == FAIL
    assert "missing_dep" in row["detail"] and "acme-broken" in row["detail"]
    assert "DATAFLEX_DISABLE_PLUGINS=acme_broken" in row["fix"]
    assert "pip uninstall acme-broken" in row["fix"]
    # the healthy plugins are still listed and the registry still builds
    assert _by_name(payload["checks"], "plugins")["status"] == OK
    assert _by_name(payload["checks"], "components")["status"] == OK


def test_a_broken_plugin_under_strict_mode_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATAFLEX_STRICT_PLUGINS", "1")
    _add_entry_points(
        monkeypatch,
        _FakeEntryPoint(
            "acme_broken",
            "acme_broken.plugin",
            error=ImportError("nope"),
            dist=_dist("acme-broken"),
        ),
    )
    rows = run_checks(checks=_only("plugins", "components"))
    assert _by_name(rows, "plugin acme_broken").status == FAIL
    strict = _by_name(rows, "plugins (strict)")
    assert strict.status == FAIL and "DATAFLEX_STRICT_PLUGINS" in strict.fix
    assert _by_name(rows, "components").status == OK


def test_a_duplicate_component_name_fails_naming_both_plugins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @hookimpl
    def dataflex_register_mixers() -> list[ComponentSpec]:
        return [ComponentSpec("mixer", "static", factory="acme_dup.mixer:Static")]

    module = types.ModuleType("acme_dup")
    module.dataflex_register_mixers = dataflex_register_mixers  # type: ignore[attr-defined]
    _add_entry_points(
        monkeypatch, _FakeEntryPoint("acme_dup", "acme_dup", target=module, dist=_dist("acme-dup"))
    )
    rows = run_checks(checks=_only("plugins", "components"))
    row = _by_name(rows, "components")
    assert row.status == FAIL
    assert "'static'" in row.detail and "acme-dup" in row.detail and "dataflex-mix" in row.detail
    assert "DATAFLEX_DISABLE_PLUGINS" in row.fix


def test_a_component_whose_module_is_gone_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    @hookimpl
    def dataflex_register_mixers() -> list[ComponentSpec]:
        return [ComponentSpec("mixer", "ghost", factory="acme_ghost_nowhere.mixer:Ghost")]

    module = types.ModuleType("acme_ghost")
    module.dataflex_register_mixers = dataflex_register_mixers  # type: ignore[attr-defined]
    _add_entry_points(
        monkeypatch,
        _FakeEntryPoint("acme_ghost", "acme_ghost", target=module, dist=_dist("acme-ghost")),
    )
    row = _by_name(run_checks(checks=_only("components")), "components")
    assert row.status == FAIL and "'ghost'" in row.detail and "acme-ghost" in row.detail
    assert row.fix


def test_the_gpu_branch_with_a_simulated_cuda_torch() -> None:
    """No GPU here: a stand-in torch reports two CUDA devices and no NCCL."""
    cuda = SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        get_device_name=lambda i: "NVIDIA H200",
        is_bf16_supported=lambda: True,
    )
    fake_torch = SimpleNamespace(
        __version__="2.11.0", version=SimpleNamespace(cuda="12.8"), cuda=cuda
    )
    fake_dist = SimpleNamespace(
        is_available=lambda: True,
        is_gloo_available=lambda: True,
        is_nccl_available=lambda: False,
        is_mpi_available=lambda: False,
    )
    modules = {"torch": fake_torch, "torch.distributed": fake_dist}

    def importer(name: str) -> Any:
        return modules[name] if name in modules else __import__("importlib").import_module(name)

    rows = run_checks(Probe(importer=importer), checks=_only("torch", "torch.distributed"))
    torch_row, dist_row = rows
    assert torch_row.status == OK
    assert "CUDA 12.8: 2 device(s) (NVIDIA H200), bf16 supported" in torch_row.detail
    assert dist_row.status == WARN and "nccl no" in dist_row.detail
    assert "NCCL" in dist_row.fix
