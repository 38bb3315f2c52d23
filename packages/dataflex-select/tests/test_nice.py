"""The ``nice`` selector (spec §2.7): coefficients, the worked example, signals, config."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import pytest
from dataflex_core import ComponentContext, ConfigError, DataError, SelectRequest, derive
from dataflex_select.less import less_influence
from dataflex_select.nice import (
    NiceSelector,
    NiceSelectorConfig,
    nice_aggregate,
    nice_coefficients,
    nice_generation_seed,
    nice_group_plan,
)
from dataflex_testing import SelectorConformance

REWARD = {"backend": "rule", "function": "dataflex_select.rewards:exact_match"}


class TestNiceConformance(SelectorConformance):
    component_class = NiceSelector

    def make(self, **config: Any) -> Any:
        return super().make(**{"reward": REWARD, **config})

    def valid_configs(self) -> list[dict[str, Any]]:
        return [
            {"proj_dim": 8, "reward": REWARD},
            {"proj_dim": 8, "reward": REWARD, "policy": "topk", "aggregation": "mean"},
            {"proj_dim": 8, "reward": REWARD, "checkpoints": ["a", "b"], "history": 1},
            {"proj_dim": 8, "reward": REWARD, "history": 2},
            {"proj_dim": 8, "reward": REWARD, "selection_scope": "pool", "budget": 20},
        ]


# --------------------------------------------------------------------------- worked example

GRADS = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
REWARDS = [1.0, 0.0, 0.5]


def test_spec_example() -> None:
    np.testing.assert_allclose(nice_aggregate(GRADS, REWARDS, "vanilla"), [2.0, 1.0])
    np.testing.assert_allclose(nice_aggregate(GRADS, REWARDS, "rejection"), [1.0, 0.5])
    np.testing.assert_allclose(
        nice_aggregate(GRADS, REWARDS, "hard_rejection", ref_reward=0.8), [1.0, 0.0]
    )


def test_coefficients_per_policy() -> None:
    c, ref = nice_coefficients(REWARDS, "vanilla")
    assert c.tolist() == [1.0, 0.0, 0.5] and ref is None
    c, _ = nice_coefficients(REWARDS, "rejection")
    assert c.tolist() == [0.5, 0.0, 0.25]
    c, _ = nice_coefficients(REWARDS, "hard_rejection", ref_reward=0.8)
    assert c.tolist() == [1.0, 0.0, 0.0]
    # hard_rejection keeps r > R* - 1e-5 (a tie with the reference is kept)
    c, _ = nice_coefficients([0.5, 0.5 - 2e-5], "hard_rejection", ref_reward=0.5)
    assert c.tolist() == [0.5, 0.0]
    # topk: the highest rewards, ties to the lower index, averaged
    c, _ = nice_coefficients([0.2, 0.9, 0.2, 0.4], "topk", topk=2)
    np.testing.assert_allclose(c, [0.0, 0.45, 0.0, 0.2])
    c, _ = nice_coefficients([0.3, 0.3, 0.3], "topk", topk=2)
    np.testing.assert_allclose(c, [0.15, 0.15, 0.0])
    # NaN rewards (skip_sample) are never kept
    c, _ = nice_coefficients([np.nan, 2.0], "vanilla")
    assert c.tolist() == [0.0, 2.0]


def test_empty_kept_set() -> None:
    c, ref = nice_coefficients([0.0, -1.0], "rejection")
    assert c.tolist() == [0.0, 0.0] and ref is None
    c, ref = nice_coefficients([0.0, -1.0], "rejection", ref_reward=0.7, worst_case_protect=True)
    assert c.tolist() == [0.0, 0.0] and ref == 0.7
    g = nice_aggregate(
        GRADS[:2],
        [0.0, -1.0],
        "rejection",
        ref_reward=0.7,
        worst_case_protect=True,
        ref_grad=[2.0, 4.0],
    )
    np.testing.assert_allclose(g, [1.4, 2.8])
    np.testing.assert_allclose(nice_aggregate(GRADS[:2], [0.0, -1.0], "rejection"), [0.0, 0.0])


def test_reference_is_required_by_hard_rejection_and_worst_case_protect() -> None:
    with pytest.raises(DataError, match="target row 4"):
        nice_coefficients(REWARDS, "hard_rejection", row=4)
    with pytest.raises(DataError, match="worst_case_protect"):
        nice_coefficients(REWARDS, "vanilla", worst_case_protect=True)
    with pytest.raises(DataError, match="target row 7"):
        nice_group_plan([REWARDS, REWARDS], [0.5, None], "hard_rejection", rows=[3, 7])


def test_group_plan_matches_the_aggregate() -> None:
    rng = np.random.default_rng(0)
    rewards = [rng.uniform(-1, 1, size=4), np.array([-1.0, -2.0]), rng.uniform(0, 1, size=3)]
    refs = [0.3, 0.9, 0.1]
    grads = [rng.normal(size=(len(r), 5)) for r in rewards]
    ref_grads = rng.normal(size=(3, 5))
    plan = nice_group_plan(rewards, refs, "rejection", worst_case_protect=True)
    assert plan.num_groups == 3 and len(plan.items) == len(plan.coefficients) == len(plan.groups)
    assert all(c != 0 for c in plan.coefficients)
    got = np.zeros((3, 5))
    for (x, m), coef, gid in zip(plan.items, plan.coefficients, plan.groups, strict=True):
        assert gid == x
        got[x] += coef * (ref_grads[x] if m == -1 else grads[x][m])
    for x in range(3):
        expected = nice_aggregate(
            grads[x],
            rewards[x],
            "rejection",
            ref_reward=refs[x],
            worst_case_protect=True,
            ref_grad=ref_grads[x],
        )
        np.testing.assert_allclose(got[x], expected)
    assert (1, -1) in plan.items  # prompt 1 keeps nothing: its reference answer is used


def test_generation_seed_follows_the_spec() -> None:
    assert nice_generation_seed(3, "current", 5, 2) == derive(3, "nice_gen", "current", 5, 2)


# --------------------------------------------------------------------------- config


def test_defaults() -> None:
    c = NiceSelectorConfig(reward=REWARD)
    assert (c.mc_samples, c.generation_temperature, c.max_new_tokens, c.max_prompt_length) == (
        20,
        1.0,
        512,
        4096,
    )
    assert (c.policy, c.topk, c.worst_case_protect, c.nll_normalize) == (
        "vanilla",
        10,
        False,
        False,
    )
    assert (c.policy_model_path, c.generation_backend) == (None, "hf")
    assert c.gradient_type == "adam" and c.proj_dim == 8192  # the LESS keys


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({}, "reward backend"),
        ({"reward": {"function": "x:y"}}, "backend"),
        ({"reward": REWARD, "generation_backend": "vllm"}, "not supported in this build"),
        ({"reward": REWARD, "mc_samples": 0}, "mc_samples"),
        ({"reward": REWARD, "generation_temperature": 0.0}, "temperature"),
        ({"reward": REWARD, "policy": "best"}, "policy"),
        ({"reward": REWARD, "history": 2, "candidate_subsample": 10}, "candidate_subsample"),
    ],
)
def test_bad_configs(config: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NiceSelector(config)


def test_deprecated_reward_keys_map_with_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        c = NiceSelector(
            {"reward_model_path": "/models/rm", "reward_model_backend": "local_vllm"}
        ).config
    assert c.reward["backend"] == "local_model"
    assert c.reward["model_name_or_path"] == "/models/rm" and c.reward["engine"] == "vllm"
    assert c.reward_model_path is None and c.reward_model_backend is None
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "reward_model_path" in text and "reward_model_backend" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        c = NiceSelector(
            {"reward_model_backend": "api", "reward_backend_params": {"url": "http://judge"}}
        ).config
    assert c.reward["backend"] == "http" and c.reward["url"] == "http://judge"
    assert any("reward_backend_params" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- signals and scores


def test_signals_carry_what_the_integration_needs() -> None:
    sel = NiceSelector(
        {"reward": REWARD, "proj_dim": 16, "policy": "hard_rejection", "nll_normalize": True},
        ComponentContext(seed=9),
    )
    req = SelectRequest(step=4, epoch=0, update=0, n=2, num_samples=6)
    sigs = {s.name: s for s in sel.signals(req)}
    assert set(sigs) == {"train_grad@current", "target_nice@current", "target_subtask"}
    assert sigs["train_grad@current"].kind == "grad_feature"
    assert sigs["train_grad@current"].options["gradient_type"] == "adam"
    t = sigs["target_nice@current"]
    assert (t.kind, t.split) == ("nice_feature", "target")
    o = t.options
    assert (o["mc_samples"], o["temperature"], o["max_new_tokens"], o["max_prompt_length"]) == (
        20,
        1.0,
        512,
        4096,
    )
    assert (o["policy"], o["topk"], o["worst_case_protect"], o["needs_reference"]) == (
        "hard_rejection",
        10,
        False,
        True,
    )
    assert (o["nll_reduction"], o["reward"], o["generation_seed"]) == ("mean", REWARD, 9)
    assert (o["proj_dim"], o["seed"], o["projector_config"]["proj_dim"]) == (16, 0, 16)
    json.dumps([s.options for s in sigs.values()])


def test_scores_as_less_with_nan_targets_counted_as_zero() -> None:
    train = np.array([[1.0, 0.0], [0.6, 0.8], [np.nan, 0.0]])
    target = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 1.0]])
    sel = NiceSelector({"reward": REWARD, "proj_dim": 2})
    req = SelectRequest(step=4, epoch=0, update=0, n=2, num_samples=3)
    values = {
        "train_grad@current": train,
        "target_nice@current": target,
        "target_subtask": [0, 1, 1],
    }
    extras = {s.name: values[s.name] for s in sel.signals(req)}
    got = sel.select(dataclasses.replace(req, extras=extras))
    # subtask 1 = {0-vector, [0,1]}: means 0 and 0.4; max with subtask 0 = [1, 0.6]
    np.testing.assert_allclose(sel.last_scores[1][:2], [1.0, 0.6])
    assert got == [0, 1] and np.isnan(sel.last_scores[1][2])
    expected = less_influence([train], [np.nan_to_num(target)], None, [0, 1, 1])
    np.testing.assert_allclose(sel.last_scores[1][:2], expected[:2])


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The standalone example of docs/select/nice.md runs and prints what the page says."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[3] / "docs" / "select" / "nice.md"
    if not page.exists():  # the package installed on its own, without the repository's docs
        pytest.skip(f"{page} not found")
    code = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)[0]
    exec(compile(code, str(page), "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out.split()
    promised = " ".join(re.findall(r"# (\[.*?\]|\(\(.*)", code)).split()
    for token in promised:
        assert token in printed, f"{token!r} promised by the page, printed {printed}"
