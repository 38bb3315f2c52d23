"""dataflex-select's copy of the shared sampling primitives (spec §0.3)."""

from __future__ import annotations

import ast
from pathlib import Path

import dataflex_select
from dataflex_select import primitives
from dataflex_testing import check_primitives


def test_conformance_of_the_copy() -> None:
    check_primitives(primitives)


def test_select_imports_no_sibling() -> None:
    # Siblings never import siblings (architecture §3): the primitives are a copy, not a link.
    # Checked on the source, since plugin discovery may have imported dataflex_mix already.
    forbidden = ("dataflex_mix", "dataflex_ops", "dataflex_weight", "torch", "faiss")
    for path in Path(dataflex_select.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_import_does_not_load_torch_or_faiss() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dataflex_select\n"
        "from dataflex_select import *\n"
        "import dataflex_select.plugin\n"
        "assert 'torch' not in sys.modules and 'faiss' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
