"""The ``adapt`` weighter and pooling on torch tensors.

dataflex-weight does not depend on torch (it is the ``dataflex-weight[torch]`` extra), so this
module skips when torch is missing. That is the one deliberate skip of this package.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dataflex_core import WeightFeedback
from dataflex_testing import WeighterConformance
from dataflex_weight import AdaptWeighter, pool_embeddings, position_weighted_pool

torch = pytest.importorskip("torch", reason="the torch path needs the dataflex-weight[torch] extra")

ANCHORS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_pooling_example_on_tensors() -> None:
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    mask = torch.tensor([1, 1, 0])
    out = position_weighted_pool(h, mask)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.tolist() == pytest.approx([0.447214, 0.894427], abs=1e-6)
    assert pool_embeddings(h, mask, "mean").tolist() == pytest.approx([0.707107] * 2, abs=1e-6)
    assert pool_embeddings(h, mask, "last_token").tolist() == pytest.approx([0.0, 1.0])


def test_pooling_torch_equals_numpy_and_takes_bf16() -> None:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])
    for method in ("position_weighted", "mean", "last_token"):
        got = pool_embeddings(h, mask, method)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), pool_embeddings(h.numpy(), mask.numpy(), method))
    low = pool_embeddings(h.to(torch.bfloat16), mask)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, pool_embeddings(h, mask).float(), atol=2e-2, rtol=0)


def test_spec_example_on_tensors() -> None:
    weighter = AdaptWeighter()
    weighter.set_anchors(ANCHORS, step=0)
    assert weighter.anchor_mean.tolist() == [0.5, 0.5]
    f = WeightFeedback(
        step=0, losses=torch.ones(2), embeddings=torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    )
    w = weighter.weigh(f)
    assert isinstance(w, torch.Tensor) and not w.requires_grad
    assert w.tolist() == pytest.approx([0.622459, 0.668188], abs=1e-6)


def test_torch_equals_numpy() -> None:
    rng = np.random.default_rng(4)
    emb, anchors = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    losses = rng.uniform(1, 3, size=6)
    valid = np.array([True, True, False, True, True, True])
    for config in ({}, {"tau": 0.3, "clip": 0.6}):
        a, b = AdaptWeighter(config), AdaptWeighter(config)
        a.set_anchors(anchors, step=0)
        b.set_anchors(torch.as_tensor(anchors), step=0)
        assert a.state_dict() == b.state_dict()
        fn = WeightFeedback(step=0, losses=losses, valid=valid, embeddings=emb)
        ft = WeightFeedback(
            step=0,
            losses=torch.as_tensor(losses),
            valid=torch.as_tensor(valid),
            embeddings=torch.as_tensor(emb),
        )
        assert b.weigh(ft).tolist() == pytest.approx(a.weigh(fn).tolist(), abs=1e-12)


def test_gradient_is_the_weighted_sum_of_per_sample_gradients() -> None:
    gen = torch.Generator().manual_seed(1)
    model = torch.nn.Linear(4, 3).double()
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=gen)
    weighter = AdaptWeighter({"tau": 0.5})
    weighter.set_anchors(torch.randn(3, 4, generator=gen, dtype=torch.float64), step=0)
    losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    f = WeightFeedback(step=0, losses=losses, embeddings=x)
    w = weighter.weigh(f)
    model.zero_grad()
    weighter.objective(f, w).backward()
    autograd = [p.grad.clone() for p in model.parameters()]
    for k, g in enumerate(autograd):
        expected = torch.zeros_like(g)
        for i in range(5):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
            expected += w[i] * list(model.parameters())[k].grad / 5  # mean over |B_mu| = 5
        torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


def test_nonfinite_embedding_warns() -> None:
    weighter = AdaptWeighter()
    weighter.set_anchors(ANCHORS, step=0)
    emb = torch.tensor([[1.0, 0.0], [math.nan, 0.0]])
    with pytest.warns(RuntimeWarning, match="1 valid sample.*non-finite embedding"):
        w = weighter.weigh(WeightFeedback(step=0, losses=torch.ones(2), embeddings=emb))
    assert w.tolist() == pytest.approx([0.622459, 0.0], abs=1e-6)


@pytest.mark.parametrize("mode", ["mean", "weight_sum", "sum"])
def test_two_ranks_equal_one_rank(mode: str, split_feedback) -> None:
    rng = np.random.default_rng(8)
    emb, losses = rng.normal(size=(7, 3)), rng.uniform(0.5, 2.0, size=7)
    weighter = AdaptWeighter({"loss_normalization": mode})
    weighter.set_anchors(rng.normal(size=(2, 3)), step=0)
    single = WeightFeedback(step=0, losses=torch.as_tensor(losses), embeddings=torch.as_tensor(emb))
    w1 = weighter.weigh(single)
    j1 = weighter.objective(single, w1)
    ranks = split_feedback(losses, [4, 3], embeddings=emb, convert=torch.as_tensor)
    parts = [weighter.weigh(f) for f in ranks]
    torch.testing.assert_close(torch.cat(parts), w1)
    gws = sum(p.sum() for p in parts) if mode == "weight_sum" else None  # an all-reduce
    total = sum(
        weighter.objective(f, w, global_weight_sum=gws) for f, w in zip(ranks, parts, strict=True)
    )
    torch.testing.assert_close(total, j1)


def test_one_host_read_per_step(split_feedback, count_host_reads) -> None:
    rng = np.random.default_rng(2)
    weighter = AdaptWeighter({"loss_normalization": "weight_sum"})
    weighter.set_anchors(rng.normal(size=(2, 3)), step=0)
    [f, _] = split_feedback(
        rng.uniform(size=5), [2, 3], embeddings=rng.normal(size=(5, 3)), convert=torch.as_tensor
    )
    weighter.weigh(f)  # the first call copies the anchor to the device (once per refresh)
    with count_host_reads() as counts:
        w = weighter.weigh(f)
    assert counts == {"__bool__": 1}, counts
    with count_host_reads() as counts:
        weighter.objective(f, w, global_weight_sum=w.sum() * 2)
    assert counts == {}, counts


class TestAdaptWeighterTorchConformance(WeighterConformance):
    """The suite with tensor feedback and tensor anchors."""

    name = "adapt"

    def valid_configs(self):
        return [{}, {"tau": 0.5, "clip": 0.6}]

    def build(self, context, **config):
        weighter = super().build(context, **config)
        gen = torch.Generator().manual_seed(3)
        weighter.set_anchors(torch.randn(4, 5, generator=gen), step=0)
        return weighter

    def feedback(self, step, rng):
        fb = super().feedback(step, rng)
        return WeightFeedback(
            step=fb.step,
            losses=torch.as_tensor(fb.losses, dtype=torch.float32),
            token_counts=torch.as_tensor(fb.token_counts),
            domains=torch.as_tensor(fb.domains),
            valid=torch.as_tensor(fb.valid),
            embeddings=torch.as_tensor(rng.normal(size=(self.batch_size, 5)), dtype=torch.float32),
        )
