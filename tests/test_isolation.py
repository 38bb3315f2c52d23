"""Each package installs alone into a clean venv and passes its own tests.

The work is done by ``tools/check_isolation.py``.

One test per package, so a failure names the package. The dataflex-ops venv installs torch from
uv's cache (hard links: a few seconds when the cache is warm).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "check_isolation.py"


def _load_tool() -> ModuleType:
    name = "dataflex_tools_check_isolation"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


PACKAGES: tuple[str, ...] = _load_tool().PACKAGES


@pytest.mark.parametrize("package", PACKAGES)
def test_package_is_isolated(package: str, tmp_path: Path) -> None:
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    report = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--packages",
            package,
            "--workdir",
            str(tmp_path / "venvs"),
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path,
    )
    assert report.is_file(), f"no report:\n{proc.stdout}\n{proc.stderr}"
    (result,) = json.loads(report.read_text())
    shutil.rmtree(tmp_path / "venvs", ignore_errors=True)  # torch venvs are gigabytes
    assert proc.returncode == 0 and result["ok"], proc.stdout
    assert result["passed"] > 0
    assert result["import_ok"] and result["discovery_ok"]


def test_tool_rejects_unknown_packages() -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--packages", "dataflex-nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "unknown package 'dataflex-nope'" in proc.stderr


def test_name_normalisation() -> None:
    tool = _load_tool()
    assert tool.normalise_names("core, mix,dataflex-ops") == [
        "dataflex-core",
        "dataflex-mix",
        "dataflex-ops",
    ]
    assert tool.normalise_names(None) == list(tool.PACKAGES)


def test_pytest_ini_drops_testpaths(tmp_path: Path) -> None:
    ini = _load_tool().pytest_ini(tmp_path / "pytest.ini").read_text()
    assert ini.startswith("[pytest]\n")
    assert "testpaths" not in ini
    assert "--strict-markers" in ini
    assert "slow:" in ini
