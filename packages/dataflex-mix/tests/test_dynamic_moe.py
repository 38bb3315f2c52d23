"""The ``dynamic_moe`` mixer (spec §3.5): worked example, layers, errors, conformance."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from dataflex_core import ComponentContext, ConfigError, DataError, MixFeedback, Registry
from dataflex_mix import DynamicMoeMixer, gate_load_distances
from dataflex_testing import MixerConformance

ABC = ComponentContext(domains=("a", "b", "c"), seed=0)
LOADS = [[1, 0], [0, 1], [1, 0]]  # one layer, two experts


def _fb(step: int, loads) -> MixFeedback:
    return MixFeedback(
        step=step,
        loss_sum=(1.0, 1.0, 1.0),
        token_count=(1.0, 1.0, 1.0),
        sample_count=(1.0, 1.0, 1.0),
        extras={} if loads is None else {"gate_loads": loads},
    )


def test_example_delta_and_weights() -> None:
    delta = gate_load_distances(LOADS)
    r2 = math.sqrt(2)
    assert delta == pytest.approx([r2 / 3, 2 * r2 / 3, r2 / 3], abs=1e-12)
    assert delta == pytest.approx([0.471405, 0.942809, 0.471405], abs=1e-6)
    plain = DynamicMoeMixer({"eta": 1.0, "c": 0.0}, ABC)
    assert plain.step(_fb(1, LOADS)).proportions == pytest.approx(
        (0.277605, 0.444790, 0.277605), abs=1e-6
    )
    smoothed = DynamicMoeMixer({"eta": 1.0, "c": 0.05}, ABC)
    assert smoothed.step(_fb(1, LOADS)).proportions == pytest.approx(
        (0.280391, 0.439218, 0.280391), abs=1e-6
    )
    assert smoothed.delta == pytest.approx(tuple(delta), abs=1e-12)


def test_counts_are_l1_normalised() -> None:
    # Counts, not distributions: scaling a domain's counts does not change O.
    assert gate_load_distances([[10, 0], [0, 3], [7, 0]]) == pytest.approx(
        gate_load_distances(LOADS), abs=1e-15
    )


def test_gate_layers_all_vs_last() -> None:
    same = [[5, 5], [5, 5], [5, 5]]
    loads = np.stack([np.asarray(same, float), np.asarray(LOADS, float)], axis=1)  # [K, 2, E]
    last = gate_load_distances(loads, "last")
    assert last == pytest.approx(gate_load_distances(LOADS), abs=1e-12)
    assert gate_load_distances(loads, "all") == pytest.approx(last / 2, abs=1e-12)
    mixer = DynamicMoeMixer({"eta": 1.0, "c": 0.0, "gate_layers": "last"}, ABC)
    assert mixer.step(_fb(1, loads)).proportions == pytest.approx(
        (0.277605, 0.444790, 0.277605), abs=1e-6
    )


def test_chunked_distances_match_the_direct_formula() -> None:
    rng = np.random.default_rng(0)
    loads = rng.integers(1, 50, size=(300, 3, 5)).astype(float)
    o = loads / loads.sum(axis=2, keepdims=True)
    direct = np.linalg.norm(o[:, None] - o[None, :], axis=3).mean(axis=2).mean(axis=1)
    assert gate_load_distances(loads) == pytest.approx(direct, abs=1e-12)


def test_multiplicative_update_over_steps() -> None:
    mixer = DynamicMoeMixer({"eta": 2.0, "c": 0.1}, ABC)
    w = np.ones(3) / 3
    for s in range(1, 4):
        mixer.step(_fb(s, LOADS))
        logits = np.log(w) + 2.0 * gate_load_distances(LOADS)
        e = np.exp(logits - logits.max())
        w = 0.9 * e / e.sum() + 0.1 / 3
    assert mixer.proportions == pytest.approx(tuple(w), abs=1e-12)


def test_missing_gate_loads_is_an_error() -> None:
    mixer = DynamicMoeMixer(None, ABC)
    with pytest.raises(DataError, match="gate_load adapter"):
        mixer.step(_fb(1, None))
    assert mixer.proportions == pytest.approx((1 / 3,) * 3)


@pytest.mark.parametrize(
    ("loads", "match"),
    [
        ([[1, 0], [0, 1]], "shape"),
        ([[1, 0], [0, 0], [1, 0]], "routed no token"),
        ([[1, 0], [-1, 2], [1, 0]], "negative"),
        ("many", "not numeric"),
    ],
)
def test_bad_gate_loads(loads, match: str) -> None:
    with pytest.raises(DataError, match=match):
        DynamicMoeMixer(None, ABC).step(_fb(1, loads))


def test_nonfinite_gate_loads_are_skipped() -> None:
    mixer = DynamicMoeMixer(None, ABC)
    state = mixer.state_dict()
    with pytest.warns(RuntimeWarning, match="not finite"):
        mixer.step(_fb(1, [[1, math.inf], [0, 1], [1, 0]]))
    assert mixer.state_dict() == state


def test_global_rng_untouched() -> None:
    before = np.random.get_state()
    mixer = DynamicMoeMixer(None, ABC)
    for s in range(1, 4):
        mixer.step(_fb(s, LOADS))
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"eta": 0.0}, "eta"),
        ({"c": 1.5}, "c"),
        ({"c": -0.1}, "c"),
        ({"collect_steps": 0}, "collect_steps"),
        ({"eval_samples": 0}, "eval_samples"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"gate_layers": "first"}, "gate_layers"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        DynamicMoeMixer(config, ABC)
    message = str(info.value)
    assert key in message
    value = config[key]
    if key in {f.name for f in dataclasses.fields(DynamicMoeMixer.config_class)} and not isinstance(
        value, (list, bool)
    ):
        assert str(value) in message, f"the message does not show the value: {message}"


def test_registered(fresh_plugin_manager) -> None:
    mixer = Registry(fresh_plugin_manager).create("mixer", "dynamic_moe", context=ABC)
    assert isinstance(mixer, DynamicMoeMixer)


class TestDynamicMoeConformance(MixerConformance):
    name = "dynamic_moe"

    def valid_configs(self):
        return [{}, {"eta": 1.0, "c": 0.0, "gate_layers": "last", "collect_steps": 10}]

    def feedback(self, step: int, rng: np.random.Generator) -> MixFeedback:
        fb = super().feedback(step, rng)
        loads = rng.integers(1, 100, size=(len(self.domains), 2, 4)).astype(float)
        return MixFeedback(**{**fb.__dict__, "extras": {"gate_loads": loads.tolist()}})
