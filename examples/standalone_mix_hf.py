"""Online data mixing in a Hugging Face ``Trainer`` (no LLaMA-Factory, no ``dataflex-cli``).

Three synthetic token domains are trained together; the ``odm`` mixer (Online Data Mixing,
arXiv 2312.02406) moves the sampling proportions toward the domains whose training loss is high:

* ``low``: tokens drawn uniformly from 0-19 (irreducible loss ln 20 ≈ 3.0);
* ``pattern``: the cycle 20, 22, ..., 34 repeated, with a random phase (learnable: its loss falls);
* ``high``: tokens drawn uniformly from 40-63 (irreducible loss ln 24 ≈ 3.2).

The wiring, all of it in this file:

* ``MixingTrainer`` overrides only ``_get_train_sampler`` and ``compute_loss``.
  ``_get_train_sampler`` returns a :class:`dataflex_mix.MixtureSampler` over the concatenated
  rows. The sampler cuts the run into windows and reads each window's proportions from
  ``MixState.proportions_for`` when the window's first row is drawn. ``compute_loss`` pops the
  side tensor ``domain_id``, computes per-sample token-mean losses from the same forward pass,
  adds per-domain sums to ``MixState``, and returns the ordinary token-mean loss.
* ``MixingCallback.on_step_end`` runs every ``UPDATE_STEP`` steps. It turns the sums into a
  :class:`dataflex_core.MixFeedback`, calls the mixer, and stores the decision for the window
  that starts at the **next** step.

Why the next step: the Trainer's data loader (accelerate) draws one micro-batch ahead. When
``on_step_end`` runs with ``state.global_step == s``, the first micro-batch of step ``s``
(0-based: the ``s+1``-th step) is already drawn. A decision made then can only shape steps
``s+1`` onward, so windows start at ``0`` and at ``u*UPDATE_STEP + 1``. If the loader ever asked
for a window before its decision existed, ``proportions_for`` would raise instead of silently
using a stale one.
``dataloader_num_workers`` must stay 0, since worker prefetching would draw further ahead.

The mixer is the paper's ODM: each micro-batch is one arm pull, so the sampler makes every
micro-batch domain-pure (``batch_composition="pure_micro_batch"``, from ``mixer.arm_unit``).

Run it from the repository root (a few seconds on a CPU)::

    python examples/standalone_mix_hf.py
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dataflex_core import ComponentContext, MixFeedback, create
from dataflex_mix import MixtureSampler
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

DOMAINS = ("low", "pattern", "high")
VOCAB, SEQ, ROWS_PER_DOMAIN = 64, 24, 200
BATCH, GRAD_ACCUM = 4, 2  # G = 8 rows per optimizer step, two micro-batches (arms) per step
STEPS, UPDATE_STEP, SEED = 40, 2, 0


# --------------------------------------------------------------------------- data
def make_domain(k: int, n: int, gen: torch.Generator) -> list[dict[str, Any]]:
    """``n`` rows of domain ``k``; every token is supervised (``labels == input_ids``)."""
    rows = []
    for _ in range(n):
        if k == 0:
            ids = torch.randint(0, 20, (SEQ,), generator=gen)
        elif k == 1:
            phase = int(torch.randint(0, 8, (1,), generator=gen))
            ids = 20 + (torch.arange(SEQ) + phase) % 8 * 2  # 20, 22, ..., 34, 20, ...
        else:
            ids = torch.randint(40, VOCAB, (SEQ,), generator=gen)
        rows.append({"input_ids": ids, "labels": ids.clone(), "domain_id": k})
    return rows


def collate(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``input_ids``/``labels``; ``domain_id`` becomes a side tensor the model never sees."""
    return {
        "input_ids": torch.stack([f["input_ids"] for f in features]),
        "labels": torch.stack([f["labels"] for f in features]),
        "domain_id": torch.tensor([f["domain_id"] for f in features], dtype=torch.long),
    }


# --------------------------------------------------------------------------- mixing state
class MixState:
    """The mixer, the window schedule, the decided proportions and the feedback being summed."""

    def __init__(self, mixer: Any, total_steps: int, update_step: int) -> None:
        self.mixer = mixer
        self.K = len(DOMAINS)
        self.update_step = update_step
        # A decision after step s (s = U, 2U, ...) applies from step s + 1: when on_step_end(s)
        # runs, the loader has already drawn the first micro-batch of step s.
        self.window_starts = [0] + [
            s + 1 for s in range(update_step, total_steps, update_step) if s + 1 < total_steps
        ]
        # Window 0 uses the decision at s = 0: the mixer's initial policy.
        self.window_props: dict[int, list[float]] = {0: list(mixer.proportions)}
        # Rows: loss_sum, token_count, sample_count; one column per domain.
        self.sums = torch.zeros(3, self.K, dtype=torch.float64)
        self.trained_rows = np.zeros(self.K, dtype=np.int64)
        self.last_losses = [0.0] * self.K

    def proportions_for(self, u: int) -> list[float]:
        if u not in self.window_props:
            raise RuntimeError(
                f"the loader asked for window {u} (from step {self.window_starts[u]}) before its "
                "decision was made; keep dataloader_num_workers=0 so it draws only one batch ahead."
            )
        return self.window_props[u]

    def record(self, domain_ids: torch.Tensor, losses: torch.Tensor, tokens: torch.Tensor) -> None:
        d = domain_ids.long().cpu()
        tok = tokens.double().cpu()
        self.sums[0].index_add_(0, d, losses.detach().double().cpu() * tok)
        self.sums[1].index_add_(0, d, tok)
        self.sums[2].index_add_(0, d, torch.ones_like(tok))
        self.trained_rows += np.bincount(d.numpy(), minlength=self.K)

    def decide(self, step: int) -> list[float]:
        """Feed the sums since the last update to the mixer; store the next window's decision."""
        loss_sum, token_count, sample_count = (x.tolist() for x in self.sums)
        feedback = MixFeedback(
            step=step, loss_sum=loss_sum, token_count=token_count, sample_count=sample_count
        )
        self.last_losses = (self.sums[0] / self.sums[1].clamp_min(1)).tolist()  # 0: not drawn
        self.sums.zero_()
        proportions = [float(p) for p in self.mixer.step(feedback).proportions]
        if step + 1 in self.window_starts:
            self.window_props[self.window_starts.index(step + 1)] = proportions
        return proportions


# --------------------------------------------------------------------------- trainer
def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token causal-LM losses ``[B, T-1]`` (0 where unsupervised) and tokens per sample."""
    targets = labels[:, 1:]
    ce = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view_as(targets)
    return ce, (targets != -100).sum(dim=1)


class MixingTrainer(Trainer):
    """Samples with the mixer's proportions and reports per-domain losses to it."""

    def __init__(self, *args: Any, mix: MixState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mix = mix
        # compute_loss ignores num_items_in_batch: let the Trainer divide by gradient accumulation.
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset: Any = None) -> MixtureSampler:
        mixer = self.mix.mixer
        composition = {
            "micro_batch": "pure_micro_batch",
            "global_batch": "pure_global_batch",
            "mixed": "mixed",
        }[getattr(mixer, "arm_unit", "mixed")]
        args = self.args
        return MixtureSampler(
            [ROWS_PER_DOMAIN] * len(DOMAINS),  # rows are concatenated domain by domain
            samples_per_step=args.per_device_train_batch_size * args.gradient_accumulation_steps,
            total_steps=args.max_steps,
            proportions_for=self.mix.proportions_for,
            window_starts=self.mix.window_starts,
            seed=args.seed,
            batch_composition=composition,
            micro_batch_size=args.per_device_train_batch_size,
            domain_names=DOMAINS,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        domain_ids = inputs.pop("domain_id")
        labels = inputs.pop("labels")
        outputs = model(**inputs)  # no labels: the model computes no loss of its own
        per_token, tokens = token_losses(outputs.logits, labels)
        loss = per_token.sum() / tokens.sum().clamp_min(1)
        if model.training:
            with torch.no_grad():
                means = per_token.detach().sum(dim=1) / tokens.clamp_min(1)
            self.mix.record(domain_ids, means, tokens)
        return (loss, outputs) if return_outputs else loss


class MixingCallback(TrainerCallback):
    """After every ``update_step``-th optimizer step: feedback -> mixer -> next window."""

    def __init__(self, mix: MixState) -> None:
        self.mix = mix

    def on_step_end(self, args, state, control, **kwargs):
        s = state.global_step  # optimizer steps completed
        if s % self.mix.update_step == 0 and s < args.max_steps:
            p = self.mix.decide(s)
            props = "  ".join(f"{x:7.3f}" for x in p)
            losses = " ".join(f"{x:4.2f}" for x in self.mix.last_losses)
            print(f"{s:4d}  {props}   from step {s + 1}; losses {losses}")


# --------------------------------------------------------------------------- main
def main() -> None:
    t0 = time.perf_counter()
    # The model is tiny: one thread is as fast, and much faster on a busy machine.
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(SEED)
    rows = [row for k in range(len(DOMAINS)) for row in make_domain(k, ROWS_PER_DOMAIN, gen)]
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
    )
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    mixer = create(
        "mixer",
        "odm",
        context=ComponentContext(domains=DOMAINS, seed=SEED, extras={"warmup_step": 0}),
    )
    mix = MixState(mixer, total_steps=STEPS, update_step=UPDATE_STEP)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=STEPS,
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=GRAD_ACCUM,
            learning_rate=3e-2,
            lr_scheduler_type="constant",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,  # dynamic mixing: no worker prefetch
            remove_unused_columns=False,  # keep domain_id for compute_loss
            seed=SEED,
        )
        trainer = MixingTrainer(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=collate,
            callbacks=[MixingCallback(mix)],
            mix=mix,
        )
        names = "  ".join(f"{d:>7}" for d in DOMAINS)
        print(f"step  {names}   proportions, then the token-mean loss per domain since the")
        print(f"{'':38}last update (0: no row of the domain was drawn)")
        result = trainer.train()
    final = dict(zip(DOMAINS, (round(float(p), 4) for p in mixer.proportions), strict=True))
    print(f"final training loss {result.training_loss:.4f}")
    print(f"rows trained per domain: {mix.trained_rows.tolist()}")
    print("final proportions:", final)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    assert math.isfinite(result.training_loss)


if __name__ == "__main__":
    main()
