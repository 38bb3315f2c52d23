"""The ``aioli`` mixer (spec §3.6): worked example, state machine, EMA, errors, conformance."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from dataflex_core import ComponentContext, ConfigError, DataError, MixFeedback, Registry, derive
from dataflex_mix import AioliMixer, aioli_update, unsmooth_and_normalize
from dataflex_mix.aioli import aioli_permutation, smoothed_one_hot
from dataflex_testing import MixerConformance

AB = ComponentContext(domains=("a", "b"), seed=5)
A_EXAMPLE = np.array([[0.3, 0.1], [0.1, 0.2]])
EXAMPLE = {"one_hot_factor": 0.75, "lp_rounds": 1, "lp_steps": 1, "update_steps": 2, "eta": 1.0}


def _fb(step: int, eval_loss=None, k: int = 2) -> MixFeedback:
    return MixFeedback(
        step=step,
        loss_sum=(1.0,) * k,
        token_count=(1.0,) * k,
        sample_count=(1.0,) * k,
        eval_loss=None if eval_loss is None else tuple(float(x) for x in eval_loss),
    )


# --------------------------------------------------------------------------- worked example


def test_unsmooth_example() -> None:
    w = np.stack([smoothed_one_hot(i, 2, 0.75) for i in range(2)])
    assert np.linalg.inv(w) == pytest.approx(np.array([[1.5, -0.5], [-0.5, 1.5]]), abs=1e-12)
    raw = unsmooth_and_normalize(A_EXAMPLE, 0.75, normalize=False)
    assert raw == pytest.approx(np.array([[0.4, 0.0], [0.05, 0.25]]), abs=1e-12)
    a = unsmooth_and_normalize(A_EXAMPLE, 0.75, normalize=True)
    assert a == pytest.approx(raw / 0.7, abs=1e-12)
    assert a.sum(axis=0) == pytest.approx([0.642857, 0.357143], abs=1e-6)
    assert aioli_update([0.5, 0.5], a, 1.0) == pytest.approx([0.570947, 0.429053], abs=1e-6)


def test_normalise_shifts_negative_entries() -> None:
    a = unsmooth_and_normalize([[0.1, -0.3], [0.2, 0.0]], 1.0, normalize=True)  # W = I
    shifted = np.array([[0.4, 0.0], [0.5, 0.3]])
    assert a == pytest.approx(shifted / shifted.sum(), abs=1e-12)
    assert unsmooth_and_normalize(np.zeros((2, 2)), 0.75).tolist() == [[0, 0], [0, 0]]


def test_state_machine_reproduces_the_example() -> None:
    mixer = AioliMixer(EXAMPLE, AB)
    assert mixer.phase == "start" and mixer.eval_due and mixer.round_length == 4
    assert mixer.proportions == (0.5, 0.5)
    perm = aioli_permutation(5, 0, 1, 2)
    loss = np.array([3.0, 3.0])
    d = mixer.step(_fb(0, loss))
    assert mixer.phase == "learn"
    assert d.proportions == pytest.approx(tuple(smoothed_one_hot(perm[0], 2, 0.75)))
    for block, i in enumerate(perm):
        assert mixer.eval_due
        loss = loss - A_EXAMPLE[:, i]  # training on domain i lowered the eval losses by A[:, i]
        d = mixer.step(_fb(1 + block, loss))
        if block == 0:
            assert d.proportions == pytest.approx(tuple(smoothed_one_hot(perm[1], 2, 0.75)))
    assert mixer.phase == "update"
    assert d.proportions == pytest.approx((0.570947, 0.429053), abs=1e-6)
    assert mixer.learned_proportions == d.proportions
    # Update phase: two steps on p, the eval is due only at its end.
    assert not mixer.eval_due
    assert mixer.step(_fb(3)).proportions == d.proportions  # no eval loss needed here
    assert mixer.eval_due
    d2 = mixer.step(_fb(4, loss))
    assert mixer.phase == "learn" and mixer.state_dict()["round"] == 1
    first = aioli_permutation(5, 1, 1, 2)[0]
    assert d2.proportions == pytest.approx(tuple(smoothed_one_hot(first, 2, 0.75)))


def test_permutations_are_derived_from_the_seed() -> None:
    rng = np.random.Generator(np.random.PCG64(derive(9, "aioli", 2, 3)))
    assert aioli_permutation(9, 2, 3, 6).tolist() == rng.permutation(6).tolist()
    ctx = ComponentContext(domains=tuple("abcdef"), seed=9)
    mixer = AioliMixer({"lp_rounds": 2, "lp_steps": 1, "update_steps": 1}, ctx)
    order = []
    for s in range(12):
        d = mixer.step(_fb(s, np.full(6, 3.0 - 0.01 * s), k=6))
        order.append(int(np.argmax(d.proportions)))
    expected = aioli_permutation(9, 0, 1, 6).tolist() + aioli_permutation(9, 0, 2, 6).tolist()
    assert order == expected
    seeded = AioliMixer({"lp_rounds": 2, "lp_steps": 1, "update_steps": 1, "seed": 9}, ctx)
    assert seeded.seed == 9


def test_lp_steps_and_lp_rounds_average() -> None:
    config = {"one_hot_factor": 0.75, "lp_rounds": 2, "lp_steps": 3, "update_steps": 5, "eta": 1.0}
    mixer = AioliMixer(config, AB)
    assert mixer.round_length == 2 * 2 * 3 + 5
    loss = np.array([3.0, 3.0])
    mixer.step(_fb(0, loss))
    steps = 0
    while mixer.phase == "learn":
        i = int(np.argmax(mixer.proportions))
        steps += 1
        if mixer.eval_due:
            loss = loss - A_EXAMPLE[:, i]  # each sweep contributes A; the average is A again
            mixer.step(_fb(steps, loss))
        else:
            mixer.step(_fb(steps))  # mid-block: no eval needed
    assert steps == 12
    assert mixer.learned_proportions == pytest.approx((0.570947, 0.429053), abs=1e-6)


def test_ema_follows_the_official_trainer() -> None:
    config = {**EXAMPLE, "ema": 0.25}
    mixer = AioliMixer(config, AB)
    a1, a2 = A_EXAMPLE, np.array([[0.05, 0.3], [0.2, 0.1]])
    loss = np.array([5.0, 5.0])
    mixer.step(_fb(0, loss))
    for a, start in ((a1, 1), (a2, 5)):
        for j in range(2):
            i = int(np.argmax(mixer.proportions))
            loss = loss - a[:, i]
            mixer.step(_fb(start + j, loss))
        if a is a1:
            mixer.step(_fb(3))
            mixer.step(_fb(4, loss))
    n1 = unsmooth_and_normalize(a1, 0.75)
    n2 = unsmooth_and_normalize(a2, 0.75)
    smoothed = 0.75 * n2 + 0.25 * n1
    expected = aioli_update([0.5, 0.5], smoothed, 1.0)  # from uniform, not multiplicative
    assert mixer.learned_proportions == pytest.approx(tuple(expected), abs=1e-12)


def test_without_ema_the_update_is_multiplicative() -> None:
    mixer = AioliMixer(EXAMPLE, AB)
    loss = np.array([5.0, 5.0])
    mixer.step(_fb(0, loss))
    for rnd in range(2):
        for j in range(2):
            i = int(np.argmax(mixer.proportions))
            loss = loss - A_EXAMPLE[:, i]
            mixer.step(_fb(1 + j, loss))
        if rnd == 0:
            mixer.step(_fb(3))
            mixer.step(_fb(4, loss))
    a = unsmooth_and_normalize(A_EXAMPLE, 0.75)
    expected = aioli_update(aioli_update([0.5, 0.5], a, 1.0), a, 1.0)
    assert mixer.learned_proportions == pytest.approx(tuple(expected), abs=1e-12)


def test_missing_eval_loss_names_mixer_eval_dataset() -> None:
    mixer = AioliMixer(EXAMPLE, AB)
    state = mixer.state_dict()
    with pytest.raises(DataError, match="mixer_eval_dataset"):
        mixer.step(_fb(0))
    assert mixer.state_dict() == state
    mixer.step(_fb(0, [1.0, 1.0]))
    with pytest.raises(DataError, match="eval_loss has shape"):
        mixer.step(_fb(1, [1.0, 1.0, 1.0], k=2))


def test_nonfinite_eval_loss_is_skipped() -> None:
    mixer = AioliMixer(EXAMPLE, AB)
    mixer.step(_fb(0, [1.0, 1.0]))
    state = mixer.state_dict()
    with pytest.warns(RuntimeWarning, match="not finite"):
        d = mixer.step(_fb(1, [math.nan, 1.0]))
    assert mixer.state_dict() == state and d.proportions == mixer.proportions


def test_step_none_keeps_the_state() -> None:
    mixer = AioliMixer(EXAMPLE, AB)
    state = mixer.state_dict()
    assert mixer.step(None).proportions == (0.5, 0.5)
    assert mixer.state_dict() == state


def test_global_rng_untouched() -> None:
    before = np.random.get_state()
    mixer = AioliMixer(EXAMPLE, AB)
    for s in range(9):
        mixer.step(_fb(s, [2.0 - 0.1 * s, 2.0]))
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"one_hot_factor": 0.5}, "one_hot_factor"),  # 1/K for K = 2: W singular
        ({"one_hot_factor": 0.0}, "one_hot_factor"),
        ({"one_hot_factor": 1.5}, "one_hot_factor"),
        ({"eta": 0.0}, "eta"),
        ({"eta": -1.0}, "eta"),
        ({"lp_rounds": 0}, "lp_rounds"),
        ({"lp_steps": 0}, "lp_steps"),
        ({"update_steps": 0}, "update_steps"),
        ({"ema": 1.0}, "ema"),
        ({"seed": -3}, "seed"),
        ({"normalise_A": True}, "normalise_A"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        AioliMixer(config, AB)
    message = str(info.value)
    assert key in message
    value = config[key]
    if key in {f.name for f in dataclasses.fields(AioliMixer.config_class)} and not isinstance(
        value, (list, bool)
    ):
        assert str(value) in message, f"the message does not show the value: {message}"


def test_needs_two_domains() -> None:
    with pytest.raises(ConfigError, match="at least 2 domains"):
        AioliMixer(None, ComponentContext(domains=("only",)))


def test_registered(fresh_plugin_manager) -> None:
    mixer = Registry(fresh_plugin_manager).create("mixer", "aioli", context=AB)
    assert isinstance(mixer, AioliMixer) and mixer.cadence == "every_step"


class TestAioliConformance(MixerConformance):
    name = "aioli"
    steps = 30
    resume_after = 11

    def valid_configs(self):
        return [
            {"lp_rounds": 1, "lp_steps": 1, "update_steps": 2},
            {"lp_rounds": 2, "lp_steps": 2, "update_steps": 1, "ema": 0.5, "eta": 1.0},
            {"lp_rounds": 1, "lp_steps": 3, "update_steps": 4, "normalize_A": False, "seed": 3},
        ]

    def feedback(self, step: int, rng: np.random.Generator) -> MixFeedback:
        fb = super().feedback(step, rng)
        eval_loss = tuple((3.0 - 0.02 * step + rng.normal(0, 0.01, len(self.domains))).tolist())
        return MixFeedback(**{**fb.__dict__, "eval_loss": eval_loss})
