"""``examples/standalone_mix_hf.py``: ODM mixing in a plain Hugging Face ``Trainer``."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_hf_trainer_mixes_through_a_callback() -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
    }
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "standalone_mix_hf.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    elapsed = time.perf_counter() - start
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr

    # One decision every 2 steps, each applying from the step after it was made (the loader
    # draws one micro-batch ahead); the loader never asked for an undecided window.
    applies = [(int(s), int(f)) for s, f in re.findall(r"^\s*(\d+)\s.*from step (\d+);", out, re.M)]
    assert applies == [(s, s + 1) for s in range(2, 40, 2)], out

    final = ast.literal_eval(out.split("final proportions:")[1].splitlines()[0].strip())
    assert list(final) == ["low", "pattern", "high"]
    p = list(final.values())
    assert all(x >= 0 for x in p) and sum(p) == pytest.approx(1.0, abs=1e-3)  # rounded to 4 places
    assert max(abs(x - 1 / 3) for x in p) > 0.02, final  # moved away from uniform
    # ODM rewards training loss: the learnable pattern domain loses share to the random ones.
    assert final["pattern"] == min(p), final

    # The proportions reached the data: rows trained per domain were counted in compute_loss.
    rows = ast.literal_eval(re.search(r"rows trained per domain: (\[.*\])", out).group(1))
    assert sum(rows) == 40 * 8 and min(rows) > 0, out
    assert elapsed < 120, f"the example took {elapsed:.0f} s (a few seconds on an idle machine)"
