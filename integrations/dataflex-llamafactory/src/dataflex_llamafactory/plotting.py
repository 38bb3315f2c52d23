"""Plots of DataFlex decisions (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dataflex_core import read_jsonl

__all__ = ["plot_proportions", "plot_weight_stats", "plot_selection"]


def plot_proportions(
    decisions_log: str | Path,
    out_png: str | Path,
    *,
    total_steps: int,
    initial: Sequence[float],
    domains: Sequence[str],
) -> Path:
    """Stacked step plot of the domain proportions in force at each training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = read_jsonl(decisions_log)
    records = [r for r in records if r.get("kind") == "mixer"]
    k = len(domains)
    props = np.zeros((max(total_steps, 1), k))
    current = np.asarray(initial, dtype=float)
    changes = {int(r["decision"]["applies_from_step"]): np.asarray(r["decision"]["proportions"]) for r in records}
    for s in range(props.shape[0]):
        if s in changes:
            current = changes[s]
        props[s] = current
    fig, ax = plt.subplots(figsize=(8, 4))
    # Draw the step function as explicit corner points (x repeated): fill_between's own
    # step="post" mode drops some bands on matplotlib 3.11.
    edges = np.arange(props.shape[0] + 1)
    xs = np.repeat(edges, 2)[1:-1]
    ys = np.repeat(props, 2, axis=0)
    lower = np.zeros(len(xs))
    for j, name in enumerate(domains):
        upper = lower + ys[:, j]
        ax.fill_between(xs, lower, upper, label=str(name), linewidth=0)
        lower = upper
    ax.set_xlim(0, props.shape[0])
    ax.set_ylim(0, 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("domain proportion")
    ax.set_title("DataFlex domain proportions")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".proportions.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _save_atomic(fig: object, out_png: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)  # type: ignore[attr-defined]
        os.replace(tmp, out)
    finally:
        plt.close(fig)  # type: ignore[arg-type]
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def plot_weight_stats(decisions_log: str | Path, out_png: str | Path) -> Path | None:
    """Min / mean / max of the sample weights and the per-domain mean weight over the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(decisions_log)
    records = [r for r in records if r.get("kind") == "weighter" and r["step"] >= 0]
    if not records:
        return None
    steps = [r["step"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("min", "mean", "max"):
        ax1.plot(steps, [r["decision"][key] for r in records], label=key)
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("sample weight")
    ax1.set_title("weight distribution")
    ax1.legend()
    domains = list(records[0]["decision"]["by_domain"])
    for d in domains:
        ax2.plot(steps, [r["decision"]["by_domain"].get(d) for r in records], label=d)
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("mean weight")
    ax2.set_title("mean weight by domain")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save_atomic(fig, out_png)


def plot_selection(decisions_log: str | Path, out_png: str | Path, *, domains: Sequence[str]) -> Path:
    """Stacked bars: the composition by domain of every selection (warmup draws hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = read_jsonl(decisions_log)
    records = [r for r in records if r.get("kind") == "selector"]
    counts = np.array([[r["decision"]["by_domain"].get(d, 0) for d in domains] for r in records], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(records))
    bottom = np.zeros(len(records))
    for j, name in enumerate(domains):
        bars = ax.bar(x, frac[:, j] if len(records) else [], bottom=bottom, label=str(name), width=0.9)
        for b, r in zip(bars, records, strict=True):
            if r["decision"].get("warmup"):
                b.set_hatch("//")
        bottom = bottom + (frac[:, j] if len(records) else 0)
    ax.set_xticks(x, [str(r["step"]) for r in records], rotation=90 if len(records) > 20 else 0)
    ax.set_ylim(0, 1)
    ax.set_xlabel("decision at step (hatched: warmup draw)")
    ax.set_ylabel("share of selected rows")
    ax.set_title("DataFlex selection by domain")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".selection.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
