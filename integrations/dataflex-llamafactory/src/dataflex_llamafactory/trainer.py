"""Trainer subclasses: they override only ``compute_loss`` and the train sampler.

``compute_loss`` strips the side tensor ``domain_id`` (added by :class:`DomainCollator`) before
the model sees the batch, runs LLaMA-Factory's own loss, and records per-sample losses for the
controller. ``_get_train_sampler`` returns the controller's mixture sampler, which reads the
current decision when each window starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from dataflex_core import DataError
from dataflex_ops.loss import per_sample_loss
from llamafactory.train.pt.trainer import CustomTrainer
from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

__all__ = ["doremi_objective", "DomainCollator", "DataflexTrainerMixin", "DataflexPtTrainer", "DataflexSftTrainer"]

DOMAIN_KEY = "domain_id"


class DomainCollator:
    """Wraps a collator: pops each feature's ``domain_id`` into a side tensor of the batch."""

    def __init__(self, inner: Callable[[Sequence[dict[str, Any]]], dict[str, Any]]) -> None:
        self.inner = inner

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        feats = [dict(f) for f in features]
        ids = [f.pop(DOMAIN_KEY, None) for f in feats]
        batch = self.inner(feats)
        if all(i is not None for i in ids):
            batch[DOMAIN_KEY] = torch.tensor(ids, dtype=torch.long)
        return batch

    def __getattr__(self, name: str) -> Any:  # collators carry attributes trainers read
        return getattr(self.inner, name)


def doremi_objective(token_losses: torch.Tensor, domain_ids: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_i v_d(i) sum_t m_it l_it``: a micro-batch's share of DoReMi's proxy objective.

    Args:
        token_losses: ``[B, T-1]`` masked token losses ``m * l`` (with grad).
        domain_ids: ``[B]`` domain of each row.
        v: ``[K]`` per-domain token weights from the mixer (``alpha_k / Z_k`` for the paper loss).
    """
    d = domain_ids.to(token_losses.device).long()
    return (v.to(token_losses.dtype)[d] * token_losses.sum(dim=1)).sum()


class DataflexTrainerMixin:
    """Adds the DataFlex sampler and per-sample feedback to a LLaMA-Factory trainer."""

    dataflex_controller: Any = None

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        controller = self.dataflex_controller
        if controller is not None and controller.sampler is not None:
            return controller.sampler
        return super()._get_train_sampler(*args, **kwargs)  # type: ignore[misc]

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        domain_ids = inputs.pop(DOMAIN_KEY, None)
        controller = self.dataflex_controller
        if controller is None or domain_ids is None or not model.training:
            return super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch, **kwargs
            )
        step = self.state.global_step  # type: ignore[attr-defined]
        labels = inputs.get("labels")
        if hasattr(controller, "weighted_loss") and controller.active(step):
            if labels is None:
                raise DataError("dynamic_weight needs `labels` in the batch to compute per-sample losses.")
            embed = getattr(controller, "needs_embeddings", False)
            if embed:
                controller.refresh_anchors(model, self.data_collator, step)  # type: ignore[attr-defined]
            forward = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**forward, output_hidden_states=True) if embed else model(**forward)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
            values, valid = per_sample_loss(logits, labels)
            tokens = (labels[:, 1:] != -100).sum(dim=1)
            divides = (
                not self.model_accepts_loss_kwargs or num_items_in_batch is None  # type: ignore[attr-defined]
            ) and self.compute_loss_func is None  # type: ignore[attr-defined]
            loss = controller.weighted_loss(
                step=step,
                losses=values,
                valid=valid,
                tokens=tokens,
                domain_ids=domain_ids,
                trainer_divides_by_ga=divides,
                grad_accum=self.args.gradient_accumulation_steps,  # type: ignore[attr-defined]
                embeddings=controller.embed_batch(outputs, inputs) if embed else None,
            )
            return (loss, outputs) if return_outputs else loss
        if getattr(controller, "doremi", False):
            return self._doremi_proxy_loss(model, inputs, domain_ids, labels, num_items_in_batch, return_outputs)
        loss, outputs = super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch, **kwargs
        )
        if hasattr(controller, "record"):
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
            if labels is not None and logits is not None:
                with torch.no_grad():
                    values, valid = per_sample_loss(logits.detach(), labels)
                    tokens = (labels[:, 1:] != -100).sum(dim=1)
                controller.record(domain_ids, torch.where(valid, values, torch.full_like(values, float("nan"))), tokens)
        return (loss, outputs) if return_outputs else loss


    def _doremi_proxy_loss(
        self, model: Any, inputs: dict[str, Any], domain_ids: torch.Tensor, labels: Any,
        num_items_in_batch: Any, return_outputs: bool,
    ) -> Any:
        """DoReMi's domain-weighted proxy loss (spec §3.3), with excess losses for the update.

        ``J = sum_t v_d(t) m_t l_t`` over the step's global batch, where ``v`` comes from the
        current alpha and the step's per-domain token counts ``Z`` (paper: ``v_k = a_k / Z_k``).
        This micro-batch contributes its own tokens' share; scaling by the world size (and by
        GA when the trainer divides by it) makes the applied gradient exactly ``grad J``.
        """
        controller = self.dataflex_controller
        if labels is None:
            raise DataError("the DoReMi proxy needs `labels` in the batch.")
        step = self.state.global_step  # type: ignore[attr-defined]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**forward)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        tok, valid = per_sample_loss(logits, labels, per_token=True)
        with torch.no_grad():
            ref = controller.reference_model(**forward)
            ref_logits = ref["logits"] if isinstance(ref, dict) else ref.logits
            ref_tok, _ = per_sample_loss(ref_logits, labels, per_token=True)
            excess = (tok.detach().float() - ref_tok.float()).clamp_min(0).sum(dim=1)  # per-token clip
            tokens = (labels[:, 1:] != -100).sum(dim=1)
            mean = tok.detach().sum(dim=1) / tokens.clamp_min(1)
        v = controller.proxy_token_weights(step, logits.device)
        j = doremi_objective(tok, domain_ids, v)
        divides = (
            not self.model_accepts_loss_kwargs or num_items_in_batch is None  # type: ignore[attr-defined]
        ) and self.compute_loss_func is None  # type: ignore[attr-defined]
        ga = self.args.gradient_accumulation_steps  # type: ignore[attr-defined]
        loss = j * controller.world_size * (ga if divides else 1)
        controller.record(
            domain_ids, torch.where(valid, mean, torch.full_like(mean, float("nan"))), tokens, excess
        )
        return (loss, outputs) if return_outputs else loss


class DataflexPtTrainer(DataflexTrainerMixin, CustomTrainer):
    """LLaMA-Factory's pre-training trainer with DataFlex sampling and feedback."""


class DataflexSftTrainer(DataflexTrainerMixin, CustomSeq2SeqTrainer):
    """LLaMA-Factory's SFT trainer with DataFlex sampling and feedback."""
