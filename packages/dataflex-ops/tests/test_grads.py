"""Per-sample gradients (spec §1.3): strategies agree, each row is its own sample's gradient."""

from __future__ import annotations

import logging

import pytest
import torch
from dataflex_core import ConfigError
from dataflex_ops import (
    PerSampleGrad,
    canonical_name,
    factor_matrix,
    factorized_grads,
    per_sample_grads,
    select_parameters,
)
from dataflex_ops.grads import GradStrategyError


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _assert_rows_close(a, b, rtol: float = 1e-5) -> None:
    """Per-sample relative difference of flattened gradients."""
    fa, fb = a.flat(), b.flat()
    for i in range(fa.shape[0]):
        assert _rel(fa[i], fb[i]) < rtol, (i, _rel(fa[i], fb[i]))


@pytest.fixture(scope="module")
def lora_llama(llama_builder):
    peft = pytest.importorskip("peft")
    base = llama_builder(seed=1)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
    model = peft.get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # lora_B starts at zero, which would make every lora_A gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.train()
    return model


def test_canonical_names() -> None:
    assert canonical_name("module.base_model.model.model.norm.weight") == "model.norm.weight"
    assert (
        canonical_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    )


def test_vmap_equals_loop(tiny_llama, lm_batch) -> None:
    flags = {n: p.requires_grad for n, p in tiny_llama.named_parameters()}
    loop = per_sample_grads(tiny_llama, lm_batch, strategy="loop")
    vmap = per_sample_grads(tiny_llama, lm_batch, strategy="vmap", chunk_size=3)
    assert loop.strategy == "loop" and vmap.strategy == "vmap"
    assert loop.names == vmap.names == tuple(n for n, _ in tiny_llama.named_parameters())
    assert loop.flat().shape == (4, sum(p.numel() for p in tiny_llama.parameters()))
    _assert_rows_close(vmap, loop)
    assert loop.param_hash == vmap.param_hash
    assert tiny_llama.training  # mode restored
    assert all(p.grad is None for p in tiny_llama.parameters())  # p.grad never touched
    assert flags == {n: p.requires_grad for n, p in tiny_llama.named_parameters()}


def test_loop_is_the_gradient_of_one_sample_alone(tiny_llama, lm_batch) -> None:
    got = per_sample_grads(tiny_llama, lm_batch, strategy="loop", params=["lm_head"])
    tiny_llama.eval()
    n = int(lm_batch["attention_mask"][2].sum())
    logits = tiny_llama(input_ids=lm_batch["input_ids"][2:3, :n]).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits, lm_batch["labels"][2, 1:n])
    (expected,) = torch.autograd.grad(loss, [tiny_llama.lm_head.weight])
    tiny_llama.train()
    assert _rel(got.grads["lm_head.weight"][2], expected) < 1e-6


def test_vmap_switches_sdpa_to_eager_and_back(llama_builder, lm_batch) -> None:
    model = llama_builder(attn="sdpa")
    vmap = per_sample_grads(model, lm_batch, strategy="vmap", params=["layers.1"])
    assert model.config._attn_implementation == "sdpa"
    loop = per_sample_grads(model, lm_batch, strategy="loop", params=["layers.1"])
    _assert_rows_close(vmap, loop)


def test_lora_vmap_equals_loop(lora_llama, lm_batch) -> None:
    names = [n for n, _ in select_parameters(lora_llama, "lora")]
    assert names == [n for n, _ in select_parameters(lora_llama, "trainable")]
    assert names[0] == "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    loop = per_sample_grads(lora_llama, lm_batch, strategy="loop", params="lora")
    vmap = per_sample_grads(lora_llama, lm_batch, strategy="vmap", params="lora")
    # per layer: q_proj A 4x32, B 32x4; v_proj A 4x32, B 16x4 (2 kv heads of 8)
    assert len(loop.names) == 8 and loop.num_params == 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4)
    _assert_rows_close(vmap, loop)
    assert float(loop.flat().abs().sum()) > 0


def test_hooks_equal_loop_for_linear_layers(tiny_llama, lm_batch, lora_llama) -> None:
    loop = per_sample_grads(tiny_llama, lm_batch, strategy="loop", params=["_proj", "lm_head"])
    hooks = per_sample_grads(tiny_llama, lm_batch, strategy="hooks", params=["_proj", "lm_head"])
    _assert_rows_close(hooks, loop)
    with pytest.raises(GradStrategyError, match="embed_tokens"):
        per_sample_grads(tiny_llama, lm_batch, strategy="hooks")
    # LoRA: the scaling alpha/r is inside delta
    loop = per_sample_grads(lora_llama, lm_batch, strategy="loop", params="lora")
    hooks = per_sample_grads(lora_llama, lm_batch, strategy="hooks", params="lora")
    _assert_rows_close(hooks, loop)


@pytest.mark.parametrize(
    "module", ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.k_proj"]
)
def test_factorized_equals_kronecker_projection_of_exact_gradient(
    tiny_llama, lm_batch, module
) -> None:
    exact = per_sample_grads(tiny_llama, lm_batch, strategy="loop", params=["_proj"])
    fz = factorized_grads(tiny_llama, lm_batch, params=["_proj"], k_in=8, k_out=12, seed=7)
    assert list(fz.modules) == sorted(fz.modules)
    pos = fz.modules.index(module)
    offset = sum(a * b for a, b in fz.dims[:pos])
    k_o, k_i = fz.dims[pos]
    g = exact.grads[module + ".weight"]  # [B, out, in]
    n_out, n_in = g.shape[1:]
    p_in = factor_matrix(7, module, "in", n_in, 8)
    p_out = factor_matrix(7, module, "out", n_out, 12)
    p_in = torch.eye(n_in) if p_in is None else p_in
    p_out = torch.eye(n_out) if p_out is None else p_out
    assert (k_o, k_i) == (p_out.shape[0], p_in.shape[0])
    kron = torch.kron(p_out, p_in)  # (P_o ⊗ P_i) vec_row(G)
    expected = g.reshape(g.shape[0], -1) @ kron.T
    got = fz.values[:, offset : offset + k_o * k_i]
    for i in range(g.shape[0]):
        assert _rel(got[i], expected[i]) < 1e-5
    assert tiny_llama.training


def test_factorized_lora_identity_sides(lora_llama, lm_batch) -> None:
    fz = factorized_grads(lora_llama, lm_batch, params="lora", k_in=16, k_out=16)
    dims = dict(zip(fz.modules, fz.dims, strict=True))
    # lora_A: r x 32 -> output side r=4 <= 16 is the identity; lora_B: 32 x r -> input identity
    assert dims["model.layers.0.self_attn.q_proj.lora_A.default"] == (4, 16)
    assert dims["model.layers.0.self_attn.q_proj.lora_B.default"] == (16, 4)
    with pytest.raises(GradStrategyError, match="not"):
        factorized_grads(lora_llama, lm_batch, params="all")


@pytest.mark.parametrize("strategy", ["vmap", "loop", "hooks", "factorized"])
def test_a_row_is_its_own_sample_gradient(tiny_llama, batch_factory, strategy) -> None:
    a = batch_factory(seed=3)
    b = batch_factory(seed=4)
    for k in a:  # same sample 0, different companions
        b[k][0] = a[k][0]

    def run(batch):
        if strategy == "factorized":
            return factorized_grads(tiny_llama, batch, params=["_proj"]).values
        return per_sample_grads(tiny_llama, batch, strategy=strategy, params=["_proj"]).flat()

    ga, gb = run(a), run(b)
    assert _rel(ga[0], gb[0]) < 1e-5
    assert _rel(ga[1], gb[1]) > 1e-2


@pytest.mark.parametrize("strategy", ["vmap", "loop", "hooks", "factorized"])
def test_padding_does_not_change_a_gradient(tiny_llama, lm_batch, strategy) -> None:
    def run(batch):
        if strategy == "factorized":
            return factorized_grads(tiny_llama, batch, params=["_proj"]).values
        return per_sample_grads(tiny_llama, batch, strategy=strategy, params=["_proj"]).flat()

    base = run(lm_batch)
    wide = {
        k: torch.nn.functional.pad(v, (0, 5), value=-100 if k == "labels" else 0)
        for k, v in lm_batch.items()
    }
    order = torch.argsort(wide["attention_mask"].to(torch.int8), dim=1, stable=True)
    left = {k: v.gather(1, order) for k, v in wide.items()}
    for other in (run(wide), run(left)):
        for i in range(base.shape[0]):
            assert _rel(other[i], base[i]) < 1e-5


def test_invalid_sample_is_nan_and_masked(tiny_llama, lm_batch) -> None:
    lm_batch["labels"][1] = -100
    got = per_sample_grads(tiny_llama, lm_batch, strategy="vmap", params=["lm_head"])
    assert got.valid.tolist() == [True, False, True, True]
    flat = got.flat()
    assert torch.isnan(flat[1]).all() and torch.isfinite(flat[[0, 2, 3]]).all()


def test_auto_falls_back_to_loop_once_with_a_warning(
    tiny_llama, lm_batch, monkeypatch, caplog
) -> None:
    import dataflex_ops.grads as grads_mod

    def broken(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(grads_mod, "_grads_vmap", broken)
    with caplog.at_level(logging.WARNING, logger="dataflex_ops.grads"):
        got = per_sample_grads(tiny_llama, lm_batch, strategy="auto", params=["lm_head"])
    assert got.strategy == "loop" and "falling back to loop" in caplog.text
    with pytest.raises(GradStrategyError, match="no batching rule"):
        per_sample_grads(
            tiny_llama, lm_batch, strategy="auto", params=["lm_head"], strict_strategy=True
        )
    with pytest.raises(GradStrategyError, match="loop"):
        per_sample_grads(tiny_llama, lm_batch, strategy="vmap", params=["lm_head"])


def test_auto_uses_checked_vmap(tiny_llama, lm_batch) -> None:
    got = per_sample_grads(tiny_llama, lm_batch, strategy="auto", params=["layers.0"])
    assert got.strategy == "vmap"


def test_parameter_filter_errors(tiny_llama, lm_batch) -> None:
    with pytest.raises(ValueError, match="matches no parameter"):
        per_sample_grads(tiny_llama, lm_batch, params="lora")


def test_featurizer_projects_and_normalises(tiny_llama, lm_batch) -> None:
    feat = PerSampleGrad(
        {
            "strategy": "auto",
            "params": ["layers.1"],
            "projector": {"proj_dim": 64, "projector": "rademacher"},
            "normalize": True,
        }
    )
    out = feat(tiny_llama, lm_batch)
    assert out["values"].shape == (4, 64) and out["strategy"] == "vmap"
    torch.testing.assert_close(out["values"].norm(dim=1), torch.ones(4))
    assert out["projector"]["proj_dim"] == 64 and len(out["param_hash"]) == 64
    again = feat(tiny_llama, lm_batch)  # cached projector: identical result
    torch.testing.assert_close(again["values"], out["values"])
    raw = PerSampleGrad({"params": ["layers.1"], "strategy": "loop"})(tiny_llama, lm_batch)
    direct = feat.projector.project(
        per_sample_grads(tiny_llama, lm_batch, params=["layers.1"]).grads
    )
    torch.testing.assert_close(
        out["values"], torch.nn.functional.normalize(direct, dim=1), atol=1e-5, rtol=1e-5
    )
    assert raw["values"].shape[1] == sum(
        p.numel() for n, p in tiny_llama.named_parameters() if "layers.1" in n
    )


def test_featurizer_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        PerSampleGrad({"strategi": "loop"})
    with pytest.raises(ConfigError, match="factorized"):
        PerSampleGrad({"strategy": "factorized", "gradient_type": "adam"})
    assert PerSampleGrad({"official_compat": True}).config.adam_variant == "official"
    both = PerSampleGrad(
        {"official_compat": True, "adam_variant": "paper", "projector": {"proj_dim": 8}}
    )
    assert both.config.adam_variant == "paper"
    assert both.config.projector.projection_seeding == "trak_basic"
    assert both.config.projector.projection_input_dtype == "float16"
