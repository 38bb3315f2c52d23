"""The ``custom`` weighter and ``CustomWeighterBase`` (spec §4.3), numpy inputs."""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
from dataflex_core import (
    ComponentSpec,
    ConfigError,
    DataError,
    PluginError,
    Registry,
    WeightFeedback,
    hookimpl,
)
from dataflex_testing import WeighterConformance
from dataflex_weight import CustomWeighter, CustomWeighterBase, template_weights

# A module the config can name as "dataflex_weight_test_fns:<function>".
FNS = types.ModuleType("dataflex_weight_test_fns")
CALLS: list[dict] = []


def _inverse(losses_local, losses_global, valid_global, token_counts, domain_ids, step, embeddings):
    CALLS.append(
        dict(
            losses_local=losses_local,
            losses_global=losses_global,
            valid_global=valid_global,
            token_counts=token_counts,
            domain_ids=domain_ids,
            step=step,
            embeddings=embeddings,
        )
    )
    return 1.0 / (1.0 + np.nan_to_num(losses_local))


def _scaled(losses_local, *, scale=1.0, **_):
    return np.full(len(losses_local), scale)


def _global(losses_global, valid_global, **_):
    return np.where(valid_global, np.arange(1.0, len(losses_global) + 1), 0.0)


FNS.inverse = _inverse
FNS.scaled = _scaled
FNS.global_weights = _global
FNS.none = lambda **_: None
FNS.negative = lambda losses_local, **_: -np.ones(len(losses_local))
FNS.nan_for_valid = lambda losses_local, **_: np.full(len(losses_local), math.nan)
FNS.nan_for_invalid = lambda losses_local, **_: np.array(losses_local)  # NaN where invalid
FNS.short = lambda losses_local, **_: np.ones(len(losses_local) - 1)
FNS.not_callable = 3
sys.modules[FNS.__name__] = FNS


def fb(losses, **kw) -> WeightFeedback:
    return WeightFeedback(step=kw.pop("step", 0), losses=np.asarray(losses, float), **kw)


def test_template_is_uniform_and_the_objective_is_the_mean() -> None:
    assert template_weights(None, None, None, None, None, 0, None) is None
    weighter = CustomWeighter()
    f = fb([1.0, math.nan, 3.0, 5.0], valid=[True, False, True, True])
    w = weighter.weigh(f)
    assert w.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert weighter.objective(f, w) == pytest.approx(3.0)


def test_function_gets_every_input() -> None:
    CALLS.clear()
    weighter = CustomWeighter({"function": "dataflex_weight_test_fns:inverse"})
    f = fb([1.0, 3.0], token_counts=[4, 5], domains=[0, 1], step=7, embeddings=np.eye(2))
    w = weighter.weigh(f)
    assert w.tolist() == [0.5, 0.25]
    (call,) = CALLS
    assert call["losses_local"].tolist() == [1.0, 3.0]
    assert call["losses_global"].tolist() == [1.0, 3.0]
    assert call["valid_global"].tolist() == [True, True]
    assert call["token_counts"] == [4, 5] and call["domain_ids"] == [0, 1]
    assert call["step"] == 7 and call["embeddings"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert weighter.objective(f, w) == pytest.approx((0.5 + 0.75) / 2)


def test_params_are_passed_as_keywords() -> None:
    weighter = CustomWeighter(
        {"function": "dataflex_weight_test_fns:scaled", "params": {"scale": 2}}
    )
    assert weighter.weigh(fb([1.0, 2.0])).tolist() == [2.0, 2.0]
    with pytest.raises(ConfigError, match="function"):
        CustomWeighter({"params": {"scale": 2}})


def test_none_means_unweighted() -> None:
    weighter = CustomWeighter({"function": "dataflex_weight_test_fns:none"})
    assert weighter.weigh(fb([1.0, 2.0])).tolist() == [1.0, 1.0]


def test_global_weights_are_sliced_to_this_rank(split_feedback) -> None:
    weighter = CustomWeighter({"function": "dataflex_weight_test_fns:global_weights"})
    ranks = split_feedback([1.0, 2.0, 3.0, 4.0, 5.0], [2, 3])
    assert weighter.weigh(ranks[0]).tolist() == [1.0, 2.0]
    assert weighter.weigh(ranks[1]).tolist() == [3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("function", "match"),
    [
        ("negative", "finite and >= 0"),
        ("nan_for_valid", "finite and >= 0"),
        ("short", "1 weights for 2 local samples"),
    ],
)
def test_bad_weights_are_data_errors(function: str, match: str) -> None:
    weighter = CustomWeighter({"function": f"dataflex_weight_test_fns:{function}"})
    with pytest.raises(DataError, match=match):
        weighter.weigh(fb([1.0, 2.0]))


def test_weights_of_invalid_samples_are_not_checked_and_become_zero() -> None:
    weighter = CustomWeighter({"function": "dataflex_weight_test_fns:nan_for_invalid"})
    w = weighter.weigh(fb([1.0, math.nan, 3.0], valid=[True, False, True]))
    assert w.tolist() == [1.0, 0.0, 3.0]


def test_nonfinite_loss_of_a_valid_sample_warns() -> None:
    with pytest.warns(RuntimeWarning, match="1 valid sample"):
        w = CustomWeighter().weigh(fb([1.0, math.inf]))
    assert w.tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("function", "error", "match"),
    [
        ("no_colon", ConfigError, "package.module:function"),
        ("dataflex_weight_test_fns:missing", PluginError, "missing"),
        ("dataflex_no_such_module:fn", PluginError, "cannot import"),
        ("dataflex_weight_test_fns:not_callable", ConfigError, "not callable"),
    ],
)
def test_bad_function_paths(function: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        CustomWeighter({"function": function})


@pytest.mark.parametrize("mode", ["mean", "weight_sum", "sum"])
def test_normalisations_over_ranks(mode: str, split_feedback) -> None:
    losses = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    config = {"function": "dataflex_weight_test_fns:inverse", "loss_normalization": mode}
    weighter = CustomWeighter(config)
    w1 = weighter.weigh(fb(losses))
    s = float(np.sum(w1 * losses))
    expected = {"mean": s / 5, "weight_sum": s / w1.sum(), "sum": s}[mode]
    assert weighter.objective(fb(losses), w1) == pytest.approx(expected)
    ranks = split_feedback(losses, [3, 2])
    parts = [weighter.weigh(f) for f in ranks]
    gws = float(w1.sum()) if mode == "weight_sum" else None
    total = sum(
        weighter.objective(f, w, global_weight_sum=gws) for f, w in zip(ranks, parts, strict=True)
    )
    assert total == pytest.approx(expected)


# --------------------------------------------------------------------------- a plugin's weighter


@dataclass(frozen=True)
class DomainWeightsConfig:
    """A plugin's config: one weight per domain, and the objective's normalisation."""

    weights: tuple[float, ...] = (1.0, 1.0)
    loss_normalization: str = "weight_sum"


class DomainWeighter(CustomWeighterBase):
    """A plugin's weighter: a fixed weight per domain."""

    config_class = DomainWeightsConfig

    def compute_weights(self, *, domain_ids, losses_local, **_):
        return np.asarray(self.config.weights)[np.asarray(domain_ids)]


class _Plugin:
    @hookimpl
    def dataflex_register_weighters(self):
        return [ComponentSpec(kind="weighter", name="domain_fixed", factory=DomainWeighter)]


def test_a_plugin_weighter_built_on_the_base_class(fresh_plugin_manager) -> None:
    fresh_plugin_manager.register(_Plugin(), name="test-domain-plugin")
    weighter = Registry(fresh_plugin_manager).create("weighter", "domain_fixed", weights=[1.0, 3.0])
    assert isinstance(weighter, DomainWeighter)
    f = fb([2.0, 4.0, 6.0], domains=[0, 1, 1])
    w = weighter.weigh(f)
    assert w.tolist() == [1.0, 3.0, 3.0]
    assert weighter.objective(f, w) == pytest.approx((2 + 12 + 18) / 7)
    assert "domain_fixed" in weighter.what


# --------------------------------------------------------------------------- conformance


class TestCustomTemplateConformance(WeighterConformance):
    name = "custom"

    def valid_configs(self):
        return [
            {},
            {"function": "dataflex_weight_test_fns:inverse", "loss_normalization": "sum"},
            {"function": "dataflex_weight_test_fns:scaled", "params": {"scale": 0.5}},
        ]
