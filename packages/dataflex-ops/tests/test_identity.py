"""Model identities for feature-store keys (spec §5.6)."""

from __future__ import annotations

from pathlib import Path

import torch
from dataflex_ops import checkpoint_identity, model_identity
from dataflex_ops.store import store_key


def test_model_identity_changes_with_weights_and_step(llama_builder) -> None:
    a, b = llama_builder(seed=0), llama_builder(seed=0)
    ia = model_identity(a, run_id="r", step=3, content_hash=True)
    assert ia == model_identity(b, run_id="r", step=3, content_hash=True)
    assert ia["class"] == "LlamaForCausalLM" and len(ia["param_hash"]) == 64
    with torch.no_grad():
        b.lm_head.weight[0, 0] += 1.0
    assert model_identity(b, run_id="r", step=3, content_hash=True) != ia
    assert store_key(model_identity(a, step=4)) != store_key(model_identity(a, step=3))


def test_checkpoint_identity_hashes_weights_not_optimizer(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "optimizer.pt").write_bytes(b"state")
    first = checkpoint_identity(tmp_path)
    (tmp_path / "optimizer.pt").write_bytes(b"other state")
    assert checkpoint_identity(tmp_path) == first and first["files"] == ["model.safetensors"]
    (tmp_path / "model.safetensors").write_bytes(b"new weights")
    assert checkpoint_identity(tmp_path)["content_sha256"] != first["content_sha256"]
