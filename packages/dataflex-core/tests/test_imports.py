"""Importing dataflex_core is cheap: no numpy, no torch, no plugin discovery."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import dataflex_core


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_loads_neither_numpy_nor_torch() -> None:
    proc = run_python(
        """
        import sys
        import dataflex_core
        import dataflex_core.config, dataflex_core.hookspecs, dataflex_core.io
        import dataflex_core.plugins, dataflex_core.protocols, dataflex_core.registry
        import dataflex_core.schedule, dataflex_core.seeding, dataflex_core.specs
        import dataflex_core.state
        heavy = sorted(m for m in ("numpy", "torch", "faiss", "transformers") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_import_does_not_discover_plugins() -> None:
    proc = run_python(
        """
        import dataflex_core
        from dataflex_core import plugins, registry
        assert plugins._default is None
        assert registry._default is None
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_public_api_is_exported() -> None:
    for name in dataflex_core.__all__:
        assert hasattr(dataflex_core, name), name
    assert dataflex_core.__version__
