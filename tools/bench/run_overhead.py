"""Wall-time overhead of DataFlex inside real training, side by side in one invocation.

Each variant trains the bundled tiny Llama for the same number of steps on the same data
through ``dataflex-cli train``; the baseline is the same data pipeline with the decision turned
off (``static_mix`` for mixing, the burn-in standard loss for weighting). Variants run
interleaved (A B A B ...) and we report the median of the trainer's own ``train_runtime``
(the training loop only: no imports, no dataset preparation) and the ratio to the baseline.

    uv run --frozen python tools/bench/run_overhead.py --paradigm mix --steps 200 --repeats 3 --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, headline, write_result, write_section  # noqa: E402


def variants(paradigm: str, steps: int) -> dict[str, dict]:
    if paradigm == "mix":
        base = {"train_type": "dynamic_mix", "warmup_step": 0, "update_step": 10, "update_times": steps // 10}
        return {
            "static (fixed proportions, no mixer)": {**base, "static_mix": True},
            "dynamic: random mixer": {**base, "component_name": "random"},
            "dynamic: odm mixer (update every step)": {
                "train_type": "dynamic_mix", "component_name": "odm", "warmup_step": 0,
                "update_step": 1, "update_times": steps,
            },
        }
    base = {"train_type": "dynamic_weight", "component_name": "uniform"}
    return {
        "static (standard loss: burn-in for the whole run)": {**base, "warmup_step": steps + 1},
        "dynamic: uniform weighter": {**base, "warmup_step": 0},
        "dynamic: loss weighter (linupper)": {**base, "component_name": "loss", "warmup_step": 0},
    }


def run_once(df: dict, steps: int, out: Path, env: dict) -> float:
    cfg = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    cfg.update(
        output_dir=str(out), dataset_dir=str(REPO / "examples" / "data"), save_strategy="no",
        logging_steps=max(steps // 4, 1), plot_loss=False, report_to="none",
        per_device_train_batch_size=8, gradient_accumulation_steps=1,
    )
    if df["train_type"] == "dynamic_weight":
        cfg["max_steps"] = steps
    cfg["dataflex"] = {**df, "plot": False}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "dataflex_llamafactory.cli", "train", str(path)],
                         cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"run failed:\n{res.stderr[-3000:]}")
    return float(json.loads((out / "train_results.json").read_text())["train_runtime"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paradigm", choices=["mix", "weight"], required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated variant indices to run (default all)")
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    vs = variants(args.paradigm, args.steps)
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        vs = {k: v for i, (k, v) in enumerate(vs.items()) if i in keep or i == 0}
    times: dict[str, list[float]] = {k: [] for k in vs}
    items = list(vs.items())
    with tempfile.TemporaryDirectory() as tmp:
        # One untimed run first: the first process after a pause was seen to run many times
        # slower on this VM, which would bias whichever variant comes first.
        run_once(items[0][1], args.steps, Path(tmp) / "warmup", env)
        for r in range(args.repeats):
            # Rotate the order each repeat so no variant always runs in the same slot.
            for j in range(len(items)):
                i = (j + r) % len(items)
                name, df = items[i]
                t = run_once(df, args.steps, Path(tmp) / f"r{r}v{i}", env)
                times[name].append(t)
                print(f"repeat {r} {name}: {t:.2f} s", flush=True)
    base_name = next(iter(vs))
    base = statistics.median(times[base_name])
    lines = [
        f"### {'Mixing' if args.paradigm == 'mix' else 'Weighting'} overhead in training "
        f"({args.steps} steps, tiny Llama, G = 8, median of {args.repeats})",
        "",
        "Variants run interleaved, in a rotating order, after one untimed warm-up run.",
        "",
        "| variant | train_runtime (s), median | runs (s) | ratio to static |",
        "| --- | ---: | --- | ---: |",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {med:.2f} | {', '.join(f'{t:.2f}' for t in ts)} | {med / base:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        name = f"overhead-{args.paradigm}"
        write_section(name, table)
        medians = {k: statistics.median(ts) for k, ts in times.items()}
        write_result(
            name,
            [
                headline(f"{k}: train_runtime / static", med / base, goal=1.03, op="<=",
                         source="issue 3" if args.paradigm == "mix" else "issue 6")
                for k, med in medians.items()
                if k != base_name
            ],
            {"steps": args.steps, "repeats": args.repeats, "runs_s": times, "median_s": medians},
            title=f"{'Mixing' if args.paradigm == 'mix' else 'Weighting'} overhead in training",
        )


if __name__ == "__main__":
    main()
