"""The standalone weighting examples run as a user would run them (plain PyTorch, HF Trainer)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _run(script: str, timeout: float) -> str:
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
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_plain_pytorch_loop() -> None:
    out = _run("standalone_weight_torch.py", timeout=120)
    stats = re.findall(r"weights min ([\d.]+) max ([\d.]+) mean ([\d.]+)", out)
    assert stats, out
    for low, high, mean in stats:
        # weights of a micro-batch of 16 sum to 1: mean 1/16, and they really differ
        assert float(mean) == pytest.approx(1 / 16, abs=1e-4)
        assert float(low) < float(mean) < float(high)
    accuracy = float(re.search(r"final accuracy on the noisy labels: ([\d.]+)", out).group(1))
    assert accuracy > 0.7, out


@pytest.mark.slow
def test_hf_trainer_subclass() -> None:
    out = _run("standalone_weight_hf.py", timeout=300)
    assert "8 weighted micro-batches" in out, out  # steps 1..4, two micro-batches each
    mean = float(re.search(r"weights min [\d.]+ max [\d.]+ mean ([\d.]+)", out).group(1))
    assert mean == pytest.approx(0.25, abs=1e-4)  # 4 samples per micro-batch
    # Random tokens over a vocabulary of 64: the loss stays near ln 64 = 4.16. Without the
    # Trainer's division by gradient accumulation the logged loss would be about twice that.
    loss = float(re.search(r"final training loss ([\d.]+)", out).group(1))
    assert 3.5 < loss < 5.0, out
