"""The uniform weighter's torch path.

dataflex-weight does not depend on torch (it is the ``dataflex-weight[torch]`` extra), so this
module skips when torch is missing. That is the one deliberate skip of this package.
"""

from __future__ import annotations

import math

import pytest
from dataflex_core import WeightFeedback
from dataflex_testing import WeighterConformance
from dataflex_weight import UniformWeighter

torch = pytest.importorskip("torch", reason="the torch path needs the dataflex-weight[torch] extra")


def test_tensor_in_tensor_out() -> None:
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16, requires_grad=True)
    w = UniformWeighter().weigh(WeightFeedback(step=0, losses=losses))
    assert isinstance(w, torch.Tensor)
    # the weight dtype: float32 for low-precision losses (float64 stays float64)
    assert w.dtype == torch.float32 and w.device == losses.device
    assert not w.requires_grad
    assert w.tolist() == [1.0, 1.0, 1.0]


def test_invalid_and_nonfinite_get_zero() -> None:
    losses = torch.tensor([1.0, math.nan, math.nan, math.inf])
    valid = torch.tensor([True, False, True, True])
    with pytest.warns(RuntimeWarning, match="2 valid sample"):
        w = UniformWeighter().weigh(WeightFeedback(step=0, losses=losses, valid=valid))
    assert w.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_weights_scale_the_loss_and_stay_out_of_the_graph() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = x**2
    w = UniformWeighter().weigh(WeightFeedback(step=0, losses=losses, valid=[True, True]))
    (w * losses).sum().backward()
    assert x.grad.tolist() == [2.0, 4.0]


class TestUniformWeighterTorchConformance(WeighterConformance):
    """The suite with tensor feedback."""

    name = "uniform"

    def feedback(self, step, rng):
        fb = super().feedback(step, rng)
        return WeightFeedback(
            step=fb.step,
            losses=torch.as_tensor(fb.losses, dtype=torch.float32),
            token_counts=torch.as_tensor(fb.token_counts),
            domains=torch.as_tensor(fb.domains),
            valid=torch.as_tensor(fb.valid),
        )
