"""Bad input to the model-dependent ops (issue 4): each is a clear error naming the thing and
the fix.

* a model without the named layer or modules;
* a checkpoint whose optimizer state does not match the parameters;
* a projection dimension larger than the gradient;
* empty sequences / samples without a supervised token;
* a feature store from another model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataflex_core import ConfigError, DataError
from dataflex_ops import (
    AdamMoments,
    Embedding,
    MissingMomentError,
    PerSampleGrad,
    embed_batch,
    factorized_grads,
    load_trainer_moments,
    make_projector,
    model_identity,
    per_sample_grads,
    precondition_grads,
    trainer_parameter_groups,
)
from dataflex_ops.distributed import sharded_features
from dataflex_ops.grads import GradStrategyError
from dataflex_ops.loss import PerSampleLoss
from dataflex_ops.store import FeatureStore, FeatureStoreError, FeatureStoreWriter

STRATEGIES = ["vmap", "loop", "hooks"]

# --------------------------------------------------------------------------- missing modules


def test_a_pattern_naming_a_missing_module_is_an_error(tiny_llama, lm_batch) -> None:
    """A typo or another architecture must not silently shrink θ_f to the modules that exist."""
    with pytest.raises(ValueError, match=r"\['gate_projj'\] match no parameter.*Fix or drop"):
        per_sample_grads(tiny_llama, lm_batch, params=["q_proj", "gate_projj"], strategy="loop")
    with pytest.raises(ValueError, match="gate_projj"):
        PerSampleGrad({"params": ["lm_head", "gate_projj"]})(tiny_llama, lm_batch)
    with pytest.raises(ValueError, match="gate_projj"):
        factorized_grads(tiny_llama, lm_batch, params=["q_proj", "gate_projj"])


def test_lora_parameters_on_a_model_without_adapters(tiny_llama, lm_batch) -> None:
    with pytest.raises(ValueError, match=r"'lora' matches no parameter.*Use 'trainable'"):
        per_sample_grads(tiny_llama, lm_batch, params="lora")


def test_a_missing_hidden_layer_names_the_count(tiny_llama, lm_batch) -> None:
    with pytest.raises(ValueError, match=r"layer 9 is out of range.*3 hidden states.*use -1"):
        Embedding({"layer": 9})(tiny_llama, lm_batch)


def test_non_linear_parameters_for_hooks_and_factorized_are_named(tiny_llama, lm_batch) -> None:
    with pytest.raises(GradStrategyError, match=r"input_layernorm.*Exclude them"):
        per_sample_grads(tiny_llama, lm_batch, params=["layers.0"], strategy="hooks")
    with pytest.raises(GradStrategyError, match=r"norm.*Narrow the parameter filter"):
        factorized_grads(tiny_llama, lm_batch, params=["layers.0"])


# --------------------------------------------------------------------------- optimizer state


def _adam_state(model: torch.nn.Module, batch, optimizer_cls=torch.optim.AdamW) -> dict:
    """The state dict of an optimizer built like ``Trainer.create_optimizer`` after one step."""
    params = dict(model.named_parameters())
    decay, no_decay = trainer_parameter_groups(model)
    opt = optimizer_cls(
        [
            {"params": [params[n] for n in decay], "weight_decay": 0.1},
            {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    out.loss.backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    return opt.state_dict()


def test_optimizer_pt_of_another_model_is_refused(llama_builder, lm_batch, tmp_path: Path) -> None:
    model = llama_builder(seed=0)
    other = llama_builder(seed=0, intermediate_size=48)  # same parameter list, other shapes
    torch.save(_adam_state(other, lm_batch), tmp_path / "optimizer.pt")
    with pytest.raises(DataError, match=r"shape.*not belong to this model.*Pass the checkpoint"):
        load_trainer_moments(tmp_path, model)
    deeper = llama_builder(seed=0, num_hidden_layers=3)  # other parameter count
    torch.save(_adam_state(deeper, lm_batch), tmp_path / "optimizer.pt")
    with pytest.raises(DataError, match=r"param groups hold.*Load the model exactly as it was"):
        load_trainer_moments(tmp_path, model)
    torch.save(_adam_state(model, lm_batch), tmp_path / "optimizer.pt")  # the right one loads
    assert len(load_trainer_moments(tmp_path, model).names) == len(list(model.parameters()))


def test_name_keyed_optimizer_state_of_another_model(llama_builder, tmp_path: Path) -> None:
    model = llama_builder(seed=0)
    name = "model.layers.0.mlp.up_proj.weight"
    state = {"exp_avg": torch.zeros(3, 3), "exp_avg_sq": torch.zeros(3, 3), "step": 1}
    torch.save(
        {"state": {name: state}, "param_groups": [{"params": [name]}]},
        tmp_path / "optimizer.bin",
    )
    with pytest.raises(DataError, match=rf"{name} has shape \(3, 3\).*another model"):
        load_trainer_moments(tmp_path, model)
    torch.save(
        {"state": {"encoder.w": state}, "param_groups": [{"params": ["encoder.w"]}]},
        tmp_path / "optimizer.bin",
    )
    with pytest.raises(DataError, match="names none of the model's parameters"):
        load_trainer_moments(tmp_path, model)


def test_non_adam_optimizer_state_is_a_missing_moment(llama_builder, lm_batch, tmp_path) -> None:
    model = llama_builder(seed=0)
    sgd = _adam_state(model, lm_batch, lambda groups, lr: torch.optim.SGD(groups, lr, momentum=0.9))
    torch.save(sgd, tmp_path / "optimizer.pt")
    moments = load_trainer_moments(tmp_path, model)  # SGD momentum is no Adam moment
    grads = per_sample_grads(model, lm_batch, params=["lm_head"], strategy="loop")
    with pytest.raises(MissingMomentError, match=r"lm_head.weight.*non-Adam optimizer"):
        precondition_grads(grads.grads, moments)


def test_live_moments_of_another_model_are_refused(llama_builder, lm_batch) -> None:
    model = llama_builder(seed=0)
    moments = AdamMoments(
        {"lm_head.weight": torch.zeros(3, 3)}, {"lm_head.weight": torch.zeros(3, 3)}, {}
    )
    grads = per_sample_grads(model, lm_batch, params=["lm_head"], strategy="loop")
    with pytest.raises(DataError, match=r"lm_head.weight.*belong to another model"):
        precondition_grads(grads.grads, moments)


# --------------------------------------------------------------------------- projection dimension


@pytest.mark.parametrize(
    "cfg",
    [
        {"projector": "rademacher"},
        {"projector": "gaussian"},
        {"projector": "rademacher", "projection_seeding": "trak_basic"},
        {"projector": "sjlt"},
    ],
)
def test_projection_dimension_larger_than_the_gradient(cfg) -> None:
    proj = make_projector({**cfg, "proj_dim": 64})
    grads = {"a.weight": torch.ones(2, 5, 6), "a.bias": torch.ones(2, 5)}
    with pytest.raises(ConfigError, match=r"proj_dim = 64 is larger.*P = 35.*proj_dim <= 35"):
        proj.project(grads)
    assert proj.project({"w": torch.ones(2, 64)}).shape == (2, 64)  # P = d is allowed


def test_featurizer_projection_larger_than_the_parameter_set(tiny_llama, lm_batch) -> None:
    feat = PerSampleGrad({"params": ["lm_head"], "projector": {"proj_dim": 4096}})
    with pytest.raises(ConfigError, match=r"proj_dim = 4096.*P = 2,048.*lm_head.weight"):
        feat(tiny_llama, lm_batch)


# --------------------------------------------------------------------------- empty sequences


def _empty(batch: dict[str, torch.Tensor], rows: bool) -> dict[str, torch.Tensor]:
    return {k: (v[:0] if rows else v[:, :0]) for k, v in batch.items()}


@pytest.mark.parametrize("strategy", [*STRATEGIES, "factorized", "embedding", "loss"])
def test_empty_sequences_and_empty_batches(tiny_llama, lm_batch, strategy: str) -> None:
    def run(batch):
        if strategy == "factorized":
            return factorized_grads(tiny_llama, batch, params=["_proj"])
        if strategy == "embedding":
            return embed_batch(tiny_llama, batch)
        if strategy == "loss":
            return PerSampleLoss()(tiny_llama, batch)
        return per_sample_grads(tiny_llama, batch, params=["q_proj"], strategy=strategy)

    with pytest.raises(DataError, match=r"4 empty sequences.*\[4, 0\].*drop empty examples"):
        run(_empty(lm_batch, rows=False))
    with pytest.raises(DataError, match=r"no samples.*\[0, 10\]"):
        run(_empty(lm_batch, rows=True))


@pytest.mark.parametrize("strategy", [*STRATEGIES, "factorized"])
def test_rows_without_a_supervised_token_are_masked_not_fatal(
    tiny_llama, lm_batch, strategy: str
) -> None:
    """Spec §1.1/§1.3: such a row is invalid (NaN, valid False); the other rows are unchanged.

    Covers a row whose labels are all -100 and a row with a single real token (nothing to
    predict), which used to crash ``loop``/``hooks`` with "does not require grad".
    """
    batch = {k: v.clone() for k, v in lm_batch.items()}
    batch["labels"][1] = -100
    batch["attention_mask"][3, 1:] = 0
    batch["labels"][3, 1:] = -100

    def run(b):
        if strategy == "factorized":
            return factorized_grads(tiny_llama, b, params=["_proj"]).values
        return per_sample_grads(tiny_llama, b, params=["_proj"], strategy=strategy).flat()

    out = run(batch)
    assert torch.isnan(out[1]).all() and torch.isnan(out[3]).all()
    alone = run({k: v[[0, 2]] for k, v in batch.items()})
    torch.testing.assert_close(out[[0, 2]], alone, rtol=1e-4, atol=1e-6)
    # a batch in which no row can be differentiated at all
    none = {k: v[[1, 3]] for k, v in batch.items()}
    assert torch.isnan(run(none)).all()
    single = {k: v[[3]] for k, v in batch.items()}
    assert torch.isnan(run(single)).all()


def test_a_dataset_without_any_supervised_token_is_an_error(tiny_llama) -> None:
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100] * 4} for _ in range(3)]
    feat = PerSampleGrad({"params": ["lm_head"], "strategy": "loop"})
    with pytest.raises(DataError, match=r"none of the 3 samples.*supervised token.*label masking"):
        sharded_features(feat, tiny_llama, rows, batch_size=2, progress=False)


# --------------------------------------------------------------------------- feature store


def test_feature_store_of_another_model_is_refused(llama_builder, tmp_path: Path) -> None:
    ours, theirs = llama_builder(seed=0), llama_builder(seed=0, intermediate_size=48)
    config = {"kind": "per_sample_grad", "projector": {"proj_dim": 8, "seed": 0}}
    identity = {"model": model_identity(theirs, run_id="r", step=3), "data": "d", "config": config}
    writer = FeatureStoreWriter(tmp_path, identity, num_rows=2, row_shape=8)
    writer.write(0, torch.zeros(2, 8).numpy())
    path = writer.close().path
    with pytest.raises(FeatureStoreError, match=r"another model: model.param_hash .*recompute"):
        FeatureStore.open(path, expect={"model": model_identity(ours, run_id="r", step=3)})
    store = FeatureStore.open(path, expect={"model": model_identity(theirs, run_id="r", step=3)})
    with pytest.raises(FeatureStoreError, match=r"model: model.step is 3 in the store but 4"):
        store.check_identity({"model": model_identity(theirs, run_id="r", step=4)})
    other_projector = {**config, "projector": {"proj_dim": 8, "seed": 1}}
    with pytest.raises(FeatureStoreError, match=r"config.projector.seed is 0 in the store but 1"):
        store.check_identity({"config": other_projector})
    store.check_identity({"config": config})  # data is not compared unless asked
