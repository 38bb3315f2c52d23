"""grouped_sequence_grads: one backward per group equals the weighted sum of per-sample grads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from dataflex_ops.grads import per_sample_grads
from dataflex_ops.grouped_grads import grouped_sequence_grads

COEFS = [0.5, -1.0, 2.0, 0.0, 1.5, 0.25]
GROUPS = [0, 1, 0, 2, 1, 0]
NUM_GROUPS = 4  # group 2 has only a zero coefficient, group 3 has no rows


def _expected(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    reduction: str,
    params: Any = "trainable",
) -> dict[str, torch.Tensor]:
    ref = per_sample_grads(model, batch, params=params, strategy="loop", reduction=reduction)
    c = torch.tensor(COEFS)
    out = {}
    for name in ref.names:
        g = torch.nan_to_num(ref.grads[name].reshape(len(COEFS), -1))
        rows = []
        for k in range(NUM_GROUPS):
            sel = torch.tensor([gg == k for gg in GROUPS])
            rows.append((c[sel, None] * g[sel]).sum(0) if sel.any() else torch.zeros(g.shape[1]))
        out[name] = torch.stack(rows)
    return out


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_weighted_per_sample_grads(
    llama_builder: Callable[..., torch.nn.Module],
    batch_factory: Callable[..., dict[str, torch.Tensor]],
    reduction: str,
) -> None:
    model = llama_builder(seed=1)
    model.train()
    batch = batch_factory(n=6, length=9, seed=5)
    before = {n: p.grad for n, p in model.named_parameters()}
    got = grouped_sequence_grads(
        model,
        batch,
        COEFS,
        GROUPS,
        NUM_GROUPS,
        reduction=reduction,  # type: ignore[arg-type]
    )
    expected = _expected(model, batch, reduction)
    assert list(got) == list(expected)
    for name, value in got.items():
        assert value.dtype == torch.float32 and value.shape == expected[name].shape
        assert torch.allclose(value, expected[name], atol=1e-5, rtol=0), name
        assert torch.all(value[2:] == 0), "zero coefficients / empty group must give zero rows"
    assert model.training, "the caller's mode is restored"
    assert all(p.grad is before[n] for n, p in model.named_parameters()), "p.grad touched"


def test_padding_side_and_parameter_filter(
    llama_builder: Callable[..., torch.nn.Module],
    batch_factory: Callable[..., dict[str, torch.Tensor]],
) -> None:
    model = llama_builder(seed=2)
    batch = batch_factory(n=6, length=9, seed=6)
    # the same rows, left padded
    left = {k: v.clone() for k, v in batch.items()}
    for i in range(6):
        m = batch["attention_mask"][i].bool()
        n = int(m.sum())
        for key, fill in (("input_ids", 0), ("labels", -100), ("attention_mask", 0)):
            row = torch.full_like(batch[key][i], fill)
            row[-n:] = batch[key][i][m]
            left[key][i] = row
    params = ["layers\\.0\\.self_attn\\.q_proj", "lm_head"]
    a = grouped_sequence_grads(model, batch, COEFS, GROUPS, NUM_GROUPS, params=params)
    b = grouped_sequence_grads(model, left, COEFS, GROUPS, NUM_GROUPS, params=params)
    assert set(a) == {"model.layers.0.self_attn.q_proj.weight", "lm_head.weight"}
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0)
    expected = _expected(model, batch, "sum", params)
    for name in a:
        assert torch.allclose(a[name], expected[name], atol=1e-5, rtol=0)


def test_bad_input(
    llama_builder: Callable[..., torch.nn.Module],
    batch_factory: Callable[..., dict[str, torch.Tensor]],
) -> None:
    model = llama_builder(seed=0)
    batch = batch_factory(n=3, length=6)
    with pytest.raises(ValueError, match="entries"):
        grouped_sequence_grads(model, batch, [1.0, 2.0], [0, 0, 0], 1)
    with pytest.raises(ValueError, match="group ids"):
        grouped_sequence_grads(model, batch, [1.0, 1.0, 1.0], [0, 1, 2], 2)
    with pytest.raises(ValueError, match="finite"):
        grouped_sequence_grads(model, batch, [1.0, float("nan"), 1.0], [0, 0, 0], 1)
    with pytest.raises(ValueError, match="reduction"):
        grouped_sequence_grads(model, batch, [1.0] * 3, [0] * 3, 1, reduction="max")  # type: ignore[arg-type]
    # a row without supervised tokens contributes nothing
    labels = batch["labels"].clone()
    labels[1] = -100
    nolab = {**batch, "labels": labels}
    full = grouped_sequence_grads(model, nolab, [1.0, 5.0, 1.0], [0, 0, 1], 2)
    only = grouped_sequence_grads(model, nolab, [1.0, 0.0, 1.0], [0, 0, 1], 2)
    for name in full:
        assert torch.allclose(full[name], only[name], atol=1e-6)
