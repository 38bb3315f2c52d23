"""DoReMi's proxy loss as the trainer applies it: gradient = alpha-weighted domain-mean gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataflex_core import ComponentContext, MixFeedback
from dataflex_llamafactory.trainer import doremi_objective
from dataflex_mix.doremi import DoremiMixer
from dataflex_ops.loss import per_sample_loss
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = LlamaForCausalLM(cfg)
    m.config._attn_implementation = "eager"
    return m


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (5, 9), generator=g)
    labels = ids.clone()
    labels[1, :3] = -100  # a prompt that is not supervised
    labels[3, 6:] = -100
    domains = torch.tensor([0, 1, 0, 2, 1])
    return ids, labels, domains


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten().clone() for p in model.parameters()])


def reference_grad(model, ids, labels, domains, alpha):
    """sum_k alpha_k * grad(token mean of domain k), with plain cross_entropy per domain."""
    logits = model(input_ids=ids).logits[:, :-1]
    target = labels[:, 1:]
    total = 0
    for k, a in enumerate(alpha):
        rows = domains == k
        if not rows.any():
            continue
        ce = torch.nn.functional.cross_entropy(
            logits[rows].reshape(-1, 50), target[rows].reshape(-1), ignore_index=-100, reduction="mean"
        )
        total = total + a * ce
    return grads(model, total)


def mixer_with_alpha(alpha):
    mixer = DoremiMixer({"vocab_size": 50, "initial_weights": tuple(alpha)},
                        ComponentContext(domains=("a", "b", "c"), seed=0))
    return mixer


@pytest.mark.parametrize("alpha", [(0.7, 0.2, 0.1), (0.1, 0.1, 0.8)])
def test_proxy_loss_gradient_is_alpha_weighted_sum_of_domain_mean_gradients(model, alpha):
    ids, labels, domains = batch()
    mixer = mixer_with_alpha(alpha)
    z = np.bincount(domains.numpy(), weights=(labels[:, 1:] != -100).sum(1).numpy(), minlength=3)
    v = torch.as_tensor(mixer.proxy_loss_weights(z))
    np.testing.assert_allclose(v.numpy(), np.asarray(alpha) / z)  # paper: v_k = alpha_k / Z_k
    tok, _ = per_sample_loss(model(input_ids=ids).logits, labels, per_token=True)
    ours = grads(model, doremi_objective(tok, domains, v))
    ref = reference_grad(model, ids, labels, domains, alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def test_changing_alpha_changes_the_gradient(model):
    ids, labels, domains = batch()
    z = np.bincount(domains.numpy(), weights=(labels[:, 1:] != -100).sum(1).numpy(), minlength=3)
    out = []
    for alpha in [(0.7, 0.2, 0.1), (0.2, 0.7, 0.1)]:
        v = torch.as_tensor(mixer_with_alpha(alpha).proxy_loss_weights(z))
        tok, _ = per_sample_loss(model(input_ids=ids).logits, labels, per_token=True)
        out.append(grads(model, doremi_objective(tok, domains, v)))
    assert not torch.allclose(out[0], out[1])


def test_split_micro_batches_add_up_to_the_step_objective(model):
    """Gradient accumulation: per-micro-batch shares with the step's Z sum to the whole."""
    ids, labels, domains = batch()
    alpha = (0.5, 0.3, 0.2)
    z = np.bincount(domains.numpy(), weights=(labels[:, 1:] != -100).sum(1).numpy(), minlength=3)
    v = torch.as_tensor(mixer_with_alpha(alpha).proxy_loss_weights(z))
    tok, _ = per_sample_loss(model(input_ids=ids).logits, labels, per_token=True)
    whole = doremi_objective(tok, domains, v)
    parts = doremi_objective(tok[:2], domains[:2], v) + doremi_objective(tok[2:], domains[2:], v)
    torch.testing.assert_close(whole, parts)


def test_update_uses_excess_losses_from_feedback():
    mixer = mixer_with_alpha((1 / 3, 1 / 3, 1 / 3))
    fb = MixFeedback(step=1, loss_sum=[3, 3, 3], token_count=[3, 2, 0], sample_count=[1, 1, 0],
                     excess_loss_sum=[3.0, 0.0, 0.0])
    d = mixer.step(fb)
    assert d.loss_weights is not None and d.loss_weights[0] > d.loss_weights[1]
