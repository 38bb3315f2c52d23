"""Every mixer through dataflex-cli: ODM, Aioli (eval losses), dynamic_moe (gate loads), resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def example(name: str, out: Path, **changes) -> dict:
    cfg = yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
    df = changes.pop("dataflex", {})
    cfg.update(dataset_dir=str(REPO / "examples" / "data"), output_dir=str(out), logging_steps=1, **changes)
    cfg["dataflex"].update(df)
    return cfg


def decisions(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "dataflex" / "decisions.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def full_then_resume(tmp_path, run_cli, write_config, cfg_of, ckpt: int):
    full = tmp_path / "full"
    res = run_cli("train", str(write_config(cfg_of(full), "full.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / f"checkpoint-{ckpt}", resumed / f"checkpoint-{ckpt}")
    (resumed / "dataflex").mkdir()
    shutil.copy(full / "dataflex" / "decisions.jsonl", resumed / "dataflex" / "decisions.jsonl")
    cfg = cfg_of(resumed)
    cfg.update(resume_from_checkpoint=str(resumed / f"checkpoint-{ckpt}"), overwrite_output_dir=False)
    res = run_cli("train", str(write_config(cfg, "resume.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    return full, resumed


def assert_same_run(full: Path, resumed: Path, last: int, after: int) -> None:
    assert decisions(resumed) == decisions(full)
    a = json.loads((full / f"checkpoint-{last}" / "dataflex_state.json").read_text())
    b = json.loads((resumed / f"checkpoint-{last}" / "dataflex_state.json").read_text())
    assert a["mixer"] == b["mixer"] and a["sampler"] == b["sampler"]
    la, lb = losses(full), losses(resumed)
    for step in range(after + 1, last + 1):
        assert lb[step] == pytest.approx(la[step], rel=1e-5), step


def test_odm_with_domain_pure_micro_batches_resumes_exactly(tmp_path, run_cli, write_config):
    def cfg_of(out):
        return example("quickstart", out, save_steps=6, per_device_train_batch_size=4,
                       gradient_accumulation_steps=2,
                       dataflex={"warmup_step": 2, "update_step": 1, "update_times": 16})

    full, resumed = full_then_resume(tmp_path, run_cli, write_config, cfg_of, ckpt=12)
    assert_same_run(full, resumed, last=18, after=12)
    recs = decisions(full)
    assert [r["step"] for r in recs] == list(range(2, 18))
    # arm_unit micro_batch: every micro-batch came from one domain, so each step's feedback
    # names at most 2 domains (2 micro-batches of 4 rows per step)
    for r in recs[1:]:
        assert sum(1 for x in r["feedback"]["domain_samples"] if x > 0) <= 2
        assert sum(r["feedback"]["domain_samples"]) == 8
    assert recs[-1]["decision"]["proportions"] != [0.25] * 4


def test_aioli_learns_from_eval_losses_and_resumes_exactly(tmp_path, run_cli, write_config):
    def cfg_of(out):
        return example("aioli", out, save_steps=7,
                       dataflex={"warmup_step": 2, "update_times": 19,
                                 "component_params": {"lp_rounds": 1, "lp_steps": 2, "update_steps": 6}})

    full, resumed = full_then_resume(tmp_path, run_cli, write_config, cfg_of, ckpt=7)
    assert_same_run(full, resumed, last=21, after=7)
    recs = decisions(full)
    props = [r["decision"]["proportions"] for r in recs]
    # LearnParams: smoothed one-hot mixtures f = 0.625 on one domain, 0.125 on the others
    assert any(max(p) == pytest.approx(0.625) for p in props)
    # after the first round (4 domains x 2 steps) the learned p is used: not one-hot, not uniform
    learned = [p for p in props[9:] if max(p) < 0.6]
    assert learned and learned[0] != [0.25] * 4


def test_aioli_without_eval_sets_is_an_error(tmp_path, run_cli, write_config):
    cfg = example("aioli", tmp_path / "out")
    del cfg["dataflex"]["mixer_eval_dataset"]
    res = run_cli("train", str(write_config(cfg)))
    assert res.returncode == 2
    assert "mixer_eval_dataset" in res.stderr
    assert not (tmp_path / "out").exists()


def test_dynamic_moe_reads_gate_loads_of_a_real_moe_model(tmp_path, run_cli, write_config):
    out = tmp_path / "moe"
    cfg = example("dynamic_moe", out, save_steps=100,
                  dataflex={"warmup_step": 2, "update_step": 3, "update_times": 3})
    res = run_cli("train", str(write_config(cfg)))
    assert res.returncode == 0, res.stderr[-4000:]
    recs = decisions(out)
    assert [r["step"] for r in recs] == [2, 5, 8]
    for r in recs:
        p = r["decision"]["proportions"]
        assert abs(sum(p) - 1) < 1e-9 and min(p) > 0
    assert recs[0]["decision"]["proportions"] != [0.25] * 4
    # a dense model has no router: a clear error, not a silent uniform fallback
    dense = example("dynamic_moe", tmp_path / "dense", model_name_or_path="builtin:tiny-llama")
    res = run_cli("train", str(write_config(dense, "dense.yaml")))
    assert res.returncode == 2 and "mixture-of-experts" in res.stderr
