"""Run-config parsing: the dataflex block, flat predecessor keys, overrides, components."""

from __future__ import annotations

import textwrap

import pytest
from dataflex_core import ConfigError, Schedule
from dataflex_llamafactory.config import apply_overrides, load_run_config


def write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


BASE = """
model_name_or_path: builtin:tiny-llama
stage: pt
dataset: a,b
dataflex:
  train_type: dynamic_mix
  component_name: random
  warmup_step: 2
  update_step: 3
  update_times: 4
"""


def test_block_is_split_off_and_rest_passes_through(tmp_path):
    run = load_run_config(write(tmp_path, BASE))
    assert "dataflex" not in run.lf_args
    assert run.lf_args == {"model_name_or_path": "builtin:tiny-llama", "stage": "pt", "dataset": "a,b"}
    assert run.dataflex.update_step == 3
    assert run.component is not None
    assert (run.component.entry, run.component.type, run.component.kind) == ("random", "random", "mixer")
    # packaged components.yaml params, then component_params on top
    assert run.component.params == {"distribution": "dirichlet", "concentration": 1.0}


def test_flat_predecessor_keys_are_accepted(tmp_path):
    text = """
    stage: pt
    train_type: dynamic_mix
    component_name: static
    warmup_step: 1
    update_step: 5
    update_times: 2
    """
    run = load_run_config(write(tmp_path, text))
    assert run.dataflex.train_type == "dynamic_mix"
    assert run.dataflex.component_name == "static"
    assert run.lf_args == {"stage": "pt"}


def test_flat_and_block_conflict_is_an_error(tmp_path):
    text = BASE + "update_step: 7\n"
    with pytest.raises(ConfigError, match="update_step.*both"):
        load_run_config(write(tmp_path, text))


def test_unknown_key_in_block_names_closest(tmp_path):
    text = BASE.replace("update_step: 3", "update_stp: 3")
    with pytest.raises(ConfigError, match=r"unknown key 'update_stp'.*did you mean 'update_step'"):
        load_run_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("train_type: dynamic_mix", "train_type: dynamic_weighting"), "train_type"),
        (("update_step: 3", "update_step: 0"), "update_step is required and must be >= 1"),
        (("  component_name: random\n", ""), "component_name is required"),
        (("warmup_step: 2", "warmup_step: -1"), "warmup_step must be >= 0"),
        (("update_times: 4", "update_times: four"), "update_times' must be int"),
    ],
)
def test_invalid_values(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(write(tmp_path, BASE.replace(*edit)))


def test_overrides_dotted_and_typed():
    cfg = {"learning_rate": 1e-3, "dataflex": {"update_step": 3}}
    out = apply_overrides(cfg, ["dataflex.update_step=5", "learning_rate=2e-4", "plot_loss=true", "new.key=[1, 2]"])
    assert out == {"learning_rate": 2e-4, "dataflex": {"update_step": 5}, "plot_loss": True, "new": {"key": [1, 2]}}
    assert cfg["dataflex"]["update_step"] == 3  # input untouched


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_bad_override(bad):
    with pytest.raises(ConfigError, match="bad override"):
        apply_overrides({}, [bad])


def test_override_through_scalar_is_an_error():
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides({"stage": "pt"}, ["stage.x=1"])


def test_components_file_entry_with_type_and_params(tmp_path):
    write(
        tmp_path,
        """
        mixers:
          fixed_news:
            type: static
            params: {proportions: [3, 1]}
        """,
        name="components.yaml",
    )
    text = BASE.replace("component_name: random", "component_name: fixed_news\n  components_cfg_file: components.yaml\n  component_params: {proportions: [1, 1]}")
    run = load_run_config(write(tmp_path, text))
    assert run.component.type == "static"
    assert run.component.params == {"proportions": [1, 1]}  # component_params win over the file


def test_components_file_missing_and_bad_entries(tmp_path):
    text = BASE.replace("component_name: random", "component_name: random\n  components_cfg_file: nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml.*not found"):
        load_run_config(write(tmp_path, text))
    write(tmp_path, "mixers:\n  x:\n    typo: 1\n", name="c.yaml")
    text = BASE.replace("component_name: random", "component_name: x\n  components_cfg_file: c.yaml")
    with pytest.raises(ConfigError, match="unknown key 'typo'"):
        load_run_config(write(tmp_path, text))
    write(tmp_path, "mixer:\n  x: {}\n", name="d.yaml")
    text = BASE.replace("component_name: random", "component_name: x\n  components_cfg_file: d.yaml")
    with pytest.raises(ConfigError, match="did you mean 'mixers'"):
        load_run_config(write(tmp_path, text))


def test_predecessor_name_field_must_match(tmp_path):
    write(tmp_path, "mixers:\n  r:\n    name: other\n    type: random\n", name="c.yaml")
    text = BASE.replace("component_name: random", "component_name: r\n  components_cfg_file: c.yaml")
    with pytest.raises(ConfigError, match="name 'other'"):
        load_run_config(write(tmp_path, text))


def test_static_mix_needs_no_component(tmp_path):
    text = """
    stage: pt
    dataflex:
      train_type: dynamic_mix
      static_mix: true
      update_step: 1
      init_mixture_proportions: [1, 3]
    """
    run = load_run_config(write(tmp_path, text))
    assert run.component is None and run.dataflex.kind is None


def test_stratified_with_dynamic_mixer_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="mixture_sample_rule"):
        load_run_config(write(tmp_path, BASE + "  mixture_sample_rule: stratified\n"))


def test_effective_hash_changes_with_params(tmp_path):
    a = load_run_config(write(tmp_path, BASE))
    b = load_run_config(write(tmp_path, BASE), ["dataflex.component_params={concentration: 2.0}"])
    assert a.effective_hash() != b.effective_hash()
    assert a.effective_hash() == load_run_config(write(tmp_path, BASE)).effective_hash()


def test_mix_schedule_matches_spec():
    # spec §5.1: update_times >= 1 -> max_steps = warmup + update_step * update_times
    s = Schedule("dynamic_mix", warmup_step=2, update_step=3, update_times=4)
    assert s.mix_total_steps(0, 1000, 16, 1.0) == 14
    assert [t for t in range(20) if s.is_update(t)] == [2, 5, 8, 11]
