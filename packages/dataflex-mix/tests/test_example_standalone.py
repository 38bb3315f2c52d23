"""``examples/standalone_mix.py`` runs with numpy alone and prints the mixer's proportions."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "standalone_mix.py"


def test_standalone_example_runs_without_torch() -> None:
    assert EXAMPLE.is_file(), f"missing example {EXAMPLE}"
    # Block torch: the example must not need it (dataflex-mix is numpy-only).
    code = (
        "import sys, runpy\n"
        "sys.modules['torch'] = None\n"
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')\n"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "final proportions:" in out and "(proportions)" in out
    final = out.split("final proportions:")[1].splitlines()[0]
    shares = ast.literal_eval(final.strip())
    assert set(shares) == {"easy", "medium", "hard", "noisy"}
    assert abs(sum(shares.values()) - 1) < 1e-2
    # ODM moves mass away from the domain whose loss drops fastest.
    assert shares["easy"] < 0.25 < shares["hard"]
    assert elapsed < 30, f"the example took {elapsed:.1f} s (budget: a few seconds)"
