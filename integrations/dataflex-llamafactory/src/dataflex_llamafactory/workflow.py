"""Our own pt and sft workflows, built from LLaMA-Factory's public builders.

LLaMA-Factory's ``run_pt``/``run_sft`` build tokenizer, template, dataset, model and collator and
then a trainer; we do the same with the same builders, but load each dataset of ``dataset:`` as
one *domain* (so packed pre-training blocks never straddle two domains), concatenate them with a
``domain_id`` column, and train with our trainer subclass and callback. Nothing in LLaMA-Factory
or transformers is patched.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from dataflex_core import ConfigError, DataError, atomic_write_json

from dataflex_llamafactory.config import RunConfig

__all__ = ["run_train", "prepare_lf_args", "preflight", "check_datasets", "destroy_process_group"]

log = logging.getLogger(__name__)

SUPPORTED_STAGES = ("pt", "sft")


def prepare_lf_args(run: RunConfig) -> dict[str, Any]:
    """LLaMA-Factory arguments with our adjustments (built-in models, resume settings)."""
    from dataflex_llamafactory.assets import resolve_model

    args = dict(run.lf_args)
    model = args.get("model_name_or_path")
    if isinstance(model, str):
        args["model_name_or_path"] = resolve_model(model)
    if run.dataflex.train_type in ("dynamic_mix", "dynamic_select"):
        if args.get("ignore_data_skip") is False:
            raise ConfigError(
                "ignore_data_skip: false conflicts with dynamic training: DataFlex restores the "
                "exact data position from dataflex_state.json on resume. Remove the key."
            )
        # The trainer would otherwise replay the sampler to skip consumed batches.
        args["ignore_data_skip"] = True
        if int(args.get("dataloader_num_workers", 0) or 0) > 0:
            raise ConfigError(
                f"dataloader_num_workers: {args['dataloader_num_workers']} makes the loader draw "
                "batches before the mixing decision for them is made; use 0 with dynamic training."
            )
        if args.get("streaming"):
            raise ConfigError("streaming datasets are not supported by train_type "
                              f"{run.dataflex.train_type!r} in this version; set streaming: false.")
        if float(args.get("val_size", 0) or 0) > 0:
            raise ConfigError(
                "val_size splits the mixed training pool; with dynamic training give a separate "
                "`eval_dataset:` instead."
            )
    return args


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    raise ConfigError(f"dataset names must be a comma-separated string or a list, got {value!r}.")


def preflight(run: RunConfig) -> None:
    """Cheap checks before anything heavy is imported or written: datasets exist and are non-empty."""
    args = run.lf_args
    dataset_dir = str(args.get("dataset_dir", "data"))
    if dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return
    check_datasets(_names(args.get("dataset")), dataset_dir)
    check_datasets(_names(args.get("eval_dataset")), dataset_dir, what="eval_dataset")
    check_datasets(_names(run.dataflex.target_dataset), dataset_dir, what="target_dataset")
    mev = run.dataflex.mixer_eval_dataset
    if mev is not None:
        names = [f"{d}_eval" for d in _names(args.get("dataset")) or []] if mev == "auto" else _names(mev)
        check_datasets(names, dataset_dir, what="mixer_eval_dataset")
    if run.dataflex.train_type != "static" and not _names(args.get("dataset")):
        raise ConfigError("`dataset:` is empty; dynamic training needs at least one dataset (domain).")


def check_datasets(names: list[str] | None, dataset_dir: str, what: str = "dataset") -> None:
    """Fail early, with the file and the fix, when a local dataset is missing or empty."""
    if not names:
        return
    info_path = Path(dataset_dir) / "dataset_info.json"
    if not info_path.is_file():
        raise DataError(
            f"{what}: {info_path} does not exist; set `dataset_dir:` to the folder that holds "
            "dataset_info.json."
        )
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{info_path} is not valid JSON: {exc}") from None
    for name in names:
        if name not in info:
            raise DataError(
                f"{what} {name!r} is not defined in {info_path}; defined: {', '.join(sorted(info))}."
            )
        entry = info[name]
        fname = entry.get("file_name") if isinstance(entry, dict) else None
        if fname is None:
            continue  # hub or script datasets: LLaMA-Factory reports problems itself
        fpath = Path(dataset_dir) / fname
        if not fpath.exists():
            raise DataError(f"{what} {name!r}: file {fpath} does not exist; check `file_name` in {info_path}.")
        if fpath.is_file() and fpath.stat().st_size == 0:
            raise DataError(f"{what} {name!r}: file {fpath} is empty; a domain needs at least one row.")


def _content_fingerprint(ds: Any) -> str:
    """SHA-256 of the token ids (and labels) of a tokenised dataset, from its Arrow columns.

    ``datasets``' own ``_fingerprint`` falls back to a random hash when a map function cannot
    be hashed, so it cannot tell a resumed run whether the data changed; the content can.
    """
    import pyarrow.compute as pc

    h = hashlib.sha256()
    for name in ("input_ids", "labels"):
        if name not in ds.column_names:
            continue
        col = ds.data.column(name)
        h.update(name.encode())
        h.update(pc.list_value_length(col).to_numpy(zero_copy_only=False).astype("int64").tobytes())
        h.update(pc.list_flatten(col).to_numpy(zero_copy_only=False).astype("int64").tobytes())
    return h.hexdigest()


def _load_dataset(name: str, what: str, template: Any, model_args: Any, data_args: Any, training_args: Any, stage: str, tokenizer_module: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's ``get_dataset`` for one dataset, with its failures as one clear error.

    A corrupt file (e.g. a broken JSONL line) and a dataset whose rows are all dropped in
    preprocessing surface from ``datasets``/LLaMA-Factory as bare exceptions; name the dataset
    and the fix instead.
    """
    from llamafactory.data import get_dataset

    try:
        return get_dataset(template, model_args, data_args, training_args, stage=stage, **tokenizer_module)
    except RuntimeError as exc:
        if "sufficient samples" in str(exc):
            where = {"domain": " from `dataset:`", "target_dataset": " from `target_dataset:`"}.get(what, "")
            raise DataError(
                f"{what} {name!r} has no rows after preprocessing (empty file, every row longer "
                f"than cutoff_len, or filtered); fix its file or remove it{where}."
            ) from exc
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable files
        kind = type(exc).__name__
        if kind in ("DatasetGenerationError", "ArrowInvalid", "JSONDecodeError") or "json" in str(exc).lower():
            raise DataError(
                f"{what} {name!r} could not be read ({kind}: {str(exc).splitlines()[0][:200]}); "
                "check that its file is valid (one JSON object per line for .jsonl) and matches "
                "its dataset_info.json entry."
            ) from exc
        raise


def _domain_datasets(template: Any, model_args: Any, data_args: Any, training_args: Any, stage: str, tokenizer_module: dict[str, Any]) -> tuple[Any, list[str], list[int], str]:
    """Load and preprocess each dataset as one domain; concatenate with a domain_id column."""
    from datasets import concatenate_datasets

    names = list(data_args.dataset or [])
    if not names:
        raise ConfigError("`dataset:` is empty; dynamic training needs at least one dataset (domain).")
    if len(set(names)) != len(names):
        raise ConfigError(f"`dataset:` names a dataset twice: {names}; each domain once.")
    parts, sizes, prints = [], [], []
    for k, name in enumerate(names):
        dargs = copy.copy(data_args)
        dargs.dataset = [name]
        dargs.eval_dataset = None
        dargs.tokenized_path = None
        module = _load_dataset(name, "domain", template, model_args, dargs, training_args, stage, tokenizer_module)
        ds = module.get("train_dataset")
        n = 0 if ds is None else len(ds)
        if n == 0:
            raise DataError(
                f"domain {name!r} has no rows after preprocessing (empty file, or every row longer "
                "than cutoff_len / filtered); fix its file or remove it from `dataset:`."
            )
        prints.append(_content_fingerprint(ds))
        ds = ds.add_column("domain_id", [k] * n)
        parts.append(ds)
        sizes.append(n)
    fingerprint = hashlib.sha256("|".join(prints).encode()).hexdigest()
    return concatenate_datasets(parts), names, sizes, fingerprint


def _target_dataset(run: RunConfig, template: Any, model_args: Any, data_args: Any, training_args: Any, stage: str, tokenizer_module: dict[str, Any]) -> Any:
    """The tokenised target set (``target_dataset``, else ``eval_dataset`` with a warning)."""

    names = _names(run.dataflex.target_dataset)
    if not names:
        names = list(data_args.eval_dataset or [])
        if not names:
            raise ConfigError(
                f"component {run.component.entry!r} needs a target set: set "  # type: ignore[union-attr]
                "`dataflex.target_dataset` (dataset names in dataset_info.json)."
            )
        log.warning("no target_dataset given: using eval_dataset %s as the target set, so the "
                    "evaluation data also steers training (leakage); set dataflex.target_dataset.", names)
    check_datasets(names, data_args.dataset_dir, what="target_dataset")
    dargs = copy.copy(data_args)
    dargs.dataset = names
    dargs.eval_dataset = None
    dargs.tokenized_path = None
    module = _load_dataset(",".join(names), "target_dataset", template, model_args, dargs, training_args, stage, tokenizer_module)
    ds = module.get("train_dataset")
    if ds is None or len(ds) == 0:
        raise DataError(f"target_dataset {names} has no rows after preprocessing.")
    return ds


def _mixer_eval_sets(run: RunConfig, domains: list[str], template: Any, model_args: Any, data_args: Any, training_args: Any, stage: str, tokenizer_module: dict[str, Any]) -> list[Any]:
    """One tokenised eval set per training domain (``mixer_eval_dataset``)."""

    spec = run.dataflex.mixer_eval_dataset
    if spec is None:
        raise ConfigError(
            f"mixer {run.component.type!r} reads per-domain eval signals: set "  # type: ignore[union-attr]
            "`dataflex.mixer_eval_dataset` to one eval dataset per domain (in `dataset:` order), "
            "or `auto` for `<domain>_eval`."
        )
    names = [f"{d}_eval" for d in domains] if spec == "auto" else _names(spec) or []
    if len(names) != len(domains):
        raise ConfigError(
            f"mixer_eval_dataset names {len(names)} dataset(s) {names} but there are "
            f"{len(domains)} domains {domains}; give one eval set per domain, in order."
        )
    check_datasets(names, data_args.dataset_dir, what="mixer_eval_dataset")
    out = []
    for name in names:
        dargs = copy.copy(data_args)
        dargs.dataset = [name]
        dargs.eval_dataset = None
        dargs.tokenized_path = None
        ds = _load_dataset(name, "mixer_eval_dataset", template, model_args, dargs, training_args, stage, tokenizer_module).get("train_dataset")
        if ds is None or len(ds) == 0:
            raise DataError(f"mixer_eval_dataset {name!r} has no rows after preprocessing.")
        out.append(ds)
    return out


def _load_reference(controller: Any, model: Any, tokenizer: Any, training_args: Any) -> Any:
    """DoReMi's reference model, checked against the proxy's vocabulary and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataflex_llamafactory.assets import resolve_model

    path = resolve_model(controller.mixer.config.reference_model_path)
    if not Path(path).exists():
        raise ConfigError(
            f"reference_model_path {path!r} does not exist; point it at the output_dir of the "
            "DoReMi reference run (step 1)."
        )
    try:
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ref_tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported with the path
        raise ConfigError(f"cannot load the DoReMi reference model from {path!r}: {exc}") from exc
    n_ref = ref.get_input_embeddings().num_embeddings
    n_proxy = model.get_input_embeddings().num_embeddings
    if n_ref != n_proxy:
        raise ConfigError(
            f"the reference model has {n_ref} token embeddings but the proxy has {n_proxy}; "
            "train the reference with the same tokenizer."
        )
    if ref_tok.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"the tokenizer saved with the reference model at {path!r} differs from the proxy's; "
            "excess losses are only meaningful on identical tokens."
        )
    ref.eval()
    ref.requires_grad_(False)
    # Replicated on every rank: fine for the small proxy/reference models DoReMi uses. Under
    # ZeRO-3 a partitioned reference engine would save memory; not done yet (see the docs).
    return ref.to(training_args.device)


def _row_token_counts(dataset: Any, collator: Any, chunk: int = 64) -> Any:
    """Supervised (shifted) tokens of every row, measured through the real collator once."""
    import numpy as np

    counts = np.zeros(len(dataset), dtype=np.float64)
    for i in range(0, len(dataset), chunk):
        feats = [dataset[j] for j in range(i, min(i + chunk, len(dataset)))]
        labels = collator(feats)["labels"]
        counts[i : i + len(feats)] = (labels[:, 1:] != -100).sum(dim=1).numpy()
    return counts


def _mix_controller(run: RunConfig, training_args: Any, domains: list[str], sizes: list[int], fingerprint: str, vocab_size: int) -> Any:
    from dataflex_llamafactory.controller import MixController

    df = run.dataflex
    G = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
    )
    total = df.schedule().mix_total_steps(df.train_step, sum(sizes), G, training_args.num_train_epochs)
    if training_args.max_steps > 0 and training_args.max_steps != total:
        raise ConfigError(
            f"max_steps: {training_args.max_steps} conflicts with the DataFlex schedule, which "
            f"gives {total} steps (warmup_step {df.warmup_step} + update_step {df.update_step} "
            f"x update_times {df.update_times}, or train_step); set only one of them."
        )
    if total < 1:
        raise ConfigError(f"the schedule gives {total} training steps; set update_times >= 1 or train_step > 0.")
    training_args.max_steps = total
    controller = MixController(
        run,
        domains=domains,
        domain_sizes=sizes,
        samples_per_step=G,
        total_steps=total,
        seed=training_args.seed,
        output_dir=training_args.output_dir,
        fingerprint=fingerprint,
        micro_batch_size=training_args.per_device_train_batch_size,
        vocab_size=vocab_size,
    )
    log.info(
        "DataFlex %s: domains %s (rows %s), G=%d, %d steps, updates at %s",
        df.train_type, domains, sizes, G, total, controller.update_steps[:10],
    )
    return controller


def _select_controller(run: RunConfig, training_args: Any, train_ds: Any, domains: list[str], sizes: list[int], fingerprint: str) -> Any:
    from dataflex_llamafactory.selection import SelectController

    df = run.dataflex
    G = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
    )
    domain_ids = [k for k, n in enumerate(sizes) for _ in range(n)]
    controller = SelectController(
        run,
        domains=domains,
        domain_ids=domain_ids,
        samples_per_step=G,
        seed=training_args.seed,
        output_dir=training_args.output_dir,
        num_train_epochs=training_args.num_train_epochs,
        fingerprint=fingerprint,
    )
    total = controller.total_steps
    if training_args.max_steps > 0 and training_args.max_steps != total:
        raise ConfigError(
            f"max_steps: {training_args.max_steps} conflicts with the DataFlex schedule, which "
            f"gives {total} steps (train_step, or num_train_epochs x Flex epoch length "
            f"{controller.epoch_length}); set only one of them."
        )
    training_args.max_steps = total
    log.info(
        "DataFlex dynamic_select: domains %s (rows %s), G=%d, Flex epoch %d steps (%d updates), "
        "%d steps, window %d rows", domains, sizes, G, controller.epoch_length,
        controller.updates_per_epoch, total, controller.window,
    )
    return controller


def _selector_needs_target(controller: Any) -> bool:
    """Whether the selector's first update asks for target-set signals (a dry, pure call)."""
    sel = controller.selector
    if not hasattr(sel, "signals"):
        return False
    steps = [s for s in controller.decision_steps if controller.schedule.is_update(s)]
    if not steps:
        return False
    try:
        signals = sel.signals(controller._request(steps[0]))
    except Exception:  # noqa: BLE001 - signals may need run-time state; decide at the update
        return False
    return any(sig.split == "target" for sig in signals)


def _target_with_subtasks(run: RunConfig, template: Any, model_args: Any, data_args: Any, training_args: Any, stage: str, tokenizer_module: dict[str, Any]) -> tuple[Any, list[int]]:
    """The target set and a subtask label per row (``subtask_by``: one per target dataset)."""
    from datasets import concatenate_datasets

    names = _names(run.dataflex.target_dataset)
    if not names or run.dataflex.subtask_by == "none":
        ds = _target_dataset(run, template, model_args, data_args, training_args, stage, tokenizer_module)
        return ds, [0] * len(ds)
    parts, labels = [], []
    for j, name in enumerate(names):
        single = copy.copy(run)
        single.dataflex = dataclasses.replace(run.dataflex, target_dataset=name)
        ds = _target_dataset(single, template, model_args, data_args, training_args, stage, tokenizer_module)
        parts.append(ds)
        labels += [j] * len(ds)
    return concatenate_datasets(parts), labels


def _collator_and_trainer(stage: str, model: Any, tokenizer: Any, template: Any, model_args: Any, data_args: Any, training_args: Any, generating_args: Any, tokenizer_module: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """LLaMA-Factory's collator for ``stage``, our trainer class, and extra trainer kwargs."""
    from dataflex_llamafactory.trainer import DataflexPtTrainer, DataflexSftTrainer

    if stage == "pt":
        from transformers import DataCollatorForLanguageModeling

        collator: Any = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
        return collator, DataflexPtTrainer, {}
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask
    from llamafactory.extras.constants import IGNORE_INDEX

    collator = SFTDataCollatorWith4DAttentionMask(
        template=template,
        model=model if not training_args.predict_with_generate else None,
        pad_to_multiple_of=8,
        label_pad_token_id=IGNORE_INDEX if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id,
        block_diag_attn=model_args.block_diag_attn,
        neat_packing=data_args.neat_packing,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        compute_dtype=model_args.compute_dtype,
        **tokenizer_module,
    )
    gen_kwargs = generating_args.to_dict(obey_generation_config=True)
    gen_kwargs["eos_token_id"] = [tokenizer.eos_token_id]
    gen_kwargs["pad_token_id"] = tokenizer.pad_token_id
    return collator, DataflexSftTrainer, {"gen_kwargs": gen_kwargs}


def run_train(run: RunConfig, callbacks: list[Any] | None = None, on_started: Any = None) -> Any:
    """Run one training job; returns the trainer.

    Args:
        run: The parsed run config.
        callbacks: Extra ``TrainerCallback`` objects.
        on_started: Called once training setup succeeded (the CLI stops cleaning up after it).
    """
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.extras.ploting import plot_loss
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer
    from llamafactory.train.callbacks import LogCallback, ReporterCallback

    from dataflex_llamafactory.callback import DataflexCallback
    from dataflex_llamafactory.weighting import WeightController
    from dataflex_llamafactory.trainer import DomainCollator

    df = run.dataflex
    lf_args = prepare_lf_args(run)
    try:
        model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(lf_args)
    except ValueError as exc:
        raise ConfigError(f"LLaMA-Factory rejected the config: {exc}") from exc
    stage = finetuning_args.stage
    if stage not in SUPPORTED_STAGES:
        raise ConfigError(f"stage {stage!r} is not supported by dataflex-cli; use one of {SUPPORTED_STAGES}.")
    if not training_args.do_train:
        raise ConfigError("do_train is false: `dataflex-cli train` trains; set do_train: true.")
    check_datasets(data_args.dataset, data_args.dataset_dir)
    check_datasets(data_args.eval_dataset, data_args.dataset_dir, what="eval_dataset")

    all_callbacks = list(callbacks or [])
    all_callbacks.append(LogCallback())
    all_callbacks.append(ReporterCallback(model_args, data_args, finetuning_args, generating_args))

    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)

    controller = None
    if df.train_type == "static":
        dataset_module = get_dataset(template, model_args, data_args, training_args, stage=stage, **tokenizer_module)
    else:
        train_ds, domains, sizes, fingerprint = _domain_datasets(
            template, model_args, data_args, training_args, stage, tokenizer_module
        )
        dataset_module = {"train_dataset": train_ds}
        if data_args.eval_dataset:
            eargs = copy.copy(data_args)
            eargs.dataset = None
            ev = get_dataset(template, model_args, eargs, training_args, stage=stage, **tokenizer_module)
            if ev.get("eval_dataset") is not None:
                dataset_module["eval_dataset"] = ev["eval_dataset"]
        run_info = {
            "output_dir": training_args.output_dir,
            "train_type": df.train_type,
            "component": run.component.entry if run.component else None,
            "domains": domains,
            "seed": training_args.seed,
        }
        if df.train_type == "dynamic_weight":
            if df.train_step > 0:
                if training_args.max_steps > 0 and training_args.max_steps != df.train_step:
                    raise ConfigError(
                        f"max_steps: {training_args.max_steps} conflicts with train_step: "
                        f"{df.train_step}; set only one of them."
                    )
                training_args.max_steps = df.train_step
            controller = WeightController(
                run,
                domains=domains,
                seed=training_args.seed,
                output_dir=training_args.output_dir,
                logging_steps=int(training_args.logging_steps) if training_args.logging_steps >= 1 else 1,
            )
            if controller.needs_embeddings:
                controller.target_dataset = _target_dataset(
                    run, template, model_args, data_args, training_args, stage, tokenizer_module
                )
            run_info.update(max_steps=training_args.max_steps, rank=controller.rank, world_size=controller.world_size)
            log.info("DataFlex dynamic_weight: domains %s (rows %s), weighting from step %d",
                     domains, sizes, df.warmup_step)
        elif df.train_type == "dynamic_select":
            controller = _select_controller(run, training_args, train_ds, domains, sizes, fingerprint)
            run_info.update(max_steps=controller.total_steps, rank=controller.rank, world_size=controller.world_size)
            if _selector_needs_target(controller) or df.target_dataset:
                target, subtasks = _target_with_subtasks(
                    run, template, model_args, data_args, training_args, stage, tokenizer_module
                )
                controller.target = (target, subtasks)
        else:
            controller = _mix_controller(run, training_args, domains, sizes, fingerprint, len(tokenizer))
            run_info.update(max_steps=controller.total_steps, rank=controller.rank, world_size=controller.world_size)
        all_callbacks.insert(0, DataflexCallback(controller, run_info))

    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    collator, trainer_cls, extra = _collator_and_trainer(
        stage, model, tokenizer, template, model_args, data_args, training_args, generating_args, tokenizer_module
    )
    if controller is not None:
        collator = DomainCollator(collator)
        if getattr(controller, "wants_eval_loss", False) or getattr(controller, "wants_gate_loads", False):
            controller.eval_sets = _mixer_eval_sets(run, domains, template, model_args, data_args, training_args, stage, tokenizer_module)
            controller.eval_collator = collator
            controller.eval_batch_size = training_args.per_device_eval_batch_size
        if df.train_type == "dynamic_select":
            from dataflex_llamafactory.selection import SignalProvider

            target, subtasks = getattr(controller, "target", (None, None))
            controller.provider = SignalProvider(
                dataset_module["train_dataset"], target, subtasks, collator.inner, tokenizer,
                batch_size=training_args.per_device_eval_batch_size,
            )
        if getattr(controller, "doremi", False):
            controller.reference_model = _load_reference(controller, model, tokenizer, training_args)
            controller.row_tokens = _row_token_counts(dataset_module["train_dataset"], collator)

    trainer = trainer_cls(
        model=model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=collator,
        callbacks=all_callbacks,
        **extra,
        **dataset_module,
        **tokenizer_module,
    )
    if controller is not None:
        trainer.dataflex_controller = controller
        controller.trainer = trainer
        if training_args.should_save:
            atomic_write_json(
                Path(training_args.output_dir) / "dataflex" / "effective_config.json",
                {**run.effective(), "hash": run.effective_hash(), **controller.describe(),
                 "seed": training_args.seed},
            )
    if controller is not None and training_args.resume_from_checkpoint:
        # Fail on a missing or damaged dataflex state now, while the CLI still cleans up a fresh
        # output_dir; the controller's on_train_begin loads and checks the state in full later.
        from dataflex_llamafactory.controller import read_state

        read_state(training_args.resume_from_checkpoint)
    if on_started is not None:
        on_started()
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero() and finetuning_args.plot_loss:
        plot_loss(training_args.output_dir, keys=["loss"])
    if training_args.do_eval and dataset_module.get("eval_dataset") is not None:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        try:
            metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
        except (KeyError, OverflowError):
            pass
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer


def destroy_process_group() -> None:
    """Tear down torch.distributed if this process initialised it."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except Exception as exc:  # noqa: BLE001 - teardown must not mask the run's result
            log.warning("failed to destroy the process group: %s", exc)


