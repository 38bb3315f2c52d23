"""Per-sample losses of a tiny LlamaForCausalLM built locally (no hub access)."""

from __future__ import annotations

import pytest
import torch
import transformers
from dataflex_ops import PerSampleLoss, per_sample_loss


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_dropout=0.1,  # dropout must be off inside the featurizer
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(0)
        m = transformers.LlamaForCausalLM(config)
    m.train()
    return m


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, 64, (3, 10), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 7:] = 0  # right padding
    labels = input_ids.clone()
    labels[:, :4] = -100  # prompt tokens
    labels[2, 7:] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "domain_id": torch.tensor([0, 1, 1]),  # a DataFlex side key: never passed to the model
    }


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "domain_id"}


def test_token_weighted_mean_equals_the_model_loss(model, batch) -> None:
    model.eval()
    with torch.no_grad():
        out = model(**_model_inputs(batch))
    model.train()
    values, valid = per_sample_loss(out.logits, batch["labels"], chunk_size=4)
    n = (batch["labels"][:, 1:] != -100).sum(dim=1)
    assert valid.all()
    weighted = (values * n).sum() / n.sum()  # HF's batch loss is a token-weighted mean
    torch.testing.assert_close(weighted, out.loss, rtol=1e-5, atol=1e-6)


def test_featurizer_runs_in_eval_mode_and_restores_it(model, batch) -> None:
    assert model.training
    features = PerSampleLoss({"chunk_size": 3})(model, batch)
    assert model.training  # restored
    again = PerSampleLoss({"chunk_size": 1024})(model, batch)
    torch.testing.assert_close(features["values"], again["values"])  # dropout was off
    assert not features["values"].requires_grad
    assert features["valid"].tolist() == [True, True, True]
    assert features["token_counts"].tolist() == [6, 6, 3]
    model.eval()
    with torch.no_grad():
        ref = model(**_model_inputs(batch))
    model.train()
    expected, _ = per_sample_loss(ref.logits, batch["labels"])
    torch.testing.assert_close(features["values"], expected)


def test_featurizer_keeps_eval_mode_when_called_in_eval(model, batch) -> None:
    model.eval()
    try:
        PerSampleLoss()(model, batch)
        assert not model.training
    finally:
        model.train()


def test_per_sample_losses_with_grad_inside_compute_loss(model, batch) -> None:
    model.eval()  # deterministic forward; gradients still flow
    try:
        out = model(**_model_inputs(batch))
        values, valid = per_sample_loss(out.logits, batch["labels"], chunk_size=4)
        n = (batch["labels"][:, 1:] != -100).sum(dim=1)
        ((values * n).sum() / n.sum()).backward()
        ours = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model(**_model_inputs(batch)).loss.backward()
        for a, p in zip(ours, model.parameters(), strict=True):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    finally:
        model.zero_grad()
        model.train()


def test_compute_features_hook(model, batch, fresh_plugin_manager) -> None:
    got = fresh_plugin_manager.hook.dataflex_compute_features(
        model=model, batch=batch, kind="per_sample_loss", options={"chunk_size": 4}
    )
    expected = PerSampleLoss()(model, batch)
    torch.testing.assert_close(got["values"], expected["values"])
    assert got["valid"].tolist() == expected["valid"].tolist()
    assert (
        fresh_plugin_manager.hook.dataflex_compute_features(
            model=model, batch=batch, kind="gate_loads", options={}
        )
        is None  # a kind no plugin computes
    )


def test_featurizer_ignores_the_padding_side(model, batch) -> None:
    right = PerSampleLoss()(model, batch)
    order = torch.argsort(batch["attention_mask"].to(torch.int8), dim=1, stable=True)
    left = {k: (v.gather(1, order) if v.dim() == 2 else v) for k, v in batch.items()}
    got = PerSampleLoss()(model, left)
    torch.testing.assert_close(got["values"], right["values"], rtol=1e-5, atol=1e-6)
    assert got["token_counts"].tolist() == right["token_counts"].tolist()
