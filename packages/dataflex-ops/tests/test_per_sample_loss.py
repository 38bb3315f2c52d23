"""Per-sample causal-LM loss (spec §1.1)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from dataflex_core import ConfigError, Registry
from dataflex_ops import PerSampleLoss, PerSampleLossUnavailable, per_sample_loss, token_counts


def _spec_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary 2; logits [0,0] and [ln 3, 0] predict two targets of class 0.

    Logits at t predict label t+1, so the two supervised labels sit at positions 1 and 2.
    """
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[-100, 0, 0]])
    return logits, labels


def test_spec_example_mean_and_sum() -> None:
    logits, labels = _spec_example()
    mean, valid = per_sample_loss(logits, labels)
    total, _ = per_sample_loss(logits, labels, reduction="sum")
    assert valid.tolist() == [True]
    assert mean.item() == pytest.approx(0.490415, abs=1e-6)
    assert total.item() == pytest.approx(0.980829, abs=1e-6)
    matrix, _ = per_sample_loss(logits, labels, per_token=True)
    assert matrix.shape == (1, 2)
    assert matrix[0].tolist() == pytest.approx([0.693147, 0.287682], abs=1e-6)
    assert token_counts(labels).tolist() == [2]


def test_invalid_sample_is_nan_and_masked() -> None:
    logits, labels = _spec_example()
    logits = torch.cat([logits, logits])
    labels = torch.tensor(
        [[-100, 0, 0], [0, -100, -100]]
    )  # row 1: only the first label, never predicted
    values, valid = per_sample_loss(logits, labels)
    assert valid.tolist() == [True, False]
    assert math.isnan(values[1].item()) and not math.isnan(values[0].item())
    assert token_counts(labels).tolist() == [2, 0]
    matrix, _ = per_sample_loss(logits, labels, per_token=True)
    assert matrix[1].tolist() == [0.0, 0.0]


def test_single_position_sequences_are_invalid() -> None:
    values, valid = per_sample_loss(torch.zeros(2, 1, 5), torch.zeros(2, 1, dtype=torch.long))
    assert valid.tolist() == [False, False] and torch.isnan(values).all()


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_matches_cross_entropy_per_sample(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(0)
    b, t, v = 4, 11, 17
    logits = torch.randn(b, t, v, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.3] = -100
    labels[2] = -100  # one invalid sample
    values, valid = per_sample_loss(logits, labels, chunk_size=chunk_size)
    sums, _ = per_sample_loss(logits, labels, reduction="sum", chunk_size=chunk_size)
    assert values.dtype == torch.float32
    for i in range(b):
        ce = F.cross_entropy(
            logits[i, :-1].float(), labels[i, 1:], ignore_index=-100, reduction="none"
        )
        n = int((labels[i, 1:] != -100).sum())
        if n == 0:
            assert not valid[i] and torch.isnan(values[i]) and torch.isnan(sums[i])
        else:
            assert valid[i]
            torch.testing.assert_close(values[i], ce.sum() / n, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(sums[i], ce.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [2, 1024])
def test_gradient_flows(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (3, 7), generator=g)
    labels[1] = -100  # invalid row: NaN value, but no NaN gradient
    values, valid = per_sample_loss(logits, labels, chunk_size=chunk_size)
    values[valid].sum().backward()
    ref = logits.detach().clone().requires_grad_(True)
    expected = sum(F.cross_entropy(ref[i, :-1], labels[i, 1:], ignore_index=-100) for i in (0, 2))
    expected.backward()
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad, ref.grad)
    assert logits.grad[1].abs().sum() == 0


def test_argument_errors() -> None:
    logits, labels = _spec_example()
    with pytest.raises(ConfigError, match="reduction"):
        per_sample_loss(logits, labels, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="chunk_size"):
        per_sample_loss(logits, labels, chunk_size=0)
    with pytest.raises(ValueError, match="labels"):
        per_sample_loss(logits, labels[:, :2])


class _NoLogits(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, **_: object) -> dict[str, None]:
        return {"logits": None}


def test_featurizer_refuses_a_model_without_logits() -> None:
    model = _NoLogits()
    batch = {
        "input_ids": torch.zeros(1, 3, dtype=torch.long),
        "labels": torch.zeros(1, 3, dtype=torch.long),
    }
    with pytest.raises(PerSampleLossUnavailable, match="no logits"):
        PerSampleLoss()(model, batch)
    assert model.training  # the caller's mode is restored even on error


def test_featurizer_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="chunk"):
        PerSampleLoss({"chunk": 4})
    with pytest.raises(ConfigError, match="chunk_size"):
        PerSampleLoss({"chunk_size": 0})


def test_registered_as_featurizer(fresh_plugin_manager) -> None:
    registry = Registry(fresh_plugin_manager)
    featurizer = registry.create("featurizer", "per_sample_loss", reduction="sum")
    assert isinstance(featurizer, PerSampleLoss) and featurizer.config.reduction == "sum"


def test_plugin_module_does_not_import_torch() -> None:
    # Discovery (`dataflex-cli components`) imports the package and its plugin module and calls
    # the registration hook; none of that may pay for torch. Only this package's plugin is
    # exercised, so another distribution's plugin cannot make this test fail.
    code = (
        "import sys, dataflex_ops, dataflex_ops.plugin as p\n"
        "assert 'per_sample_loss' in [s.name for s in p.dataflex_register_featurizers()]\n"
        "assert 'torch' not in sys.modules, 'the dataflex_ops plugin imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
