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
    cfg = make_cfg(
        resumed,
        resume_from_checkpoint=str(resumed / f"checkpoint-{step}"),
        overwrite_output_dir=False,
    )
    res = run_cli("train", str(write_config(cfg, "resume.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "restored DataFlex state" in res.stderr + res.stdout
    return resumed


def test_random_selection_schedule_windows_and_exact_resume(
    tmp_path, run_cli, write_config, quickstart
):
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
    assert [r["decision"]["warmup"] for r in recs] == [
        True,
        False,
        False,
        False,
        True,
        False,
        False,
    ]
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


def _pool_share(domain: str) -> float:
    """Share of ``domain`` in the bundled pt pool (rows after packing)."""
    sizes = {"news": 681, "wiki": 896, "code": 455, "math": 121}
    return sizes[domain] / sum(sizes.values())


def test_less_online_selects_mostly_the_target_domain(tmp_path, run_cli, write_config, quickstart):
    # Target: code_eval (code rows). Gradient features of the model being trained (SGD: the
    # Adam transform needs a warmed-up optimizer, which a 2-step warmup of a tiny model is not;
    # the Adam path is covered by dataflex-ops and the selector's unit tests), sparse
    # projection; a seeded subsample of 160 candidates is scored at each update.
    out = tmp_path / "less"
    cfg = _cfg(
        quickstart,
        out,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        dataflex={
            "component_name": "less",
            "component_params": {
                "proj_dim": 128,
                "candidate_subsample": 160,
                "projector": "sjlt",
                "gradient_type": "sgd",
            },
            "target_dataset": "code_eval",
            "warmup_step": 2,
            "update_step": 4,
            "update_times": 2,
            "train_step": 10,
        },
    )
    res = run_cli("train", str(write_config(cfg, "less.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    recs = [r for r in _jsonl(out / "dataflex" / "decisions.jsonl") if not r["decision"]["warmup"]]
    assert [r["step"] for r in recs] == [2, 6]
    code = sum(r["decision"]["by_domain"]["code"] for r in recs) / sum(
        r["decision"]["num_selected"] for r in recs
    )
    # random selection would give the pool share (0.21); LESS picks code rows for a code target
    assert code > 2 * _pool_share("code"), (code, recs)
    sels = _jsonl(out / "dataflex" / "selections.jsonl")
    scores = sels[1]["scores"]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)  # top-k
    assert -1.0 <= scores[-1] <= scores[0] <= 1.0  # cosine influences


def test_nice_with_a_rule_reward_on_the_tiny_model(tmp_path, run_cli, write_config, quickstart):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "digit_reward.py").write_text(
        "def digits(prompt, response, reference, meta=None):\n"
        "    assert prompt.strip(), 'empty prompt'\n"
        "    return sum(c.isdigit() for c in response) / max(1, len(response))\n"
    )
    out = tmp_path / "nice"
    cfg = _cfg(
        quickstart,
        out,
        stage="sft",
        dataset="sft_news,sft_code,sft_math",
        dataflex={
            "component_name": "nice",
            "component_params": {
                "proj_dim": 64,
                "mc_samples": 2,
                "max_new_tokens": 8,
                "candidate_subsample": 48,
                "reward": {"backend": "rule", "function": "digit_reward:digits"},
            },
            "target_dataset": "sft_math_eval",
            "warmup_step": 2,
            "update_step": 3,
            "update_times": 1,
            "train_step": 5,
        },
    )
    res = run_cli("train", str(write_config(cfg, "nice.yaml")), env={"PYTHONPATH": str(mods)})
    assert res.returncode == 0, res.stderr[-4000:]
    sels = _jsonl(out / "dataflex" / "selections.jsonl")
    assert [s["step"] for s in sels] == [0, 2]
    scores = sels[1]["scores"]
    # non-zero NICE target features: real rewards of real rollouts reached the scores
    assert (
        len(scores) == 24 and all(s is not None for s in scores) and max(abs(s) for s in scores) > 0
    )
    assert len(set(scores)) > 1


def test_cluster_less_asks_in_two_rounds(tmp_path, run_cli, write_config, quickstart):
    out = tmp_path / "cless"
    cfg = _cfg(
        quickstart,
        out,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        dataflex={
            "component_name": "cluster_less",
            "component_params": {
                "proj_dim": 64,
                "num_clusters": 24,
                "samples_per_cluster": 2,
                "gradient_type": "sgd",
            },
            "target_dataset": "code_eval",
            "warmup_step": 1,
            "update_step": 3,
            "update_times": 1,
            "train_step": 4,
        },
    )
    res = run_cli("train", str(write_config(cfg, "cless.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    recs = _jsonl(out / "dataflex" / "decisions.jsonl")
    assert [r["step"] for r in recs] == [0, 1]
    assert recs[1]["decision"]["num_selected"] == 24 and recs[1]["decision"]["unique"] == 24


MINILM = {"source": "external", "model_name_or_path": "builtin:minilm"}


def _offline_cfg(quickstart, out: Path, component: str, params: dict) -> dict:
    cfg = quickstart(output_dir=str(out), per_device_eval_batch_size=16)
    cfg["dataflex"] = {
        "component_name": component,
        "component_params": params,
        "target_dataset": "code_eval",
    }
    return cfg


@pytest.mark.parametrize(
    ("component", "params"),
    [
        # SGD features of the initial model (no optimizer moments offline without checkpoints)
        (
            "less",
            {
                "proj_dim": 128,
                "projector": "sjlt",
                "gradient_type": "sgd",
                "candidate_subsample": 300,
            },
        ),
        ("near", {"embedding": MINILM, "candidate_subsample": 400}),
        ("tsds", {"embedding": MINILM, "candidate_subsample": 400}),
        ("dsir", {}),
    ],
)
def test_offline_selection_targets_the_code_domain(
    tmp_path, run_cli, write_config, quickstart, component, params
):
    out = tmp_path / component
    res = run_cli(
        "select",
        str(write_config(_offline_cfg(quickstart, out, component, params), "sel.yaml")),
        "--budget",
        "40",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads((out / "selection_report.json").read_text())
    assert report["budget"] == 40 and len(report["selected"]) == 40
    assert sum(report["by_domain"].values()) == 40
    precision = report["share_by_domain"]["code"]
    random_precision = report["pool_share_by_domain"]["code"]  # what a random subset gets
    assert random_precision == pytest.approx(_pool_share("code"))
    assert precision >= 0.6 and precision > 2.5 * random_precision, report["by_domain"]
    ids = [int(x) for x in (out / "selected_ids.txt").read_text().split()]
    assert ids == report["selected"]


def test_offline_subset_trains_with_llamafactory(tmp_path, run_cli, write_config, quickstart):
    out = tmp_path / "pick"
    cfg = _offline_cfg(quickstart, out, "random", {})
    res = run_cli("select", str(write_config(cfg, "sel.yaml")), "--budget", "0.02")
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads((out / "selection_report.json").read_text())
    assert report["budget"] == 44  # ceil(0.02 * 2153)
    train = quickstart(
        output_dir=str(tmp_path / "train"),
        max_steps=2,
        save_steps=100,
        tokenized_path=report["tokenized_path"],
    )
    train["dataflex"] = {"train_type": "static"}
    res = run_cli("train", str(write_config(train, "train.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Loaded tokenized dataset" in res.stdout + res.stderr


def test_offline_bad_budget_is_one_clear_error(tmp_path, run_cli, write_config, quickstart):
    cfg = _offline_cfg(quickstart, tmp_path / "x", "random", {})
    res = run_cli("select", str(write_config(cfg, "sel.yaml")), "--budget", "5000")
    assert res.returncode == 2
    assert "larger than the pool of N = 2153" in res.stderr
    res = run_cli("select", str(write_config(cfg, "sel.yaml")), "--budget", "0")
    assert res.returncode == 2 and "--budget" in res.stderr


@pytest.mark.parametrize("component", ["near", "tsds"])
def test_embedding_selectors_online_pick_the_target_domain(
    tmp_path, run_cli, write_config, quickstart, component
):
    out = tmp_path / component
    cfg = _cfg(
        quickstart,
        out,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        dataflex={
            "component_name": component,
            # embed a seeded subsample of 300 candidates per update, not the whole pool
            "component_params": {
                "embedding": MINILM,
                "candidate_subsample": 300,
                "recompute": "every_update",
            },
            "target_dataset": "code_eval",
            "warmup_step": 1,
            "update_step": 4,
            "update_times": 2,
            "train_step": 9,
        },
    )
    res = run_cli("train", str(write_config(cfg, "emb.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    recs = [r for r in _jsonl(out / "dataflex" / "decisions.jsonl") if not r["decision"]["warmup"]]
    assert [r["step"] for r in recs] == [1, 5]
    code = sum(r["decision"]["by_domain"]["code"] for r in recs) / sum(
        r["decision"]["num_selected"] for r in recs
    )
    assert code >= 0.6 and code > 2.5 * _pool_share("code"), recs


def test_loss_selector_resumes_exactly(tmp_path, run_cli, write_config, quickstart):
    # Model-scored windows: the resumed run restores the window in force and scores the next
    # update with the restored model, so it makes the same selections as an uninterrupted run.
    def make(out, **extra):
        return _cfg(
            quickstart,
            out,
            dataflex={"component_name": "loss", "component_params": {"candidate_subsample": 120}},
            **extra,
        )

    full = tmp_path / "full"
    res = run_cli("train", str(write_config(make(full), "full.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    sels = _jsonl(full / "dataflex" / "selections.jsonl")
    assert [s["step"] for s in sels] == [0, 2, 5, 8, 11, 13, 16]
    resumed = _resume(tmp_path, full, 6, make, run_cli, write_config)
    again = _jsonl(resumed / "dataflex" / "selections.jsonl")
    assert [s["indices"] for s in again] == [s["indices"] for s in sels]
    la, lb = _losses(full), _losses(resumed)
    for step in range(7, 21):
        assert lb[step] == pytest.approx(la[step], rel=1e-4), step
