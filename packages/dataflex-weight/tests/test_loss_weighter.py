"""The ``loss`` weighter on numpy inputs: spec §4.1 examples, config, ranks, bad input."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, Registry, WeightFeedback, config_to_dict
from dataflex_testing import WeighterConformance
from dataflex_weight import (
    LossWeighter,
    LossWeighterConfig,
    TemperatureSchedule,
    UniformWeighter,
    loss_weights,
)
from dataflex_weight.loss import STRATEGIES

L = np.array([2.0, 3.0, 4.0])


def fb(losses, **kw) -> WeightFeedback:
    return WeightFeedback(step=kw.pop("step", 0), losses=np.asarray(losses, float), **kw)


# --------------------------------------------------------------------------- spec examples


def test_linupper_example() -> None:
    weighter = LossWeighter({"strategy": "linupper", "delta": 1.0})
    w = weighter.weigh(fb(L))
    assert w == pytest.approx([0.155362, 0.422319, 0.422319], abs=1e-6)
    assert weighter.objective(fb(L), w) == pytest.approx(3.266956, abs=1e-6)


def test_linupper_temperature_half() -> None:
    w = LossWeighter({"temperature": 0.5}).weigh(fb(L))
    assert w == pytest.approx([0.063379, 0.468311, 0.468311], abs=1e-6)


@pytest.mark.parametrize("name", ["quadratic", "mid"])
def test_quadratic_example(name: str) -> None:
    w = LossWeighter({"strategy": name}).weigh(fb(L))
    assert w == pytest.approx([0.211942, 0.576117, 0.211942], abs=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equal_losses_give_uniform_weights(strategy: str) -> None:
    w = LossWeighter({"strategy": strategy}).weigh(fb([2.5, 2.5, 2.5, 2.5]))
    assert w == pytest.approx([0.25] * 4, abs=1e-12)


def test_normalised_loss_and_other_strategies_by_hand() -> None:
    # l~ = [-1, 0, 1]; g by the formulas of §4.1, then softmax
    lt = np.array([-1.0, 0.0, 1.0])
    expected = {
        "extremes": np.abs(lt),
        "upper": 0.5 * lt + 0.5,
        "identity": lt,
    }
    for strategy, g in expected.items():
        e = np.exp(g - g.max())
        assert loss_weights(L, strategy=strategy) == pytest.approx(e / e.sum(), abs=1e-12)
    assert loss_weights(L, strategy="uniform") == pytest.approx([1 / 3] * 3)


def test_delta_scales_the_range() -> None:
    # delta = 2: l~ = [-2, 0, 2]; linupper g = [0, 2, 2]
    g = np.array([0.0, 2.0, 2.0])
    e = np.exp(g - g.max())
    assert LossWeighter({"delta": 2.0}).weigh(fb(L)) == pytest.approx(e / e.sum(), abs=1e-12)


def test_weights_sum_to_one_and_ignore_order() -> None:
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 5.0, size=17)
    for strategy in STRATEGIES:
        w = loss_weights(losses, strategy=strategy, temperature=0.7)
        assert w.sum() == pytest.approx(1.0)
        perm = rng.permutation(17)
        assert loss_weights(losses[perm], strategy=strategy, temperature=0.7) == pytest.approx(
            w[perm]
        )


# --------------------------------------------------------------------------- objective


@pytest.mark.parametrize("make", [lambda: LossWeighter({"strategy": "uniform"}), UniformWeighter])
def test_uniform_objective_is_the_plain_mean(make) -> None:
    weighter = make()
    losses = np.array([0.5, 1.5, 4.0, 2.0])
    assert weighter.objective(fb(losses), weighter.weigh(fb(losses))) == pytest.approx(2.0)
    with_invalid = fb([0.5, math.nan, 1.5, 4.0, 2.0], valid=[True, False, True, True, True])
    assert weighter.objective(with_invalid, weighter.weigh(with_invalid)) == pytest.approx(2.0)


def test_token_weighted_objective_by_hand() -> None:
    weighter = LossWeighter({"loss_base": "token_weighted"})
    losses, counts = np.array([2.0, 3.0, 4.0]), np.array([1, 3, 6])
    f = fb(losses, token_counts=counts)
    w = weighter.weigh(f)
    expected = 3 * np.sum(w * counts / 10 * losses)
    assert weighter.objective(f, w) == pytest.approx(expected)
    # uniform weights recover the token-weighted mean of one rank
    u = np.full(3, 1 / 3)
    assert weighter.objective(f, u) == pytest.approx(np.sum(counts * losses) / 10)


def test_token_weighted_needs_token_counts() -> None:
    weighter = LossWeighter({"official_compat": True})
    with pytest.raises(DataError, match="token_counts"):
        weighter.objective(fb(L), weighter.weigh(fb(L)))


# --------------------------------------------------------------------------- several ranks


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "identity", "uniform"])
def test_two_ranks_equal_one_rank(strategy: str, split_feedback) -> None:
    rng = np.random.default_rng(3)
    losses = rng.uniform(0.5, 4.0, size=7)
    valid = np.ones(7, dtype=bool)
    valid[5] = False
    losses[5] = math.nan
    weighter = LossWeighter({"strategy": strategy, "temperature": 0.8})
    single = fb(losses, valid=valid)
    w1 = weighter.weigh(single)
    j1 = weighter.objective(single, w1)
    ranks = split_feedback(losses, [3, 4], valid=valid)  # unequal sizes
    parts = [weighter.weigh(f) for f in ranks]
    assert np.concatenate(parts) == pytest.approx(w1, abs=1e-12)
    assert sum(weighter.objective(f, w) for f, w in zip(ranks, parts, strict=True)) == (
        pytest.approx(j1, abs=1e-12)
    )
    assert w1[5] == 0


def test_token_weighted_over_ranks_follows_the_spec(split_feedback) -> None:
    losses = np.array([2.0, 3.0, 4.0, 1.0, 5.0])
    counts = np.array([2, 4, 1, 3, 5])
    weighter = LossWeighter({"official_compat": True})
    ranks = split_feedback(losses, [2, 3], token_counts=counts)
    w = [weighter.weigh(f) for f in ranks]
    got = sum(weighter.objective(f, wr) for f, wr in zip(ranks, w, strict=True))
    w_all = np.concatenate(w)
    expected = 2 * np.sum(w_all[:2] * counts[:2] / 6 * losses[:2]) + 3 * np.sum(
        w_all[2:] * counts[2:] / 9 * losses[2:]
    )
    assert got == pytest.approx(expected)


def test_several_ranks_need_global_losses() -> None:
    f = WeightFeedback(step=0, losses=L, world_size=2)
    with pytest.raises(DataError, match="global"):
        LossWeighter().weigh(f)


def test_global_slice_must_fit() -> None:
    f = WeightFeedback(step=0, losses=L, global_losses=L, local_offset=1, world_size=2)
    with pytest.raises(DataError, match="local_offset"):
        LossWeighter().weigh(f)


def test_uniform_strategy_accepts_global_valid_only() -> None:
    f = WeightFeedback(
        step=0, losses=L, global_valid=[True] * 5 + [False], local_offset=2, world_size=2
    )
    assert LossWeighter({"strategy": "uniform"}).weigh(f) == pytest.approx([0.2] * 3)
    with pytest.raises(DataError, match="global_losses"):
        LossWeighter().weigh(f)


# --------------------------------------------------------------------------- bad input


def test_nonfinite_losses_get_zero_and_a_warning() -> None:
    f = fb([2.0, math.nan, 3.0, math.inf, 4.0])
    with pytest.warns(RuntimeWarning, match="2 valid sample"):
        w = LossWeighter().weigh(f)
    assert w[1] == 0 and w[3] == 0
    assert w[[0, 2, 4]] == pytest.approx([0.155362, 0.422319, 0.422319], abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the objective does not warn again
        assert math.isfinite(LossWeighter().objective(f, w))


def test_invalid_samples_get_zero_silently() -> None:
    f = fb([2.0, math.nan, 3.0, 4.0], valid=[True, False, True, True])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = LossWeighter().weigh(f)
    assert w == pytest.approx([0.155362, 0.0, 0.422319, 0.422319], abs=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_sample_gets_weight_one(strategy: str) -> None:
    weighter = LossWeighter({"strategy": strategy})
    w = weighter.weigh(fb([3.7]))
    assert w.tolist() == [1.0]
    assert weighter.objective(fb([3.7]), w) == pytest.approx(3.7)


def test_all_invalid_gives_zero_weights_and_zero_objective() -> None:
    f = fb([math.nan, math.nan], valid=[False, False])
    weighter = LossWeighter()
    w = weighter.weigh(f)
    assert w.tolist() == [0.0, 0.0]
    assert weighter.objective(f, w) == 0.0


def test_empty_batch() -> None:
    weighter = LossWeighter()
    w = weighter.weigh(fb(np.zeros(0)))
    assert w.shape == (0,)
    assert weighter.objective(fb(np.zeros(0)), w) == 0.0


def test_wrong_weight_length_is_an_error() -> None:
    with pytest.raises(DataError, match="weights"):
        LossWeighter().objective(fb(L), np.ones(2))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("value", [0, -1.0, math.inf])
@pytest.mark.parametrize("key", ["temperature", "kl_reg"])
def test_temperature_must_be_positive(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        LossWeighter({key: value})


def test_kl_reg_is_a_permanent_alias(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        weighter = LossWeighter({"kl_reg": 0.5})
    assert not caplog.records, "kl_reg is not deprecated: no warning"
    assert weighter.config.temperature == 0.5
    assert weighter.weigh(fb(L)) == pytest.approx([0.063379, 0.468311, 0.468311], abs=1e-6)
    assert LossWeighter({"kl_reg": 0.5, "temperature": 0.5}).config.temperature == 0.5
    with pytest.raises(ConfigError, match="kl_reg"):
        LossWeighter({"kl_reg": 0.5, "temperature": 2.0})


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        LossWeighter({"strategy": "linuper"})
    msg = str(info.value)
    assert "did you mean 'linupper'" in msg
    for name in STRATEGIES:
        assert name in msg


def test_delta_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="delta"):
        LossWeighter({"delta": 0.0})


def test_temperature_schedule_is_linear_in_the_step() -> None:
    weighter = LossWeighter({"temperature_schedule": {"start": 4.0, "end": 0.5, "steps": 10}})
    assert weighter.temperature_at(0) == 4.0
    assert weighter.temperature_at(4) == pytest.approx(4.0 - 3.5 * 0.4)
    assert weighter.temperature_at(10) == 0.5
    assert weighter.temperature_at(1000) == 0.5
    w = weighter.weigh(fb(L, step=10))
    assert w == pytest.approx([0.063379, 0.468311, 0.468311], abs=1e-6)
    assert isinstance(weighter.config.temperature_schedule, TemperatureSchedule)


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        ({"start": 1.0, "end": 0.5, "steps": 0}, "steps"),
        ({"start": 1.0, "end": 0.5, "steps": -3}, "steps"),
        ({"start": 0.0, "end": 0.5, "steps": 3}, "start"),
        ({"start": 1.0, "end": -1.0, "steps": 3}, "end"),
        ({"start": 1.0, "end": 0.5}, "steps"),
        ({"start": 1.0, "end": 0.5, "steps": 3, "stpes": 3}, "stpes"),
    ],
)
def test_bad_temperature_schedule(schedule: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LossWeighter({"temperature_schedule": schedule})


def test_schedule_and_temperature_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="not both"):
        LossWeighter(
            {"temperature": 1.0, "temperature_schedule": {"start": 1, "end": 1, "steps": 1}}
        )


def test_official_compat_implies_token_weighted_and_explicit_key_wins() -> None:
    assert LossWeighterConfig().loss_base == "sample_mean"
    assert LossWeighterConfig(official_compat=True).loss_base == "token_weighted"
    cfg = LossWeighterConfig(official_compat=True, loss_base="sample_mean")
    assert cfg.loss_base == "sample_mean"


def test_effective_config_round_trips() -> None:
    cfg = LossWeighterConfig(strategy="mid", kl_reg=0.3, official_compat=True)
    data = config_to_dict(cfg)
    assert data["strategy"] == "quadratic" and data["temperature"] == 0.3
    assert data["kl_reg"] is None and data["loss_base"] == "token_weighted"
    assert LossWeighter(data).config == cfg


def test_uniform_is_true_uniform_by_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        weighter = LossWeighter({"strategy": "uniform"})
    assert not caplog.records
    assert weighter.weigh(fb(L)) == pytest.approx([1 / 3] * 3)


def test_legacy_uniform_means_identity_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dataflex_weight.loss"):
        weighter = LossWeighter({"strategy": "uniform", "legacy_strategy_names": True})
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1
    assert "'identity'" in warnings_[0].getMessage() and "uniform" in warnings_[0].getMessage()
    assert weighter.config.strategy == "identity"
    assert weighter.weigh(fb(L)) == pytest.approx(loss_weights(L, strategy="identity"))
    # the other names mean the same under the legacy reading
    assert LossWeighter({"strategy": "mid", "legacy_strategy_names": True}).config.strategy == (
        "quadratic"
    )


def test_state_is_empty() -> None:
    weighter = LossWeighter()
    assert weighter.state_dict() == {}
    weighter.load_state_dict({})


def test_plugin_registers_every_weighter(fresh_plugin_manager) -> None:
    registry = Registry(fresh_plugin_manager)
    assert {"uniform", "loss", "adapt", "custom"} <= set(registry.names("weighter"))
    assert isinstance(registry.create("weighter", "loss", strategy="mid"), LossWeighter)


# --------------------------------------------------------------------------- conformance


class TestLossWeighterConformance(WeighterConformance):
    name = "loss"

    def valid_configs(self):
        return [
            *({"strategy": s} for s in (*STRATEGIES, "mid")),
            {"strategy": "linupper", "temperature": 0.3, "delta": 2.0},
            {"kl_reg": 0.5},
            {"temperature_schedule": {"start": 2.0, "end": 0.5, "steps": 4}},
            {"official_compat": True},
            {"strategy": "uniform", "legacy_strategy_names": True},
        ]
