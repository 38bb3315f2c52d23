"""Offline selection: ``dataflex-cli select CFG.yaml`` (spec §2.0 ``selection_scope: pool``).

Reads the same run YAML as ``train`` (model, ``dataset:`` domains, template, ``dataflex:`` block
with ``component_name`` and ``target_dataset``), computes the signals the selector asks for with
the model of the config (or reads them from a feature store the selector points at), selects
``budget`` rows once, and writes into ``output_dir``:

* ``selected_tokenized/``: the chosen rows as a tokenised dataset that LLaMA-Factory trains on
  with ``tokenized_path: <output_dir>/selected_tokenized`` (a ``DatasetDict`` with ``train``, as
  LLaMA-Factory itself saves one);
* ``selection_report.json``: selected ids, their scores, the composition by domain against the
  pool's, the budget, the config and the data fingerprint;
* ``selected_ids.txt``: one pool index per line.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from dataflex_core import (
    ConfigError,
    SelectRequest,
    atomic_write_json,
    atomic_write_text,
    get_registry,
)

from dataflex_llamafactory.config import RunConfig

__all__ = ["run_select"]

log = logging.getLogger(__name__)


def _budget(selector: Any, override: float | int | None, num_samples: int) -> int:
    from dataflex_select.base import budget_count

    if override is not None:
        return budget_count(override, num_samples, key="--budget")
    budget = getattr(getattr(selector, "config", None), "budget", None)
    if budget is None:
        raise ConfigError(
            "this selector has no `budget` key: give the number (or fraction) of rows to keep "
            "with `dataflex-cli select CFG --budget 0.05`."
        )
    return budget_count(budget, num_samples)


def run_select(run: RunConfig, budget: float | int | None = None) -> dict[str, Any]:
    """Select a subset offline; returns the report (also written to ``output_dir``)."""
    import torch
    from datasets import DatasetDict
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    from dataflex_llamafactory.selection import SignalProvider, gather_signals
    from dataflex_llamafactory.workflow import (
        _collator_and_trainer,
        _domain_datasets,
        _target_with_subtasks,
        check_datasets,
    )

    df = run.dataflex
    if run.component is None or run.component.kind != "selector":
        raise ConfigError(
            "`dataflex-cli select` needs a selector: set `dataflex.train_type: dynamic_select` and "
            "`dataflex.component_name: <selector entry>` (e.g. less, near, tsds)."
        )
    lf_args = dict(run.lf_args)
    from dataflex_llamafactory.assets import resolve_model

    if isinstance(lf_args.get("model_name_or_path"), str):
        lf_args["model_name_or_path"] = resolve_model(lf_args["model_name_or_path"])
    lf_args.setdefault("do_train", True)
    try:
        model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(
            lf_args
        )
    except ValueError as exc:
        raise ConfigError(f"LLaMA-Factory rejected the config: {exc}") from exc
    stage = finetuning_args.stage
    if stage not in ("pt", "sft"):
        raise ConfigError(
            f"stage {stage!r} is not supported by dataflex-cli select; use pt or sft."
        )
    check_datasets(data_args.dataset, data_args.dataset_dir)
    out_dir = Path(training_args.output_dir)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    train_ds, domains, sizes, fingerprint = _domain_datasets(
        template, model_args, data_args, training_args, stage, tokenizer_module
    )
    N = len(train_ds)
    domain_ids = np.asarray(train_ds["domain_id"], dtype=np.int64)
    from dataflex_core import ComponentContext

    ctx = ComponentContext(
        name=run.component.entry,
        seed=training_args.seed,
        domains=tuple(domains),
        num_samples=N,
        output_dir=str(out_dir),
    )
    selector = get_registry().create(
        "selector", run.component.type, context=ctx, **run.component.params
    )
    n = _budget(selector, budget, N)
    request = SelectRequest(
        step=0,
        epoch=0,
        update=0,
        n=n,
        num_samples=N,
        warmup=False,
        extras={
            "warmup_samples": 0,
            "updates_per_epoch": 1,
            "domains": domain_ids,
            "domain_names": domains,
        },
    )
    first = selector.signals(request) if hasattr(selector, "signals") else []
    target = subtasks = None
    if df.target_dataset or any(sig.split == "target" for sig in first):
        target, subtasks = _target_with_subtasks(
            run, template, model_args, data_args, training_args, stage, tokenizer_module
        )
    state: dict[str, Any] = {}

    def compute(sig: Any) -> Any:
        if "provider" not in state:
            model = load_model(tokenizer, model_args, finetuning_args, is_trainable=True)
            model.to(training_args.device)
            collator, _, _ = _collator_and_trainer(
                stage,
                model,
                tokenizer,
                template,
                model_args,
                data_args,
                training_args,
                generating_args,
                tokenizer_module,
            )
            state["model"] = model
            state["provider"] = SignalProvider(
                train_ds,
                target,
                subtasks,
                collator,
                tokenizer,
                batch_size=training_args.per_device_eval_batch_size,
            )
        if sig.kind == "loss" and sig.options.get("reference") == "initial":
            raise ConfigError(
                "delta_loss needs a training run (reference losses); use it with `train`."
            )
        if (
            sig.kind == "grad_feature"
            and sig.options.get("gradient_type") == "adam"
            and sig.split == "train"
            and not sig.options.get("checkpoint")
        ):
            raise ConfigError(
                "offline Adam gradient features need optimizer moments: set the selector's "
                "`checkpoints:` to checkpoint folders written with their optimizer state (the "
                "warmup run), or `gradient_type: sgd`."
            )
        with torch.enable_grad():
            return state["provider"].compute(sig, state["model"], None)

    request = gather_signals(selector, request, compute)
    if hasattr(selector, "choose"):
        chosen = np.asarray(selector.choose(request, n), dtype=np.int64)
    else:
        chosen = np.asarray(selector.select(request), dtype=np.int64)
    scores_of = None
    last = getattr(selector, "last_scores", None)
    if last is not None:
        cand, vals = last
        lookup = dict(
            zip(np.asarray(cand).tolist(), np.asarray(vals, dtype=np.float64).tolist(), strict=True)
        )
        scores_of = [
            None if not np.isfinite(lookup.get(int(i), np.nan)) else float(lookup[int(i)])
            for i in chosen
        ]
    counts = np.bincount(domain_ids[chosen], minlength=len(domains))
    pool = np.bincount(domain_ids, minlength=len(domains))
    report = {
        "component": {
            "entry": run.component.entry,
            "type": run.component.type,
            "params": run.component.params,
        },
        "num_samples": N,
        "budget": n,
        "dataset_fingerprint": fingerprint,
        "domains": domains,
        "by_domain": {d: int(c) for d, c in zip(domains, counts, strict=True)},
        "share_by_domain": {d: float(c) / max(1, n) for d, c in zip(domains, counts, strict=True)},
        "pool_by_domain": {d: int(c) for d, c in zip(domains, pool, strict=True)},
        "pool_share_by_domain": {d: float(c) / N for d, c in zip(domains, pool, strict=True)},
        "target_dataset": df.target_dataset,
        "selected": chosen.tolist(),
        "scores": scores_of,
        "tokenized_path": str(out_dir / "selected_tokenized"),
    }
    if training_args.should_save:
        out_dir.mkdir(parents=True, exist_ok=True)
        subset = train_ds.select(chosen.tolist()).remove_columns(["domain_id"])
        # Every output is replaced atomically; the report, written last, marks a complete
        # selection (its "selected" list is authoritative if a run dies in between).
        tmp = out_dir / ".selected_tokenized.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        DatasetDict({"train": subset}).save_to_disk(str(tmp))
        final, old = out_dir / "selected_tokenized", out_dir / ".selected_tokenized.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)  # the previous subset stays on disk until the new one is in place
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
        atomic_write_text(out_dir / "selected_ids.txt", "".join(f"{i}\n" for i in chosen.tolist()))
        atomic_write_json(out_dir / "selection_report.json", report)
    log.info(
        "selected %d of %d rows with %s; by domain %s; wrote %s",
        n,
        N,
        run.component.entry,
        report["by_domain"],
        out_dir,
    )
    return report
