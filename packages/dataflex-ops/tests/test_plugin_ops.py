"""Registration and the featurizer capability hooks of dataflex-ops."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from dataflex_core import ConfigError, Registry
from dataflex_ops import DenseProjector, Embedding, PerSampleGrad, SparseProjector

NAMES = [
    "per_sample_loss",
    "embedding",
    "per_sample_grad",
    "projector_dense",
    "projector_sparse",
    "generation",
    "sequence_logprob",
]


def test_featurizers_are_registered(fresh_plugin_manager) -> None:
    registry = Registry(fresh_plugin_manager)
    assert set(NAMES) <= set(registry.names("featurizer"))
    assert isinstance(registry.create("featurizer", "embedding", pooling="last_token"), Embedding)
    grad = registry.create("featurizer", "per_sample_grad", strategy="loop")
    assert isinstance(grad, PerSampleGrad) and grad.config.strategy == "loop"
    dense = registry.create("featurizer", "projector_dense", proj_dim=16)
    sparse = registry.create("featurizer", "projector_sparse", proj_dim=16)
    assert isinstance(dense, DenseProjector) and dense.spec()["type"] == "rademacher"
    assert isinstance(sparse, SparseProjector) and sparse.spec()["type"] == "sjlt"


def test_make_featurizer_plain_and_zero3(fresh_plugin_manager, tiny_llama) -> None:
    hook = fresh_plugin_manager.hook.dataflex_make_featurizer
    feat = hook(model=tiny_llama, kind="per_sample_grad", context={"params": "all"})
    assert type(feat) is PerSampleGrad and feat.config.params == "all"
    from dataflex_ops.plugin import zero3_make_featurizer

    assert zero3_make_featurizer(model=tiny_llama, kind="embedding", context={}) is None
    assert hook(model=tiny_llama, kind="no_such_kind", context={}) is None
    marker = object()
    live = hook(model=tiny_llama, kind="per_sample_grad", context={"optimizer": marker})
    assert live.context.extras["optimizer"] is marker
    with pytest.raises(ConfigError, match="pooling"):
        hook(model=tiny_llama, kind="embedding", context={"poolin": "mean"})


def test_zero3_hook_answers_for_partitioned_parameters(tiny_llama) -> None:
    from dataflex_ops.distributed import Zero3Embedding, Zero3PerSampleGrad
    from dataflex_ops.plugin import zero3_make_featurizer

    model = torch.nn.Linear(2, 2)
    for p in model.parameters():  # what DeepSpeed ZeRO-3 tags its parameters with
        p.ds_id, p.ds_status = 0, "NOT_AVAILABLE"
    assert type(zero3_make_featurizer(model=model, kind="embedding", context={})) is Zero3Embedding
    grad = zero3_make_featurizer(model=model, kind="per_sample_grad", context={})
    assert type(grad) is Zero3PerSampleGrad and grad._strategy == "loop"
    with pytest.raises(ConfigError, match="vmap"):
        zero3_make_featurizer(model=model, kind="per_sample_grad", context={"strategy": "vmap"})
    assert zero3_make_featurizer(model=object(), kind="embedding", context={}) is None


def test_compute_features_embedding_and_grads(fresh_plugin_manager, tiny_llama, lm_batch) -> None:
    hook = fresh_plugin_manager.hook.dataflex_compute_features
    emb = hook(model=tiny_llama, batch=lm_batch, kind="embedding", options={"pooling": "mean"})
    assert emb["values"].shape == (4, 32) and emb["valid"].all()
    opts = {"params": ["lm_head"], "projector": {"proj_dim": 32, "projector": "sjlt"}}
    got = hook(model=tiny_llama, batch=lm_batch, kind="per_sample_grad", options=opts)
    assert got["values"].shape == (4, 32) and got["projector"]["type"] == "sjlt"
    again = hook(model=tiny_llama, batch=lm_batch, kind="per_sample_grad", options=opts)
    torch.testing.assert_close(again["values"], got["values"])
    with pytest.raises(ConfigError, match="did you mean 'params'"):
        hook(model=tiny_llama, batch=lm_batch, kind="per_sample_grad", options={"param": "all"})


def test_plugin_import_and_discovery_do_not_import_torch() -> None:
    code = (
        "import sys, dataflex_ops, dataflex_ops.plugin as p\n"
        f"assert [s.name for s in p.dataflex_register_featurizers()] == {NAMES!r}\n"
        "assert p.zero3_make_featurizer(model=object(), kind='embedding', context={}) is None\n"
        "assert 'torch' not in sys.modules, 'the dataflex_ops plugin imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
