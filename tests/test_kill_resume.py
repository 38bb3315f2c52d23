"""A run killed by SIGKILL after a checkpoint, resumed from it, equals an uninterrupted run.

One component per paradigm: a mixer (ODM), a model-in-the-loop selector (loss) and a weighter
(loss), plus the DoReMi pipeline's stateful step (the proxy run against a reference model; its
averaged weights, which step 3 trains on, must come out the same). The killed run's folder is reused as it is (logs that ran past the checkpoint, maybe a
half-written later checkpoint), as a user would after a crash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS, CKPT = 32, 12


def _cfg(quickstart, out: Path, dataflex: dict, **extra) -> dict:
    cfg = quickstart(
        output_dir=str(out),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        logging_steps=1,
        save_steps=CKPT,
        plot_loss=False,
        **extra,
    )
    cfg["dataflex"] = {**dataflex, "plot": False}
    return cfg


PARADIGMS = {
    "mix-odm": {
        "train_type": "dynamic_mix",
        "component_name": "odm",
        "warmup_step": 4,
        "update_step": 1,
        "update_times": STEPS - 4,
    },
    "mix-doremi-proxy": {
        "train_type": "dynamic_mix",
        "component_name": "doremi",
        # any model with the proxy's tokenizer serves as the reference for resume equivalence
        "component_params": {"reference_model_path": "builtin:tiny-llama?seed=1"},
        "warmup_step": 0,
        "update_step": 1,
        "update_times": STEPS,
    },
    "select-loss": {
        "train_type": "dynamic_select",
        "component_name": "loss",
        "component_params": {"candidate_subsample": 96},
        "warmup_step": 2,
        "update_step": 3,
        "update_times": 0,
        "train_step": STEPS,
    },
    "weight-loss": {
        "train_type": "dynamic_weight",
        "component_name": "loss",
        "warmup_step": 2,
        "train_step": STEPS,
    },
}


def _losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def _log(out: Path, name: str) -> list[dict]:
    """A dataflex log's records (wall-clock timings live apart, in ``timing.jsonl``)."""
    path = out / "dataflex" / name
    return (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    )


def _kill_after_checkpoint(cmd: list[str], env: dict, out: Path, timeout: float = 300) -> None:
    """Start ``cmd``, SIGKILL its process group once a few steps ran past checkpoint ``CKPT``."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = out / f"checkpoint-{CKPT}" / "dataflex_state.json"
    log = out / "trainer_log.jsonl"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and log.exists():
                done = [
                    json.loads(x).get("current_steps", 0)
                    for x in log.read_text().splitlines()
                    if x.strip()
                ]
                if done and max(done) >= CKPT + 4:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == -signal.SIGKILL, (
        f"the run ended (rc {rc}) before it could be killed; make it longer"
    )


@pytest.mark.parametrize("paradigm", sorted(PARADIGMS))
def test_killed_run_resumes_exactly(tmp_path, write_config, quickstart, cli_env, paradigm) -> None:
    df = PARADIGMS[paradigm]
    cmd = [sys.executable, "-m", "dataflex_llamafactory.cli", "train"]
    full = tmp_path / "full"
    res = subprocess.run(
        [*cmd, str(write_config(_cfg(quickstart, full, df), "full.yaml"))],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-4000:]

    run = tmp_path / "run"
    _kill_after_checkpoint(
        [*cmd, str(write_config(_cfg(quickstart, run, df), "run.yaml"))], cli_env, run
    )
    assert max(_losses_from_log(run)) > CKPT  # it really trained past the checkpoint
    resume = _cfg(
        quickstart,
        run,
        df,
        resume_from_checkpoint=str(run / f"checkpoint-{CKPT}"),
        overwrite_output_dir=False,
    )
    res = subprocess.run(
        [*cmd, str(write_config(resume, "resume.yaml"))],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "restored DataFlex state" in res.stdout + res.stderr

    la, lb = _losses(full), _losses(run)
    assert sorted(lb) == sorted(la) == list(range(1, STEPS + 1))
    for step in range(CKPT + 1, STEPS + 1):
        assert lb[step] == pytest.approx(la[step], rel=1e-5), step
    for name in ("decisions.jsonl", "selections.jsonl", "doremi_weights.jsonl"):
        a, b = _log(full, name), _log(run, name)
        if paradigm.startswith("weight"):  # weight statistics are floats of a float model
            assert [r["step"] for r in a] == [r["step"] for r in b]
        else:
            assert a == b, name
    sa = json.loads((full / f"checkpoint-{STEPS}" / "dataflex_state.json").read_text())
    sb = json.loads((run / f"checkpoint-{STEPS}" / "dataflex_state.json").read_text())
    for key in ("mixer", "selector", "weighter", "sampler"):
        if key in sa:
            assert sa[key] == sb[key], key
    if paradigm == "mix-doremi-proxy":  # what DoReMi step 3 trains on
        wa = json.loads((full / "doremi_average_weights.json").read_text())
        wb = json.loads((run / "doremi_average_weights.json").read_text())
        assert wa == wb


def _losses_from_log(out: Path) -> list[int]:
    return [
        json.loads(x).get("current_steps", 0)
        for x in (out / "trainer_log.jsonl").read_text().splitlines()
        if x.strip()
    ]
