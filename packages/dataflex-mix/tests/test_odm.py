"""The ``odm`` mixer (spec §3.4): worked example, variants by hand, warmup, errors, conformance."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from dataflex_core import ComponentContext, ConfigError, DataError, MixFeedback, Registry
from dataflex_mix import OdmMixer, feedback_from_samples
from dataflex_mix.odm import odm_exploration_rate, odm_policy
from dataflex_testing import MixerConformance

AB = ComponentContext(domains=("a", "b"), seed=0)
EPS2 = math.sqrt(math.log(2) / 4)  # ε_2 for K = 2


def _fb(step: int, loss_sum, token_count) -> MixFeedback:
    return MixFeedback(
        step=step,
        loss_sum=tuple(float(x) for x in loss_sum),
        token_count=tuple(float(x) for x in token_count),
        sample_count=tuple(1.0 if z > 0 else 0.0 for z in token_count),
    )


def _softmax(x) -> np.ndarray:
    e = np.exp(np.asarray(x, float) - np.max(x))
    return e / e.sum()


# Domain 0 pulled with token-mean loss L = 2 (4 over 2 tokens); domain 1 not pulled.
PULL_0 = _fb(1, [4.0, 0.0], [2.0, 0.0])


# --------------------------------------------------------------------------- worked example


def test_exploration_rate() -> None:
    assert odm_exploration_rate(1, 2) == 0.5  # min(0.5, 0.588705)
    assert math.sqrt(math.log(2) / 2) == pytest.approx(0.588705, abs=1e-6)
    assert odm_exploration_rate(2, 2) == pytest.approx(0.416277, abs=1e-6)
    assert odm_exploration_rate(2, 2, eps_min=0.45) == 0.45
    # Exactly uniform while √(ln K/(K t)) >= 1/K, i.e. t <= K ln K (3.30 for K = 3).
    assert odm_exploration_rate(3, 3) == pytest.approx(1 / 3)
    assert odm_exploration_rate(4, 3) < 1 / 3


def test_paper_example_rounds_1_and_2() -> None:
    mixer = OdmMixer({"alpha": 0.5}, AB)
    assert mixer.proportions == (0.5, 0.5)  # round 1: ε_1 = 0.5
    decision = mixer.step(PULL_0)
    assert mixer.rewards == pytest.approx((2.0, 0.0), abs=1e-12)
    assert decision.proportions == pytest.approx((0.538690, 0.461310), abs=1e-6)
    # By hand: 0.167445·softmax(0.5·[2, 0]) + 0.416277.
    by_hand = (1 - 2 * EPS2) * _softmax([1.0, 0.0]) + EPS2
    assert 1 - 2 * EPS2 == pytest.approx(0.167445, abs=1e-6)
    assert decision.proportions == pytest.approx(tuple(by_hand), abs=1e-12)
    assert mixer.state_dict()["t"] == 2 and mixer.state_dict()["eps_prev"] == 0.5


def test_official_exp3_by_hand() -> None:
    mixer = OdmMixer({"alpha": 0.5, "variant": "official_exp3"}, AB)
    p = mixer.step(PULL_0).proportions
    rewards = np.array([0.0 + (2.0 / 10) / 0.5, 0.0])  # cumulative, /π, no α
    assert mixer.rewards == pytest.approx(tuple(rewards), abs=1e-12)
    assert p == pytest.approx(tuple((1 - 2 * EPS2) * _softmax(0.5 * rewards) + EPS2), abs=1e-12)


def test_official_smoothed_mean_by_hand() -> None:
    mixer = OdmMixer({"alpha": 0.5, "variant": "official_smoothed_mean", "reward_scale": 7.0}, AB)
    p = mixer.step(PULL_0).proportions
    rewards = np.array([0.5 * 0.0 + 0.5 * math.exp(2.0), 0.0])  # exp(L), no /π, no scale
    assert mixer.rewards == pytest.approx(tuple(rewards), abs=1e-12)
    assert p == pytest.approx(tuple((1 - 2 * EPS2) * _softmax(0.5 * rewards) + EPS2), abs=1e-12)


def test_official_smoothed_mean_group_by_hand() -> None:
    mixer = OdmMixer({"alpha": 0.5, "variant": "official_smoothed_mean_group"}, AB)
    assert mixer.proportions == (0.5, 0.5)  # all R̂ = 0: uniform share
    p = mixer.step(PULL_0).proportions
    r = np.array([0.5 * math.exp(2.0), 0.0])
    w = r * 0.5 * (1 - 2 * EPS2) / np.sum(r * 0.5) + EPS2
    assert p == pytest.approx(tuple(w / w.sum()), abs=1e-12)
    assert p == pytest.approx((1 - EPS2, EPS2), abs=1e-12)
    assert odm_policy([0.0, 0.0], 0.5, 0.4, group=True).tolist() == [0.5, 0.5]


def test_importance_weighting_and_reward_scale() -> None:
    plain = OdmMixer({"alpha": 0.5, "importance_weighting": False}, AB)
    plain.step(PULL_0)
    assert plain.rewards == pytest.approx((1.0, 0.0), abs=1e-12)  # 0.5·2, no /π
    scaled = OdmMixer({"alpha": 0.5, "reward_scale": 15.0}, AB)
    scaled.step(PULL_0)
    assert scaled.rewards == pytest.approx((30.0, 0.0), abs=1e-12)  # 0.5·15·2/0.5


def test_t_counter_global_step_and_official_compat() -> None:
    ctx = ComponentContext(domains=("a", "b", "c"))
    rounds = OdmMixer({"warmup_steps": 3}, ctx)
    official = OdmMixer({"warmup_steps": 3, "official_compat": True}, ctx)
    assert official.config.resolved_variant == "official_smoothed_mean"
    fb = lambda s: _fb(s, [3.0, 1.0, 2.0], [1.0, 1.0, 1.0])  # noqa: E731
    for s in (1, 2):
        rounds.step(fb(s))
        official.step(fb(s))
        assert rounds.in_warmup and official.in_warmup
    rounds.step(fb(3))
    official.step(fb(3))  # warmup ends after step 3: round 1 starts
    assert rounds.state_dict()["t"] == 1 and official.state_dict()["t"] == 4
    rounds.step(fb(4))
    official.step(fb(4))
    assert rounds.state_dict()["t"] == 2 and official.state_dict()["t"] == 5
    assert official.state_dict()["eps"] == pytest.approx(odm_exploration_rate(5, 3))
    explicit = OdmMixer({"official_compat": True, "t_counter": "rounds"}, ctx)
    assert explicit.config.resolved_t_counter == "rounds"


def test_warmup_uses_initial_proportions_and_keeps_rewards() -> None:
    ctx = ComponentContext(domains=("a", "b"), extras={"warmup_step": 2})
    mixer = OdmMixer({"initial_proportions": [3, 1], "warmup_steps": 1}, ctx)
    assert mixer.warmup_end == 3 and mixer.in_warmup
    assert mixer.proportions == (0.75, 0.25)
    for s in (1, 2):
        assert mixer.step(_fb(s, [10.0, 1.0], [1.0, 1.0])).proportions == (0.75, 0.25)
    assert mixer.rewards == (0.0, 0.0)
    # The feedback that ends the warmup was drawn from the warmup policy: no reward update.
    assert mixer.step(_fb(3, [10.0, 1.0], [1.0, 1.0])).proportions == (0.5, 0.5)
    assert mixer.rewards == (0.0, 0.0) and not mixer.in_warmup
    mixer.step(_fb(4, [10.0, 1.0], [1.0, 1.0]))
    assert mixer.rewards[0] > mixer.rewards[1] > 0
    assert mixer.state_dict()["samples_seen"] == [4.0, 4.0]


def test_importance_weight_uses_the_proportions_the_samples_were_drawn_with() -> None:
    mixer = OdmMixer({"alpha": 0.5}, AB)
    fb = MixFeedback(**{**PULL_0.__dict__, "extras": {"proportions_used": [1, 3]}})
    mixer.step(fb)
    assert mixer.rewards == pytest.approx((0.5 * 2.0 / 0.25, 0.0), abs=1e-12)
    bad = MixFeedback(**{**PULL_0.__dict__, "extras": {"proportions_used": [1, -1]}})
    with pytest.raises(DataError, match="proportions_used"):
        OdmMixer(None, AB).step(bad)


def test_min_exploration_rate_floor() -> None:
    mixer = OdmMixer({"alpha": 0.5, "min_exploration_rate": 0.45}, AB)
    mixer.step(PULL_0)
    assert mixer.state_dict()["eps"] == 0.45


def test_each_sample_is_credited_to_its_own_domain() -> None:
    # A mixed batch whose first sample is from domain 0: domain 0 losses 1, domain 1 losses 5.
    losses = [1.0, 5.0, 5.0, 1.0, 5.0]
    domains = [0, 1, 1, 0, 1]
    config = {"alpha": 0.0, "arm_unit": "mixed", "importance_weighting": False}
    mixer = OdmMixer(config, AB)
    mixer.step(feedback_from_samples(1, losses, domains, 2))
    assert mixer.rewards == pytest.approx((1.0, 5.0), abs=1e-12)
    # The predecessor credited the whole batch's mean loss to the first sample's domain; that
    # feedback gives another answer, so the assertion above catches the bug.
    bug = OdmMixer(config, AB)
    bug.step(feedback_from_samples(1, [np.mean(losses)], [domains[0]], 2))
    assert bug.rewards != pytest.approx((1.0, 5.0), abs=1e-6)


def test_token_weighted_domain_means() -> None:
    mixer = OdmMixer({"alpha": 0.0, "arm_unit": "mixed", "importance_weighting": False}, AB)
    mixer.step(feedback_from_samples(1, [1.0, 3.0, 2.0], [0, 0, 1], 2, token_counts=[1, 3, 5]))
    assert mixer.rewards == pytest.approx(((1 * 1 + 3 * 3) / 4, 2.0), abs=1e-12)


def test_large_rewards_do_not_overflow() -> None:
    mixer = OdmMixer({"alpha": 0.0, "reward_scale": 1e6}, AB)
    for s in range(1, 5):
        p = mixer.step(_fb(s, [1e3, 1.0], [1.0, 1.0])).proportions
        assert all(math.isfinite(x) for x in p) and abs(sum(p) - 1) < 1e-12


def test_single_domain() -> None:
    mixer = OdmMixer(None, ComponentContext(domains=("only",)))
    assert mixer.step(_fb(1, [2.0], [1.0])).proportions == (1.0,)


def test_arm_unit_attribute() -> None:
    assert OdmMixer(None, AB).arm_unit == "micro_batch"
    assert OdmMixer({"arm_unit": "global_batch"}, AB).arm_unit == "global_batch"
    mixed = OdmMixer({"arm_unit": "mixed", "variant": "official_smoothed_mean"}, AB)
    assert mixed.arm_unit == "mixed"


def test_global_rng_untouched() -> None:
    before = np.random.get_state()
    mixer = OdmMixer(None, AB)
    for s in range(1, 6):
        mixer.step(_fb(s, [2.0, 1.0], [1.0, 1.0]))
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"min_exploration_rate": 0.6}, "min_exploration_rate"),
        ({"min_exploration_rate": -0.1}, "min_exploration_rate"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"reward_scale": 0.0}, "reward_scale"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"variant": "exp4"}, "variant"),
        ({"t_counter": "epochs"}, "t_counter"),
        ({"arm_unit": "mixed"}, "arm_unit"),
        ({"arm_unit": "mixed", "variant": "official_exp3"}, "arm_unit"),
        ({"initial_proportions": [1, -1]}, "initial_proportions"),
        ({"initial_proportions": [1, 1, 1]}, "initial_proportions"),
        ({"num_eval_samples": 500}, "num_eval_samples"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        OdmMixer(config, AB)
    message = str(info.value)
    assert key in message
    value = config[key]
    if key in {f.name for f in dataclasses.fields(OdmMixer.config_class)} and not isinstance(
        value, (list, bool)
    ):
        assert str(value) in message, f"the message does not show the value: {message}"


def test_eps_min_error_names_value_and_fix() -> None:
    with pytest.raises(ConfigError, match=r"min_exploration_rate = 0\.6.*1/K.*<= 0\.5"):
        OdmMixer({"min_exploration_rate": 0.6}, AB)


def test_registered(fresh_plugin_manager) -> None:
    assert isinstance(Registry(fresh_plugin_manager).create("mixer", "odm", context=AB), OdmMixer)


class TestOdmConformance(MixerConformance):
    name = "odm"

    def valid_configs(self):
        return [
            {},
            {"official_compat": True},
            {"variant": "official_exp3", "warmup_steps": 2, "min_exploration_rate": 0.1},
            {"variant": "official_smoothed_mean_group", "alpha": 0.5},
            {
                "arm_unit": "mixed",
                "importance_weighting": False,
                "initial_proportions": [1, 2, 3],
                "warmup_steps": 3,
                "reward_scale": 15.0,
            },
        ]
