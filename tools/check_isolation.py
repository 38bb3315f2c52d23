"""Prove that each DataFlex package installs alone and passes its own tests.

For every package this tool creates a clean virtual environment (``uv venv``), installs only
that package with its declared dependencies, plus ``dataflex-core``, ``dataflex-testing`` and
pytest, from the local paths, then:

1. runs the package's own ``tests/`` with pytest inside that environment, isolated from the
   workspace's pytest configuration (no ``testpaths``, no workspace conftest, no cache);
2. imports the package in a fresh interpreter and checks that it did not load what it must not
   (``dataflex_core``: numpy and torch; ``dataflex_mix``, ``dataflex_select``, ``dataflex_weight``
   and ``dataflex_testing``: torch);
3. builds the component registry under ``DATAFLEX_STRICT_PLUGINS=1``, so the package's plugin
   must load without its siblings, and records whether discovery loaded torch.

``dataflex-core`` is installed without ``dataflex-testing`` (which needs numpy): its tests must
pass with only core, pluggy and pytest.

Usage::

    python tools/check_isolation.py                       # every package
    python tools/check_isolation.py --packages core,mix   # some ("dataflex-" is optional)
    python tools/check_isolation.py --keep                # keep the venvs and print where

It prints a table and exits non-zero when any package fails. Installs use uv's default cache:
offline first, then PyPI when uv needs the index to resolve (the wheels still come from the
cache when they are there).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES_DIR = ROOT / "packages"

#: Every package this tool checks, in order.
PACKAGES: tuple[str, ...] = (
    "dataflex-core",
    "dataflex-mix",
    "dataflex-select",
    "dataflex-weight",
    "dataflex-ops",
    "dataflex-testing",
)

#: Modules that importing a package must not load (architecture §3).
FORBIDDEN_ON_IMPORT: dict[str, tuple[str, ...]] = {
    "dataflex-core": ("numpy", "torch"),
    "dataflex-mix": ("torch",),
    "dataflex-select": ("torch",),
    "dataflex-weight": ("torch",),
    "dataflex-ops": (),
    "dataflex-testing": ("torch",),
}

IMPORT_CHECK = """
import importlib, json, sys
module = sys.argv[1]
forbidden = json.loads(sys.argv[2])
importlib.import_module(module)
print(json.dumps(sorted(m for m in forbidden if m in sys.modules)))
"""

DISCOVERY_CHECK = """
import json, sys
import dataflex_core
registry = dataflex_core.get_registry()
pm = dataflex_core.get_plugin_manager()
print(json.dumps({
    "plugins": sorted(i.name for i in pm.infos.values() if i.loaded),
    "components": len(registry.specs()),
    "torch": "torch" in sys.modules,
}))
"""


@dataclass
class Result:
    """The outcome for one package."""

    package: str
    install_s: float = 0.0
    test_s: float = 0.0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    import_ok: bool = False
    import_note: str = ""
    discovery_ok: bool = False
    discovery_note: str = ""
    problems: list[str] = field(default_factory=list)
    venv: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.problems


def package_dir(name: str) -> Path:
    """The source folder of package ``name``."""
    return PACKAGES_DIR / name


def normalise_names(raw: str | None) -> list[str]:
    """Parse ``--packages``: comma-separated, with or without the ``dataflex-`` prefix."""
    if not raw:
        return list(PACKAGES)
    names = []
    for item in raw.replace(" ", ",").split(","):
        item = item.strip().replace("_", "-")
        if not item:
            continue
        if not item.startswith("dataflex-"):
            item = f"dataflex-{item}"
        if item not in PACKAGES:
            raise SystemExit(f"unknown package {item!r}; choose from {', '.join(PACKAGES)}")
        names.append(item)
    return names


def pytest_ini(path: Path) -> Path:
    """Write the workspace's pytest options, without ``testpaths``, to ``path``.

    The package's tests then see the same markers, ``--strict-markers`` and import mode as in
    the workspace, but collection is limited to the path given on the command line.
    """
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    options = data.get("tool", {}).get("pytest", {}).get("ini_options", {})
    lines = ["[pytest]"]
    for key, value in options.items():
        if key in {"testpaths", "minversion"}:
            continue
        if isinstance(value, list):
            if not value:
                continue
            lines.append(f"{key} =")
            lines.extend(f"    {item}" for item in value)
        else:
            lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without anything that would leak the workspace venv in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "PYTHONPATH",
            "VIRTUAL_ENV",
            "PYTHONHOME",
            "DATAFLEX_STRICT_PLUGINS",
            "DATAFLEX_DISABLE_PLUGINS",
            "PYTEST_ADDOPTS",
            "PYTEST_PLUGINS",
        }
    }
    env.update(extra)
    return env


def uv_install(uv: str, python: Path, requirements: list[str], cwd: Path) -> None:
    """``uv pip install`` into ``python``'s venv: offline first, then with the index.

    ``--no-sources`` ignores ``tool.uv.sources`` (``{workspace = true}``), which would otherwise
    install the workspace's dataflex-core editable; the local paths given are built as wheels.

    Raises:
        RuntimeError: with uv's output when both attempts fail.
    """
    base = [uv, "pip", "install", "--quiet", "--no-sources", "--python", str(python)]
    env = clean_env()
    offline = subprocess.run(
        [*base, "--offline", *requirements], capture_output=True, text=True, cwd=cwd, env=env
    )
    if offline.returncode == 0:
        return
    online = subprocess.run(
        [*base, *requirements], capture_output=True, text=True, cwd=cwd, env=env
    )
    if online.returncode != 0:
        raise RuntimeError(f"uv pip install failed:\n{online.stdout}\n{online.stderr}".strip())


def count_junit(path: Path) -> tuple[int, int, int, int]:
    """(passed, failed, errors, skipped) from a JUnit XML report."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failures = errors = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failures += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return tests - failures - errors - skipped, failures, errors, skipped


def check_package(
    name: str, workdir: Path, uv: str, ini: Path, pytest_args: list[str], timeout: float
) -> Result:
    """Create the venv of ``name``, install, run its tests and the import checks."""
    result = Result(package=name)
    src = package_dir(name)
    if not (src / "pyproject.toml").is_file():
        result.problems.append(f"no package at {src}")
        return result
    venv = workdir / name
    result.venv = str(venv)
    if venv.exists():
        shutil.rmtree(venv)
    module = name.replace("-", "_")

    # ------------------------------------------------------------------ install
    start = time.perf_counter()
    try:
        subprocess.run(
            [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
            check=True,
            capture_output=True,
            text=True,
            cwd=workdir,
            env=clean_env(),
        )
        python = venv / "bin" / "python"
        requirements = [str(src), str(package_dir("dataflex-core"))]
        if name != "dataflex-core":
            requirements.append(str(package_dir("dataflex-testing")))
        requirements.append("pytest")
        uv_install(uv, python, sorted(set(requirements)), workdir)
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        result.install_s = time.perf_counter() - start
        result.problems.append(f"install failed: {detail.strip()[-2000:]}")
        return result
    result.install_s = time.perf_counter() - start

    # ------------------------------------------------------------------ tests
    tests = src / "tests"
    test_files = sorted(tests.rglob("test_*.py")) + sorted(tests.rglob("*_test.py"))
    if not tests.is_dir():
        result.problems.append(f"no tests folder ({tests})")
    elif not test_files:
        result.problems.append(f"no test files in {tests}")
    else:
        report = venv / "junit.xml"
        cmd = [
            str(python),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ini),
            "--rootdir",
            str(src),
            "--confcutdir",
            str(src),
            f"--junitxml={report}",
            "-q",
            *pytest_args,
            str(tests),
        ]
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                cwd=venv,  # not the repository: nothing local shadows the installed package
                env=clean_env(),
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            result.test_s = time.perf_counter() - start
            result.problems.append(f"tests timed out after {timeout:.0f} s")
        else:
            result.test_s = time.perf_counter() - start
            if report.is_file():
                result.passed, result.failed, result.errors, result.skipped = count_junit(report)
            if proc.returncode == 5 or (
                report.is_file()
                and result.passed + result.failed + result.errors + result.skipped == 0
            ):
                result.problems.append("no tests were collected")
            elif proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
                result.problems.append(f"pytest exited {proc.returncode}:\n{tail}")

    # ------------------------------------------------------------------ import
    forbidden = FORBIDDEN_ON_IMPORT.get(name, ())
    proc = subprocess.run(
        [str(python), "-c", IMPORT_CHECK, module, json.dumps(list(forbidden))],
        capture_output=True,
        text=True,
        cwd=venv,
        env=clean_env(),
        timeout=300,
    )
    if proc.returncode != 0:
        result.import_note = "import failed"
        result.problems.append(f"import {module} failed:\n{proc.stderr.strip()[-2000:]}")
    else:
        loaded = json.loads(proc.stdout.strip().splitlines()[-1])
        if loaded:
            result.import_note = f"loads {', '.join(loaded)}"
            result.problems.append(f"import {module} loads {', '.join(loaded)}")
        else:
            result.import_ok = True
            result.import_note = (
                "no " + " / ".join(forbidden) if forbidden else "ok (torch allowed)"
            )

    # ------------------------------------------------------------------ discovery
    proc = subprocess.run(
        [str(python), "-c", DISCOVERY_CHECK],
        capture_output=True,
        text=True,
        cwd=venv,
        env=clean_env(DATAFLEX_STRICT_PLUGINS="1"),
        timeout=300,
    )
    if proc.returncode != 0:
        result.discovery_note = "failed"
        result.problems.append(f"strict plugin discovery failed:\n{proc.stderr.strip()[-2000:]}")
    else:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        result.discovery_ok = True
        result.discovery_note = f"{info['components']} component(s)" + (
            ", loads torch" if info["torch"] else ""
        )
    return result


def format_table(results: list[Result]) -> str:
    """A plain-text table of the results."""
    header = (
        "package",
        "install s",
        "tests s",
        "passed/failed/err/skip",
        "import",
        "discovery",
        "result",
    )
    rows = [header]
    for r in results:
        rows.append(
            (
                r.package,
                f"{r.install_s:.1f}",
                f"{r.test_s:.1f}",
                f"{r.passed}/{r.failed}/{r.errors}/{r.skipped}",
                r.import_note or "-",
                r.discovery_note or "-",
                "ok" if r.ok else "FAIL",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the checks; return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", help="comma-separated subset, e.g. core,mix")
    parser.add_argument("--keep", action="store_true", help="keep the virtual environments")
    parser.add_argument("--workdir", type=Path, help="where to create the venvs (kept)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-package test timeout")
    parser.add_argument(
        "--pytest-args", default="", help="extra pytest arguments, e.g. \"-m 'not slow'\""
    )
    args = parser.parse_args(argv)

    uv = shutil.which("uv")
    if uv is None:
        print("uv is not on PATH; install it from https://docs.astral.sh/uv/", file=sys.stderr)
        return 2
    names = normalise_names(args.packages)
    keep = args.keep or args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dataflex-isolation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ini = pytest_ini(workdir / "pytest.ini")
    pytest_args = shlex.split(args.pytest_args)

    results: list[Result] = []
    try:
        for name in names:
            print(f"[isolation] {name} ...", file=sys.stderr, flush=True)
            result = check_package(name, workdir, uv, ini, pytest_args, args.timeout)
            results.append(result)
            status = "ok" if result.ok else "FAIL"
            print(
                f"[isolation] {name}: {status} (install {result.install_s:.1f} s, "
                f"tests {result.test_s:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(format_table(results))
    for r in results:
        for problem in r.problems:
            print(f"\n{r.package}: {problem}")
    if keep:
        print(f"\nvenvs kept in {workdir}")
    if args.json:
        payload = [{**asdict(r), "ok": r.ok} for r in results]
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
