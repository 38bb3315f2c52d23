"""The README example (the package's PyPI page) really runs."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README.md has no python example"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 12, "keep the README example to about ten lines"
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
