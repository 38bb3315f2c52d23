"""The ``adapt`` weighter and the pooling helpers on numpy inputs (spec §4.2, §1.2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, StateError, WeightFeedback
from dataflex_testing import WeighterConformance
from dataflex_weight import (
    AdaptWeighter,
    adapt_weights,
    mean_anchor,
    pool_embeddings,
    position_weighted_pool,
)

ANCHORS = np.array([[1.0, 0.0], [0.0, 1.0]])


def weighter_with_anchors(**config) -> AdaptWeighter:
    weighter = AdaptWeighter(config)
    weighter.set_anchors(ANCHORS, step=0)
    return weighter


def fb(embeddings, losses=None, **kw) -> WeightFeedback:
    emb = np.asarray(embeddings, dtype=np.float64)
    losses = np.ones(emb.shape[0]) if losses is None else np.asarray(losses, dtype=np.float64)
    return WeightFeedback(step=kw.pop("step", 0), losses=losses, embeddings=emb, **kw)


# --------------------------------------------------------------------------- spec examples


def test_spec_example() -> None:
    weighter = weighter_with_anchors()
    assert weighter.anchor_mean.tolist() == [0.5, 0.5]
    w = weighter.weigh(fb([[1.0, 0.0], [0.6, 0.8]]))
    assert w == pytest.approx([0.622459, 0.668188], abs=1e-6)


def test_embeddings_and_anchors_are_normalised() -> None:
    weighter = AdaptWeighter()
    weighter.set_anchors(np.array([[3.0, 0.0], [0.0, 0.5]]), step=0)
    assert weighter.anchor_mean.tolist() == [0.5, 0.5]
    w = weighter.weigh(fb([[7.0, 0.0], [3.0, 4.0]]))
    assert w == pytest.approx([0.622459, 0.668188], abs=1e-6)


def test_tau_and_clip() -> None:
    w = weighter_with_anchors(tau=0.5).weigh(fb([[1.0, 0.0]]))
    assert w == pytest.approx([1 / (1 + math.exp(-1.0))])
    w = weighter_with_anchors(clip=0.65).weigh(fb([[1.0, 0.0], [0.6, 0.8]]))
    assert w == pytest.approx([0.622459, 0.65], abs=1e-6)


def test_sigmoid_is_stable_for_tiny_tau() -> None:
    w = adapt_weights([[1.0, 0.0], [-1.0, 0.0]], [0.5, 0.5], tau=1e-4)
    assert w.tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("position_weighted", [0.447214, 0.894427]),
        ("mean", [0.707107, 0.707107]),
        ("last_token", [0.0, 1.0]),
    ],
)
def test_pooling_example(method: str, expected: list[float]) -> None:
    h, mask = [[1, 0], [0, 1], [5, 5]], [1, 1, 0]
    assert pool_embeddings(h, mask, method) == pytest.approx(expected, abs=1e-6)
    if method == "position_weighted":
        assert position_weighted_pool(h, mask) == pytest.approx(expected, abs=1e-6)
        raw = position_weighted_pool(h, mask, normalize=False)
        assert raw == pytest.approx([1 / 3, 2 / 3])


def test_pooling_ignores_the_padding_side() -> None:
    h = np.array([[[9, 9], [1, 0], [0, 1]], [[1, 0], [0, 1], [9, 9]]], dtype=float)
    mask = np.array([[0, 1, 1], [1, 1, 0]])
    out = position_weighted_pool(h, mask)
    assert out.shape == (2, 2)
    assert out[0] == pytest.approx(out[1]) and out[0] == pytest.approx(
        [0.447214, 0.894427], abs=1e-6
    )


def test_pooling_errors() -> None:
    with pytest.raises(ConfigError, match="pooling"):
        pool_embeddings(np.zeros((2, 2)), np.ones(2), "max")
    with pytest.raises(DataError, match="attention mask"):
        pool_embeddings(np.zeros((2, 3, 4)), np.ones((2, 2)))


def test_a_sample_without_tokens_pools_to_zero() -> None:
    assert position_weighted_pool([[1.0, 2.0]], [0]).tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- anchors and state


def test_needs_refresh_once_per_interval() -> None:
    weighter = AdaptWeighter({"refresh_interval": 5})
    assert weighter.needs_refresh(3)  # no anchors yet
    weighter.set_anchors(ANCHORS, step=3)
    assert weighter.anchor_step == 3
    assert [s for s in range(3, 16) if weighter.needs_refresh(s)] == [5, 10, 15]
    weighter.set_anchors(ANCHORS, step=10)
    assert not weighter.needs_refresh(10)  # the second micro-batch of step 10
    assert weighter.needs_refresh(15)


def test_state_round_trip() -> None:
    weighter = weighter_with_anchors()
    state = json.loads(json.dumps(weighter.state_dict()))
    assert state == {"anchor_mean": [0.5, 0.5], "anchor_step": 0}
    fresh = AdaptWeighter()
    assert fresh.state_dict() == {"anchor_mean": None, "anchor_step": None}
    fresh.load_state_dict(state)
    assert fresh.weigh(fb([[0.6, 0.8]])) == pytest.approx([0.668188], abs=1e-6)
    fresh.load_state_dict({"anchor_mean": None, "anchor_step": None})
    assert fresh.anchor_mean is None


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"anchor_mean": [0.5], "anchor_step": -1},
        {"anchor_mean": [], "anchor_step": 0},
        {"anchor_mean": [math.nan], "anchor_step": 0},
        {"anchor_mean": "x", "anchor_step": 0},
    ],
)
def test_bad_state_is_refused(state: dict) -> None:
    with pytest.raises(StateError):
        AdaptWeighter().load_state_dict(state)


def test_anchor_errors() -> None:
    with pytest.raises(DataError, match="at least one"):
        AdaptWeighter().set_anchors(np.zeros((0, 2)), step=0)
    with pytest.raises(DataError, match="NaN"):
        AdaptWeighter().set_anchors(np.array([[math.nan, 1.0]]), step=0)
    with pytest.raises(DataError, match="matrix"):
        AdaptWeighter().set_anchors(np.ones(3), step=0)
    assert mean_anchor([[2.0, 0.0]]).tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- weighing errors


def test_weigh_needs_anchors_and_embeddings() -> None:
    with pytest.raises(DataError, match="set_anchors"):
        AdaptWeighter().weigh(fb([[1.0, 0.0]]))
    with pytest.raises(DataError, match="embeddings is None"):
        weighter_with_anchors().weigh(WeightFeedback(step=0, losses=np.ones(2)))
    with pytest.raises(DataError, match="shape"):
        weighter_with_anchors().weigh(fb(np.ones((2, 3))))
    with pytest.raises(DataError, match="shape"):
        weighter_with_anchors().weigh(fb(np.ones((2, 2)), losses=np.ones(3)))


def test_invalid_and_nonfinite() -> None:
    weighter = weighter_with_anchors()
    emb = [[1.0, 0.0], [0.6, 0.8], [math.nan, 0.0], [0.0, 1.0]]
    f = fb(emb, losses=[1.0, math.nan, 2.0, 3.0], valid=[True, False, True, True])
    with pytest.warns(RuntimeWarning, match="non-finite embedding"):
        w = weighter.weigh(f)
    assert w == pytest.approx([0.622459, 0.0, 0.0, 0.622459], abs=1e-6)
    f = fb([[1.0, 0.0], [0.6, 0.8]], losses=[math.inf, 1.0])
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        w = weighter.weigh(f)
    assert w == pytest.approx([0.0, 0.668188], abs=1e-6)


# --------------------------------------------------------------------------- objective


EMB = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6], [-1.0, 0.0]])
LOSSES = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


def test_objective_normalisations() -> None:
    for mode in ("mean", "weight_sum", "sum"):
        weighter = weighter_with_anchors(loss_normalization=mode)
        f = fb(EMB, LOSSES)
        w = weighter.weigh(f)
        s = float(np.sum(w * LOSSES))
        expected = {"mean": s / 5, "weight_sum": s / w.sum(), "sum": s}[mode]
        assert weighter.objective(f, w) == pytest.approx(expected)


def test_mean_counts_only_valid_samples() -> None:
    weighter = weighter_with_anchors()
    f = fb(EMB, [1.0, math.nan, 3.0, 4.0, 5.0], valid=[True, False, True, True, True])
    w = weighter.weigh(f)
    assert weighter.objective(f, w) == pytest.approx(np.sum(np.delete(w * LOSSES, 1)) / 4)


@pytest.mark.parametrize("mode", ["mean", "weight_sum", "sum"])
def test_two_ranks_equal_one_rank(mode: str, split_feedback) -> None:
    weighter = weighter_with_anchors(loss_normalization=mode, tau=0.3)
    single = fb(EMB, LOSSES)
    w1 = weighter.weigh(single)
    j1 = weighter.objective(single, w1)
    ranks = split_feedback(LOSSES, [2, 3], embeddings=EMB)
    parts = [weighter.weigh(f) for f in ranks]
    assert np.concatenate(parts) == pytest.approx(w1)
    gws = float(sum(p.sum() for p in parts)) if mode == "weight_sum" else None
    total = sum(
        weighter.objective(f, w, global_weight_sum=gws) for f, w in zip(ranks, parts, strict=True)
    )
    assert total == pytest.approx(j1)


def test_weight_sum_over_ranks_needs_the_global_sum(split_feedback) -> None:
    weighter = weighter_with_anchors(loss_normalization="weight_sum")
    f = split_feedback(LOSSES, [2, 3], embeddings=EMB)[0]
    with pytest.raises(DataError, match="global_weight_sum"):
        weighter.objective(f, weighter.weigh(f))


def test_mean_over_ranks_needs_global_validity() -> None:
    weighter = weighter_with_anchors()
    f = WeightFeedback(step=0, losses=LOSSES[:2], embeddings=EMB[:2], world_size=2)
    w = weighter.weigh(f)  # weights are per sample: no global fields needed
    with pytest.raises(DataError, match="global"):
        weighter.objective(f, w)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"tau": 0.0}, "tau"),
        ({"clip": -1.0}, "clip"),
        ({"eps": 0.0}, "eps"),
        ({"refresh_interval": 0}, "refresh_interval"),
        ({"anchor_batch_size": 0}, "anchor_batch_size"),
        ({"pooling": "max"}, "pooling"),
        ({"loss_normalization": "median"}, "loss_normalization"),
    ],
)
def test_bad_config(config: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AdaptWeighter(config)


def test_defaults_follow_the_spec() -> None:
    cfg = AdaptWeighter().config
    assert (cfg.tau, cfg.refresh_interval, cfg.anchor_batch_size, cfg.clip, cfg.eps) == (
        1.0,
        50,
        8,
        None,
        1e-8,
    )
    assert (cfg.pooling, cfg.layer, cfg.loss_normalization) == ("position_weighted", -1, "mean")


# --------------------------------------------------------------------------- conformance


class TestAdaptWeighterConformance(WeighterConformance):
    name = "adapt"
    dim = 6

    def valid_configs(self):
        return [
            {},
            {"tau": 0.2, "clip": 0.7},
            {"loss_normalization": "weight_sum"},
            {"loss_normalization": "sum", "refresh_interval": 1},
        ]

    def build(self, context, **config):
        weighter = super().build(context, **config)
        anchors = np.random.default_rng(99).normal(size=(4, self.dim))
        weighter.set_anchors(anchors, step=0)
        return weighter

    def feedback(self, step, rng):
        base = super().feedback(step, rng)
        emb = rng.normal(size=(self.batch_size, self.dim))
        return WeightFeedback(
            step=base.step,
            losses=base.losses,
            token_counts=base.token_counts,
            domains=base.domains,
            valid=base.valid,
            embeddings=emb,
        )
