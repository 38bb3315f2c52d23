"""Helpers of ``selection.py``: the bundled data split, in-process ``dataflex-cli`` calls, the
signal memo, statistics and figures. Not a public API."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "examples" / "data"
DOMAINS = ("news", "wiki", "code", "math")
TARGET_DOMAIN = "code"


# --------------------------------------------------------------------------- data


def _read_jsonl(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_data(
    folder: Path,
    docs_per_domain: int | None,
    heldout_docs: int,
    target_docs: int | None = None,
    heldout_every: int = 5,
) -> dict[str, Any]:
    """Write the experiment's dataset folder and return its composition.

    The pool is the four bundled domains. Every ``heldout_every``-th document of ``code.jsonl`` is
    taken out of the pool: the first ``heldout_docs`` of them are ``code_heldout``, the
    validation set the target loss is measured on (never seen by a selector or a training run).
    ``code_target`` is ``code_eval.jsonl`` (its first ``target_docs`` documents; None keeps all),
    the target set the selectors score the pool against. ``docs_per_domain`` keeps the first
    documents of each domain (None keeps all).
    """
    folder.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    for domain in DOMAINS:
        rows = _read_jsonl(DATA / f"{domain}.jsonl")
        if domain == TARGET_DOMAIN:
            held = [r for i, r in enumerate(rows) if i % heldout_every == heldout_every - 1]
            rows = [r for i, r in enumerate(rows) if i % heldout_every != heldout_every - 1]
            if heldout_docs > len(held):
                raise SystemExit(f"only {len(held)} held-out {domain} documents exist")
            (folder / "code_heldout.jsonl").write_text("\n".join(held[:heldout_docs]) + "\n")
        if docs_per_domain is not None:
            rows = rows[:docs_per_domain]
        (folder / f"{domain}.jsonl").write_text("\n".join(rows) + "\n")
        sizes[domain] = len(rows)
    target = _read_jsonl(DATA / "code_eval.jsonl")[:target_docs]
    (folder / "code_target.jsonl").write_text("\n".join(target) + "\n")
    for name in (*DOMAINS, "code_target", "code_heldout"):
        info[name] = {"file_name": f"{name}.jsonl", "columns": {"prompt": "text"}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return {
        "pool_docs": sizes,
        "heldout_docs": heldout_docs,
        "target_docs": len(target),
    }


# --------------------------------------------------------------------------- in-process CLI


@contextlib.contextmanager
def redirect_fds(log_path: Path) -> Iterator[None]:
    """Send fd 1 and 2 (Python and C writers, tqdm, LLaMA-Factory's handlers) to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class Cli:
    """Runs ``dataflex-cli`` commands in this process (one import of torch, transformers and
    LLaMA-Factory for the whole experiment), each with its output in its own log file."""

    def __init__(self, log_dir: Path, echo: bool = True) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.calls: list[dict[str, Any]] = []

    def __call__(self, name: str, *argv: str) -> float:
        import gc

        from dataflex_llamafactory.cli import main

        log = self.log_dir / f"{name}.log"
        log.unlink(missing_ok=True)
        t0, c0 = time.perf_counter(), time.process_time()
        with redirect_fds(log):
            try:
                rc = main(list(argv))
            except SystemExit as exc:  # argparse
                rc = exc.code
            except BaseException as exc:  # noqa: BLE001 - reported with the log below
                rc = f"{type(exc).__name__}: {exc}"
                import traceback

                traceback.print_exc()
        gc.collect()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.calls.append({"name": name, "argv": list(argv), "wall_s": wall, "cpu_s": cpu})
        if rc != 0:
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"`dataflex-cli {' '.join(argv)}` failed ({rc}); {log}:\n{tail}")
        if self.echo:
            print(f"  {name}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        return wall


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# --------------------------------------------------------------------------- signal memo


def _model_key(model: Any) -> str:
    """Identity of a model for the memo: its source and a hash of its trainable weights (all
    weights under full fine-tuning; the adapter under LoRA, whose frozen base is the source)."""
    import torch

    cached = getattr(model, "_bench_memo_key", None)
    if cached is not None:  # one model object per `select` call: hash it once
        return cached
    h = hashlib.sha256(str(getattr(model, "name_or_path", "")).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                h.update(name.encode())
                h.update(p.detach().float().cpu().numpy().tobytes())
    key = h.hexdigest()
    model._bench_memo_key = key
    return key


def _rows_key(provider: Any, split: str) -> str:
    """Content hash of a split's token ids (datasets' own fingerprints are not stable across
    runs that build the same rows), computed once per provider and split."""
    cache = provider.__dict__.setdefault("_bench_rows_key", {})
    if split not in cache:
        dataset = provider._dataset(split)
        h = hashlib.sha256()
        for ids in dataset["input_ids"]:
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(b"|")
        cache[split] = h.hexdigest()
    return cache[split]


def install_signal_memo() -> dict[str, int]:
    """Compute each model signal of the offline selections once per process.

    Embeddings, per-sample losses and gradient features depend on the model, the rows and the
    signal's options, never on the selection seed or the budget. The memo keys on all of those
    (the rows through a hash of their token ids, the model through a hash of its trainable
    weights) and returns a copy of the stored value, so every `dataflex-cli select`
    still runs its full path (load, tokenise, choose, write) but the 3 budgets x 3 seeds of a
    method pay for the signals once. Returns hit/miss counters.
    """
    from dataflex_llamafactory import selection as sel

    stats = {"hits": 0, "misses": 0}
    if getattr(sel.SignalProvider, "_bench_memo", None) is not None:
        return sel.SignalProvider._bench_memo[1]
    original = sel.SignalProvider.compute
    store: dict[str, Any] = {}

    def compute(self: Any, sig: Any, model: Any, optimizer: Any = None, step: int = 0) -> Any:
        opts = dict(sig.options)
        if (
            sig.kind not in ("loss", "embedding", "grad_feature")
            or optimizer is not None
            or opts.get("reference") == "initial"
        ):
            return original(self, sig, model, optimizer, step)
        key = json.dumps(
            [
                sig.kind,
                sig.split,
                None if sig.indices is None else [int(i) for i in sig.indices],
                {k: v for k, v in opts.items() if k != "cache_dir"},  # where, not what
                _rows_key(self, sig.split),
                _model_key(model),
            ],
            sort_keys=True,
            default=str,
        )
        if key in store:
            stats["hits"] += 1
        else:
            stats["misses"] += 1
            store[key] = original(self, sig, model, optimizer, step)
        value = store[key]
        return value.copy() if isinstance(value, np.ndarray) else value

    sel.SignalProvider.compute = compute
    sel.SignalProvider._bench_memo = (original, stats)
    return stats


# --------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(mean: float, std: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


#: A per-seed difference smaller than this (half the last digit the tables show) is a tie.
TIE = 5e-4


def paired_delta(diffs: Sequence[float], lower_is_better: bool, digits: int = 3) -> str:
    """``Δ mean ± std (better on k/n)`` of per-seed paired differences (method − baseline); a
    seed counts as better when its difference is beyond ``TIE`` in the good direction."""
    if not diffs:
        return "n/a"
    m, sd = mean_std(diffs)
    sign = -1.0 if lower_is_better else 1.0
    better = sum(sign * d > TIE for d in diffs)
    return f"{m:+.{digits}f} ± {sd:.{digits}f} (better on {better}/{len(diffs)})"


def beat_count(diffs: Sequence[float], lower_is_better: bool) -> int:
    sign = -1.0 if lower_is_better else 1.0
    return sum(sign * d > TIE for d in diffs)


# --------------------------------------------------------------------------- figures


def plot(results: dict[str, Any], out_loss: Path, out_precision: Path) -> None:
    """Target loss and in-domain precision against the budget, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    for what, path in (("loss", out_loss), ("precision", out_precision)):
        fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            res = results[model]
            budgets = res["budgets"]
            k = len(res["methods"])
            for i, method in enumerate(res["methods"]):
                pts = [res["cells"].get(f"{method}@{b}") for b in budgets]
                shift = 1.0 + 0.025 * (i - (k - 1) / 2)  # side by side, so error bars stay apart
                xs = [100 * b * shift for b, c in zip(budgets, pts, strict=True) if c]
                ys = [c[what][0] for c in pts if c]
                es = [c[what][1] for c in pts if c]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
            full = res["full"]
            if what == "loss":
                m, s = full["loss"]
                ax.axhline(m, color="k", ls="--", lw=1, label="full data")
                ax.axhspan(m - s, m + s, color="k", alpha=0.08)
                ax.set_ylabel("target validation loss (held-out code)")
            else:
                ax.axhline(res["pool_share"], color="k", ls="--", lw=1, label="pool share (= full)")
                ax.set_ylabel("in-domain precision (share of code rows)")
                ax.set_ylim(-0.02, 1.02)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks([100 * b for b in budgets])
            ax.set_xticklabels([f"{100 * b:g}%" for b in budgets])
            if len(budgets) == 1:
                ax.set_xlim(100 * budgets[0] / 1.25, 100 * budgets[0] * 1.25)
            ax.set_xlabel("budget (share of the pool)")
            ax.set_title(f"{res['label']} ({res['seeds']} seed(s), mean ± std)", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
