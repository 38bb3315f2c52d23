"""DoReMi as one pipeline through dataflex-cli: reference -> proxy -> target, no hand copying."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHRINK = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "save_steps": 6, "logging_steps": 1}


def step_config(name: str, out_root: Path, **df) -> dict:
    cfg = yaml.safe_load((REPO / "examples" / "doremi" / f"{name}.yaml").read_text())
    cfg.update(SHRINK, dataset_dir=str(REPO / "examples" / "data"), output_dir=str(out_root / name))
    cfg["dataflex"].update(update_times=12, **df)
    return cfg


def test_three_step_pipeline(tmp_path, run_cli, write_config):
    root = tmp_path / "runs"
    ref = step_config("1_reference", root)
    res = run_cli("train", str(write_config(ref, "1.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]

    proxy = step_config("2_proxy", root)
    proxy["dataflex"]["component_params"] = {"reference_model_path": str(root / "1_reference")}
    res = run_cli("train", str(write_config(proxy, "2.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    avg = json.loads((root / "2_proxy" / "doremi_average_weights.json").read_text())
    assert avg["domains"] == ["news", "wiki", "code", "math"]
    assert avg["n"] == 11  # 12 updates; the one at s = 0 has no feedback yet
    assert sum(avg["average"]) == pytest.approx(1.0)
    hist = [json.loads(x) for x in (root / "2_proxy" / "dataflex" / "doremi_weights.jsonl").read_text().splitlines()]
    assert len(hist) == 12 and hist[-1]["average"] == pytest.approx(avg["average"])
    # the proxy samples uniformly (pi) and trains with alpha as the loss weights
    recs = [json.loads(x) for x in (root / "2_proxy" / "dataflex" / "decisions.jsonl").read_text().splitlines()]
    assert all(r["decision"]["proportions"] == [0.25] * 4 for r in recs)
    assert recs[-1]["decision"]["loss_weights"] == pytest.approx(hist[-1]["alpha"])
    assert len({tuple(r["decision"]["loss_weights"]) for r in recs}) > 1  # alpha moved
    # every checkpoint carries the average too
    assert (root / "2_proxy" / "checkpoint-6" / "doremi_average_weights.json").exists()

    target = step_config("3_target", root)
    target["dataflex"]["init_mixture_proportions"] = {
        "from_file": str(root / "2_proxy" / "doremi_average_weights.json")
    }
    res = run_cli("train", str(write_config(target, "3.yaml")))
    assert res.returncode == 0, res.stderr[-4000:]
    state = json.loads((root / "3_target" / "checkpoint-6" / "dataflex_state.json").read_text())
    assert state["window_props"]["0"] == pytest.approx(avg["average"])


def test_proxy_without_reference_model_is_an_error(tmp_path, run_cli, write_config):
    proxy = step_config("2_proxy", tmp_path)
    proxy["dataflex"]["component_params"] = {}
    res = run_cli("train", str(write_config(proxy)))
    assert res.returncode == 2
    assert "reference_model_path" in res.stderr
    proxy["dataflex"]["component_params"] = {"reference_model_path": str(tmp_path / "nope")}
    res = run_cli("train", str(write_config(proxy, "b.yaml")))
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_target_rejects_weights_of_other_domains(tmp_path, run_cli, write_config):
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"domains": ["news", "wiki", "code", "poetry"], "average": [0.25] * 4}))
    target = step_config("3_target", tmp_path)
    target["dataflex"]["init_mixture_proportions"] = {"from_file": str(weights)}
    res = run_cli("train", str(write_config(target)))
    assert res.returncode == 2
    assert "poetry" in res.stderr and "same datasets" in res.stderr
    assert not (tmp_path / "3_target").exists()
