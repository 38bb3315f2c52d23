"""The ``less`` selector (spec §2.5): worked examples, official equivalence, signals, state."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np
import pytest
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    SelectRequest,
    StateError,
    config_to_dict,
)
from dataflex_select.less import LessSelector, LessSelectorConfig, less_influence
from dataflex_testing import SelectorConformance


def _req(n: int, num_samples: int, extras: dict[str, Any], step: int = 5) -> SelectRequest:
    return SelectRequest(step=step, epoch=0, update=0, n=n, num_samples=num_samples, extras=extras)


def _answer(sel: Any, req: SelectRequest, values: dict[str, Any]) -> list[int]:
    """Fill the selector's signals from ``values`` (by name) and select."""
    extras = dict(req.extras)
    for sig in sel.signals(req):
        extras[sig.name] = values[sig.name]
    return sel.select(dataclasses.replace(req, extras=extras))


# --------------------------------------------------------------------------- conformance


class TestLessConformance(SelectorConformance):
    component_class = LessSelector

    def valid_configs(self) -> list[dict[str, Any]]:
        return [
            {"proj_dim": 8},
            {"proj_dim": 8, "aggregation": "mean", "similarity": "inner_product"},
            {"proj_dim": 8, "selection_scope": "pool", "budget": 30},
            {"proj_dim": 8, "candidate_subsample": 0.5, "exclude_recent": 1},
            {"proj_dim": 8, "checkpoints": ["ck/a", "ck/b"], "checkpoint_weights": [3, 1]},
            {"proj_dim": 8, "checkpoints": ["ck/a", "ck/b"], "official_compat": True},
        ]


class TestLessHistoryConformance(SelectorConformance):
    """``history: 2`` keeps rounds in memory; the state restores them (inline here)."""

    component_class = LessSelector

    def valid_configs(self) -> list[dict[str, Any]]:
        return [
            {"proj_dim": 8, "history": 2},
            {"proj_dim": 8, "history": 3, "checkpoint_weights": [1, 2, 3], "exclude_recent": 2},
        ]


# --------------------------------------------------------------------------- worked examples

Z = np.array([[1.0, 0.0], [0.6, 0.8]])
T = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
SUB = [0, 1, 1]


def test_example_b_max_of_means_and_mean() -> None:
    got = less_influence([Z], [T], None, SUB)
    np.testing.assert_allclose(got, [1.0, 0.9], atol=1e-6)
    got = less_influence([Z], [T], None, SUB, aggregation="mean")
    np.testing.assert_allclose(got, [0.533333, 0.8], atol=1e-6)
    # J = 1: the two aggregations coincide
    one = less_influence([Z], [T], None, None)
    np.testing.assert_allclose(one, less_influence([Z], [T], None, None, aggregation="mean"))


def test_example_b_through_the_selector() -> None:
    values = {"train_grad@current": Z, "target_grad@current": T, "target_subtask": SUB}
    assert _answer(LessSelector({"proj_dim": 2}), _req(1, 2, {}), values) == [0]
    mean = LessSelector({"proj_dim": 2, "aggregation": "mean"})
    assert _answer(mean, _req(1, 2, {}), values) == [1]
    np.testing.assert_allclose(mean.last_scores[1], [0.533333, 0.8], atol=1e-6)


def test_example_c_two_checkpoints() -> None:
    z2 = np.array([[0.0, 1.0], [1.0, 0.0]])
    target = np.array([[1.0, 0.0]])
    got = less_influence([Z, z2], [target, target], [3, 1])
    np.testing.assert_allclose(got, [0.75, 0.70], atol=1e-6)
    # explicit weights through the selector
    sel = LessSelector({"proj_dim": 2, "checkpoints": ["c1", "c2"], "checkpoint_weights": [3, 1]})
    values = {
        "train_grad@c1": Z,
        "train_grad@c2": z2,
        "target_grad@c1": target,
        "target_grad@c2": target,
        "target_subtask": [0],
    }
    assert _answer(sel, _req(2, 2, {}), values) == [0, 1]
    np.testing.assert_allclose(sel.last_scores[1], [0.75, 0.70], atol=1e-6)
    # checkpoint_weights: auto reads one lr_weight signal per checkpoint
    auto = LessSelector({"proj_dim": 2, "checkpoints": ["c1", "c2"]})
    names = {s.name: s for s in auto.signals(_req(2, 2, {}))}
    assert names["lr_weight@c1"].options == {"checkpoint": "c1"}
    _answer(auto, _req(2, 2, {}), {**values, "lr_weight@c1": 3e-5, "lr_weight@c2": 1e-5})
    np.testing.assert_allclose(auto.last_scores[1], [0.75, 0.70], atol=1e-6)


def test_equal_contiguous_subtasks_match_the_official_reshape() -> None:
    rng = np.random.default_rng(0)
    n, n_sub, per = 50, 4, 6
    train = rng.normal(size=(n, 16))
    target = rng.normal(size=(n_sub * per, 16))
    labels = np.repeat(np.arange(n_sub), per)
    # official LESS: normalise, score matrix, reshape (N, n_sub, -1), mean, max
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    vn = target / np.linalg.norm(target, axis=1, keepdims=True)
    official = (tn @ vn.T).reshape(n, n_sub, -1).mean(-1).max(-1)
    np.testing.assert_allclose(
        less_influence([train], [target], None, labels), official, atol=1e-12
    )
    # blocks over training rows do not change anything
    np.testing.assert_allclose(
        less_influence([train], [target], None, labels, block_rows=7), official, atol=1e-12
    )
    # unequal, interleaved labels: plain per-subtask means
    labels2 = rng.integers(0, 3, size=len(target))
    scores = tn @ vn.T
    expected = np.max([scores[:, labels2 == j].mean(1) for j in range(3)], axis=0)
    np.testing.assert_allclose(
        less_influence([train], [target], None, labels2), expected, atol=1e-12
    )


def test_inner_product_and_zero_vectors() -> None:
    train = np.array([[2.0, 0.0], [0.0, 0.0]])
    target = np.array([[3.0, 0.0]])
    np.testing.assert_allclose(less_influence([train], [target]), [1.0, 0.0])
    np.testing.assert_allclose(
        less_influence([train], [target], similarity="inner_product"), [6.0, 0.0]
    )


def test_float16_features_are_scored_in_float64() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(20, 8)).astype(np.float16)
    target = rng.normal(size=(5, 8)).astype(np.float32)
    got = less_influence([train], [target])
    ref = less_influence([train.astype(np.float64)], [target.astype(np.float64)])
    np.testing.assert_allclose(got, ref, atol=1e-12)


# --------------------------------------------------------------------------- config


def test_official_compat_implies_keys_and_explicit_keys_win() -> None:
    paper = LessSelectorConfig()
    assert (paper.adam_variant, paper.projection_seeding, paper.projection_input_dtype) == (
        "paper",
        "per_tensor",
        "float32",
    )
    off = LessSelector({"official_compat": True}).config
    assert (off.adam_variant, off.projection_seeding, off.projection_input_dtype) == (
        "official",
        "trak",
        "float16",
    )
    mixed = LessSelector({"official_compat": True, "projection_seeding": "per_tensor"}).config
    assert mixed.projection_seeding == "per_tensor" and mixed.adam_variant == "official"
    # the effective config shows the implied values
    assert config_to_dict(off)["projection_input_dtype"] == "float16"


def test_defaults_follow_the_spec_table() -> None:
    c = LessSelectorConfig()
    assert (c.gradient_type, c.proj_dim, c.projector, c.seed, c.model_id, c.block_size) == (
        "adam",
        8192,
        "rademacher",
        0,
        0,
        128,
    )
    assert (c.projection_batch_size, c.grad_strategy, c.loss_reduction, c.similarity) == (
        16,
        "auto",
        "mean",
        "cosine",
    )
    assert (c.aggregation, c.checkpoints, c.checkpoint_weights, c.history) == (
        "max_of_means",
        "current",
        "auto",
        1,
    )
    assert (c.feature_dtype, c.cache_dir, c.official_compat) == ("float16", None, False)
    assert c.adam_betas is None and c.adam_eps is None


def test_save_interval_is_a_deprecated_alias(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        sel = LessSelector({"save_interval": 4})
    assert sel.config.projection_batch_size == 4
    assert any("save_interval" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="twice"):
        LessSelector({"save_interval": 4, "projection_batch_size": 8})


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"history": 2, "candidate_subsample": 0.5}, "candidate_subsample"),
        ({"history": 2, "checkpoints": ["a"]}, "checkpoints: current"),
        ({"checkpoints": ["a", "b"], "checkpoint_weights": [1]}, "one weight per checkpoint"),
        ({"checkpoint_weights": [1, 2]}, "history"),
        ({"checkpoint_weights": "lr"}, "auto"),
        ({"checkpoints": "ckpt-1"}, "list"),
        ({"checkpoints": ["a", "a"]}, "twice"),
        ({"grad_strategy": "factorized"}, "factorized"),
        ({"projector": "sjlt", "official_compat": True}, "dense"),
        ({"proj_dim": 0}, "proj_dim"),
        ({"adam_betas": [0.9, 1.5]}, "adam_betas"),
        ({"checkpoint_weights": [0.0]}, "not all zero"),
    ],
)
def test_bad_configs(config: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LessSelector(config)


def test_factorized_sgd_is_allowed() -> None:
    sel = LessSelector({"grad_strategy": "factorized", "gradient_type": "sgd"})
    opts = sel.signals(_req(2, 4, {}))[0].options
    assert opts["gradient_type"] == "sgd" and opts["featurizer_config"]["strategy"] == "factorized"


# --------------------------------------------------------------------------- signals


def test_signals_and_options() -> None:
    sel = LessSelector(
        {"proj_dim": 64, "official_compat": True, "adam_betas": [0.9, 0.95], "cache_dir": "/c"},
        ComponentContext(seed=7),
    )
    sigs = {s.name: s for s in sel.signals(_req(3, 10, {}))}
    assert set(sigs) == {"train_grad@current", "target_grad@current", "target_subtask"}
    train, target = sigs["train_grad@current"], sigs["target_grad@current"]
    assert (train.kind, train.split, train.indices) == ("grad_feature", "train", None)
    assert (target.kind, target.split, sigs["target_subtask"].kind) == (
        "grad_feature",
        "target",
        "subtask",
    )
    o = train.options
    assert o["gradient_type"] == "adam" and o["checkpoint"] is None
    assert (o["adam_variant"], o["adam_betas"], o["proj_dim"], o["seed"]) == (
        "official",
        [0.9, 0.95],
        64,
        0,
    )
    assert (o["projection_seeding"], o["projection_input_dtype"], o["cache_dir"]) == (
        "trak",
        "float16",
        "/c",
    )
    f = o["featurizer_config"]
    assert f["projector"]["projection_seeding"] == "trak_basic" and f["adam_checkpoint"] is None
    assert target.options["gradient_type"] == "sgd" and target.options["adam_variant"] is None
    assert "adam_variant" not in target.options["featurizer_config"]
    json.dumps([s.options for s in sigs.values()])  # JSON-safe
    # shell draws use the run seed; the config seed is the projector seed
    assert sel.seed == 7 and sel.config.seed == 0
    # warmup draws ask for nothing
    warm = SelectRequest(step=0, epoch=0, update=-1, n=3, num_samples=10, warmup=True)
    assert sel.signals(warm) == []


def test_candidate_subsample_requests_only_candidates() -> None:
    sel = LessSelector({"candidate_subsample": 4})
    req = _req(2, 20, {})
    train = sel.signals(req)[0]
    assert train.indices is not None and len(train.indices) == 4
    assert list(train.indices) == sel.candidates(req).tolist()


def test_offline_checkpoints_signals() -> None:
    sel = LessSelector({"checkpoints": ["out/checkpoint-10", "out/checkpoint-20"]})
    names = [s.name for s in sel.signals(_req(2, 5, {}))]
    assert names == [
        "train_grad@out/checkpoint-10",
        "target_grad@out/checkpoint-10",
        "lr_weight@out/checkpoint-10",
        "train_grad@out/checkpoint-20",
        "target_grad@out/checkpoint-20",
        "lr_weight@out/checkpoint-20",
        "target_subtask",
    ]
    sig = sel.signals(_req(2, 5, {}))[0]
    assert sig.options["checkpoint"] == "out/checkpoint-10"
    assert sig.options["featurizer_config"]["adam_checkpoint"] == "out/checkpoint-10"


# --------------------------------------------------------------------------- bad input


def test_dimension_mismatch_names_both_dims() -> None:
    with pytest.raises(DataError, match=r"dim 8 .*dim 6"):
        less_influence([np.ones((3, 8))], [np.ones((2, 6))])
    sel = LessSelector({"proj_dim": 8})
    values = {
        "train_grad@current": np.ones((3, 8)),
        "target_grad@current": np.ones((2, 6)),
        "target_subtask": [0, 0],
    }
    with pytest.raises(DataError, match=r"8.*6"):
        _answer(sel, _req(1, 3, {}), values)


def test_empty_target_set_is_an_error() -> None:
    with pytest.raises(DataError, match="no rows"):
        less_influence([np.ones((3, 4))], [np.ones((0, 4))])
    sel = LessSelector({"proj_dim": 4})
    values = {
        "train_grad@current": np.ones((3, 4)),
        "target_grad@current": np.ones((0, 4)),
        "target_subtask": [],
    }
    with pytest.raises(DataError, match="target"):
        _answer(sel, _req(1, 3, {}), values)


def test_nan_training_rows_are_never_selected() -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(size=(6, 4))
    target = train[:2] * 2  # rows 0 and 1 would be the best
    train[0] = np.nan
    train[1, 2] = np.nan
    sel = LessSelector({"proj_dim": 4})
    values = {"train_grad@current": train, "target_grad@current": target, "target_subtask": [0, 0]}
    got = _answer(sel, _req(4, 6, {}), values)
    assert 0 not in got and 1 not in got and len(got) == 4
    assert np.isnan(sel.last_scores[1][:2]).all()
    with pytest.raises(DataError, match="finite"):
        _answer(LessSelector({"proj_dim": 4}), _req(5, 6, {}), values)


def test_nan_target_rows_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    target = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 1.0]])
    with caplog.at_level(logging.WARNING):
        got = less_influence([Z], [target], None, [0, 1, 1])
    assert any("non-finite" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(got, [1.0, 0.8])
    with pytest.raises(DataError, match="all 1 target rows"):
        less_influence([Z], [np.full((1, 2), np.nan)])


def test_missing_signal_and_wrong_row_count() -> None:
    sel = LessSelector({"proj_dim": 2})
    with pytest.raises(DataError, match="missing"):
        sel.select(_req(1, 2, {}))
    values = {"train_grad@current": Z[:1], "target_grad@current": T, "target_subtask": SUB}
    with pytest.raises(DataError, match="rows"):
        _answer(sel, _req(1, 2, {}), values)
    values = {"train_grad@current": Z, "target_grad@current": T, "target_subtask": [0, 1]}
    with pytest.raises(DataError, match="subtask labels"):
        _answer(sel, _req(1, 2, {}), values)


# --------------------------------------------------------------------------- history


def _history_values(step: int, n: int = 6, m: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return {
        "train_grad@current": rng.normal(size=(n, 4)),
        "target_grad@current": rng.normal(size=(m, 4)),
        "target_subtask": [0, 1, 1],
        "lr_weight@current": 1e-4 * (1 + step % 3),
    }


def test_history_combines_the_last_rounds_with_lr_weights() -> None:
    sel = LessSelector({"proj_dim": 4, "history": 2, "feature_dtype": "float32"})
    rounds = [_history_values(s) for s in (1, 2, 3)]
    for s, vals in zip((1, 2, 3), rounds, strict=True):
        _answer(sel, _req(2, 6, {}, step=s), vals)
        assert sel.signals(_req(2, 6, {}, step=s))[0].indices is None  # whole pool
    # after three rounds: rounds 2 and 3 with η̄ ∝ their lr weights
    w = [rounds[1]["lr_weight@current"], rounds[2]["lr_weight@current"]]
    expected = less_influence(
        [r["train_grad@current"].astype(np.float32) for r in rounds[1:]],
        [r["target_grad@current"].astype(np.float32) for r in rounds[1:]],
        w,
        [0, 1, 1],
    )
    np.testing.assert_allclose(sel.last_scores[1], expected, atol=1e-6)
    state = sel.state_dict()["algorithm"]
    assert [h["step"] for h in state["history"]] == [2, 3]
    assert [h["weight"] for h in state["history"]] == w


def test_history_state_files_resume_and_missing_file(tmp_path: Any) -> None:
    cfg = {"proj_dim": 4, "history": 2, "cache_dir": str(tmp_path)}
    a = LessSelector(cfg)
    vals = [_history_values(s) for s in (1, 2, 3)]
    vals[0]["train_grad@current"][2] = np.nan  # NaN rows survive the round trip
    _answer(a, _req(2, 6, {}, step=1), vals[0])
    _answer(a, _req(2, 6, {}, step=2), vals[1])
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    rounds = state["algorithm"]["history"]
    assert all(os.path.exists(h["train"]["path"]) for h in rounds)
    assert "inline" not in rounds[0]["train"]
    b = LessSelector(cfg)
    b.load_state_dict(state)
    assert _answer(b, _req(2, 6, {}, step=3), vals[2]) == _answer(
        a, _req(2, 6, {}, step=3), vals[2]
    )
    os.remove(rounds[0]["train"]["path"])
    with pytest.raises(StateError, match="does not exist"):
        LessSelector(cfg).load_state_dict(state)


def test_resume_with_another_projector_is_refused() -> None:
    state = LessSelector({"proj_dim": 8}).state_dict()
    with pytest.raises(StateError, match="projector"):
        LessSelector({"proj_dim": 16}).load_state_dict(state)


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The standalone example of docs/select/less.md runs and prints what the page says."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[3] / "docs" / "select" / "less.md"
    if not page.exists():  # the package installed on its own, without the repository's docs
        pytest.skip(f"{page} not found")
    code = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)[0]
    exec(compile(code, str(page), "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out.split()
    promised = " ".join(re.findall(r"# (\[.*?\]|\(\(.*)", code)).split()
    for token in promised:
        assert token in printed, f"{token!r} promised by the page, printed {printed}"
