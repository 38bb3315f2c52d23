"""The ``custom`` weighter on torch tensors.

dataflex-weight does not depend on torch (it is the ``dataflex-weight[torch]`` extra), so this
module skips when torch is missing. That is the one deliberate skip of this package.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
from dataflex_core import DataError, WeightFeedback
from dataflex_testing import WeighterConformance
from dataflex_weight import CustomWeighter

torch = pytest.importorskip("torch", reason="the torch path needs the dataflex-weight[torch] extra")

FNS = types.ModuleType("dataflex_weight_test_torch_fns")
FNS.softmax_of_loss = lambda losses_local, **_: torch.softmax(losses_local, dim=0)
FNS.numpy_ones = lambda losses_local, **_: np.ones(losses_local.shape[0])
FNS.with_grad = lambda losses_local, **_: losses_local.clone().requires_grad_(True) * 2
FNS.negative = lambda losses_local, **_: -torch.ones_like(losses_local)
FNS.inverse = lambda losses_local, **_: 1.0 / (1.0 + abs(losses_local))  # numpy or torch
sys.modules[FNS.__name__] = FNS


def test_function_sees_detached_tensors_and_returns_a_tensor() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    losses = x * 1.0
    weighter = CustomWeighter({"function": "dataflex_weight_test_torch_fns:softmax_of_loss"})
    f = WeightFeedback(step=0, losses=losses)
    w = weighter.weigh(f)
    assert isinstance(w, torch.Tensor) and not w.requires_grad
    torch.testing.assert_close(w, torch.softmax(losses.detach(), 0))
    weighter.objective(f, w).backward()
    torch.testing.assert_close(x.grad, w / 3)  # mean over |B_mu| = 3


def test_numpy_weights_become_a_tensor_on_the_losses_device() -> None:
    weighter = CustomWeighter({"function": "dataflex_weight_test_torch_fns:numpy_ones"})
    w = weighter.weigh(WeightFeedback(step=0, losses=torch.tensor([1.0, 2.0])))
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.tolist() == [1.0, 1.0]


def test_weights_with_grad_are_detached() -> None:
    weighter = CustomWeighter({"function": "dataflex_weight_test_torch_fns:with_grad"})
    w = weighter.weigh(WeightFeedback(step=0, losses=torch.tensor([1.0, 2.0])))
    assert not w.requires_grad and w.tolist() == [2.0, 4.0]


def test_bad_tensor_weights() -> None:
    weighter = CustomWeighter({"function": "dataflex_weight_test_torch_fns:negative"})
    with pytest.raises(DataError, match="finite and >= 0"):
        weighter.weigh(WeightFeedback(step=0, losses=torch.tensor([1.0, 2.0])))


def test_template_and_invalid_samples() -> None:
    losses = torch.tensor([1.0, math.nan, 5.0])
    f = WeightFeedback(step=0, losses=losses, valid=torch.tensor([True, False, True]))
    weighter = CustomWeighter()
    w = weighter.weigh(f)
    assert w.tolist() == [1.0, 0.0, 1.0]
    assert weighter.objective(f, w).item() == pytest.approx(3.0)


@pytest.mark.parametrize("function", [None, "dataflex_weight_test_torch_fns:inverse"])
def test_one_host_read_per_step(function, split_feedback, count_host_reads) -> None:
    config = {} if function is None else {"function": function}
    weighter = CustomWeighter(config)
    [f, _] = split_feedback(np.array([1.0, 2.0, 3.0]), [1, 2], convert=torch.as_tensor)
    with count_host_reads() as counts:
        w = weighter.weigh(f)
    assert counts == {"__bool__": 1}, counts
    with count_host_reads() as counts:
        weighter.objective(f, w)
    assert counts == {}, counts


class TestCustomWeighterTorchConformance(WeighterConformance):
    name = "custom"

    def valid_configs(self):
        return [{}, {"function": "dataflex_weight_test_torch_fns:inverse"}]

    def feedback(self, step, rng):
        fb = super().feedback(step, rng)
        return WeightFeedback(
            step=fb.step,
            losses=torch.as_tensor(fb.losses, dtype=torch.float32),
            token_counts=torch.as_tensor(fb.token_counts),
            domains=torch.as_tensor(fb.domains),
            valid=torch.as_tensor(fb.valid),
        )
