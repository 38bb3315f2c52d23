"""The mixing controller: feedback in, proportions out, windows for the sampler, state on disk.

It lives between the trainer (which records per-sample losses in ``compute_loss``), the
callback (which calls :meth:`MixController.on_step_end` after every optimizer step) and the
sampler (which asks for the proportions of each window when it starts drawing it).

Timing. A decision made at completed step ``s`` uses the feedback of steps ``< s``. The data
loader draws one micro-batch ahead of training (accelerate prefetches), so when the callback
runs after step ``s``, rows of step ``s`` may already be drawn; the decision therefore shapes the
window that starts at step ``s + 1``. The decision at ``s = 0`` is made before anything is drawn
(``on_train_begin``) and shapes step 0 on. The lag is fixed and documented, so runs are exactly
reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    MixDecision,
    MixFeedback,
    StateError,
    append_jsonl,
    atomic_write_json,
    get_plugin_manager,
    get_registry,
    truncate_jsonl,
)
from dataflex_mix.sampler import MixtureSampler
from dataflex_ops.loss import per_sample_loss

from dataflex_llamafactory.config import RunConfig

__all__ = [
    "MixController",
    "STATE_FILE",
    "SCHEMA_VERSION",
    "TIMING_FILE",
    "read_state",
    "check_saved_state",
    "append_timing",
]

log = logging.getLogger(__name__)

STATE_FILE = "dataflex_state.json"
SCHEMA_VERSION = 1
#: Wall time of each DataFlex phase, one line per decision (``dataflex/timing.jsonl``). Kept
#: apart from ``decisions.jsonl`` so that log stays identical across kill-and-resume.
TIMING_FILE = "timing.jsonl"


def append_timing(
    path: Path, step: int, kind: str, component: str, timing: Mapping[str, float]
) -> None:
    """Append one ``{"step", "kind", "component", "timing"}`` line (seconds, rounded to µs)."""
    append_jsonl(
        path,
        [{"step": step, "kind": kind, "component": component,
          "timing": {k: round(float(v), 6) for k, v in timing.items()}}],
    )


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def read_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """``checkpoint_dir/dataflex_state.json``, with clear errors when it is missing or damaged."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise StateError(
            f"cannot resume from {str(checkpoint_dir)!r}: it has no {STATE_FILE}, so it was not "
            "written by a dataflex run with this train_type; start a fresh run or pick another checkpoint."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StateError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged.") from None


def check_saved_state(
    state: Mapping[str, Any],
    expect: Mapping[str, Any],
    fingerprint: str = "",
    fix: str = "resume with the same config, datasets and batch sizes.",
) -> None:
    """Raise :class:`StateError` unless ``state`` belongs to this run (``expect``, data fingerprint)."""
    for key, mine in expect.items():
        if state.get(key) != mine:
            raise StateError(
                f"the checkpoint's dataflex state has {key}={state.get(key)!r} but this run has "
                f"{mine!r}; {fix}"
            )
    if fingerprint and state.get("dataset_fingerprint") not in ("", fingerprint):
        raise StateError(
            "the training data changed since the checkpoint (fingerprint mismatch); resume "
            "with the same dataset files and preprocessing settings."
        )


def _state_hash(state: Any) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


class MixController:
    """Runs one mixer (or fixed proportions) inside a training run.

    Args:
        run: The parsed run config (its component entry names the mixer).
        domains: Domain names in config order.
        domain_sizes: Rows per domain in the concatenated training dataset.
        samples_per_step: Global batch ``G``.
        total_steps: Optimizer steps of the run.
        seed: The run seed.
        output_dir: The run's output folder.
        fingerprint: Content fingerprint of the training data (checked on resume).
    """

    def __init__(
        self,
        run: RunConfig,
        *,
        domains: Sequence[str],
        domain_sizes: Sequence[int],
        samples_per_step: int,
        total_steps: int,
        seed: int,
        output_dir: str,
        fingerprint: str = "",
        micro_batch_size: int | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self.run = run
        self.cfg = run.dataflex
        self.schedule = self.cfg.schedule()
        self.domains = list(domains)
        self.domain_sizes = [int(x) for x in domain_sizes]
        self.K = len(self.domains)
        self.G = int(samples_per_step)
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.output_dir = Path(output_dir)
        self.fingerprint = fingerprint
        self.rank, self.world_size = _dist()
        empty = [d for d, n in zip(self.domains, self.domain_sizes, strict=True) if n == 0]
        if empty:
            raise DataError(
                f"domain(s) {empty} have no rows after preprocessing (cutoff_len, filtering); "
                "remove them from `dataset:` or check their files."
            )
        self.mixer = None
        if run.component is not None:
            ctx = ComponentContext(
                name=run.component.entry,
                seed=self.seed,
                domains=tuple(self.domains),
                output_dir=str(self.output_dir),
                rank=self.rank,
                world_size=self.world_size,
                extras={"warmup_step": self.cfg.warmup_step, "vocab_size": vocab_size},
            )
            self.mixer = get_registry().create(
                "mixer", run.component.type, context=ctx, **run.component.params
            )
        # Mixers that read signals of fixed per-domain eval sets (spec §3.5, §3.6).
        self.eval_sets: list[Any] | None = None
        self.eval_collator: Any = None
        self.eval_batch_size = 8
        self.wants_eval_loss = self.mixer is not None and hasattr(self.mixer, "eval_due")
        self.wants_gate_loads = self.mixer is not None and hasattr(getattr(self.mixer, "config", None), "collect_steps")
        if getattr(self.mixer, "cadence", None) == "every_step" and self.cfg.update_step != 1:
            raise ConfigError(
                f"mixer {run.component.type!r} decides every step: set `update_step: 1` "  # type: ignore[union-attr]
                f"(got {self.cfg.update_step})."
            )
        self.initial = self._initial_proportions()
        composition = self.cfg.batch_composition
        arm_unit = getattr(self.mixer, "arm_unit", None)
        if arm_unit is not None:
            implied = {"micro_batch": "pure_micro_batch", "global_batch": "pure_global_batch", "mixed": "mixed"}[arm_unit]
            if composition not in ("mixed", implied):
                raise DataError(
                    f"batch_composition {composition!r} conflicts with the mixer's arm_unit "
                    f"{arm_unit!r} (which needs {implied!r}); remove batch_composition."
                )
            composition = implied
        # Window u starts at window_starts[u]; its proportions are window_props[u] once decided.
        updates = [s for s in range(self.total_steps) if self.schedule.is_update(s)] if self.mixer else []
        starts = {0}
        for s in updates:
            if s == 0:
                continue
            if s + 1 < self.total_steps:
                starts.add(s + 1)
        self.window_starts = sorted(starts)
        self.update_steps = updates
        self.window_props: dict[int, list[float]] = {}
        if not updates or updates[0] != 0:
            self.window_props[0] = list(self.initial)
        self.update_count = 0
        self._reset_feedback()
        self.sampler = MixtureSampler(
            self.domain_sizes,
            samples_per_step=self.G,
            total_steps=self.total_steps,
            proportions_for=self._proportions_for,
            window_starts=self.window_starts,
            seed=self.seed,
            mixture_order=self.cfg.mixture_order,
            within_domain=self.cfg.within_domain,
            domain_names=self.domains,
            batch_composition=composition,
            micro_batch_size=micro_batch_size,
        )
        self.log_path = self.output_dir / "dataflex" / "decisions.jsonl"
        self.timing_path = self.output_dir / "dataflex" / TIMING_FILE
        self.trainer: Any = None
        # DoReMi's proxy run: the loss is alpha-weighted per domain and needs a reference model.
        self.doremi = self.mixer is not None and hasattr(self.mixer, "proxy_loss_weights")
        self.reference_model: Any = None
        self.row_tokens: np.ndarray | None = None
        if self.doremi:
            mcfg = self.mixer.config  # type: ignore[union-attr]
            if not getattr(mcfg, "reference_model_path", None):
                raise ConfigError(
                    "the doremi mixer trains a proxy model against a reference model: set "
                    "`reference_model_path` in its params (the output_dir of the reference run)."
                )
            if getattr(mcfg, "update_order", "lagged") != "lagged":
                raise ConfigError(
                    "doremi update_order 'paper' (an extra no-grad forward per step) is not "
                    "supported by dataflex-cli yet; use the default 'lagged'."
                )

    # ------------------------------------------------------------------ proportions
    def _initial_proportions(self) -> list[float]:
        cfg = self.cfg
        imp = cfg.init_mixture_proportions
        if isinstance(imp, dict):
            imp = self._proportions_from_file(imp["from_file"])
        if imp is not None:
            p = np.asarray(imp, dtype=np.float64)
            if p.shape != (self.K,):
                raise DataError(
                    f"init_mixture_proportions has {p.size} entries but there are {self.K} "
                    f"datasets {self.domains}; give one proportion per dataset, in order."
                )
            if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
                raise DataError(
                    f"init_mixture_proportions {[float(x) for x in p]} must be finite, >= 0 and sum to > 0."
                )
            if abs(p.sum() - 1.0) > 1e-6:
                log.warning(
                    "init_mixture_proportions %s sum to %.6g, not 1; normalised to %s.",
                    list(imp), p.sum(), [round(float(x), 6) for x in p / p.sum()],
                )
            p = p / p.sum()
        elif cfg.mixture_sample_rule == "stratified":
            sizes = np.asarray(self.domain_sizes, dtype=np.float64)
            p = sizes / sizes.sum()
        else:
            p = np.full(self.K, 1.0 / self.K)
        zero = [d for d, x, n in zip(self.domains, p, self.domain_sizes, strict=True) if x > 0 and n == 0]
        if zero:
            raise DataError(f"domain(s) {zero} have no rows but a positive initial proportion.")
        return [float(x) for x in p]

    def _proportions_from_file(self, path: str) -> list[float]:
        """Proportions by domain name from a JSON file with ``domains`` and ``average``."""
        f = Path(path)
        if not f.is_file():
            raise DataError(
                f"init_mixture_proportions.from_file {path!r} does not exist; run the DoReMi "
                "proxy step first (it writes doremi_average_weights.json into its output_dir)."
            )
        try:
            data = json.loads(f.read_text())
            names, weights = list(data["domains"]), [float(x) for x in data["average"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: expected JSON with 'domains' and 'average' lists ({exc}).") from None
        if sorted(names) != sorted(self.domains) or len(names) != len(weights):
            raise DataError(
                f"{path} has weights for domains {names} but this run trains on {self.domains}; "
                "use the same datasets as the proxy run."
            )
        by_name = dict(zip(names, weights, strict=True))
        return [by_name[d] for d in self.domains]

    def _proportions_for(self, u: int) -> list[float]:
        if u not in self.window_props:
            raise DataError(
                f"the data loader asked for window {u} (from step {self.window_starts[u]}) before "
                "its mixing decision was made: it prefetches too far ahead. Set "
                "`dataloader_num_workers: 0` (and no prefetch) for dynamic mixing."
            )
        return self.window_props[u]

    @property
    def current_proportions(self) -> list[float]:
        """Proportions of the latest decided window."""
        return self.window_props[max(self.window_props)]

    # ------------------------------------------------------------------ feedback
    def _reset_feedback(self, device: Any = None) -> None:
        z = lambda: torch.zeros(self.K, dtype=torch.float64, device=device)  # noqa: E731
        self._fb = {
            "loss_sum": z(),
            "token_count": z(),
            "sample_count": z(),
            "sample_loss_sum": z(),
            "excess_loss_sum": z(),
        }

    def record(
        self,
        domain_ids: torch.Tensor,
        losses: torch.Tensor,
        tokens: torch.Tensor,
        excess: torch.Tensor | None = None,
    ) -> None:
        """Add one micro-batch's per-sample token-mean losses (detached) to the feedback.

        Accumulates on the loss's device; nothing moves to the host until an update.
        """
        if self._fb["loss_sum"].device != losses.device:
            moved = {k: v.to(losses.device) for k, v in self._fb.items()}
            self._fb = moved
        d = domain_ids.to(losses.device).long()
        ok = torch.isfinite(losses) & (tokens > 0)
        if not bool(ok.all()):
            n_bad = int((~ok).sum())
            log.warning("skipping %d sample(s) with non-finite loss or no supervised token", n_bad)
        losses = torch.where(ok, losses.detach().double(), torch.zeros((), dtype=torch.float64, device=losses.device))
        tok = torch.where(ok, tokens.double(), torch.zeros((), dtype=torch.float64, device=losses.device))
        self._fb["loss_sum"].index_add_(0, d, losses * tok)
        self._fb["token_count"].index_add_(0, d, tok)
        self._fb["sample_count"].index_add_(0, d, ok.double())
        self._fb["sample_loss_sum"].index_add_(0, d, losses)
        if excess is not None:
            ex = torch.where(ok, excess.detach().double(), torch.zeros((), dtype=torch.float64, device=losses.device))
            self._fb["excess_loss_sum"].index_add_(0, d, ex)

    def _reduced_feedback(self, step: int) -> MixFeedback:
        keys = ("loss_sum", "token_count", "sample_count", "sample_loss_sum", "excess_loss_sum")
        stacked = torch.stack([self._fb[k] for k in keys])
        if self.world_size > 1:
            torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.SUM)
        arr = stacked.cpu().numpy()
        # Proportions the feedback's rows were drawn with: those of the window of the last step.
        used = self.window_props.get(self.sampler.window_of_step(max(step - 1, 0)))
        return MixFeedback(
            step=step,
            loss_sum=arr[0].tolist(),
            token_count=arr[1].tolist(),
            sample_count=arr[2].tolist(),
            sample_loss_sum=arr[3].tolist(),
            excess_loss_sum=arr[4].tolist() if self.doremi else None,
            extras={"proportions_used": used},
        )

    # ------------------------------------------------------------------ DoReMi proxy loss
    def step_token_counts(self, step: int) -> np.ndarray:
        """``Z_k``: supervised tokens per domain in step ``step``'s whole global batch.

        Known before the step's first backward without communication: every rank draws the
        same global sequence, and each row's token count was measured once at setup.
        """
        if self.row_tokens is None:
            raise StateError("per-row token counts were not computed; this is a bug in the workflow.")
        rows = self.sampler.rows_for_step(step)
        doms = np.searchsorted(np.asarray(self.sampler.offsets), rows, side="right") - 1
        return np.bincount(doms, weights=self.row_tokens[rows], minlength=self.K).astype(np.float64)

    def proxy_token_weights(self, step: int, device: Any) -> torch.Tensor:
        """Per-domain token weights ``v_k`` with ``J = sum_t v_d(t) m_t l_t`` for step ``step``."""
        cached = getattr(self, "_v_cache", None)
        if cached is None or cached[0] != step:
            v = self.mixer.proxy_loss_weights(self.step_token_counts(step))  # type: ignore[union-attr]
            cached = (step, torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device))
            self._v_cache = cached
        return cached[1]

    def _write_doremi_outputs(self, folder: Path, step: int) -> None:
        rec = self.mixer.average_weights_record()  # type: ignore[union-attr]
        atomic_write_json(folder / "doremi_average_weights.json", {**rec, "step": step})

    # ------------------------------------------------------------------ schedule
    def on_train_begin(self, step: int) -> None:
        """Make the ``s = 0`` decision (warmup_step 0) before anything is drawn."""
        if step == 0 and self.rank == 0:
            self.timing_path.unlink(missing_ok=True)  # a fresh run: older timings are another run's
        if step == 0 and self.mixer is not None and self.update_steps and self.update_steps[0] == 0:
            self._decide(0, None, {})

    def on_step_end(self, step: int, model: Any = None) -> None:
        """Called after every optimizer step with ``step`` completed steps."""
        if self.mixer is None or step not in self._update_set:
            return
        t0 = time.perf_counter()
        fb = self._reduced_feedback(step)  # its .cpu() is the host sync that already existed
        timing = {"feedback_s": time.perf_counter() - t0}
        if self.wants_eval_loss and self.mixer.eval_due:  # type: ignore[union-attr]
            t0 = time.perf_counter()
            fb = dataclasses.replace(fb, eval_loss=self._eval_losses(model))
            timing["eval_s"] = time.perf_counter() - t0
        if self.wants_gate_loads:
            t0 = time.perf_counter()
            fb = dataclasses.replace(fb, extras={**fb.extras, "gate_loads": self._gate_loads(model)})
            timing["eval_s"] = timing.get("eval_s", 0.0) + time.perf_counter() - t0
        self._decide(step, fb, timing)

    # ------------------------------------------------------------------ eval-set signals
    def _eval_pass(self, model: Any, limit: int | None, per_batch: Any) -> None:
        """Run ``per_batch(k, outputs, batch)`` over each domain's eval rows, sharded over ranks.

        Every rank makes the same number of forward calls (ZeRO-3 gathers parameters
        collectively): shards are padded by repeating a row, and padded rows are masked out by
        ``per_batch`` through ``batch["_real"]``.
        """
        if not self.eval_sets:
            raise DataError(
                f"mixer {self.run.component.type!r} needs fixed per-domain eval sets: set "  # type: ignore[union-attr]
                "`dataflex.mixer_eval_dataset` (one dataset per domain, or `auto` for "
                "`<domain>_eval`)."
            )
        if model is None:
            raise StateError("no model was handed to the controller for the eval pass.")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for k, ds in enumerate(self.eval_sets):
                    n = len(ds) if limit is None else min(len(ds), limit)
                    per_rank = -(-n // self.world_size)
                    mine = list(range(self.rank, n, self.world_size))
                    real = [True] * len(mine) + [False] * (per_rank - len(mine))
                    mine += [mine[-1] if mine else 0] * (per_rank - len(mine))
                    for i in range(0, per_rank, self.eval_batch_size):
                        feats = [dict(ds[j]) for j in mine[i : i + self.eval_batch_size]]
                        for f in feats:
                            f.pop("domain_id", None)
                        batch = self.eval_collator(feats)
                        batch = {key: v.to(device) for key, v in batch.items() if isinstance(v, torch.Tensor)}
                        batch["_real"] = torch.tensor(real[i : i + self.eval_batch_size], device=device)
                        per_batch(k, batch)
        finally:
            model.train(was_training)

    def _eval_losses(self, model: Any) -> list[float]:
        """Token-mean loss of each domain's eval set (all ranks), for Aioli."""
        sums = torch.zeros(2, self.K, dtype=torch.float64, device=next(model.parameters()).device)

        def per_batch(k: int, batch: dict[str, Any]) -> None:
            labels = batch.pop("labels")
            real = batch.pop("_real")
            out = model(**batch)
            logits = out["logits"] if isinstance(out, dict) else out.logits
            values, valid = per_sample_loss(logits, labels, reduction="sum")
            tokens = (labels[:, 1:] != -100).sum(dim=1)
            keep = real & valid
            sums[0, k] += torch.where(keep, values.double(), torch.zeros_like(values, dtype=torch.float64)).sum()
            sums[1, k] += torch.where(keep, tokens.double(), torch.zeros_like(tokens, dtype=torch.float64)).sum()

        self._eval_pass(model, None, per_batch)
        if self.world_size > 1:
            torch.distributed.all_reduce(sums)
        s = sums.cpu().numpy()
        return [float(a / b) if b > 0 else float("nan") for a, b in zip(s[0], s[1], strict=True)]

    def _gate_loads(self, model: Any) -> list:
        """Expert loads ``[K, L, E]``: top-k router assignments of each domain's eval tokens."""
        mcfg = self.mixer.config  # type: ignore[union-attr]
        top_k = int(getattr(model.config, "num_experts_per_tok", 0) or 0)
        if top_k < 1:
            raise DataError(
                "dynamic_moe needs a mixture-of-experts model that returns router logits "
                "(config.num_experts_per_tok); this model has none."
            )
        limit = int(mcfg.collect_steps) * int(mcfg.eval_batch_size)
        loads: dict[int, torch.Tensor] = {}

        def per_batch(k: int, batch: dict[str, Any]) -> None:
            batch.pop("labels", None)
            real = batch.pop("_real")
            out = model(**batch, output_router_logits=True)
            routers = out["router_logits"] if isinstance(out, dict) else out.router_logits
            if not routers:
                raise DataError("the model returned no router_logits; dynamic_moe needs an MoE model.")
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones(batch["input_ids"].shape, device=real.device)
            tok_mask = (mask.bool() & real[:, None]).reshape(-1)
            layers = []
            for logits in routers:
                chosen = logits.topk(top_k, dim=-1).indices[tok_mask]
                layers.append(torch.bincount(chosen.reshape(-1), minlength=logits.shape[-1]).double())
            counts = torch.stack(layers)
            loads[k] = loads[k] + counts if k in loads else counts

        self._eval_pass(model, limit, per_batch)
        stacked = torch.stack([loads[k] for k in range(self.K)])
        if self.world_size > 1:
            torch.distributed.all_reduce(stacked)
        return stacked.cpu().numpy().tolist()

    @property
    def _update_set(self) -> set[int]:
        if not hasattr(self, "_updates_cache"):
            self._updates_cache = set(self.update_steps)
        return self._updates_cache

    def _decide(
        self, step: int, feedback: MixFeedback | None, timing: dict[str, float] | None = None
    ) -> None:
        assert self.mixer is not None
        t0 = time.perf_counter()
        decision: MixDecision = self.mixer.step(feedback)
        timing = {**(timing or {}), "update_s": time.perf_counter() - t0}
        p = [float(x) for x in decision.proportions]
        window = 0 if step == 0 else self.window_starts.index(step + 1) if step + 1 in self.window_starts else None
        if window is not None:
            self.window_props[window] = p
        self.update_count += 1
        self._reset_feedback(self._fb["loss_sum"].device)
        if self.cfg.check_state_consistency and self.world_size > 1:
            self._check_consistency(step)
        record = {
            "step": step,
            "kind": "mixer",
            "component": self.run.component.entry if self.run.component else "static_mix",
            "decision": {"proportions": p, "domains": self.domains, "applies_from_step": 0 if step == 0 else step + 1},
        }
        if decision.loss_weights is not None:
            record["decision"]["loss_weights"] = [float(x) for x in decision.loss_weights]
        if feedback is not None:
            counts = np.asarray(feedback.token_count)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(counts > 0, np.asarray(feedback.loss_sum) / np.maximum(counts, 1), np.nan)
            record["feedback"] = {
                "domain_loss": [None if not np.isfinite(x) else float(x) for x in mean],
                "domain_samples": [float(x) for x in feedback.sample_count],
            }
            if feedback.eval_loss is not None:
                record["feedback"]["eval_domain_loss"] = [
                    None if not np.isfinite(x) else float(x) for x in feedback.eval_loss
                ]
        if self.rank == 0:
            append_jsonl(self.log_path, [record])
            append_timing(self.timing_path, step, "mixer", record["component"], timing)
            if self.doremi:
                append_jsonl(self.output_dir / "dataflex" / "doremi_weights.jsonl",
                             [self.mixer.weights_history_record(step)])  # type: ignore[union-attr]
        if self.trainer is not None:
            # Trainer.log runs on_log callbacks, and DefaultFlowCallback.on_log clears
            # should_log; keep the flag so the step's own loss logging still happens.
            control = self.trainer.control
            should_log = control.should_log
            self.trainer.log({f"dataflex/p/{d}": x for d, x in zip(self.domains, p, strict=True)})
            control.should_log = should_log
        get_plugin_manager().hook.dataflex_on_update(
            step=step, kind="mixer", component=record["component"], decision=record["decision"]
        )

    def _check_consistency(self, step: int) -> None:
        h = _state_hash(self.mixer.state_dict())  # type: ignore[union-attr]
        local = torch.tensor(list(bytes.fromhex(h)[:8]), dtype=torch.int64)
        gathered = [torch.zeros_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, local)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise StateError(
                f"mixer state differs across ranks after the update at step {step}; the "
                "feedback was not all-reduced identically (report this as a bug)."
            )

    def describe(self) -> dict[str, Any]:
        """Facts of the run for ``dataflex/effective_config.json``."""
        return {
            "domains": self.domains,
            "domain_sizes": self.domain_sizes,
            "samples_per_step": self.G,
            "total_steps": self.total_steps,
            "update_steps": self.update_steps,
            "window_starts": self.window_starts,
        }

    def finish(self, output_dir: str | Path) -> None:
        """End of training: per-rank final state (consistency checks) and the proportions plot."""
        if self.cfg.check_state_consistency:
            out = Path(output_dir) / "dataflex" / f"final_state_rank{self.rank}.json"
            atomic_write_json(out, {"mixer": self.mixer.state_dict() if self.mixer else None,
                                    "window_props": {str(k): v for k, v in sorted(self.window_props.items())}})
        if self.rank == 0 and self.doremi:
            self._write_doremi_outputs(Path(output_dir), self.total_steps)
        if self.rank == 0 and self.cfg.plot and self.log_path.exists():
            from dataflex_llamafactory.plotting import plot_proportions

            plot_proportions(self.log_path, Path(output_dir) / "dataflex" / "proportions.png",
                             total_steps=self.total_steps, initial=self.initial, domains=self.domains)

    # ------------------------------------------------------------------ state
    def state_dict(self, step: int) -> dict[str, Any]:
        """Everything needed to resume at ``step`` completed steps."""
        fb = {k: v.cpu().tolist() for k, v in self._fb.items()}
        return {
            "schema_version": SCHEMA_VERSION,
            "train_type": self.cfg.train_type,
            "component": (
                {"entry": self.run.component.entry, "type": self.run.component.type}
                if self.run.component
                else None
            ),
            "effective_config_hash": self.run.effective_hash(),
            "domain_names": self.domains,
            "domain_sizes": self.domain_sizes,
            "dataset_fingerprint": self.fingerprint,
            "samples_per_step": self.G,
            "total_steps": self.total_steps,
            "seeds": {"run": self.seed},
            "step": step,
            "update_count": self.update_count,
            "window_props": {str(u): p for u, p in sorted(self.window_props.items())},
            "mixer": self.mixer.state_dict() if self.mixer is not None else None,
            "sampler": self.sampler.state_dict(consumed=step * self.G),
            "feedback": fb,
        }

    def save(self, checkpoint_dir: str | Path, step: int) -> Path:
        """Write ``dataflex_state.json`` into ``checkpoint_dir`` atomically (rank 0 only)."""
        state = self.state_dict(step)
        path = Path(checkpoint_dir) / STATE_FILE
        if self.rank == 0:
            atomic_write_json(path, state)
            if self.doremi:
                self._write_doremi_outputs(Path(checkpoint_dir), step)
                self._write_doremi_outputs(self.output_dir, step)
            get_plugin_manager().hook.dataflex_on_save(step=step, checkpoint_dir=str(checkpoint_dir), state=state)
        return path

    def load(self, checkpoint_dir: str | Path, step: int) -> None:
        """Restore from ``checkpoint_dir/dataflex_state.json`` written at ``step``."""
        self.load_state_dict(read_state(checkpoint_dir), step)

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        """Restore a :meth:`state_dict` snapshot, checking it belongs to this run."""
        if state.get("schema_version") != SCHEMA_VERSION:
            raise StateError(f"dataflex state schema {state.get('schema_version')!r} is not {SCHEMA_VERSION}.")
        expect = {
            "train_type": self.cfg.train_type,
            "domain_names": self.domains,
            "domain_sizes": self.domain_sizes,
            "samples_per_step": self.G,
            "total_steps": self.total_steps,
            "effective_config_hash": self.run.effective_hash(),
            "step": step,
        }
        check_saved_state(state, expect, self.fingerprint)
        if self.mixer is not None:
            self.mixer.load_state_dict(state["mixer"])
        self.window_props = {int(u): list(p) for u, p in state["window_props"].items()}
        self.update_count = int(state["update_count"])
        dev = self._fb["loss_sum"].device
        self._fb.update({k: torch.tensor(v, dtype=torch.float64, device=dev) for k, v in state["feedback"].items()})
        self.sampler.load_state_dict(state["sampler"])
        if self.rank == 0 and self.log_path.exists():
            # Drop decisions made after the checkpoint: the resumed run makes them again.
            truncate_jsonl(self.log_path, step)
        doremi_log = self.output_dir / "dataflex" / "doremi_weights.jsonl"
        if self.rank == 0 and doremi_log.exists():
            truncate_jsonl(doremi_log, step)  # DoReMi's per-step weights, same rule
        if self.rank == 0:
            truncate_jsonl(self.timing_path, step)
