"""Plots of DataFlex decisions (matplotlib, Agg backend, written atomically).

matplotlib is imported inside each function, so importing this module costs nothing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dataflex_core import read_jsonl

__all__ = [
    "plot_proportions",
    "plot_weight_stats",
    "plot_selection",
    "plot_losses",
    "plot_timing",
    "PHASE_LABELS",
]

#: Human names of the phase keys of ``dataflex/timing.jsonl``.
PHASE_LABELS = {
    "feedback_s": "gather feedback",
    "eval_s": "eval-set signals",
    "update_s": "mixer update",
    "signals_s": "signals / features",
    "choose_s": "select",
    "weigh_s": "weighting",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_atomic(fig: Any, out_png: str | Path, dpi: int = 100) -> Path:
    plt = _pyplot()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def plot_proportions(
    decisions_log: str | Path,
    out_png: str | Path,
    *,
    total_steps: int,
    initial: Sequence[float],
    domains: Sequence[str],
    dpi: int = 100,
) -> Path:
    """Stacked step plot of the domain proportions in force at each training step."""
    plt = _pyplot()
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
    return _save_atomic(fig, out_png, dpi)


def plot_weight_stats(
    decisions_log: str | Path, out_png: str | Path, *, dpi: int = 100
) -> Path | None:
    """Min / mean / max and normalised entropy of the sample weights, and the per-domain mean."""
    plt = _pyplot()

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
    if all("normalized_entropy" in r["decision"] for r in records):
        ent = ax1.twinx()
        ent.plot(steps, [r["decision"]["normalized_entropy"] for r in records], color="0.4",
                 linestyle=":", label="entropy / log n")
        ent.set_ylim(0, 1.05)
        ent.set_ylabel("normalised entropy")
        lines = ax1.get_lines() + ent.get_lines()
        ax1.legend(lines, [str(ln.get_label()) for ln in lines], loc="upper center",
                   bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8, frameon=False)
    else:
        ax1.legend()
    domains = list(records[0]["decision"]["by_domain"])
    for d in domains:
        ax2.plot(steps, [r["decision"]["by_domain"].get(d) for r in records], label=d)
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("mean weight")
    ax2.set_title("mean weight by domain")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save_atomic(fig, out_png, dpi)


def plot_selection(
    decisions_log: str | Path, out_png: str | Path, *, domains: Sequence[str], dpi: int = 100
) -> Path:
    """Stacked bars: the composition by domain of every selection (warmup draws hatched)."""
    plt = _pyplot()
    import numpy as np

    records = read_jsonl(decisions_log)
    records = [r for r in records if r.get("kind") == "selector"]
    counts = np.array([[r["decision"]["by_domain"].get(d, 0) for d in domains] for r in records], dtype=float)
    counts = counts.reshape(len(records), len(domains))
    totals = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(records))
    bottom = np.zeros(len(records))
    for j, name in enumerate(domains):
        bars = ax.bar(x, frac[:, j], bottom=bottom, label=str(name), width=0.9)
        for b, r in zip(bars, records, strict=True):
            if r["decision"].get("warmup"):
                b.set_hatch("//")
        bottom = bottom + frac[:, j]
    ax.set_xticks(x, [str(r["step"]) for r in records], rotation=90 if len(records) > 20 else 0)
    ax.set_ylim(0, 1)
    ax.set_xlabel("decision at step (hatched: warmup draw)")
    ax.set_ylabel("share of selected rows")
    ax.set_title("DataFlex selection by domain")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save_atomic(fig, out_png, dpi)


def plot_losses(
    out_png: str | Path,
    *,
    train: tuple[Sequence[float], Sequence[float]],
    eval_points: tuple[Sequence[float], Sequence[float]] | None = None,
    lr: tuple[Sequence[float], Sequence[float]] | None = None,
    domain_series: Sequence[tuple[str, Sequence[float], Sequence[float], str, int]] = (),
    domain_title: str = "loss by domain",
    dpi: int = 80,
) -> Path:
    """The training loss (and learning rate) over steps; per-domain losses in a second panel.

    Args:
        out_png: Where to write the figure.
        train: ``(steps, losses)`` of the logged training loss.
        eval_points: ``(steps, losses)`` of the eval loss, if any.
        lr: ``(steps, learning rates)``, drawn on a second y axis.
        domain_series: ``(label, steps, losses, linestyle, colour index)`` per curve of the
            right panel (a domain keeps its colour across its train and eval curves).
        domain_title: Title of the right panel (says where the per-domain losses come from).
        dpi: Resolution.
    """
    plt = _pyplot()
    two = bool(domain_series)
    size = (10.5, 3.4) if two else (6.0, 3.4)
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=size, squeeze=False)
    ax = axes[0][0]
    if len(train[0]):
        marker = "." if len(train[0]) < 30 else None
        ax.plot(train[0], train[1], label="train loss", color="C0", marker=marker)
    if eval_points is not None and len(eval_points[0]):
        ax.plot(eval_points[0], eval_points[1], "o--", label="eval loss", color="C3")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("training loss", y=1.0)
    handles = list(ax.get_lines())
    if lr is not None and len(lr[0]):
        ax_lr = ax.twinx()
        ax_lr.plot(lr[0], lr[1], color="0.55", linestyle=":", label="learning rate")
        ax_lr.set_ylabel("learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        handles += list(ax_lr.get_lines())
    if handles:
        ax.legend(handles, [str(h.get_label()) for h in handles], loc="upper right", fontsize=8)
    if two:
        ax2 = axes[0][1]
        for label, xs, ys, style, colour in domain_series:
            ax2.plot(xs, ys, linestyle=style, color=f"C{colour % 10}", label=label)
        ax2.set_xlabel("optimizer step")
        ax2.set_ylabel("loss")
        ax2.set_title(domain_title, fontsize=10, y=1.0)
        ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.subplots_adjust(left=0.07, right=0.83, bottom=0.15, top=0.9, wspace=0.38)
    else:
        right = 0.86 if lr is not None else 0.96
        fig.subplots_adjust(left=0.12, right=right, bottom=0.15, top=0.9)
    return _save_atomic(fig, out_png, dpi)


def plot_timing(
    out_png: str | Path,
    *,
    steps: Sequence[int],
    phases: Mapping[str, Sequence[float]],
    dpi: int = 80,
) -> Path:
    """Stacked bars: seconds of each DataFlex phase at every decision (or logging interval).

    Args:
        out_png: Where to write the figure.
        steps: The step of each bar.
        phases: Phase key (``signals_s``, ...) -> seconds per bar, aligned with ``steps``.
        dpi: Resolution.
    """
    plt = _pyplot()
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    x = np.asarray(steps, dtype=float)
    gaps = np.diff(np.unique(x))
    width = max(0.8 * float(gaps.min()), 0.4) if len(gaps) else 0.8
    bottom = np.zeros(len(x))
    for i, (key, secs) in enumerate(phases.items()):
        vals = np.asarray(secs, dtype=float)
        label = PHASE_LABELS.get(key, key)
        ax.bar(x, vals, bottom=bottom, width=width, label=label, color=f"C{i % 10}")
        bottom = bottom + vals
    ax.set_xlabel("optimizer step of the decision / logging interval")
    ax.set_ylabel("seconds")
    ax.set_title("DataFlex time per update", y=1.0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.76, bottom=0.16, top=0.9)
    return _save_atomic(fig, out_png, dpi)
