"""Loss-based sample reweighting in a Hugging Face ``Trainer`` (no LLaMA-Factory).

A ``Trainer`` subclass overrides only ``compute_loss``: from ``warmup_step`` on it computes the
per-sample token-mean losses ``l_i`` of the micro-batch from the same forward pass, asks the
``loss`` weighter of ``dataflex-weight`` for weights, and returns the weighted objective.

The gradient contract (docs/weighters/accumulation.md):

* ``objective`` is this rank's share ``J_r`` of the micro-batch objective ``J_mu``; it is
  multiplied by the world size to undo DDP's gradient averaging;
* the Trainer divides by gradient accumulation. Our ``compute_loss`` ignores
  ``num_items_in_batch``, so it sets ``model_accepts_loss_kwargs = False``, which makes the
  Trainer divide every micro-batch loss by the number of accumulated micro-batches;
* with several ranks, the weights are normalised over the global micro-batch: all-gather the
  losses (padded, with a validity mask) and pass ``global_losses``, ``global_valid`` and
  ``local_offset`` in the feedback (here: one process, so the local batch is the global one).

The model is a tiny ``LlamaForCausalLM`` built from a config (random weights, nothing is
downloaded) and the data are random tokens. Run it with
``python examples/standalone_weight_hf.py``; it takes a few seconds on a CPU.
"""

from __future__ import annotations

import math
import tempfile

import torch
import torch.nn.functional as F
from dataflex_core import WeightFeedback
from dataflex_weight import LossWeighter
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

VOCAB, SEQ, PAD = 64, 16, 0


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Token-mean causal-LM loss per sample (NaN and invalid without a supervised token)."""
    targets = labels[:, 1:]
    mask = targets != -100
    ce = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view_as(targets)
    counts = mask.sum(dim=1)
    sums = torch.where(mask, ce, torch.zeros_like(ce)).sum(dim=1)
    valid = counts > 0
    losses = torch.where(valid, sums / counts.clamp_min(1), torch.full_like(sums, math.nan))
    return losses, counts, valid


class WeightedTrainer(Trainer):
    """A ``Trainer`` whose ``compute_loss`` applies a DataFlex weighter after the burn-in."""

    def __init__(self, *args, weighter, warmup_step: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weighter = weighter
        self.warmup_step = warmup_step
        # compute_loss does not use num_items_in_batch: let the Trainer divide by GA.
        self.model_accepts_loss_kwargs = False
        self.weight_history: list[torch.Tensor] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = self.state.global_step
        if step < self.warmup_step:  # burn-in: the trainer's standard loss, unchanged
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)  # no labels: the model computes no loss of its own
        losses, counts, valid = per_sample_losses(outputs.logits, labels)
        feedback = WeightFeedback(step=step, losses=losses, token_counts=counts, valid=valid)
        weights = self.weighter.weigh(feedback)
        self.weight_history.append(weights)
        loss = self.weighter.objective(feedback, weights) * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def random_token_data(n: int, gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Sequences of random length, right-padded; the first 4 tokens are an unsupervised prompt."""
    rows = []
    for _ in range(n):
        length = int(torch.randint(6, SEQ + 1, (1,), generator=gen))
        ids = torch.full((SEQ,), PAD)
        ids[:length] = torch.randint(1, VOCAB, (length,), generator=gen)
        attention = (torch.arange(SEQ) < length).long()
        labels = torch.where(attention.bool(), ids, torch.full_like(ids, -100))
        labels[:4] = -100
        rows.append({"input_ids": ids, "attention_mask": attention, "labels": labels})
    return rows


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=5,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = WeightedTrainer(
            model=model,
            args=args,
            train_dataset=random_token_data(64, gen),
            weighter=LossWeighter({"strategy": "linupper", "temperature": 0.5}),
            warmup_step=1,
        )
        result = trainer.train()
    weights = torch.cat(trainer.weight_history)
    print(
        f"{len(trainer.weight_history)} weighted micro-batches; weights min {weights.min():.4f} "
        f"max {weights.max():.4f} mean {weights.mean():.4f}"
    )
    print(f"final training loss {result.training_loss:.4f}")
    assert math.isfinite(result.training_loss)


if __name__ == "__main__":
    main()
