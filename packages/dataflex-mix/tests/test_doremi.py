"""The ``doremi`` mixer (spec §3.3): worked examples, variants, outputs, errors, conformance."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from dataflex_core import ComponentContext, ConfigError, DataError, MixFeedback, Registry
from dataflex_mix import DoremiMixer, proxy_loss_weights, proxy_objective
from dataflex_mix.doremi import doremi_alpha_update
from dataflex_testing import MixerConformance

AB = ComponentContext(domains=("a", "b"), seed=0)


def _fb(step: int, token_count, excess, loss_sum=None) -> MixFeedback:
    k = len(token_count)
    return MixFeedback(
        step=step,
        loss_sum=tuple(loss_sum if loss_sum is not None else [1.0] * k),
        token_count=tuple(float(x) for x in token_count),
        sample_count=tuple(1.0 if z > 0 else 0.0 for z in token_count),
        excess_loss_sum=tuple(float(x) for x in excess),
    )


def _example_feedback() -> MixFeedback:
    # Token excesses ℓ - ℓ_ref: domain 0 [2, -1, 1], domain 1 [-0.5, -0.5]; clipped per token
    # before the sum (the integration's job), as the spec requires.
    d0, d1 = np.array([2.0, -1.0, 1.0]), np.array([-0.5, -0.5])
    excess = [np.maximum(d0, 0).sum(), np.maximum(d1, 0).sum()]
    return _fb(1, [d0.size, d1.size], excess)


EXAMPLE = {"reweight_eta": math.log(3), "reweight_eps": 0.2, "vocab_size": 50}


# --------------------------------------------------------------------------- worked examples


def test_example_scores_are_clipped_per_token() -> None:
    mixer = DoremiMixer(EXAMPLE, AB)
    mixer.step(_example_feedback())
    assert mixer.scores == pytest.approx((1.0, 0.0), abs=1e-12)
    # Mean-then-clip would be a different, non-conformant variant.
    assert max(np.mean([2.0, -1.0, 1.0]), 0.0) == pytest.approx(0.666667, abs=1e-6)


def test_example_alpha_and_averages() -> None:
    mixer = DoremiMixer(EXAMPLE, AB)
    # softmax(log α + ηλ) = [0.75, 0.25] before smoothing.
    raw = doremi_alpha_update([0.5, 0.5], [1.0, 0.0], math.log(3), 0.0)
    assert raw == pytest.approx([0.75, 0.25], abs=1e-12)
    decision = mixer.step(_example_feedback())
    assert decision.loss_weights == pytest.approx((0.7, 0.3), abs=1e-9)
    assert decision.proportions == (0.5, 0.5)  # the proxy samples by π, not by α
    assert mixer.average_weights == pytest.approx((0.7, 0.3), abs=1e-9)  # paper
    official = DoremiMixer({**EXAMPLE, "official_compat": True}, AB)
    official.step(_example_feedback())
    assert official.average_weights == pytest.approx((0.6, 0.4), abs=1e-9)
    fine = DoremiMixer({**EXAMPLE, "average_includes_initial": True}, AB)
    fine.step(_example_feedback())
    assert fine.average_weights == pytest.approx((0.6, 0.4), abs=1e-9)


def test_explicit_fine_grained_key_overrides_official_compat() -> None:
    mixer = DoremiMixer({**EXAMPLE, "official_compat": True, "average_includes_initial": False}, AB)
    mixer.step(_example_feedback())
    assert mixer.average_weights == pytest.approx((0.7, 0.3), abs=1e-9)
    assert mixer.config.resolved_proxy_loss == "official"
    both = DoremiMixer({**EXAMPLE, "official_compat": True, "proxy_loss": "paper"}, AB)
    assert both.config.resolved_proxy_loss == "paper"
    assert both.config.resolved_average_includes_initial is True


def test_average_over_several_updates() -> None:
    mixer = DoremiMixer({"vocab_size": 10, "reweight_eta": 0.5, "reweight_eps": 0.1}, AB)
    alphas = [np.array([0.5, 0.5])]
    for s, excess in enumerate([[3.0, 1.0], [0.0, 4.0], [2.0, 2.0]], start=1):
        mixer.step(_fb(s, [2.0, 2.0], excess))
        alphas.append(doremi_alpha_update(alphas[-1], np.array(excess) / 2, 0.5, 0.1))
    assert mixer.weights == pytest.approx(tuple(alphas[-1]), abs=1e-12)
    assert mixer.average_weights == pytest.approx(tuple(np.mean(alphas[1:], axis=0)), abs=1e-12)
    assert mixer.updates == 3


def test_proxy_loss_example() -> None:
    # α = [0.7, 0.3], π uniform, domain-0 token losses [1, 3], domain-1 [4].
    sums, counts = [4.0, 4.0], [2.0, 1.0]
    assert proxy_objective(sums, counts, [0.7, 0.3], [0.5, 0.5], "paper") == pytest.approx(
        2.6, abs=1e-9
    )
    assert proxy_objective(sums, counts, [0.7, 0.3], [0.5, 0.5], "official") == pytest.approx(
        2.352941, abs=1e-6
    )
    # The same through the per-token weights the integration applies with torch.
    token_losses, token_domains = np.array([1.0, 3.0, 4.0]), np.array([0, 0, 1])
    for variant, expected in (("paper", 2.6), ("official", 4 / 1.7)):
        v = proxy_loss_weights([0.7, 0.3], [0.5, 0.5], counts, variant)
        assert float(np.sum(v[token_domains] * token_losses)) == pytest.approx(expected, abs=1e-9)


def test_proxy_objective_gradient_is_alpha_weighted_domain_means() -> None:
    # J is linear in the token losses: ∂J/∂ℓ_t = α_k/Z_k for a token of domain k (paper), so
    # ∇J = Σ_k α_k ∇(domain-k token mean), and changing α changes the gradient.
    token_domains = np.array([0, 0, 1, 2, 2, 2])
    losses = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 2.0])
    counts = np.bincount(token_domains, minlength=3).astype(float)
    alpha = np.array([0.2, 0.5, 0.3])

    def objective(ell: np.ndarray, a: np.ndarray) -> float:
        sums = np.bincount(token_domains, weights=ell, minlength=3)
        return proxy_objective(sums, counts, a, np.ones(3) / 3, "paper")

    grad = np.array(
        [
            (objective(losses + 1e-6 * np.eye(6)[t], alpha) - objective(losses, alpha)) / 1e-6
            for t in range(6)
        ]
    )
    assert grad == pytest.approx(alpha[token_domains] / counts[token_domains], abs=1e-6)
    other = np.array([0.6, 0.2, 0.2])
    grad_other = (objective(losses + 1e-6 * np.eye(6)[0], other) - objective(losses, other)) / 1e-6
    assert abs(grad_other - grad[0]) > 1e-3


def test_proxy_weights_skip_absent_domains() -> None:
    v = proxy_loss_weights([0.5, 0.5], [0.5, 0.5], [4.0, 0.0], "paper")
    assert v.tolist() == [0.125, 0.0]
    w = proxy_loss_weights([0.5, 0.5], [0.25, 0.75], [4.0, 2.0], "official")
    wt = np.array([2.0, 2 / 3]) / (2 + 2 / 3)
    assert w == pytest.approx(wt / (wt @ [4.0, 2.0]), abs=1e-12)
    with pytest.raises(ConfigError, match="proxy_loss"):
        proxy_loss_weights([0.5, 0.5], [0.5, 0.5], [1, 1], "sideways")  # type: ignore[arg-type]


def test_mixer_proxy_loss_weights_use_resolved_variant() -> None:
    paper = DoremiMixer({"vocab_size": 10}, AB)
    official = DoremiMixer({"vocab_size": 10, "official_compat": True}, AB)
    assert paper.proxy_loss_weights([2.0, 1.0]).tolist() == [0.25, 0.5]
    assert official.proxy_loss_weights([2.0, 1.0]) == pytest.approx([1 / 3, 1 / 3], abs=1e-12)


def test_absent_domain_example() -> None:
    mixer = DoremiMixer({"reweight_eta": 1.0, "reweight_eps": 0.0, "initial_domain_score": 4.0}, AB)
    decision = mixer.step(_fb(1, [3.0, 0.0], [3.0, 0.0]))
    assert decision.loss_weights == pytest.approx((0.047426, 0.952574), abs=1e-6)
    assert mixer.scores == (1.0, 4.0)  # stale
    zero = DoremiMixer(
        {
            "reweight_eta": 1.0,
            "reweight_eps": 0.0,
            "initial_domain_score": 4.0,
            "absent_domain_score": "zero",
        },
        AB,
    )
    e = math.e
    assert zero.step(_fb(1, [3.0, 0.0], [3.0, 0.0])).loss_weights == pytest.approx(
        (e / (1 + e), 1 / (1 + e)), abs=1e-12
    )


def test_initial_scores_are_log_vocab_from_config_or_context() -> None:
    assert DoremiMixer({"vocab_size": 32000}, AB).scores == pytest.approx((math.log(32000),) * 2)
    ctx = ComponentContext(domains=("a", "b"), extras={"vocab_size": 1000})
    assert DoremiMixer(None, ctx).scores == pytest.approx((math.log(1000),) * 2)
    # The config wins over the context.
    assert DoremiMixer({"vocab_size": 10}, ctx).scores == pytest.approx((math.log(10),) * 2)


def test_missing_vocab_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        DoremiMixer(None, AB)
    bad = ComponentContext(domains=("a", "b"), extras={"vocab_size": "32k"})
    with pytest.raises(ConfigError, match="vocab_size"):
        DoremiMixer(None, bad)


def test_missing_excess_loss_names_the_reference_model() -> None:
    mixer = DoremiMixer({"vocab_size": 10}, AB)
    state = mixer.state_dict()
    fb = MixFeedback(step=1, loss_sum=(1.0, 1.0), token_count=(1.0, 1.0), sample_count=(1.0, 1.0))
    with pytest.raises(DataError, match="reference_model_path"):
        mixer.step(fb)
    assert mixer.state_dict() == state


def test_decision_and_initial_weights() -> None:
    mixer = DoremiMixer(
        {"vocab_size": 10, "proxy_sampling_proportions": [3, 1], "initial_weights": [1, 3]}, AB
    )
    assert mixer.proportions == (0.75, 0.25)
    d = mixer.step(None)
    assert d.proportions == (0.75, 0.25) and d.loss_weights == (0.25, 0.75)
    assert mixer.average_weights == (0.25, 0.75)  # before any update: α_0


def test_update_every_skips_other_steps() -> None:
    mixer = DoremiMixer({"vocab_size": 10, "update_every": 2}, AB)
    mixer.step(_fb(1, [1.0, 1.0], [5.0, 0.0]))
    assert mixer.updates == 0 and mixer.weights == (0.5, 0.5)
    mixer.step(_fb(2, [1.0, 1.0], [5.0, 0.0]))
    assert mixer.updates == 1 and mixer.weights[0] > 0.5


def test_output_records_are_json() -> None:
    mixer = DoremiMixer(EXAMPLE, AB)
    mixer.step(_example_feedback())
    avg = json.loads(json.dumps(mixer.average_weights_record()))
    assert avg["domains"] == ["a", "b"] and avg["n"] == 1 and avg["step"] == 1
    assert avg["average"] == pytest.approx([0.7, 0.3]) and avg["alpha"] == pytest.approx([0.7, 0.3])
    line = json.loads(json.dumps(mixer.weights_history_record(7)))
    assert line["step"] == 7 and line["lambda"] == pytest.approx([1.0, 0.0])
    assert set(line) == {"step", "domains", "alpha", "lambda", "average", "n"}
    assert mixer.weights_history_record()["step"] == 1


def test_nonfinite_feedback_is_skipped() -> None:
    mixer = DoremiMixer({"vocab_size": 10}, AB)
    state = mixer.state_dict()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        d = mixer.step(_fb(1, [1.0, 1.0], [math.nan, 0.0]))
    assert d.loss_weights == (0.5, 0.5) and mixer.state_dict() == state


def test_global_rng_untouched() -> None:
    before = np.random.get_state()
    mixer = DoremiMixer({"vocab_size": 10}, AB)
    for s in range(5):
        mixer.step(_fb(s, [1.0, 2.0], [0.5, 0.1]))
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"reweight_eps": 1.5}, "reweight_eps"),
        ({"reweight_eps": -0.1}, "reweight_eps"),
        ({"reweight_eta": 0.0}, "reweight_eta"),
        ({"reweight_eta": -1.0}, "reweight_eta"),
        ({"update_every": 0}, "update_every"),
        ({"proxy_sampling_proportions": [1, -1]}, "proxy_sampling_proportions"),
        ({"proxy_sampling_proportions": [1, math.nan]}, "proxy_sampling_proportions"),
        ({"proxy_sampling_proportions": [1, 1, 1]}, "proxy_sampling_proportions"),
        ({"proxy_loss": "tokenwise"}, "proxy_loss"),
        ({"absent_domain_score": "mean"}, "absent_domain_score"),
        ({"initial_weights": [1]}, "initial_weights"),
        ({"initial_domain_score": math.inf}, "initial_domain_score"),
        ({"reweight_etta": 1.0}, "reweight_etta"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        DoremiMixer({"vocab_size": 10, **config}, AB)
    message = str(info.value)
    assert key in message
    value = config[key]
    if key in {f.name for f in dataclasses.fields(DoremiMixer.config_class)} and not isinstance(
        value, (list, bool)
    ):
        assert str(value) in message, f"the message does not show the value: {message}"


def test_registered(fresh_plugin_manager) -> None:
    mixer = Registry(fresh_plugin_manager).create("mixer", "doremi", context=AB, vocab_size=8)
    assert isinstance(mixer, DoremiMixer)


class TestDoremiConformance(MixerConformance):
    name = "doremi"

    def valid_configs(self):
        return [
            {"vocab_size": 32000},
            {
                "vocab_size": 100,
                "official_compat": True,
                "proxy_sampling_proportions": [2, 1, 1],
                "reweight_eta": 0.5,
            },
            {
                "initial_domain_score": 0.0,
                "absent_domain_score": "zero",
                "update_every": 2,
                "initial_weights": [1, 1, 2],
            },
        ]
