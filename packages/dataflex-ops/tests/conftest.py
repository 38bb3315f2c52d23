"""Shared fixtures of the dataflex-ops tests: tiny models built locally (no hub access)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_LLAMA: dict[str, Any] = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def build_llama(seed: int = 0, attn: str = "eager", **overrides: Any) -> torch.nn.Module:
    """A tiny LlamaForCausalLM with seeded weights (the global RNG is left untouched)."""
    import transformers

    config = transformers.LlamaConfig(**{**TINY_LLAMA, **overrides})
    config._attn_implementation = attn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model


def make_batch(
    n: int = 4, length: int = 10, seed: int = 3, vocab: int = 64, prompt: int = 3
) -> dict[str, torch.Tensor]:
    """Random right-padded LM batch: row 2 is shorter, the first ``prompt`` labels ignored."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (n, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    if n > 2:
        attention_mask[2, length - 3 :] = 0
    labels = input_ids.clone()
    labels[:, :prompt] = -100
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture(scope="session")
def llama_builder() -> Callable[..., torch.nn.Module]:
    return build_llama


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    model = build_llama()
    model.train()  # featurizers must switch to eval themselves and restore this
    return model


@pytest.fixture
def lm_batch() -> dict[str, torch.Tensor]:
    return make_batch()


@pytest.fixture(scope="session")
def batch_factory() -> Callable[..., dict[str, torch.Tensor]]:
    return make_batch
