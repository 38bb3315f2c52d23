"""The static and random mixers (spec §3.1, §3.2) and their conformance."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    MixFeedback,
    Registry,
    StateError,
    derive,
)
from dataflex_mix import RandomMixer, StaticMixer
from dataflex_testing import MixerConformance

ABC = ComponentContext(domains=("a", "b", "c"), seed=0)


def _feedback(step: int = 0, loss: float = 2.0) -> MixFeedback:
    return MixFeedback(
        step=step,
        loss_sum=(loss, 1.0, 1.0),
        token_count=(10.0, 10.0, 10.0),
        sample_count=(1.0, 1.0, 1.0),
    )


# --------------------------------------------------------------------------- static


def test_static_normalises() -> None:
    mixer = StaticMixer({"proportions": [2, 1, 1]}, ABC)
    assert mixer.proportions == (0.5, 0.25, 0.25)
    assert mixer.step(_feedback()).proportions == (0.5, 0.25, 0.25)


def test_static_default_is_uniform() -> None:
    assert StaticMixer(None, ABC).proportions == pytest.approx((1 / 3,) * 3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, -1, 1], "negative"),
        ([1, 1], "2 entries"),
        ([0, 0, 0], "sums to 0"),
        ([1, math.nan, 1], "non-finite"),
    ],
)
def test_static_rejects_bad_proportions(value: list[float], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        StaticMixer({"proportions": value}, ABC)
    assert "proportions" in str(info.value)


def test_mixers_need_domains() -> None:
    for cls in (StaticMixer, RandomMixer):
        with pytest.raises(ConfigError, match="at least one domain"):
            cls(None, ComponentContext())


def test_static_state_round_trip_and_domain_check() -> None:
    mixer = StaticMixer({"proportions": [2, 1, 1]}, ABC)
    mixer.step(None)
    state = json.loads(json.dumps(mixer.state_dict()))
    assert state == {"domains": ["a", "b", "c"], "proportions": [0.5, 0.25, 0.25], "updates": 1}
    other = StaticMixer(None, ComponentContext(domains=("a", "c", "b")))
    with pytest.raises(StateError, match=r"\['a', 'b', 'c'\].*\['a', 'c', 'b'\]"):
        other.load_state_dict(state)


def test_feedback_with_wrong_length_is_an_error() -> None:
    bad = MixFeedback(step=0, loss_sum=(1.0,), token_count=(1.0,), sample_count=(1.0,))
    with pytest.raises(DataError, match="one entry per domain"):
        StaticMixer(None, ABC).step(bad)


# --------------------------------------------------------------------------- random


def test_random_uniform_until_first_step() -> None:
    assert RandomMixer(None, ABC).proportions == pytest.approx((1 / 3,) * 3)


def test_random_consecutive_proposals_differ() -> None:
    mixer = RandomMixer({"seed": 3}, ABC)
    seq = [mixer.step(None).proportions for _ in range(5)]
    assert all(a != b for a, b in zip(seq, seq[1:], strict=False))


def test_random_same_seed_same_sequence_and_matches_formula() -> None:
    a = RandomMixer({"seed": 3}, ABC)
    b = RandomMixer(None, ComponentContext(domains=("a", "b", "c"), seed=3))  # run seed
    seq_a = [a.step(None).proportions for _ in range(4)]
    seq_b = [b.step(None).proportions for _ in range(4)]
    assert seq_a == seq_b
    # The spec's generator: one Generator(PCG64(derive(seed, "random_mixer"))), advanced per draw.
    rng = np.random.Generator(np.random.PCG64(derive(3, "random_mixer")))
    expected = [
        tuple((lambda p: p / p.sum())(rng.dirichlet(np.ones(3))).tolist()) for _ in range(4)
    ]
    assert np.allclose(seq_a, expected, rtol=0, atol=1e-15)
    assert seq_a != [RandomMixer({"seed": 4}, ABC).step(None).proportions] * 4


def test_random_uniform_normalized_matches_formula() -> None:
    mixer = RandomMixer({"seed": 8, "distribution": "uniform_normalized"}, ABC)
    rng = np.random.Generator(np.random.PCG64(derive(8, "random_mixer")))
    u = rng.random(3)
    assert mixer.step(None).proportions == pytest.approx(tuple(u / u.sum()), abs=1e-15)


def test_random_resume_continues_the_sequence() -> None:
    straight = RandomMixer({"seed": 1}, ABC)
    expected = [straight.step(None).proportions for _ in range(6)]
    first = RandomMixer({"seed": 1}, ABC)
    for _ in range(3):
        first.step(None)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = RandomMixer({"seed": 1}, ABC)
    resumed.load_state_dict(state)
    assert resumed.proportions == expected[2]
    assert [resumed.step(None).proportions for _ in range(3)] == expected[3:]


def test_random_does_not_touch_the_global_rng() -> None:
    before = np.random.get_state()
    mixer = RandomMixer({"seed": 1}, ABC)
    for _ in range(5):
        mixer.step(None)
    mixer.load_state_dict(mixer.state_dict())
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]


@pytest.mark.parametrize("distribution", ["dirichlet", "uniform_normalized"])
def test_random_on_simplex(distribution: str) -> None:
    mixer = RandomMixer({"seed": 2, "distribution": distribution, "concentration": 0.3}, ABC)
    for _ in range(50):
        p = np.asarray(mixer.step(None).proportions)
        assert np.all(np.isfinite(p)) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-12


def test_random_nonfinite_feedback_skipped() -> None:
    mixer = RandomMixer({"seed": 2}, ABC)
    mixer.step(None)
    state = mixer.state_dict()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        decision = mixer.step(_feedback(loss=math.inf))
    assert decision.proportions == mixer.proportions and mixer.state_dict() == state
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mixer.step(_feedback()).proportions != decision.proportions


@pytest.mark.parametrize(
    "config",
    [
        {"concentration": 0.0},
        {"concentration": -1.0},
        {"concentration": math.inf},
        {"distribution": "gaussian"},
        {"seed": -1},
        {"sead": 1},
    ],
)
def test_random_config_errors(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        RandomMixer(config, ABC)
    assert next(iter(config)) in str(info.value)


def test_random_state_rejects_garbage() -> None:
    mixer = RandomMixer({"seed": 2}, ABC)
    state = mixer.state_dict()
    with pytest.raises(StateError, match="generator"):
        mixer.load_state_dict({k: v for k, v in state.items() if k != "generator"})
    with pytest.raises(StateError, match="proportions"):
        mixer.load_state_dict({**state, "proportions": [1.0, math.nan, 0.0]})


# --------------------------------------------------------------------------- registry


def test_plugin_registers_both(fresh_plugin_manager) -> None:
    registry = Registry(fresh_plugin_manager)
    mixer = registry.create("mixer", "random", context=ABC)
    assert isinstance(mixer, RandomMixer)
    assert isinstance(
        registry.create("mixer", "static", context=ABC, proportions=[1, 1, 2]), StaticMixer
    )
    specs = {s.name: s for s in registry.specs("mixer")}
    assert specs["random"].source.startswith("dataflex_mix")
    assert specs["static"].factory == "dataflex_mix.mixers:StaticMixer"


# --------------------------------------------------------------------------- conformance


class TestStaticMixerConformance(MixerConformance):
    name = "static"

    def valid_configs(self):
        return [{}, {"proportions": [3, 0, 1]}]


class TestRandomMixerConformance(MixerConformance):
    name = "random"

    def valid_configs(self):
        return [
            {},
            {"seed": 11, "concentration": 0.5},
            {"distribution": "uniform_normalized"},
        ]


class TestRandomMixerByClass(MixerConformance):
    """The same suite, building from the class instead of the registry."""

    component_class = RandomMixer
    domains = ("only",)
