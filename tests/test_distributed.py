"""Two processes under torchrun (gloo, CPU): the sft path with DeepSpeed ZeRO-3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.deepspeed]

REPO = Path(__file__).resolve().parents[1]


def test_two_rank_zero3_sft_keeps_mixer_state_identical(tmp_path, run_cli, write_config):
    cfg = yaml.safe_load((REPO / "examples" / "sft_zero3.yaml").read_text())
    out = tmp_path / "z3"
    cfg.update(
        output_dir=str(out),
        dataset_dir=str(REPO / "examples" / "data"),
        deepspeed=str(REPO / "examples" / "deepspeed" / "ds_z3_config.json"),
    )
    res = run_cli(
        "train",
        str(write_config(cfg)),
        env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"},
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    log = res.stdout + res.stderr
    assert "torchrun" in log and "ZeRO-3" in log  # really relaunched, really partitioned

    # Every rank checked the mixer-state hash after each update (check_state_consistency) and
    # wrote its final state; they must be identical.
    r0 = json.loads((out / "dataflex" / "final_state_rank0.json").read_text())
    r1 = json.loads((out / "dataflex" / "final_state_rank1.json").read_text())
    assert r0 == r1
    assert r0["mixer"] is not None
    recs = [json.loads(x) for x in (out / "dataflex" / "decisions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 3, 5]
    # feedback was all-reduced over both ranks: G = 2 ranks x 2 per device x 2 accumulation = 8
    # rows per step; the first update (after 1 step) saw all 8 of them.
    assert sum(recs[0]["feedback"]["domain_samples"]) == 8
    state = json.loads((out / "checkpoint-4" / "dataflex_state.json").read_text())
    assert state["samples_per_step"] == 8 and state["sampler"]["position"] == 32

    # The same global batch in one plain process: 4 rows per micro-batch, the union of the two
    # ranks' micro-batches, so equal losses and decisions mean the ranks drew disjoint halves.
    plain = tmp_path / "plain"
    one = {k: v for k, v in cfg.items() if k != "deepspeed"}
    one.update(output_dir=str(plain), per_device_train_batch_size=4, save_steps=100)
    res = run_cli("train", str(write_config(one, "plain.yaml")))
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    assert _history(out) == pytest.approx(_history(plain), rel=1e-4)
    ref = [json.loads(x) for x in (plain / "dataflex" / "decisions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ref] == [r["step"] for r in recs]
    for a, b in zip(ref, recs, strict=True):
        assert b["decision"]["proportions"] == pytest.approx(a["decision"]["proportions"], abs=1e-9)
        assert b["feedback"]["domain_samples"] == a["feedback"]["domain_samples"]
        for x, y in zip(a["feedback"]["domain_loss"], b["feedback"]["domain_loss"], strict=True):
            assert (x is None and y is None) or y == pytest.approx(x, rel=1e-4)  # None: no rows


def test_two_rank_ddp_loss_weighting_equals_one_rank_on_the_same_global_batch(
    tmp_path, run_cli, write_config, quickstart
):
    """Weights normalised over the global micro-batch: 2 ranks x 4 rows == 1 rank x 8 rows."""
    results = {}
    for name, nproc, per_device in (("one", None, 8), ("two", "2", 4)):
        out = tmp_path / name
        cfg = quickstart(
            output_dir=str(out), max_steps=4, logging_steps=1, save_steps=100,
            per_device_train_batch_size=per_device,
        )
        cfg["dataflex"] = {"train_type": "dynamic_weight", "component_name": "loss", "warmup_step": 0,
                           "check_state_consistency": True}
        env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": nproc} if nproc else {}
        res = run_cli("train", str(write_config(cfg, f"{name}.yaml")), env=env)
        assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
        state = json.loads((out / "trainer_state.json").read_text())
        recs = [json.loads(x) for x in (out / "dataflex" / "decisions.jsonl").read_text().splitlines()]
        results[name] = (
            [h["loss"] for h in state["log_history"] if "loss" in h],
            [r["decision"] for r in recs if r["step"] > 0],
        )
    (l1, d1), (l2, d2) = results["one"], results["two"]
    assert len(l1) == len(l2) == 4
    assert l2 == pytest.approx(l1, rel=1e-5)
    for a, b in zip(d1, d2, strict=True):
        assert a["samples"] == b["samples"] == 8
        for key in ("min", "max", "mean", "entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5)
        assert a["min"] < a["max"]  # the loss weighter really reweights
    r0 = json.loads((tmp_path / "two" / "dataflex" / "final_state_rank0.json").read_text())
    r1 = json.loads((tmp_path / "two" / "dataflex" / "final_state_rank1.json").read_text())
    assert r0 == r1


def _select_cfg(quickstart, out, per_device, **extra):
    cfg = quickstart(output_dir=str(out), logging_steps=1, save_steps=100,
                     per_device_train_batch_size=per_device, gradient_accumulation_steps=1, **extra)
    cfg["dataflex"] = {
        "train_type": "dynamic_select", "component_name": "less",
        "component_params": {"proj_dim": 64, "candidate_subsample": 64, "projector": "sjlt",
                             "gradient_type": "sgd"},
        "target_dataset": "code_eval", "warmup_step": 1, "update_step": 2, "update_times": 2,
        "train_step": 5, "check_state_consistency": True,
    }
    return cfg


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_two_rank_ddp_less_selection_equals_one_rank(tmp_path, run_cli, write_config, quickstart):
    """Per-sample gradient features are sharded by index and gathered: 2 ranks x 4 rows select
    exactly what 1 rank x 8 rows selects, and both ranks hold the same selector state."""
    out = {}
    for name, nproc, per_device in (("one", None, 8), ("two", "2", 4)):
        out[name] = tmp_path / name
        env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": nproc} if nproc else {}
        res = run_cli("train", str(write_config(_select_cfg(quickstart, out[name], per_device), f"{name}.yaml")), env=env)
        assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    r0 = json.loads((out["two"] / "dataflex" / "final_state_rank0.json").read_text())
    r1 = json.loads((out["two"] / "dataflex" / "final_state_rank1.json").read_text())
    assert r0 == r1
    a = _jsonl(out["one"] / "dataflex" / "selections.jsonl")
    b = _jsonl(out["two"] / "dataflex" / "selections.jsonl")
    assert [s["step"] for s in a] == [s["step"] for s in b] == [0, 1, 3]
    assert [s["indices"] for s in a] == [s["indices"] for s in b]
    for x, y in zip(a[1:], b[1:], strict=True):
        assert y["scores"] == pytest.approx(x["scores"], abs=1e-6)


def test_two_rank_zero3_less_selection_keeps_ranks_identical(tmp_path, run_cli, write_config):
    """ZeRO-3 partitions the parameters: per-sample gradients run the loop strategy in lockstep
    on every rank (spec §1.3), and the broadcast selection is the same everywhere."""
    cfg = yaml.safe_load((REPO / "examples" / "sft_zero3.yaml").read_text())
    out = tmp_path / "z3sel"
    cfg.update(
        output_dir=str(out), dataset_dir=str(REPO / "examples" / "data"), save_steps=100,
        deepspeed=str(REPO / "examples" / "deepspeed" / "ds_z3_config.json"),
        dataset="sft_news,sft_code,sft_math",
    )
    cfg["dataflex"] = {
        "train_type": "dynamic_select", "component_name": "less",
        "component_params": {"proj_dim": 32, "candidate_subsample": 24, "projector": "sjlt"},
        "target_dataset": "sft_math_eval", "warmup_step": 1, "update_step": 2, "update_times": 1,
        "train_step": 3, "check_state_consistency": True,
    }
    res = run_cli("train", str(write_config(cfg)), env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    assert "ZeRO-3" in res.stdout + res.stderr
    r0 = json.loads((out / "dataflex" / "final_state_rank0.json").read_text())
    r1 = json.loads((out / "dataflex" / "final_state_rank1.json").read_text())
    assert r0 == r1
    sels = _jsonl(out / "dataflex" / "selections.jsonl")
    assert [s["step"] for s in sels] == [0, 1]
    assert len(sels[1]["indices"]) == 16 and len(set(sels[1]["indices"])) == 16  # G = 2 x 2 x 2 = 8, update_step 2
    assert all(s is not None for s in sels[1]["scores"])

    # The same global batch in one plain process (no DeepSpeed): the Adam moments assembled from
    # the ZeRO-3 partitions give the same features, so the same selection.
    plain = tmp_path / "plain"
    cfg.pop("deepspeed")
    cfg.update(output_dir=str(plain), per_device_train_batch_size=4)
    res = run_cli("train", str(write_config(cfg, "plain.yaml")))
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    ref = _jsonl(plain / "dataflex" / "selections.jsonl")
    assert [s["indices"] for s in ref] == [s["indices"] for s in sels]
    assert sels[1]["scores"] == pytest.approx(ref[1]["scores"], abs=1e-4)


def _history(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def _decisions(out: Path) -> list[dict]:
    return [r["decision"] for r in _jsonl(out / "dataflex" / "decisions.jsonl")]


def test_two_rank_ddp_odm_mixing_equals_one_rank(tmp_path, run_cli, write_config, quickstart):
    """ODM under DDP: the per-domain losses are all-reduced and the mixture sampler's one global
    sequence of single-domain micro-batches is split between the ranks, so 2 ranks x 1 micro-batch
    of 4 rows train on, and decide, exactly what 1 rank x 2 accumulated micro-batches does (equal
    losses would be impossible if the ranks drew overlapping rows)."""
    out = {}
    for name, nproc, accumulation in (("one", None, 2), ("two", "2", 1)):
        out[name] = tmp_path / name
        cfg = quickstart(output_dir=str(out[name]), logging_steps=1, save_steps=100,
                         per_device_train_batch_size=4, gradient_accumulation_steps=accumulation)
        cfg["dataflex"] = {"train_type": "dynamic_mix", "component_name": "odm", "warmup_step": 1,
                           "update_step": 1, "update_times": 3, "check_state_consistency": True,
                           "plot": False}
        env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": nproc} if nproc else {}
        res = run_cli("train", str(write_config(cfg, f"{name}.yaml")), env=env)
        assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    l1, l2 = _history(out["one"]), _history(out["two"])
    assert len(l1) == len(l2) == 4
    assert l2 == pytest.approx(l1, rel=1e-5)
    d1, d2 = _decisions(out["one"]), _decisions(out["two"])
    assert len(d1) == len(d2) == 3  # one update after each of steps 1..3
    for a, b in zip(d1, d2, strict=True):
        assert b["proportions"] == pytest.approx(a["proportions"], abs=1e-6)
    r0 = json.loads((out["two"] / "dataflex" / "final_state_rank0.json").read_text())
    r1 = json.loads((out["two"] / "dataflex" / "final_state_rank1.json").read_text())
    assert r0 == r1
    m1 = json.loads((out["one"] / "dataflex" / "final_state_rank0.json").read_text())["mixer"]
    m2 = r0["mixer"]
    assert m2["rounds"] == m1["rounds"] == 3 and m2["samples_seen"] == m1["samples_seen"]
    assert m2["rewards"] == pytest.approx(m1["rewards"], rel=1e-5)
    assert sum(r > 0 for r in m1["rewards"]) >= 2  # the bandit really collected rewards


def test_two_rank_zero3_loss_weighting_equals_one_plain_process(tmp_path, run_cli, write_config):
    """Loss weighting under ZeRO-3 (sft, gradient accumulation 2): both ranks hold the same weighter
    state, and the weights (normalised over the global micro-batch) and losses equal one plain
    process on the same global batch."""
    cfg = yaml.safe_load((REPO / "examples" / "sft_zero3.yaml").read_text())
    cfg.update(dataset_dir=str(REPO / "examples" / "data"), save_steps=100, max_steps=3,
               deepspeed=str(REPO / "examples" / "deepspeed" / "ds_z3_config.json"))
    cfg["dataflex"] = {"train_type": "dynamic_weight", "component_name": "loss", "warmup_step": 0,
                       "check_state_consistency": True}
    z3, plain = tmp_path / "z3", tmp_path / "plain"
    res = run_cli("train", str(write_config({**cfg, "output_dir": str(z3)}, "z3.yaml")),
                  env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    assert "ZeRO-3" in res.stdout + res.stderr
    r0 = json.loads((z3 / "dataflex" / "final_state_rank0.json").read_text())
    r1 = json.loads((z3 / "dataflex" / "final_state_rank1.json").read_text())
    assert r0 == r1
    one = {k: v for k, v in cfg.items() if k != "deepspeed"}
    one.update(output_dir=str(plain), per_device_train_batch_size=4)
    res = run_cli("train", str(write_config(one, "plain.yaml")))
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    lz, lp = _history(z3), _history(plain)
    assert len(lz) == len(lp) == 3
    assert lz == pytest.approx(lp, rel=1e-4)
    dz, dp = _decisions(z3), _decisions(plain)
    assert [d["samples"] for d in dz] == [d["samples"] for d in dp]
    for a, b in zip(dp, dz, strict=True):
        for key in ("min", "max", "mean", "entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert any(d["min"] < d["max"] for d in dp)  # the weights really differ between samples
