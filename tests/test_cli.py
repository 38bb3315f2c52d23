"""dataflex-cli: components, plugins, version, and bad input that fails cleanly."""

from __future__ import annotations

import json

import pytest


def test_components_lists_every_component_with_its_source(run_cli):
    res = run_cli("components")
    assert res.returncode == 0, res.stderr
    rows = [ln.split() for ln in res.stdout.splitlines()[1:] if ln.strip()]
    found = {(r[0], r[1]): r[2] for r in rows}
    assert found[("mixer", "static")] == "dataflex_mix"
    assert found[("mixer", "random")] == "dataflex_mix"
    assert found[("selector", "random")] == "dataflex_select"
    assert found[("selector", "static")] == "dataflex_select"
    assert found[("weighter", "uniform")] == "dataflex_weight"
    assert found[("featurizer", "per_sample_loss")] == "dataflex_ops"
    assert "(dataflex-mix 0.1.0)" in res.stdout
    only = run_cli("components", "--kind", "mixer")
    assert {ln.split()[0] for ln in only.stdout.splitlines()[1:] if ln.strip()} == {"mixer"}


def test_plugins_lists_distributions_and_hooks(run_cli):
    res = run_cli("plugins")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("dataflex_mix"))
    assert "dataflex-mix 0.1.0" in line and "loaded" in line and "dataflex_register_mixers" in line
    ops = next(ln for ln in res.stdout.splitlines() if ln.startswith("dataflex_ops"))
    assert "dataflex_compute_features" in ops


def test_version(run_cli):
    res = run_cli("version")
    assert res.returncode == 0
    assert "dataflex-core" in res.stdout and "llamafactory             0.9.5" in res.stdout


@pytest.mark.parametrize(
    ("change", "override", "expect"),
    [
        ({"dataflex": {"update_stp": 3}}, None, "unknown key 'update_stp' in the dataflex block; did you mean 'update_step'"),
        ({"dataset": "news,nonexistent"}, None, "dataset 'nonexistent' is not defined in"),
        ({"dataset_dir": "/nonexistent/dir"}, None, "dataset_info.json does not exist"),
        ({}, "learning_rate", "bad override 'learning_rate'"),
        ({"dataflex": {"component_name": "no_such_mixer"}}, None, "no mixer named 'no_such_mixer'"),
        ({"dataflex": {"component_name": "random", "component_params": {"concentraton": 2.0}}}, None, "did you mean 'concentration'"),
        ({"dataflex": {"init_mixture_proportions": [1, 1]}}, None, "init_mixture_proportions has 2 entries"),
        ({"max_steps": 7}, None, "max_steps: 7 conflicts with the DataFlex schedule"),
        ({"not_a_llamafactory_key": 1}, None, "not_a_llamafactory_key"),
    ],
)
def test_bad_input_fails_with_a_clear_message_and_writes_nothing(
    tmp_path, run_cli, write_config, quickstart, change, override, expect
):
    out = tmp_path / "out"
    cfg = quickstart(output_dir=str(out), **change)
    args = ["train", str(write_config(cfg))]
    if override:
        args.append(override)
    res = run_cli(*args)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "dataflex-cli: error:" in res.stderr
    assert expect in res.stderr
    assert not out.exists()


def test_empty_domain_file_is_named(tmp_path, run_cli, write_config, quickstart):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "hello world", "domain": "a"}\n' * 20)
    (data / "b.jsonl").write_text("")
    (data / "dataset_info.json").write_text(
        json.dumps({n: {"file_name": f"{n}.jsonl", "columns": {"prompt": "text"}} for n in "ab"})
    )
    out = tmp_path / "out"
    cfg = quickstart(output_dir=str(out), dataset="a,b", dataset_dir=str(data))
    cfg["dataflex"]["init_mixture_proportions"] = [0.5, 0.5]
    res = run_cli("train", str(write_config(cfg)))
    assert res.returncode == 2
    assert "dataset 'b': file" in res.stderr and "is empty" in res.stderr
    assert not out.exists()


def test_config_file_missing(run_cli):
    res = run_cli("train", "no/such/config.yaml")
    assert res.returncode == 2
    assert "config file 'no/such/config.yaml' does not exist" in res.stderr
