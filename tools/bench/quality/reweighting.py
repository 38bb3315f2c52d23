"""Quality of sample reweighting: no weighting against loss-based weighting and ADAPT.

The bundled tiny Llama is pretrained from scratch on the same data as the mixing experiment: the
four bundled text domains plus the ``noise`` domain of random characters, read by LLaMA-Factory's
own loader (the datasets concatenated and shuffled, so each domain's share is its size; noise is
the largest). Every run trains the same steps on the same batches in the same order (same seed);
only the per-sample weights of the loss differ (``train_type: dynamic_weight``, from step 0):

* **none (uniform)**: the ``uniform`` weighter, which equals unweighted training;
* **loss / <strategy>**: the ``loss`` weighter (arXiv 2502.06733) with each strategy of the spec
  (``linupper``, ``quadratic``, ``extremes``, ``upper``, ``identity``, ``uniform``), defaults
  otherwise (delta 1, temperature 1, ``loss_base: sample_mean``); ``loss / uniform`` is true
  uniform weights and must tie with the baseline;
* **ADAPT**: the ``adapt`` weighter (defaults: tau 1, anchors refreshed every 50 steps) with the
  first 16 training rows of each real domain as its target set (training rows, so the validation
  sets stay unseen).

Each final model is evaluated on the held-out ``<domain>_eval`` sets and a held-out noise set
(token-mean next-token loss). The real-domain average ("overall") and the worst real domain
leave noise out. The weight table shows how much each method weighted each domain.

    uv run --frozen python tools/bench/quality/reweighting.py \\
        [--seeds 0 1 2] [--tiny] [--out DIR] [--no-docs]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality as q  # noqa: E402

NAME = "quality-reweighting"
STRATEGIES = ["linupper", "quadratic", "extremes", "upper", "identity", "uniform"]
LABELS = {
    "none": "none (uniform weighter)",
    **{f"loss-{s}": f"loss / {s}" for s in STRATEGIES},
    "adapt": "ADAPT",
}
BASELINE = "none"
TARGET = ",".join(f"{d}_target" for d in q.REAL)

# Sizes. Measured on this 2-core VM with this script (one process, OMP_NUM_THREADS=1) while other
# engineers' jobs kept the load average at 3.3-3.6, seed 0 at default size (200 steps, G = 8):
# the loss weighter 17.0 s and ADAPT 17.5 s per training (setup included), evaluation ~1.5 s per
# model; the first training of a process also pays the imports (~14 s). Extrapolation: 8 runs x
# ~18.5 s = ~150 s per seed, so ~8 min for seeds 0 1 2 on the loaded machine; alone on the
# machine a single-threaded run gets a whole core, so it can only be faster (up to ~2x).
SIZES: dict[str, dict[str, int]] = {
    "default": {"batch": 8, "steps": 200},
    "tiny": {
        "batch": 4,
        "steps": 4,
        "eval_rows": 4,
    },  # tiny: the first 4 rows of each validation set
}


def config(variant: str, data: Path, out: Path, seed: int, size: dict[str, int]) -> dict[str, Any]:
    cfg = q.base_config(data, out, seed, batch=size["batch"])
    block: dict[str, Any] = {
        "train_type": "dynamic_weight",
        "warmup_step": 0,
        "train_step": size["steps"],
        "plot": False,
    }
    if variant == "none":
        block["component_name"] = "uniform"
    elif variant == "adapt":
        block.update(component_name="adapt", target_dataset=TARGET)
    else:
        block.update(
            component_name="loss", component_params={"strategy": variant.removeprefix("loss-")}
        )
    cfg["dataflex"] = block
    return cfg


def domain_weights(out: Path) -> dict[str, float | None]:
    """Per domain: the mean over logging windows of (mean weight of the domain's rows ÷ mean
    weight of all rows); 1 is neutral."""
    recs = [
        json.loads(x)
        for x in (out / "dataflex" / "decisions.jsonl").read_text().splitlines()
        if x.strip()
    ]
    recs = [r for r in recs if r.get("kind") == "weighter" and r["decision"].get("by_domain")]
    rel: dict[str, list[float]] = {d: [] for d in q.DOMAINS}
    for r in recs:
        mean = r["decision"]["mean"]
        for d, w in r["decision"]["by_domain"].items():
            if w is not None and mean > 0:
                rel[d].append(w / mean)
    return {d: (statistics.fmean(v) if v else None) for d, v in rel.items()}


def report(results: dict[str, Any], figures: Path, page: Path) -> str:
    runs = results["runs"]
    seeds = results["seeds"]
    size = results["size"]
    labels = {v: LABELS[v] for v in LABELS if v in runs}
    setup = q.para(f"""Tiny Llama pretrained from scratch, {size["steps"]} steps at G =
        {size["batch"]}, weighting from step 0. Token-mean validation loss in nats, mean ± std
        over seeds; "real avg" (the overall loss) and "worst real" leave the noise domain out.""")
    lines = [
        f"### Reweighting: validation loss per domain ({q.plural(len(seeds), 'seed')}: "
        f"{', '.join(map(str, seeds))})",
        "",
        f"{setup} {q.DELTA_NOTE}",
        "",
        *q.loss_table(runs, labels, [BASELINE] if BASELINE in runs else []),
        "",
    ]
    for v in labels:
        if v != BASELINE and BASELINE in runs:
            lines.append("- " + q.beat_sentence(labels[v], "no weighting", runs, v, BASELINE))
    lines += [
        "",
        "#### Weight per domain",
        "",
        q.para("""Mean over logging windows (every 10 steps) of the mean weight of a domain's
            rows divided by the mean weight of all rows (1 = neutral), mean ± std over seeds."""),
        "",
        "| method | " + " | ".join(q.DOMAINS) + " |",
        "| --- |" + " ---: |" * len(q.DOMAINS),
    ]
    for v, label in labels.items():
        cells = []
        for d in q.DOMAINS:
            vals = [
                r["domain_weight"][d] for r in runs[v].values() if r["domain_weight"][d] is not None
            ]
            cells.append(q.fmt(q.summarise(vals)) if vals else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    groups = [*q.DOMAINS, "real avg", "worst real"]
    png = q.grouped_bars(
        figures / "reweighting_loss.png",
        groups,
        {labels[v]: [[r["metrics"][g] for r in runs[v].values()] for g in groups] for v in labels},
        ylabel="validation loss (nats)",
        title=f"Reweighting: validation loss, mean and min-max over {q.plural(len(seeds), 'seed')}",
        delta_from=labels.get(BASELINE),
    )
    lines += [
        "",
        f"![validation loss per domain]({q.rel(png, page)})",
        "",
        f"Wall time: {results['wall_s']:.0f} s for {q.plural(len(seeds), 'seed')} "
        f"({results['trainings']} trainings).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = q.parse_args(__doc__.split("\n\n")[0], argv, variants=list(LABELS))
    size = SIZES["tiny" if args.tiny else "default"]
    root = q.out_dir(args, "reweighting")
    data = q.write_data(root / "data")
    train = q.Trainer(root)
    t0 = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {v: {} for v in LABELS if v in args.variants}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        for v in runs:
            out = train(f"s{seed}-{v}", config(v, data, root / f"s{seed}" / v, seed, size))
            loss = q.eval_losses(out, data, q.DOMAINS, rows=size.get("eval_rows"))
            runs[v][str(seed)] = {
                "loss": loss,
                "metrics": q.metrics(loss),
                "domain_weight": domain_weights(out),
            }
    results = {
        "name": NAME,
        "seeds": args.seeds,
        "size": size,
        "domains": q.DOMAINS,
        "runs": runs,
        "wall_s": time.perf_counter() - t0,
        "trainings": len(train.wall),
        "train_wall_s": train.wall,
    }
    page = q.RESULTS_PAGE if not args.no_docs else root / "results.md"
    body = report(results, q.figure_dir(args, root), page)
    return q.publish(NAME, body, results, root, args.no_docs)


if __name__ == "__main__":
    main()
