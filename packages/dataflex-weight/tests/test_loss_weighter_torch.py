"""The ``loss`` weighter's torch path: tensors in, tensors out, gradients, host syncs.

dataflex-weight does not depend on torch (it is the ``dataflex-weight[torch]`` extra), so this
module skips when torch is missing. That is the one deliberate skip of this package.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from dataflex_core import WeightFeedback
from dataflex_testing import WeighterConformance
from dataflex_weight import LossWeighter, UniformWeighter
from dataflex_weight.loss import STRATEGIES

torch = pytest.importorskip("torch", reason="the torch path needs the dataflex-weight[torch] extra")


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


L = [2.0, 3.0, 4.0]


# --------------------------------------------------------------------------- spec examples


def test_examples_on_tensors() -> None:
    f = WeightFeedback(step=0, losses=t64(L))
    weighter = LossWeighter()
    w = weighter.weigh(f)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float64
    assert w.tolist() == pytest.approx([0.155362, 0.422319, 0.422319], abs=1e-6)
    assert float(weighter.objective(f, w)) == pytest.approx(3.266956, abs=1e-6)
    w = LossWeighter({"temperature": 0.5}).weigh(f)
    assert w.tolist() == pytest.approx([0.063379, 0.468311, 0.468311], abs=1e-6)
    w = LossWeighter({"strategy": "quadratic"}).weigh(f)
    assert w.tolist() == pytest.approx([0.211942, 0.576117, 0.211942], abs=1e-6)
    w = LossWeighter().weigh(WeightFeedback(step=0, losses=t64([1.5, 1.5, 1.5])))
    assert w.tolist() == pytest.approx([1 / 3] * 3, abs=1e-12)


@pytest.mark.parametrize("strategy", [*STRATEGIES, "mid"])
def test_torch_equals_numpy(strategy: str) -> None:
    rng = np.random.default_rng(1)
    losses = rng.uniform(0.1, 6.0, size=11)
    losses[4] = math.nan
    valid = np.ones(11, dtype=bool)
    valid[4] = False
    weighter = LossWeighter({"strategy": strategy, "temperature": 0.6, "delta": 1.5})
    fn = WeightFeedback(step=0, losses=losses, valid=valid)
    ft = WeightFeedback(step=0, losses=t64(losses), valid=torch.as_tensor(valid))
    assert weighter.weigh(ft).tolist() == pytest.approx(weighter.weigh(fn).tolist(), abs=1e-12)


def test_low_precision_losses_get_float32_weights() -> None:
    losses = torch.tensor(L, dtype=torch.bfloat16, requires_grad=True)
    weighter = LossWeighter()
    w = weighter.weigh(WeightFeedback(step=0, losses=losses))
    assert w.dtype == torch.float32 and w.device == losses.device and not w.requires_grad
    assert w.tolist() == pytest.approx([0.155362, 0.422319, 0.422319], abs=1e-6)
    j = weighter.objective(WeightFeedback(step=0, losses=losses), w)
    j.backward()
    assert losses.grad is not None and losses.grad.dtype == torch.bfloat16


# --------------------------------------------------------------------------- gradients


def _tiny_problem(seed: int = 0, n: int = 6):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return model, x, y


def _per_sample_grads(model, x, y) -> list[list[torch.Tensor]]:
    grads = []
    for i in range(x.shape[0]):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    return grads


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes", "uniform"])
def test_gradient_is_the_weighted_sum_of_per_sample_gradients(strategy: str) -> None:
    model, x, y = _tiny_problem()
    weighter = LossWeighter({"strategy": strategy, "temperature": 0.7})
    losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    f = WeightFeedback(step=0, losses=losses)
    w = weighter.weigh(f)
    model.zero_grad()
    weighter.objective(f, w).backward()
    autograd = [p.grad.clone() for p in model.parameters()]
    per_sample = _per_sample_grads(model, x, y)
    for k, g in enumerate(autograd):
        expected = sum(w[i] * per_sample[i][k] for i in range(x.shape[0]))
        torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


def test_token_weighted_gradient() -> None:
    model, x, y = _tiny_problem(seed=2)
    counts = torch.tensor([3, 1, 4, 1, 5, 9])
    weighter = LossWeighter({"official_compat": True})
    losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    f = WeightFeedback(step=0, losses=losses, token_counts=counts)
    w = weighter.weigh(f)
    model.zero_grad()
    weighter.objective(f, w).backward()
    autograd = [p.grad.clone() for p in model.parameters()]
    per_sample = _per_sample_grads(model, x, y)
    # J = b sum_i w_i (n_i / N) l_i with b = 6, N = 23
    coef = 6 * w * counts.double() / counts.sum()
    for k, g in enumerate(autograd):
        expected = sum(coef[i] * per_sample[i][k] for i in range(6))
        torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


def test_invalid_sample_does_not_poison_the_gradient() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    counts = torch.tensor([1.0, 0.0, 1.0])
    sums = x**2
    # as dataflex-ops builds it: NaN for the sample without a supervised token
    losses = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, math.nan))
    valid = counts > 0
    weighter = LossWeighter()
    f = WeightFeedback(step=0, losses=losses, valid=valid)
    w = weighter.weigh(f)
    weighter.objective(f, w).backward()
    assert torch.isfinite(x.grad).all() and x.grad[1] == 0
    assert x.grad.tolist() == pytest.approx([2 * w[0].item(), 0.0, 6 * w[2].item()])


def test_objective_stays_in_the_graph_when_every_sample_is_invalid() -> None:
    invalid = torch.tensor([False, False])
    for weighter in (LossWeighter(), LossWeighter({"official_compat": True}), UniformWeighter()):
        x = torch.tensor([1.0, 2.0], requires_grad=True)
        losses = torch.where(invalid, x, torch.full_like(x, math.nan))
        f = WeightFeedback(step=0, losses=losses, valid=invalid, token_counts=torch.zeros(2))
        j = weighter.objective(f, weighter.weigh(f))
        assert j.requires_grad and j.detach().item() == 0.0
        j.backward()  # every rank must be able to run backward
        assert x.grad.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- several ranks


@pytest.mark.parametrize("strategy", ["linupper", "uniform"])
def test_two_ranks_equal_one_rank(strategy: str, split_feedback) -> None:
    rng = np.random.default_rng(5)
    losses = rng.uniform(0.5, 4.0, size=9)
    valid = np.ones(9, dtype=bool)
    valid[0] = False
    losses[0] = math.nan
    weighter = LossWeighter({"strategy": strategy})
    single = WeightFeedback(step=0, losses=t64(losses), valid=torch.as_tensor(valid))
    w1 = weighter.weigh(single)
    j1 = weighter.objective(single, w1)
    ranks = split_feedback(losses, [5, 4], valid=valid, convert=torch.as_tensor)
    parts = [weighter.weigh(f) for f in ranks]
    torch.testing.assert_close(torch.cat(parts), w1)
    torch.testing.assert_close(
        sum(weighter.objective(f, w) for f, w in zip(ranks, parts, strict=True)), j1
    )


# --------------------------------------------------------------------------- bad input


def test_nonfinite_losses_warn_and_get_zero() -> None:
    losses = torch.tensor([2.0, math.nan, 3.0, math.inf, 4.0])
    with pytest.warns(RuntimeWarning, match="2 valid sample"):
        w = LossWeighter().weigh(WeightFeedback(step=0, losses=losses))
    assert w[1] == 0 and w[3] == 0
    assert w[[0, 2, 4]].tolist() == pytest.approx([0.155362, 0.422319, 0.422319], abs=1e-6)


def test_one_sample() -> None:
    w = LossWeighter().weigh(WeightFeedback(step=0, losses=torch.tensor([3.0])))
    assert w.tolist() == [1.0]


# --------------------------------------------------------------------------- host syncs


@pytest.mark.parametrize(
    "config", [{}, {"strategy": "uniform"}, {"official_compat": True}, {"strategy": "mid"}]
)
def test_one_host_read_per_step(config: dict, split_feedback, count_host_reads) -> None:
    """weigh does one ``bool`` (the non-finite check); objective none."""
    losses = np.array([2.0, 3.0, 4.0, 1.0, 0.5])
    [f, _] = split_feedback(
        losses, [3, 2], token_counts=np.array([1, 2, 3, 4, 5]), convert=torch.as_tensor
    )
    weighter = LossWeighter(config)
    with count_host_reads() as counts:
        w = weighter.weigh(f)
    assert counts == {"__bool__": 1}, counts
    with count_host_reads() as counts:
        weighter.objective(f, w)
    assert counts == {}, counts


# --------------------------------------------------------------------------- conformance


class TestLossWeighterTorchConformance(WeighterConformance):
    """The suite with tensor feedback."""

    name = "loss"

    def valid_configs(self):
        return [{"strategy": s} for s in STRATEGIES] + [{"official_compat": True}]

    def feedback(self, step, rng):
        fb = super().feedback(step, rng)
        return WeightFeedback(
            step=fb.step,
            losses=torch.as_tensor(fb.losses, dtype=torch.float32),
            token_counts=torch.as_tensor(fb.token_counts),
            domains=torch.as_tensor(fb.domains),
            valid=torch.as_tensor(fb.valid),
        )


def test_no_warning_for_clean_tensors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LossWeighter().weigh(WeightFeedback(step=0, losses=torch.tensor(L)))
