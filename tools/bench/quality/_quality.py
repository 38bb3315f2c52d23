"""Shared pieces of the quality experiments: data, training through ``dataflex-cli``, validation
loss per domain, statistics over seeds, tables and figures.

Every experiment script takes the same arguments (``--seeds``, ``--tiny``, ``--out``,
``--no-docs``), trains the bundled tiny Llama with ``dataflex-cli train``'s own entry point
(in this process, see :class:`Trainer`) and evaluates each saved final model on held-out
per-domain sets (:func:`eval_losses`). Not a public API.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import REPO, write_section  # noqa: E402

# Before torch/transformers are imported (trainings run in this process): no hub, and one
# thread (the tiny model is as fast with one, and robust on a shared machine).
for _var, _val in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("DATAFLEX_STRICT_PLUGINS", "1"),
    ("OMP_NUM_THREADS", "1"),
    ("MKL_NUM_THREADS", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_var, _val)
for _var in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT"):
    os.environ.pop(_var, None)

RESULTS_PAGE = REPO / "docs" / "results.md"
FIGURES = REPO / "docs" / "results"
EXAMPLES_DATA = REPO / "examples" / "data"

#: The bundled pretraining domains; their ``<domain>_eval`` files are the validation sets.
REAL = ["news", "wiki", "code", "math"]
#: The training domains of the quality experiments: the real ones plus random-character noise.
DOMAINS = [*REAL, "noise"]
#: The noise domain of docs/mixers/noise-experiment.md and tests/test_noise_domain.py: 250 rows
#: of 800 characters drawn uniformly from "abcd" with random.Random(0). Its validation set is
#: drawn the same way with random.Random(1) (16 rows, like the bundled *_eval sets).
NOISE_ALPHABET, NOISE_CHARS, NOISE_ROWS, NOISE_SEED = "abcd", 800, 250, 0
NOISE_EVAL_ROWS, NOISE_EVAL_SEED = 16, 1
#: Rows of each real domain's *training* file used as a target set (ADAPT's anchors). They are
#: training rows, so the validation sets (*_eval) stay unseen by every method.
TARGET_ROWS = 16


def parse_args(
    description: str, argv: Sequence[str] | None = None, variants: Sequence[str] | None = None
) -> argparse.Namespace:
    """The CLI contract shared by every quality script (plus ``--variants`` where given: a subset
    to run, for measuring speed; a subset never writes docs)."""
    ap = argparse.ArgumentParser(description=description)
    if variants is not None:
        ap.add_argument(
            "--variants",
            nargs="+",
            choices=list(variants),
            default=list(variants),
            help="run only these variants (for measuring speed; implies --no-docs)",
        )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="a few steps on the first 2 seeds at most, for tests; writes only under --out",
    )
    ap.add_argument("--out", type=Path, default=None, help="folder for runs and results")
    ap.add_argument(
        "--no-docs", action="store_true", help="do not write docs/results.md or docs/results/"
    )
    args = ap.parse_args(argv)
    if args.tiny:
        args.seeds = args.seeds[:2]
        args.no_docs = True
    if variants is not None and list(args.variants) != list(variants):
        args.no_docs = True
    return args


def _noise_rows(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(NOISE_ALPHABET) for _ in range(NOISE_CHARS)) for _ in range(n)]


def write_data(folder: Path) -> Path:
    """The bundled domains, their eval sets, ``noise``/``noise_eval`` and ``<domain>_target``."""
    folder.mkdir(parents=True, exist_ok=True)
    bundled = json.loads((EXAMPLES_DATA / "dataset_info.json").read_text())
    info: dict[str, Any] = {}
    for name in REAL:
        for split in (name, f"{name}_eval"):
            shutil.copy(EXAMPLES_DATA / bundled[split]["file_name"], folder)
            info[split] = bundled[split]
        rows = (EXAMPLES_DATA / bundled[name]["file_name"]).read_text().splitlines()[:TARGET_ROWS]
        (folder / f"{name}_target.jsonl").write_text("\n".join(rows) + "\n")
        info[f"{name}_target"] = {
            "file_name": f"{name}_target.jsonl",
            "columns": {"prompt": "text"},
        }
    for split, n, seed in (
        ("noise", NOISE_ROWS, NOISE_SEED),
        ("noise_eval", NOISE_EVAL_ROWS, NOISE_EVAL_SEED),
    ):
        with (folder / f"{split}.jsonl").open("w") as f:
            for text in _noise_rows(n, seed):
                f.write(json.dumps({"text": text}) + "\n")
        info[split] = {"file_name": f"{split}.jsonl", "columns": {"prompt": "text"}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return folder


def base_config(
    data: Path, out: Path, seed: int, *, batch: int, domains: Sequence[str] = DOMAINS
) -> dict[str, Any]:
    """The quickstart's model and optimiser settings on ``domains``; the seed sets both the model
    initialisation (``builtin:tiny-llama?seed=N``) and LLaMA-Factory's ``seed`` (data order,
    mixture sampler, component seeds)."""
    cfg = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    cfg.pop("dataflex")
    cfg.update(
        model_name_or_path=f"builtin:tiny-llama?seed={seed}",
        seed=seed,
        dataset=",".join(domains),
        dataset_dir=str(data),
        output_dir=str(out),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        save_strategy="no",
        logging_steps=10,
        plot_loss=False,
        overwrite_cache=False,  # reuse the tokenised datasets between the runs of one script
    )
    cfg.pop("save_steps", None)
    return cfg


class Trainer:
    """Runs ``dataflex-cli train`` on config dicts, in this process, one at a time.

    ``dataflex_llamafactory.cli.main(["train", path])`` is exactly what the ``dataflex-cli``
    command runs. Running it in-process saves the ~10 s of torch/transformers/LLaMA-Factory
    imports that a subprocess pays per training (about 45 trainings per default-size suite). A
    training in a process that already ran others gives bitwise the same results as in a fresh
    process: checked by hand for ODM after two other runs (training losses), and for ADAPT,
    loss/identity and ODM at --tiny size against a script run of that variant alone
    (validation losses and weights). Each run's stdout and stderr go to
    ``<root>/logs/<name>.log`` (redirected at the file-descriptor level, so LLaMA-Factory's
    logging and progress bars land there too); a failed run raises with the log's tail.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wall: dict[str, float] = {}

    def __call__(self, name: str, cfg: dict[str, Any]) -> Path:
        """Train ``cfg`` (written to ``<root>/configs/<name>.yaml``); returns its output_dir."""
        path = self.root / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return self.run_file(name, path, Path(cfg["output_dir"]))

    def run_file(
        self, name: str, path: Path, output_dir: Path, overrides: Sequence[str] = ()
    ) -> Path:
        """Train the config file ``path`` (with ``key=value`` overrides) like ``dataflex-cli
        train`` does."""
        from dataflex_llamafactory.cli import main

        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        error: BaseException | None = None
        rc: int | None = None
        cwd = os.getcwd()
        with log.open("w") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                os.chdir(REPO)
                rc = main(["train", str(path), *overrides])
            except BaseException as exc:  # noqa: BLE001 - reported below with the log
                error = exc
                import traceback

                traceback.print_exc()
            finally:
                os.chdir(cwd)
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        self.wall[name] = time.perf_counter() - t0
        if error is not None or rc != 0:
            tail = log.read_text()[-4000:]
            raise RuntimeError(
                f"training {name} failed (exit {rc}, {error!r}); end of {log}:\n{tail}"
            )
        print(f"  {name}: {self.wall[name]:.1f} s", flush=True)
        return output_dir


def _blocks(tokenizer: Any, texts: Iterable[str], cutoff: int) -> list[list[int]]:
    """LLaMA-Factory's packed pretraining rows (text + eos, concatenated, cut into ``cutoff``
    blocks), keeping the last partial block so that every validation token counts."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
    blocks = [ids[i : i + cutoff] for i in range(0, len(ids), cutoff)]
    if getattr(tokenizer, "add_bos_token", False):
        for b in blocks:
            b[0] = tokenizer.bos_token_id
    return [b for b in blocks if len(b) > 1]


def eval_blocks(
    tokenizer: Any, data: Path, domain: str, *, cutoff: int = 128, rows: int | None = None
) -> list[list[int]]:
    """The packed validation blocks of ``<domain>_eval`` (its first ``rows`` rows if given)."""
    info = json.loads((data / "dataset_info.json").read_text())
    lines = [
        r
        for r in (data / info[f"{domain}_eval"]["file_name"]).read_text().splitlines()
        if r.strip()
    ]
    return _blocks(tokenizer, (json.loads(r)["text"] for r in lines[:rows]), cutoff)


def eval_losses(
    model_dir: Path,
    data: Path,
    domains: Sequence[str],
    *,
    cutoff: int = 128,
    rows: int | None = None,
) -> dict[str, float]:
    """Validation loss of the final model in ``model_dir`` on each ``<domain>_eval`` set (its
    first ``rows`` rows if given): the token mean of the next-token cross-entropy over all
    blocks (``dataflex_ops.per_sample_loss``, summed per block and divided by the token count)."""
    import torch
    import transformers
    from dataflex_ops import per_sample_loss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()  # LLaMA-Factory leaves it at INFO
    transformers.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: dict[str, float] = {}
    for d in domains:
        blocks = eval_blocks(tokenizer, data, d, cutoff=cutoff, rows=rows)
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(blocks), 32):
                chunk = blocks[i : i + 32]
                width = max(len(b) for b in chunk)
                ids = torch.full((len(chunk), width), tokenizer.pad_token_id or 0, dtype=torch.long)
                labels = torch.full((len(chunk), width), -100, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, b in enumerate(chunk):
                    ids[j, : len(b)] = torch.tensor(b)
                    labels[j, : len(b)] = torch.tensor(b)
                    mask[j, : len(b)] = 1
                logits = model(input_ids=ids, attention_mask=mask).logits
                sums, valid = per_sample_loss(logits, labels, reduction="sum")
                total += float(sums[valid].sum())
                count += int((labels[:, 1:] != -100).sum())
        out[d] = total / count
    return out


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std (0 for one value), min and max over seeds."""
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def fmt(s: dict[str, float], digits: int = 3) -> str:
    """``mean ± std`` (just the mean for one seed)."""
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def save_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False))


def publish(name: str, body: str, results: Any, root: Path, no_docs: bool) -> Any:
    """Save ``results.json`` and ``results.md`` under ``root``, print the section, and write it
    into docs/results.md unless ``no_docs``. Returns ``results``."""
    save_json(root / "results.json", results)
    (root / "results.md").write_text(body + "\n")
    print(body)
    if not no_docs:
        write_section(name, body, page=RESULTS_PAGE)
    return results


def out_dir(args: argparse.Namespace, name: str) -> Path:
    out = args.out if args.out is not None else REPO / "outputs" / "quality" / name
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def figure_dir(args: argparse.Namespace, out: Path) -> Path:
    """docs/results/ for a default run that writes docs, else ``<out>/figures``."""
    d = FIGURES if not args.no_docs else out / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- metrics and tables


def para(text: str) -> str:
    """A paragraph written over several source lines, as one line of Markdown."""
    return " ".join(text.split())


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def metrics(loss: dict[str, float]) -> dict[str, float]:
    """Per-domain validation losses plus the real-domain average and the worst real domain
    (the noise domain is kept apart: shown, but in neither aggregate)."""
    real = [loss[d] for d in REAL]
    out = dict(loss)
    out["real avg"] = statistics.fmean(real)
    out["worst real"] = max(real)
    return out


def paired(runs: dict[str, dict[str, Any]], variant: str, baseline: str, key: str) -> list[float]:
    """Per-seed differences ``variant − baseline`` of ``runs[v][seed]["metrics"][key]``."""
    seeds = [s for s in runs[baseline] if s in runs[variant]]
    return [runs[variant][s]["metrics"][key] - runs[baseline][s]["metrics"][key] for s in seeds]


#: A per-seed difference smaller than this (half the last digit the tables show) is a tie.
TIE = 5e-4
#: How the Δ columns read, for the text above each table.
DELTA_NOTE = para(f"""Δ columns are per-seed paired differences (method − baseline; negative is
    better), mean ± std, with the number of seeds on which the method was better by more than
    {TIE} nats.""")


def fmt_delta(diffs: Sequence[float], digits: int = 3) -> str:
    """``Δ mean ± std (better on k/n)`` for per-seed loss differences (lower is better; a seed
    counts as better when its difference is below ``-TIE``)."""
    s = summarise(diffs)
    better = sum(d < -TIE for d in diffs)
    return f"{fmt(s, digits)} (better on {better}/{len(diffs)})"


def _beat(baseline_label: str, diffs: Sequence[float]) -> str:
    n = len(diffs)
    better = sum(d < -TIE for d in diffs)
    if all(abs(d) <= TIE for d in diffs):
        return f"tied with {baseline_label} on every seed (|Δ| ≤ {TIE})"
    if better == n:
        return f"beat {baseline_label} on every seed"
    if better == 0:
        return f"did not beat {baseline_label} on any seed"
    return f"beat {baseline_label} on {better} of {n} seeds only"


def beat_sentence(
    label: str, baseline_label: str, runs: dict[str, dict[str, Any]], variant: str, baseline: str
) -> str:
    """One plain sentence, computed from the per-seed differences: did the method beat the
    baseline in the real-domain average and in the worst real domain?"""
    avg = paired(runs, variant, baseline, "real avg")
    worst = paired(runs, variant, baseline, "worst real")
    return (
        f"{label} {_beat(baseline_label, avg)} in real-average loss "
        f"(Δ {fmt(summarise(avg))} nats), and {_beat(baseline_label, worst)} in worst-real-domain "
        f"loss (Δ {fmt(summarise(worst))} nats)."
    )


def loss_table(
    runs: dict[str, dict[str, Any]],
    labels: dict[str, str],
    baselines: Sequence[str],
    domains: Sequence[str] = DOMAINS,
) -> list[str]:
    """Validation loss per domain (mean ± std over seeds) with Δ columns against the baselines."""
    cols = [*domains, "real avg", "worst real"]
    head = ["method", *cols]
    for b in baselines:
        head += [f"Δ real avg vs {labels[b]}", f"Δ worst vs {labels[b]}"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for v, label in labels.items():
        if v not in runs:
            continue
        row = [label]
        for c in cols:
            row.append(fmt(summarise([r["metrics"][c] for r in runs[v].values()])))
        for b in baselines:
            if v == b:
                row += ["baseline", "baseline"]
            else:
                row += [
                    fmt_delta(paired(runs, v, b, "real avg")),
                    fmt_delta(paired(runs, v, b, "worst real")),
                ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


# --------------------------------------------------------------------------- figures


def grouped_bars(
    path: Path,
    groups: Sequence[str],
    series: dict[str, list[list[float]]],
    *,
    ylabel: str,
    title: str,
    delta_from: str | None = None,
) -> Path:
    """Bars per group and series: the mean over seeds with min-max error bars
    (``series[label][i]`` holds the per-seed values of group ``i``, seeds in the same order for
    every label). With ``delta_from``, a second panel shows each series minus that one, paired
    per seed (negative: lower than the baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [("values", series)]
    if delta_from is not None:
        base = series[delta_from]
        diffs = {
            label: [
                [a - b for a, b in zip(v, bv, strict=True)]
                for v, bv in zip(vals, base, strict=True)
            ]
            for label, vals in series.items()
            if label != delta_from
        }
        panels.append((f"Δ vs {delta_from}", diffs))
    width_in = min(14.0, max(7.0, 0.35 * len(groups) * max(1, len(series))))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width_in, 3.4 * len(panels)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {label: colors[j % len(colors)] for j, label in enumerate(series)}
    x = np.arange(len(groups))
    for ax, (kind, data) in zip(axes[:, 0], panels, strict=True):
        width = 0.8 / max(1, len(data))
        for j, (label, vals) in enumerate(data.items()):
            means = np.array([np.mean(v) for v in vals])
            # clipped at 0: the mean of equal values can exceed their max by one rounding step
            lo = np.maximum(means - np.array([np.min(v) for v in vals]), 0.0)
            hi = np.maximum(np.array([np.max(v) for v in vals]) - means, 0.0)
            pos = x + (j - (len(data) - 1) / 2) * width
            ax.bar(pos, means, width, yerr=[lo, hi], capsize=2, label=label, color=color[label])
        ax.set_xticks(x, groups)
        ax.set_ylabel(ylabel if kind == "values" else f"{kind}")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(title, fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = min(3, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    height = fig.get_size_inches()[1]
    legend_rows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, (0.1 + 0.25 * legend_rows) / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rel(path: Path, page: Path = RESULTS_PAGE) -> str:
    """``path`` relative to the page's folder (for Markdown links)."""
    try:
        return os.path.relpath(path, page.parent)
    except ValueError:
        return str(path)
