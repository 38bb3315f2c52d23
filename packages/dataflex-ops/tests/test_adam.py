"""Adam preconditioning (spec §1.4) and HF Trainer optimizer-state mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dataflex_core import ConfigError, DataError
from dataflex_ops import (
    AdamMoments,
    MissingMomentError,
    PerSampleGrad,
    adam_precondition,
    checkpoint_lr_weights,
    combine_checkpoints,
    load_trainer_moments,
    per_sample_grads,
    precondition_grads,
    trainer_parameter_groups,
)
from dataflex_ops.adam import normalize_checkpoint_weights


def test_spec_example_paper_and_official() -> None:
    g = torch.tensor([2.0, 2e-8])
    zero = torch.zeros(2)
    paper = adam_precondition(g, zero, zero, 0, variant="paper")
    official = adam_precondition(g, zero, zero, 0, variant="official")
    assert paper.tolist() == pytest.approx([0.999999995, 0.666667], abs=1e-6)
    assert official.tolist() == pytest.approx([3.162274, 2.0e-5], rel=1e-5)
    norm = torch.nn.functional.normalize
    assert norm(paper, dim=0).tolist() == pytest.approx([0.832050, 0.554700], abs=1e-6)
    assert norm(official, dim=0).tolist() == pytest.approx([1.0, 6.3e-6], abs=1e-7)


@pytest.mark.parametrize(
    ("variant", "gamma", "normalised"),
    [
        ("paper", [0.999999995, 0.666667], [0.832050, 0.554700]),
        ("official", [3.162274, 2.0e-5], [1.000000, 6.3e-6]),
    ],
)
def test_spec_example_through_precondition_grads(variant, gamma, normalised) -> None:
    """§1.4 example on the featurizer's path: moments looked up by name, β/ε from the group."""
    moments = AdamMoments(
        {"w": torch.zeros(2)},
        {"w": torch.zeros(2)},
        {"w": 0},
        betas={"w": (0.9, 0.999)},
        eps={"w": 1e-8},
    )
    got = precondition_grads({"w": torch.tensor([[2.0, 2e-8]])}, moments, variant=variant)["w"][0]
    assert got.tolist() == pytest.approx(gamma, rel=1e-5)
    unit = torch.nn.functional.normalize(got, dim=0)
    assert unit.tolist() == pytest.approx(normalised, abs=1e-6 if variant == "paper" else 1e-7)


def test_paper_variant_uses_bias_correction_with_tau_t_plus_1() -> None:
    g, m, v = torch.tensor([[0.5]]), torch.tensor([0.2]), torch.tensor([0.01])
    b1, b2, eps, t = 0.8, 0.99, 1e-3, 4
    m1, v1 = b1 * 0.2 + (1 - b1) * 0.5, b2 * 0.01 + (1 - b2) * 0.25
    expected = (m1 / (1 - b1 ** (t + 1))) / (math.sqrt(v1 / (1 - b2 ** (t + 1))) + eps)
    got = adam_precondition(g, m, v, t, betas=(b1, b2), eps=eps)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def _moments(names_shapes: dict[str, tuple[int, ...]]) -> AdamMoments:
    out = AdamMoments({}, {}, {})
    for i, (n, shape) in enumerate(names_shapes.items()):
        out.exp_avg[n] = torch.full(shape, 0.1 * (i + 1))
        out.exp_avg_sq[n] = torch.full(shape, 0.01 * (i + 1))
        out.step[n] = 3
        out.betas[n] = (0.5, 0.9)
        out.eps[n] = 1e-3
    return out


def test_precondition_grads_by_name_and_overrides() -> None:
    grads = {"a": torch.ones(2, 3), "b": torch.ones(2, 2, 2)}
    moments = _moments({"a": (3,), "b": (2, 2)})
    got = precondition_grads(grads, moments)
    expected = adam_precondition(
        grads["b"], moments.exp_avg["b"], moments.exp_avg_sq["b"], 3, betas=(0.5, 0.9), eps=1e-3
    )
    torch.testing.assert_close(got["b"], expected)
    over = precondition_grads(grads, moments, betas=(0.9, 0.999), eps=1e-8)
    assert not torch.allclose(over["a"], got["a"])
    official = precondition_grads(grads, moments, variant="official")
    torch.testing.assert_close(
        official["a"],
        adam_precondition(
            grads["a"], moments.exp_avg["a"], moments.exp_avg_sq["a"], 3, variant="official"
        ),
    )


def test_missing_moment_and_memory_limit_are_errors() -> None:
    grads = {"a": torch.ones(2, 3), "missing.weight": torch.ones(2, 1)}
    with pytest.raises(MissingMomentError, match="missing.weight"):
        precondition_grads(grads, _moments({"a": (3,)}))
    with pytest.raises(DataError, match="adam_feature_memory_limit"):
        precondition_grads({"a": torch.ones(2, 3)}, _moments({"a": (3,)}), memory_limit=35)
    with pytest.raises(DataError, match="shape"):
        precondition_grads({"a": torch.ones(2, 4)}, _moments({"a": (3,)}))


def test_checkpoint_weights_and_less_example_c() -> None:
    """Two checkpoints weighted [3, 1]: Inf = [0.75, 0.70] (spec §2.5 example c)."""
    assert normalize_checkpoint_weights([3, 1]).tolist() == [0.75, 0.25]
    train = [np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([[0.0, 1.0], [1.0, 0.0]])]
    target = [np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])]
    scores = combine_checkpoints(train, [3, 1]) @ combine_checkpoints(target, [3, 1]).T
    assert scores[:, 0].tolist() == pytest.approx([0.75, 0.70], abs=1e-6)
    history = [
        {"step": 1, "learning_rate": 4.0},
        {"step": 2, "learning_rate": 2.0},
        {"step": 2, "loss": 1.0},
        {"step": 3, "learning_rate": 1.0},
    ]
    assert checkpoint_lr_weights([2, 3], history).tolist() == pytest.approx([0.75, 0.25])
    with pytest.raises(DataError, match="no learning rate"):
        checkpoint_lr_weights([2, 3, 5], history)
    with pytest.raises(DataError, match="ascending"):
        checkpoint_lr_weights([3, 2], history)
    with pytest.raises(ConfigError):
        normalize_checkpoint_weights([0, 0])


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 8, length: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i], "attention_mask": torch.ones(12)}


@pytest.fixture(scope="module")
def trained(llama_builder, tmp_path_factory):
    """A real transformers.Trainer run of 2 steps that saves optimizer.pt at step 2."""
    pytest.importorskip("accelerate")  # transformers.Trainer needs it; not an ops dependency
    import transformers

    model = llama_builder(seed=2)
    model.model.embed_tokens.weight.requires_grad_(False)  # frozen: in no group
    out = tmp_path_factory.mktemp("trainer")
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        weight_decay=0.1,
        warmup_steps=1,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Rows())
    trainer.train()
    return trainer, out / "checkpoint-2"


def test_trainer_optimizer_pt_maps_to_parameter_names(trained) -> None:
    trainer, ckpt = trained
    model = trainer.model
    groups = trainer_parameter_groups(model)
    assert "model.layers.0.input_layernorm.weight" in groups[1]  # no-decay group
    assert "model.layers.0.self_attn.q_proj.weight" in groups[0]
    assert "model.embed_tokens.weight" not in groups[0] + groups[1]
    loaded = load_trainer_moments(ckpt, model)
    live = AdamMoments.from_optimizer(trainer.optimizer, model)
    assert loaded.names == groups[0] + groups[1]
    assert set(loaded.names) == set(live.names)
    for name in live.names:
        torch.testing.assert_close(loaded.exp_avg[name], live.exp_avg[name])
        torch.testing.assert_close(loaded.exp_avg_sq[name], live.exp_avg_sq[name])
        assert loaded.step[name] == live.step[name] == 2
        assert loaded.betas[name] == (0.9, 0.999) and loaded.eps[name] == 1e-8
    assert loaded.lr[groups[0][0]] == pytest.approx(trainer.optimizer.param_groups[0]["lr"])
    # a model with other trainable parameters does not fit the saved groups
    model.model.norm.weight.requires_grad_(False)
    try:
        with pytest.raises(DataError, match="param groups"):
            load_trainer_moments(ckpt, model)
    finally:
        model.model.norm.weight.requires_grad_(True)


def test_trainer_state_gives_checkpoint_weights(trained) -> None:
    trainer, ckpt = trained
    lrs = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    w = checkpoint_lr_weights([1, 2], ckpt)
    assert w.tolist() == pytest.approx([lrs[0] / sum(lrs), lrs[1] / sum(lrs)])


def test_adam_featurizer_from_checkpoint(trained, lm_batch) -> None:
    trainer, ckpt = trained
    model = trainer.model
    feat = PerSampleGrad(
        {"gradient_type": "adam", "adam_checkpoint": str(ckpt), "params": ["layers.1.mlp"]}
    )
    out = feat(model, lm_batch)
    grads = per_sample_grads(model, lm_batch, params=["layers.1.mlp"])
    expected = precondition_grads(grads.grads, load_trainer_moments(ckpt, model))
    flat = torch.cat([v.reshape(4, -1) for v in expected.values()], dim=1)
    torch.testing.assert_close(out["values"], flat, atol=1e-5, rtol=1e-5)
    with pytest.raises(MissingMomentError, match="adam_checkpoint"):
        PerSampleGrad({"gradient_type": "adam"})(model, lm_batch)
