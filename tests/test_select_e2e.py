"""Online selection (``train_type: dynamic_select``) through LLaMA-Factory: schedule, windows,
logs, plot, exact resume, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DOMAINS = ["news", "wiki", "code", "math"]


def _cfg(quickstart, out: Path, dataflex: dict | None = None, **extra):
    # E = 2 + 3 * 3 = 11 steps per Flex epoch, 20 steps, G = 4 * 2 = 8.
    base = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "save_steps": 6,
        "logging_steps": 1,
    }
    base.update(extra)
    cfg = quickstart(**base)
    cfg["dataflex"] = {
        "train_type": "dynamic_select",
        "component_name": "random",
        "warmup_step": 2,
        "update_step": 3,
        "update_times": 3,
        "train_step": 20,
        **(dataflex or {}),
    }
    return cfg


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def _resume(tmp_path, full: Path, step: int, make_cfg, run_cli, write_config) -> Path:
    """Resume in a fresh folder holding what a killed run leaves: the checkpoint and logs that
    already ran past it."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / f"checkpoint-{step}", resumed / f"checkpoint-{step}")
    shutil.copytree(full / "dataflex", resumed / "dataflex")
    cfg = make_cfg(resumed, resume_from_checkpoint=str(resumed / f"checkpoint-{step}"), overwrite_output_dir=False)
    res = run_cli("train", str(write_config(cfg, "resume.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "restored DataFlex state" in res.stderr + res.stdout
    return resumed


def test_random_selection_schedule_windows_and_exact_resume(tmp_path, run_cli, write_config, quickstart):
    def make(out, **extra):
        return _cfg(quickstart, out, **extra)

    full = tmp_path / "full"
    res = run_cli("train", str(write_config(make(full), "full.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    recs = _jsonl(full / "dataflex" / "decisions.jsonl")
    # epoch 0: warmup draw at 0, updates at r = 2, 5, 8; epoch 1 starts at s = 11 (warmup draw),
    # updates at 13, 16; the update at 19 would apply from step 20 = the end: not made.
    assert [r["step"] for r in recs] == [0, 2, 5, 8, 11, 13, 16]
    assert [r["decision"]["applies_from_step"] for r in recs] == [0, 3, 6, 9, 12, 14, 17]
    assert [r["decision"]["warmup"] for r in recs] == [True, False, False, False, True, False, False]
    assert [r["decision"]["num_selected"] for r in recs] == [16, 24, 24, 24, 16, 24, 24]
    for r in recs:
        assert set(r["decision"]["by_domain"]) == set(DOMAINS)
        assert sum(r["decision"]["by_domain"].values()) == r["decision"]["num_selected"]
        assert r["decision"]["unique"] == r["decision"]["num_selected"]  # without replacement
    sels = _jsonl(full / "dataflex" / "selections.jsonl")
    assert [s["step"] for s in sels] == [r["step"] for r in recs]
    assert sels[1]["indices"] != sels[2]["indices"]  # a new draw per update
    assert (full / "dataflex" / "selection.png").read_bytes()[:4] == b"\x89PNG"
    state = json.loads((full / "checkpoint-12" / "dataflex_state.json").read_text())
    assert state["train_type"] == "dynamic_select" and state["step"] == 12 and state["epoch"] == 1
    assert state["sampler"]["position"] == 12 * 8

    resumed = _resume(tmp_path, full, 12, make, run_cli, write_config)
    assert _jsonl(resumed / "dataflex" / "decisions.jsonl") == recs
    assert _jsonl(resumed / "dataflex" / "selections.jsonl") == sels
    a = json.loads((full / "checkpoint-18" / "dataflex_state.json").read_text())
    b = json.loads((resumed / "checkpoint-18" / "dataflex_state.json").read_text())
    assert a["selector"] == b["selector"] and a["sampler"] == b["sampler"]
    la, lb = _losses(full), _losses(resumed)
    assert sorted(la) == sorted(lb) == list(range(1, 21))
    for step in range(13, 21):
        assert lb[step] == pytest.approx(la[step], rel=1e-5), step


def test_selection_bad_input_exits_2_with_one_message(tmp_path, run_cli, write_config, quickstart):
    cfg = _cfg(quickstart, tmp_path / "bad", dataflex={"update_step": 0})
    res = run_cli("train", str(write_config(cfg, "a.yaml")))
    assert res.returncode == 2 and "update_step" in res.stderr
    cfg = _cfg(quickstart, tmp_path / "bad", dataflex={"subtask_by": "column:task"})
    res = run_cli("train", str(write_config(cfg, "b.yaml")))
    assert res.returncode == 2 and "one target dataset per subtask" in res.stderr
    assert not (tmp_path / "bad").exists()
