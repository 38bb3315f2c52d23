"""The README example (the package's PyPI page) really runs and its suite passes."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_passes_its_suite() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README.md has no python example"
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    suite = namespace["TestUniform"]()
    tests = [name for name in dir(suite) if name.startswith("test_")]
    assert len(tests) >= 8
    for name in tests:
        getattr(suite, name)()
