"""Plots of DataFlex decisions (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["plot_proportions"]


def plot_proportions(
    decisions_log: str | Path,
    out_png: str | Path,
    *,
    total_steps: int,
    initial: Sequence[float],
    domains: Sequence[str],
    warmup_applies: bool = True,
) -> Path:
    """Stacked step plot of the domain proportions in force at each training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = [json.loads(ln) for ln in Path(decisions_log).read_text().splitlines() if ln.strip()]
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
