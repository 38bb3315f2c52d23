"""Quality of domain mixing: uniform and size-proportional static mixtures against DoReMi and ODM.

The bundled tiny Llama is pretrained from scratch on the four bundled text domains (news, wiki,
code, math) plus a ``noise`` domain of random characters (the one of
docs/mixers/noise-experiment.md: 800 characters of "abcd" per row). Every final model trains the
same number of steps on the same batch size; only the mixture differs:

* **uniform**: ``static_mix`` with ``mixture_sample_rule: uniform`` (1/5 each);
* **size-proportional**: ``static_mix`` with ``mixture_sample_rule: stratified`` (proportional
  to the packed 128-token blocks of each domain; noise, which tokenises badly, is the largest);
* **DoReMi**: the 3-step pipeline of examples/doremi: a reference model on uniform proportions
  (noise-experiment.md: a size-proportional reference gives the badly compressible noise an unfair
  lead, and DoReMi then upweights it), a proxy with the ``doremi`` mixer (paper defaults) at
  G = 32 (every domain in every step), and the target trained on the proxy's averaged weights
  ``doremi_average_weights.json`` through ``init_mixture_proportions: {from_file: ...}``;
* **ODM**: the ``odm`` mixer of examples/quickstart.yaml (10 warmup steps, one bandit round per
  step, paper defaults), starting from uniform.

Every training (DoReMi's reference and proxy included) uses the quickstart's model and optimiser
settings (cutoff 128, learning rate 3e-3, cosine schedule, 8 warmup steps). Each final model is
evaluated on the held-out ``<domain>_eval`` sets (token-mean next-token loss) and on a held-out
noise set. The real-domain average and the worst real domain leave noise out.

    uv run --frozen python tools/bench/quality/mixing.py \\
        [--seeds 0 1 2] [--tiny] [--out DIR] [--no-docs]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality as q  # noqa: E402

NAME = "quality-mixing"
LABELS = {
    "uniform": "uniform (static)",
    "stratified": "size-proportional (static)",
    "doremi": "DoReMi",
    "odm": "ODM",
}
BASELINES = ["uniform", "stratified"]

# Sizes. Measured on this 2-core VM with this script (one process, OMP_NUM_THREADS=1) while other
# engineers' jobs kept the load average at 3.5-4, seed 0 at default size: DoReMi reference
# (100 steps, G = 32) 65 s including the one-time imports (~14 s), proxy (200 steps, G = 32,
# one reference forward per step) 134 s, target (200 steps, G = 8) 18 s; evaluation ~1.5 s per
# model. The uniform, size-proportional and ODM models cost about what the target does
# (200 x 8 rows). Extrapolation, per seed: 50 + 134 + 4 x 18 + 4 x 1.5 = ~262 s, so ~13 min for
# seeds 0 1 2 on the loaded machine. Alone on the machine a single-threaded run gets a whole
# core, so it can only be faster (up to ~2x at that load).
SIZES: dict[str, dict[str, int]] = {
    # G and steps of the 4 compared models; G and steps of DoReMi's reference and proxy;
    # ODM's warmup (steps on the initial uniform proportions before the first round).
    "default": {
        "batch": 8,
        "steps": 200,
        "doremi_batch": 32,
        "reference_steps": 100,
        "proxy_steps": 200,
        "odm_warmup": 10,
    },
    # tiny: also only the first 4 rows of each validation set
    "tiny": {
        "batch": 4,
        "steps": 6,
        "doremi_batch": 8,
        "reference_steps": 3,
        "proxy_steps": 4,
        "odm_warmup": 2,
        "eval_rows": 4,
    },
}


def _example_block(path: str) -> dict[str, Any]:
    return yaml.safe_load((q.REPO / "examples" / path).read_text())["dataflex"]


def _static(data: Path, out: Path, seed: int, size: dict[str, int], rule: str) -> dict[str, Any]:
    cfg = q.base_config(data, out, seed, batch=size["batch"])
    cfg["dataflex"] = {
        "train_type": "dynamic_mix",
        "static_mix": True,
        "mixture_sample_rule": rule,
        "update_step": 1,
        "update_times": size["steps"],
        "plot": False,
    }
    return cfg


def run_seed(
    train: q.Trainer, data: Path, root: Path, seed: int, size: dict[str, int], variants: list[str]
) -> dict[str, dict[str, Any]]:
    """Train every variant for one seed; returns ``{variant: {"dir", "weights", ...}}``."""
    res: dict[str, dict[str, Any]] = {}
    k = len(q.DOMAINS)
    if "uniform" in variants:
        out = train(
            f"s{seed}-uniform", _static(data, root / f"s{seed}" / "uniform", seed, size, "uniform")
        )
        res["uniform"] = {"dir": out, "weights": [1 / k] * k}
    if "stratified" in variants:
        out = train(
            f"s{seed}-stratified",
            _static(data, root / f"s{seed}" / "stratified", seed, size, "stratified"),
        )
        eff = json.loads((out / "dataflex" / "effective_config.json").read_text())
        assert eff["domains"] == q.DOMAINS, eff["domains"]
        sizes = eff["domain_sizes"]
        res["stratified"] = {
            "dir": out,
            "weights": [n / sum(sizes) for n in sizes],
            "domain_sizes": sizes,
        }
    if "doremi" in variants:
        # Step 1, the reference: examples/doremi/1_reference.yaml's block, sampled uniformly.
        ref = q.base_config(
            data, root / f"s{seed}" / "doremi-reference", seed, batch=size["doremi_batch"]
        )
        ref["dataflex"] = {
            **_example_block("doremi/1_reference.yaml"),
            "mixture_sample_rule": "uniform",
            "update_times": size["reference_steps"],
            "plot": False,
        }
        ref_dir = train(f"s{seed}-doremi-1-reference", ref)
        # Step 2, the proxy: examples/doremi/2_proxy.yaml's block (doremi mixer, paper defaults).
        proxy = q.base_config(
            data, root / f"s{seed}" / "doremi-proxy", seed, batch=size["doremi_batch"]
        )
        block = _example_block("doremi/2_proxy.yaml")
        block["component_params"] = {
            **block.get("component_params", {}),
            "reference_model_path": str(ref_dir),
        }
        proxy["dataflex"] = {**block, "update_times": size["proxy_steps"], "plot": False}
        proxy_dir = train(f"s{seed}-doremi-2-proxy", proxy)
        avg = json.loads((proxy_dir / "doremi_average_weights.json").read_text())
        assert avg["domains"] == q.DOMAINS, avg["domains"]
        # Step 3, the target: examples/doremi/3_target.yaml's block on the proxy's averaged weights.
        target = q.base_config(data, root / f"s{seed}" / "doremi-target", seed, batch=size["batch"])
        block = _example_block("doremi/3_target.yaml")
        block["init_mixture_proportions"] = {
            "from_file": str(proxy_dir / "doremi_average_weights.json")
        }
        target["dataflex"] = {**block, "update_times": size["steps"], "plot": False}
        out = train(f"s{seed}-doremi-3-target", target)
        res["doremi"] = {"dir": out, "weights": avg["average"], "proxy_updates": avg["n"]}
    if "odm" in variants:
        cfg = q.base_config(data, root / f"s{seed}" / "odm", seed, batch=size["batch"])
        block = _example_block("quickstart.yaml")
        block.update(
            init_mixture_proportions=None,
            warmup_step=size["odm_warmup"],
            update_times=size["steps"] - size["odm_warmup"],
            plot=False,
        )
        cfg["dataflex"] = block
        out = train(f"s{seed}-odm", cfg)
        recs = [
            json.loads(x)
            for x in (out / "dataflex" / "decisions.jsonl").read_text().splitlines()
            if x.strip()
        ]
        props = [r["decision"]["proportions"] for r in recs if r.get("kind") == "mixer"]
        assert recs[-1]["decision"]["domains"] == q.DOMAINS
        res["odm"] = {
            "dir": out,
            "weights": props[-1],
            "mean_weights": [statistics.fmean(p[i] for p in props) for i in range(k)],
            "decisions": len(props),
        }
    return res


def report(results: dict[str, Any], figures: Path, page: Path) -> str:
    runs = results["runs"]
    seeds = results["seeds"]
    size = results["size"]
    labels = {v: LABELS[v] for v in LABELS if v in runs}
    setup = q.para(f"""Tiny Llama pretrained from scratch, {size["steps"]} steps at G =
        {size["batch"]} for every compared model (DoReMi's reference: {size["reference_steps"]}
        steps, proxy: {size["proxy_steps"]} steps, both at G = {size["doremi_batch"]}).
        Token-mean validation loss in nats, mean ± std over seeds; "real avg" and "worst real"
        leave the noise domain out.""")
    lines = [
        f"### Mixing: validation loss per domain ({q.plural(len(seeds), 'seed')}: "
        f"{', '.join(map(str, seeds))})",
        "",
        f"{setup} {q.DELTA_NOTE}",
        "",
        *q.loss_table(runs, labels, [b for b in BASELINES if b in runs]),
        "",
    ]
    for v in ("doremi", "odm"):
        for b in BASELINES:
            if v in runs and b in runs:
                lines.append("- " + q.beat_sentence(LABELS[v], LABELS[b], runs, v, b))
    lines += [
        "",
        "#### Domain weights",
        "",
        q.para("""The mixture each compared model trained on (ODM: its last decision, and the
            mean of its decisions over the run; DoReMi: the proxy's averaged weights ᾱ), mean ±
            std over seeds."""),
        "",
        "| method | " + " | ".join(q.DOMAINS) + " |",
        "| --- |" + " ---: |" * len(q.DOMAINS),
    ]
    rows: list[tuple[str, str, str]] = []
    for v in LABELS:
        if v == "odm" and v in runs:
            rows += [
                ("odm", "ODM (final)", "weights"),
                ("odm", "ODM (mean over the run)", "mean_weights"),
            ]
        elif v in runs:
            rows.append((v, LABELS[v], "weights"))
    for v, label, key in rows:
        cells = [
            q.fmt(q.summarise([r[key][i] for r in runs[v].values()])) for i in range(len(q.DOMAINS))
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    groups = [*q.DOMAINS, "real avg", "worst real"]
    loss_png = q.grouped_bars(
        figures / "mixing_loss.png",
        groups,
        {labels[v]: [[r["metrics"][g] for r in runs[v].values()] for g in groups] for v in labels},
        ylabel="validation loss (nats)",
        title=f"Mixing: validation loss, mean and min-max over {q.plural(len(seeds), 'seed')}",
        delta_from=labels.get("uniform"),
    )
    series = {
        label: [[r[key][i] for r in runs[v].values()] for i in range(len(q.DOMAINS))]
        for v, label, key in rows
    }
    weights_png = q.grouped_bars(
        figures / "mixing_weights.png",
        q.DOMAINS,
        series,
        ylabel="proportion",
        title=f"Mixing: domain weights, mean and min-max over {q.plural(len(seeds), 'seed')}",
    )
    lines += [
        "",
        f"![validation loss per domain]({q.rel(loss_png, page)})",
        "",
        f"![domain weights]({q.rel(weights_png, page)})",
    ]
    wall = results["wall_s"]
    lines += [
        "",
        f"Wall time: {wall:.0f} s for {q.plural(len(seeds), 'seed')} "
        f"({results['trainings']} trainings).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = q.parse_args(__doc__.split("\n\n")[0], argv, variants=list(LABELS))
    size = SIZES["tiny" if args.tiny else "default"]
    root = q.out_dir(args, "mixing")
    data = q.write_data(root / "data")
    train = q.Trainer(root)
    t0 = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {v: {} for v in LABELS if v in args.variants}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        res = run_seed(train, data, root, seed, size, args.variants)
        for v, r in res.items():
            loss = q.eval_losses(r.pop("dir"), data, q.DOMAINS, rows=size.get("eval_rows"))
            runs[v][str(seed)] = {**r, "loss": loss, "metrics": q.metrics(loss)}
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
