"""The weighting controller: per-sample weights inside ``compute_loss`` (spec §4.0, §5.3).

For ``s < warmup_step`` the trainer's standard loss runs unchanged. From ``warmup_step`` on, the
micro-batch's per-sample token-mean losses ``l_i`` (with grad, from the same forward pass) go to
the weighter together with the gathered losses of the global micro-batch ``B_mu`` (all ranks,
padded and masked), and the weighter's objective share ``J_r`` is scaled so the gradient the
optimizer applies is exactly ``grad J`` with ``J = (1/GA) sum_mu J_mu``:

* DDP and DeepSpeed average gradients over ranks, so ``J_r`` is multiplied by the world size W;
* the trainer divides by GA itself unless the model takes ``num_items_in_batch``; we divide by
  GA exactly when it does not.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from dataflex_core import (
    ComponentContext,
    StateError,
    WeightFeedback,
    append_jsonl,
    atomic_write_json,
    get_plugin_manager,
    get_registry,
    truncate_jsonl,
)

from dataflex_llamafactory.config import RunConfig
from dataflex_llamafactory.controller import (
    SCHEMA_VERSION,
    STATE_FILE,
    TIMING_FILE,
    _dist,
    append_timing,
    check_saved_state,
    read_state,
)

__all__ = ["WeightController"]

log = logging.getLogger(__name__)


def _gather_padded(x: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All-gather 1-D tensors of unequal length: (values, valid mask, this rank's offset)."""
    n = torch.tensor([x.numel()], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch.distributed.all_gather(sizes, n)
    sizes_l = [int(s.item()) for s in sizes]
    m = max(sizes_l)
    padded = torch.zeros(m, dtype=x.dtype, device=x.device)
    padded[: x.numel()] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    rank = torch.distributed.get_rank()
    values = torch.cat([p[:s] for p, s in zip(parts, sizes_l, strict=True)])
    offset = sum(sizes_l[:rank])
    return values, torch.ones(values.numel(), dtype=torch.bool, device=x.device), offset


class WeightController:
    """Runs one weighter inside ``compute_loss`` and records weight statistics."""

    sampler = None

    def __init__(self, run: RunConfig, *, domains: list[str], seed: int, output_dir: str, logging_steps: int) -> None:
        self.run = run
        self.cfg = run.dataflex
        self.domains = list(domains)
        self.seed = int(seed)
        self.output_dir = Path(output_dir)
        self.logging_steps = max(int(logging_steps), 1)
        self.rank, self.world_size = _dist()
        assert run.component is not None
        ctx = ComponentContext(
            name=run.component.entry,
            seed=self.seed,
            domains=tuple(self.domains),
            output_dir=str(self.output_dir),
            rank=self.rank,
            world_size=self.world_size,
        )
        self.weighter = get_registry().create("weighter", run.component.type, context=ctx, **run.component.params)
        self.log_path = self.output_dir / "dataflex" / "decisions.jsonl"
        self.timing_path = self.output_dir / "dataflex" / TIMING_FILE
        self.trainer: Any = None
        # Weighters that score samples by embeddings (ADAPT) need anchors from a target set and
        # the training forward's hidden states.
        self.needs_embeddings = hasattr(self.weighter, "set_anchors")
        self.target_dataset: Any = None
        self._reset_stats()

    # ------------------------------------------------------------------ embeddings (ADAPT)
    def _pool(self, hidden_states: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        from dataflex_weight.pooling import pool_embeddings

        cfg = self.weighter.config
        hidden = hidden_states[cfg.layer]
        return pool_embeddings(hidden.detach().float(), attention_mask, cfg.pooling)

    def embed_batch(self, outputs: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """Pooled, normalised, detached embeddings of the training micro-batch."""
        hs = outputs["hidden_states"] if isinstance(outputs, dict) else outputs.hidden_states
        if hs is None:
            raise StateError("the model returned no hidden_states; ADAPT needs them.")
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(inputs["input_ids"].shape, device=hs[-1].device, dtype=torch.long)
        return self._pool(hs, mask)

    @torch.no_grad()
    def refresh_anchors(self, model: Any, collator: Any, step: int) -> None:
        """Embed the target set (sharded over ranks, in lockstep) and hand the anchors over."""
        if not self.needs_embeddings or not self.weighter.needs_refresh(step):
            return
        if self.target_dataset is None or len(self.target_dataset) == 0:
            raise StateError(
                "the adapt weighter needs anchor examples: set `dataflex.target_dataset` to the "
                "dataset(s) of the target task (names in dataset_info.json)."
            )
        n, world, rank = len(self.target_dataset), self.world_size, self.rank
        per_rank = -(-n // world)
        mine = list(range(rank, n, world))
        real = len(mine)
        mine += [mine[-1] if mine else 0] * (per_rank - real)  # equal forwards on every rank (ZeRO-3)
        bs = self.weighter.config.anchor_batch_size
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        chunks = []
        try:
            for i in range(0, len(mine), bs):
                feats = [dict(self.target_dataset[j]) for j in mine[i : i + bs]]
                for f in feats:
                    f.pop("domain_id", None)
                batch = collator(feats)
                batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
                out = model(**batch, output_hidden_states=True)
                chunks.append(self.embed_batch(out, batch))
        finally:
            model.train(was_training)
        local = torch.cat(chunks)[:real] if chunks else torch.zeros(0, 1, device=device)
        if world > 1:
            dim = torch.tensor([local.shape[-1] if real else 0], device=device)
            torch.distributed.all_reduce(dim, op=torch.distributed.ReduceOp.MAX)
            flat, _, _ = _gather_padded(local.reshape(-1), world)
            local = flat.reshape(-1, int(dim.item()))
        self.weighter.set_anchors(local, step)

    # ------------------------------------------------------------------ loss
    def active(self, step: int) -> bool:
        """Weighting applies from ``warmup_step`` on (spec §4.0 burn-in)."""
        return step >= self.cfg.warmup_step

    def weighted_loss(
        self,
        *,
        step: int,
        losses: torch.Tensor,
        valid: torch.Tensor,
        tokens: torch.Tensor,
        domain_ids: torch.Tensor,
        trainer_divides_by_ga: bool,
        grad_accum: int,
        embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The scaled loss to return from ``compute_loss`` for one micro-batch."""
        t0 = time.perf_counter()
        det = torch.where(valid, losses.detach(), torch.full_like(losses.detach(), float("nan")))
        if self.world_size > 1:
            g_losses, _, offset = _gather_padded(det.float(), self.world_size)
            g_tokens, _, _ = _gather_padded(tokens.to(det.device).float(), self.world_size)
            g_valid = torch.isfinite(g_losses) & (g_tokens > 0)
        else:
            g_losses, g_tokens, offset = det.float(), tokens.float(), 0
            g_valid = valid & torch.isfinite(det)
        fb = WeightFeedback(
            step=step,
            losses=losses,
            token_counts=tokens,
            domains=domain_ids,
            valid=valid,
            global_losses=g_losses,
            global_valid=g_valid,
            global_token_counts=g_tokens,
            local_offset=offset,
            world_size=self.world_size,
            embeddings=embeddings,
        )
        weights = self.weighter.weigh(fb)
        if not isinstance(weights, torch.Tensor):
            weights = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device)
        weights = weights.detach()
        if weights.shape != losses.shape or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise StateError(
                f"weighter {self.run.component.entry!r} returned invalid weights "  # type: ignore[union-attr]
                f"(shape {tuple(weights.shape)}, need {tuple(losses.shape)}; finite and >= 0)."
            )
        if getattr(getattr(self.weighter, "config", None), "loss_normalization", None) == "weight_sum":
            total = torch.where(valid, weights, torch.zeros_like(weights)).sum().double()
            if self.world_size > 1:
                torch.distributed.all_reduce(total)
            j = self.weighter.objective(fb, weights, global_weight_sum=total)
        else:
            j = self.weighter.objective(fb, weights)
        self._record(weights, valid, domain_ids, losses)
        scale = float(self.world_size) / (1.0 if trainer_divides_by_ga else float(grad_accum))
        out = j * scale
        # Host wall time; on a GPU it covers the weigher's kernels up to the validity check's
        # existing sync (no sync is added for the measurement).
        self._weigh_s += time.perf_counter() - t0
        self._weigh_calls += 1
        return out

    # ------------------------------------------------------------------ statistics
    def _reset_stats(self) -> None:
        self._w: list[torch.Tensor] = []
        self._l: list[torch.Tensor] = []
        self._d: list[torch.Tensor] = []
        self._weigh_s = 0.0
        self._weigh_calls = 0
        self._domain_loss: list[float | None] | None = None

    def _record(
        self,
        weights: torch.Tensor,
        valid: torch.Tensor,
        domain_ids: torch.Tensor,
        losses: torch.Tensor,
    ) -> None:
        # One masked gather for weights and losses together: no extra host sync.
        pair = [weights.detach().float(), losses.detach().to(weights.device).float()]
        both = torch.stack(pair)[:, valid]
        self._w.append(both[0])
        self._l.append(both[1])
        self._d.append(domain_ids.to(weights.device)[valid])

    def stats(self) -> dict[str, Any] | None:
        """Min, max, mean, entropy and per-domain mean of the weights since the last log.

        Also keeps the per-domain mean per-sample loss of the same rows for the decision record
        (``feedback.domain_loss``), reduced in the same all-reduce.
        """
        if not self._w:
            return None
        w = torch.cat(self._w)
        d = torch.cat(self._d).long()
        k = len(self.domains)
        sums = torch.zeros(k, dtype=torch.float64, device=w.device).index_add_(0, d, w.double())
        counts = torch.zeros(k, dtype=torch.float64, device=w.device).index_add_(0, d, torch.ones_like(w, dtype=torch.float64))
        loss_sums = torch.zeros(k, dtype=torch.float64, device=w.device)
        loss_sums.index_add_(0, d, torch.cat(self._l).double())
        wd = w.double()
        lo, hi = wd.min().reshape(1), wd.max().reshape(1)
        # entropy of the normalised weights: H = log S - (sum w log w) / S, from two sums
        wlogw = torch.where(wd > 0, wd * wd.clamp_min(1e-300).log(), torch.zeros_like(wd)).sum().reshape(1)
        if self.world_size > 1:
            packed = torch.cat([sums, counts, wlogw, loss_sums])
            torch.distributed.all_reduce(packed)
            sums, counts, wlogw = packed[:k], packed[k : 2 * k], packed[2 * k : 2 * k + 1]
            loss_sums = packed[2 * k + 1 :]
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        self._domain_loss = [
            s / c if c > 0 and math.isfinite(s / c) else None
            for s, c in zip(loss_sums.cpu().tolist(), counts.cpu().tolist(), strict=True)
        ]
        total, n = float(sums.sum()), float(counts.sum())
        entropy = math.log(total) - float(wlogw) / total if total > 0 else 0.0
        return {
            "min": float(lo),
            "max": float(hi),
            "mean": total / n if n else 0.0,
            "entropy": entropy,
            "normalized_entropy": entropy / math.log(n) if n > 1 else 1.0,
            "by_domain": {
                name: (float(s / c) if float(c) > 0 else None)
                for name, s, c in zip(self.domains, sums, counts, strict=True)
            },
            "samples": int(n),
        }

    # ------------------------------------------------------------------ schedule
    def on_train_begin(self, step: int) -> None:
        """Nothing to decide before the first step (a fresh run drops an old timing log)."""
        if step == 0 and self.rank == 0:
            self.timing_path.unlink(missing_ok=True)

    def _take_interval(
        self,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, float]]:
        """Statistics, loss feedback and timing since the last log; resets them."""
        stats = self.stats()
        feedback = None
        if stats is not None and self._domain_loss is not None:
            feedback = {"domain_loss": self._domain_loss}
        timing = {"weigh_s": self._weigh_s, "calls": float(self._weigh_calls)}
        self._reset_stats()
        return stats, feedback, timing

    def on_step_end(self, step: int) -> None:
        """Log weight statistics every ``logging_steps`` optimizer steps."""
        if step % self.logging_steps != 0:
            return
        stats, feedback, timing = self._take_interval()
        if stats is None:
            return
        entry = self.run.component.entry  # type: ignore[union-attr]
        record: dict[str, Any] = {
            "step": step, "kind": "weighter", "component": entry, "decision": stats
        }
        if feedback is not None:
            record["feedback"] = feedback
        if self.rank == 0:
            append_jsonl(self.log_path, [record])
            append_timing(self.timing_path, step, "weighter", entry, timing)
        if self.trainer is not None:
            control = self.trainer.control
            should_log = control.should_log
            flat = {f"dataflex/w/{k}": v for k, v in stats.items() if k not in ("by_domain", "samples")}
            flat.update({f"dataflex/w/domain/{d}": v for d, v in stats["by_domain"].items() if v is not None})
            self.trainer.log(flat)
            control.should_log = should_log
        get_plugin_manager().hook.dataflex_on_update(step=step, kind="weighter", component=entry, decision=stats)

    def describe(self) -> dict[str, Any]:
        """Facts of the run for ``dataflex/effective_config.json``."""
        return {"domains": self.domains, "warmup_step": self.cfg.warmup_step, "world_size": self.world_size}

    def finish(self, output_dir: str | Path) -> None:
        """End of training: flush the last statistics and plot the weight distribution."""
        stats, feedback, timing = self._take_interval()
        if stats is not None and self.rank == 0:
            entry = self.run.component.entry  # type: ignore[union-attr]
            record: dict[str, Any] = {
                "step": -1,
                "kind": "weighter",
                "component": entry,
                "decision": stats,
                "note": "steps after the last logging step",
            }
            if feedback is not None:
                record["feedback"] = feedback
            append_jsonl(self.log_path, [record])
            append_timing(self.timing_path, -1, "weighter", entry, timing)
        if self.cfg.check_state_consistency:
            atomic_write_json(Path(output_dir) / "dataflex" / f"final_state_rank{self.rank}.json",
                              {"weighter": self.weighter.state_dict()})
        if self.rank == 0 and self.cfg.plot and self.log_path.exists():
            from dataflex_llamafactory.plotting import plot_weight_stats

            plot_weight_stats(self.log_path, Path(output_dir) / "dataflex" / "weights.png")

    # ------------------------------------------------------------------ state
    def state_dict(self, step: int) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "train_type": self.cfg.train_type,
            "component": {"entry": self.run.component.entry, "type": self.run.component.type},  # type: ignore[union-attr]
            "effective_config_hash": self.run.effective_hash(),
            "domain_names": self.domains,
            "seeds": {"run": self.seed},
            "step": step,
            "weighter": self.weighter.state_dict(),
        }

    def save(self, checkpoint_dir: str | Path, step: int) -> Path:
        path = Path(checkpoint_dir) / STATE_FILE
        state = self.state_dict(step)
        if self.rank == 0:
            atomic_write_json(path, state)
            get_plugin_manager().hook.dataflex_on_save(step=step, checkpoint_dir=str(checkpoint_dir), state=state)
        return path

    def load(self, checkpoint_dir: str | Path, step: int) -> None:
        self.load_state_dict(read_state(checkpoint_dir), step)

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        expect = {
            "schema_version": SCHEMA_VERSION,
            "train_type": self.cfg.train_type,
            "domain_names": self.domains,
            "effective_config_hash": self.run.effective_hash(),
            "step": step,
        }
        check_saved_state(state, expect, fix="resume with the same config and datasets.")
        self.weighter.load_state_dict(state["weighter"])
        if self.rank == 0 and self.log_path.exists():
            truncate_jsonl(self.log_path, step)
        if self.rank == 0:
            truncate_jsonl(self.timing_path, step)
