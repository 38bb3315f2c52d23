"""dataflex-mix stays numpy-only: no torch, no sibling packages (architecture §3)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dataflex_mix


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, dataflex_mix\n"
        "from dataflex_mix import *\n"
        "import dataflex_mix.plugin\n"
        "assert 'torch' not in sys.modules, 'dataflex_mix imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_module_is_cheap() -> None:
    # Discovery imports dataflex_mix.plugin (and the package): it must not pay for numpy.
    code = "import sys, dataflex_mix.plugin\nassert 'numpy' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_sibling_imports() -> None:
    forbidden = ("dataflex_select", "dataflex_ops", "dataflex_weight", "torch")
    for path in Path(dataflex_mix.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
