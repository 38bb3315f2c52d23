"""The quickstart path through LLaMA-Factory: train, checkpoint, resume with state restored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def small(quickstart):
    def make(out: Path, **extra):
        return _small(quickstart, out, **extra)

    return make


def _small(quickstart, out: Path, **extra):
    # 2 + 3 * 4 = 14 steps, G = 4 * 2 = 8, checkpoints every 4 steps, gradient accumulation on.
    base = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "save_steps": 4,
        "logging_steps": 1,
        "dataflex": {"component_name": "random", "warmup_step": 2, "update_step": 3, "update_times": 4},
    }
    base.update(extra)
    return quickstart(**base)


def decisions(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "dataflex" / "decisions.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_quickstart_trains_checkpoints_and_resumes_exactly(tmp_path, run_cli, write_config, small):
    full = tmp_path / "full"
    res = run_cli("train", str(write_config(small(full), "full.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]

    # outputs: decisions log, plot, checkpoints with the DataFlex state
    recs = decisions(full)
    assert [r["step"] for r in recs] == [2, 5, 8, 11]
    assert [r["decision"]["applies_from_step"] for r in recs] == [3, 6, 9, 12]
    for r in recs:
        p = r["decision"]["proportions"]
        assert len(p) == 4 and abs(sum(p) - 1) < 1e-12 and min(p) >= 0
        assert r["decision"]["domains"] == ["news", "wiki", "code", "math"]
        # feedback came from real per-domain losses of the tiny model (about ln 2048 at start)
        assert any(x is not None and 4.0 < x < 9.0 for x in r["feedback"]["domain_loss"])
    assert len({tuple(r["decision"]["proportions"]) for r in recs}) == 4  # random: new draw each time
    png = full / "dataflex" / "proportions.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for step in (4, 8, 12, 14):
        state = json.loads((full / f"checkpoint-{step}" / "dataflex_state.json").read_text())
        assert state["step"] == step and state["schema_version"] == 1
        assert state["domain_names"] == ["news", "wiki", "code", "math"]
        assert state["sampler"]["position"] == step * 8
    mid = json.loads((full / "checkpoint-8" / "dataflex_state.json").read_text())
    assert mid["update_count"] == 3  # updates at 2, 5, 8 happened before the save at 8
    assert "tracker" not in mid
    log_lines = (full / "trainer_log.jsonl").read_text()
    assert "loss" in log_lines

    # Resume from checkpoint-8 in a fresh folder that holds what a killed run would have left:
    # the checkpoint and a decisions log that already ran past it.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-8", resumed / "checkpoint-8")
    (resumed / "dataflex").mkdir()
    shutil.copy(full / "dataflex" / "decisions.jsonl", resumed / "dataflex" / "decisions.jsonl")
    cfg = small(resumed, resume_from_checkpoint=str(resumed / "checkpoint-8"), overwrite_output_dir=False)
    res = run_cli("train", str(write_config(cfg, "resume.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "restored DataFlex state" in res.stderr + res.stdout

    # Same decisions, same final component and sampler state, same losses after the resume point.
    assert decisions(resumed) == recs
    a = json.loads((full / "checkpoint-14" / "dataflex_state.json").read_text())
    b = json.loads((resumed / "checkpoint-14" / "dataflex_state.json").read_text())
    assert a["mixer"] == b["mixer"] and a["sampler"] == b["sampler"] and a["window_props"] == b["window_props"]
    la, lb = losses(full), losses(resumed)
    # steps 1-8 come from the checkpoint's trainer state; 9-14 were trained after the resume
    assert sorted(lb) == sorted(la) == list(range(1, 15))
    for step in range(9, 15):
        assert lb[step] == pytest.approx(la[step], rel=1e-5), step


def test_static_train_type_runs_plain_llamafactory(tmp_path, run_cli, write_config, small):
    cfg = small(tmp_path / "static", max_steps=3)
    cfg["dataflex"] = {"train_type": "static"}
    res = run_cli("train", str(write_config(cfg)))
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "static" / "model.safetensors").exists()
    assert not (tmp_path / "static" / "dataflex").exists()


def test_sft_stage_with_static_mix(tmp_path, run_cli, write_config, small):
    cfg = small(
        tmp_path / "sft",
        stage="sft",
        dataset="sft_news,sft_code,sft_math",
    )
    cfg["dataflex"] = {
        "train_type": "dynamic_mix",
        "static_mix": True,
        "update_step": 1,
        "update_times": 6,
        "init_mixture_proportions": [0.5, 0.5, 0.0],
    }
    res = run_cli("train", str(write_config(cfg)))
    assert res.returncode == 0, res.stderr[-4000:]
    state = json.loads((tmp_path / "sft" / "checkpoint-4" / "dataflex_state.json").read_text())
    assert state["window_props"] == {"0": [0.5, 0.5, 0.0]}
    assert state["mixer"] is None
    # the math domain (proportion 0) never gave a training row
    assert state["sampler"]["window"]["domain_pos"][2] == 0


def test_dynamic_weight_uniform_equals_unweighted_training(tmp_path, run_cli, write_config, small):
    """Uniform weights from step 0 against the trainer's own loss (burn-in for the whole run).

    Packed pt rows all hold cutoff_len = 128 tokens, so the sample mean of per-sample token
    means equals the token mean. transformers 5 divides by the number of *unshifted* labels
    (128 per row, one more than the 127 predicted tokens), so its loss is exactly 127/128 of the
    true token mean; Adam is invariant to that constant factor, so the two runs coincide.
    """
    outs = {}
    for name, warmup in (("weighted", 0), ("standard", 1000)):
        out = tmp_path / name
        cfg = small(out, max_steps=6, save_steps=3)
        cfg["dataflex"] = {"train_type": "dynamic_weight", "component_name": "uniform", "warmup_step": warmup}
        res = run_cli("train", str(write_config(cfg, f"{name}.yaml")))
        assert res.returncode == 0, res.stderr[-4000:]
        outs[name] = losses(out)
    assert sorted(outs["weighted"]) == list(range(1, 7))
    for step in range(1, 7):
        assert outs["weighted"][step] * 127 / 128 == pytest.approx(outs["standard"][step], rel=2e-5), step
    recs = decisions(tmp_path / "weighted")
    stats = [r for r in recs if r["kind"] == "weighter" and r["step"] > 0]
    assert [r["step"] for r in stats] == list(range(1, 7))
    for r in stats:
        assert r["decision"]["min"] == r["decision"]["max"] == 1.0
        assert r["decision"]["samples"] == 8  # G = 4 x 2 rows weighted per step
    state = json.loads((tmp_path / "weighted" / "checkpoint-3" / "dataflex_state.json").read_text())
    assert state["train_type"] == "dynamic_weight" and state["step"] == 3
    assert not (tmp_path / "standard" / "dataflex" / "decisions.jsonl").exists()  # never weighted


def test_dynamic_weight_loss_on_sft_resumes_exactly(tmp_path, run_cli, write_config, small):
    def cfg(out, **extra):
        c = small(out, stage="sft", dataset="sft_news,sft_code,sft_math", max_steps=6, save_steps=3, **extra)
        c["dataflex"] = {"train_type": "dynamic_weight", "component_name": "loss_mid", "warmup_step": 2}
        return c

    full = tmp_path / "full"
    res = run_cli("train", str(write_config(cfg(full), "full.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    stats = [r for r in decisions(full) if r["step"] > 0]
    assert [r["step"] for r in stats] == [3, 4, 5, 6]  # burn-in: steps 1-2 use the standard loss
    assert all(r["decision"]["min"] < r["decision"]["max"] for r in stats)
    assert (full / "dataflex" / "weights.png").read_bytes()[:4] == b"\x89PNG"

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    (resumed / "dataflex").mkdir()
    shutil.copy(full / "dataflex" / "decisions.jsonl", resumed / "dataflex" / "decisions.jsonl")
    c = cfg(resumed, resume_from_checkpoint=str(resumed / "checkpoint-3"), overwrite_output_dir=False)
    res = run_cli("train", str(write_config(c, "resume.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    la, lb = losses(full), losses(resumed)
    for step in range(4, 7):
        assert lb[step] == pytest.approx(la[step], rel=1e-5), step
    again = [r for r in decisions(resumed) if r["step"] > 0]
    assert [r["step"] for r in again] == [3, 4, 5, 6]
    for a, b in zip(stats, again, strict=True):
        assert b["decision"]["mean"] == pytest.approx(a["decision"]["mean"], rel=1e-5)


def test_adapt_weights_by_similarity_to_the_target_set(tmp_path, run_cli, write_config, small):
    out = tmp_path / "adapt"
    c = small(out, max_steps=3, save_steps=100, per_device_train_batch_size=8, gradient_accumulation_steps=1)
    c["dataflex"] = {
        "train_type": "dynamic_weight",
        "component_name": "adapt",
        "target_dataset": "math",
        "component_params": {"refresh_interval": 1, "tau": 0.1},
    }
    res = run_cli("train", str(write_config(c)))
    assert res.returncode == 0, res.stderr[-4000:]
    recs = [r for r in decisions(out) if r["step"] > 0]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        d = r["decision"]
        assert 0 < d["min"] < d["max"] < 1  # sigmoid weights that differ between samples
    state = json.loads((out / "checkpoint-3" / "dataflex_state.json").read_text()) if (
        out / "checkpoint-3").exists() else None
    assert state is None or state["weighter"]["anchor_mean"] is not None
    bad = small(tmp_path / "bad", max_steps=2)
    bad["dataflex"] = {"train_type": "dynamic_weight", "component_name": "adapt"}
    res = run_cli("train", str(write_config(bad, "bad.yaml")))
    assert res.returncode == 2 and "needs a target set" in res.stderr
