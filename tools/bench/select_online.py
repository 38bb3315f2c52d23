"""Wall time of online selection inside real training, side by side in one invocation.

Each variant trains the bundled tiny Llama for the same steps on the same pool through
``dataflex-cli train`` with ``train_type: dynamic_select``: the baseline uses the ``static``
selector (all data, no model signal), the others select online from the model being trained.
Variants run interleaved in a rotating order after one untimed warm-up run; we report the median
of the trainer's own ``train_runtime`` (the training loop, including every selection pass) and
the ratio to the baseline. The goal for online LESS is at most 1.5x.

    uv run --frozen python tools/bench/select_online.py --steps 200 --repeats 3 --write
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

#: The goal for online LESS: at most 1.5x the static run's train_runtime.
GOAL = 1.5


def variants(steps: int, update_step: int, candidates: int) -> dict[str, dict]:
    base = {
        "train_type": "dynamic_select",
        "warmup_step": update_step,
        "update_step": update_step,
        "update_times": (steps - update_step) // update_step,
        "train_step": steps,
        "target_dataset": "code_eval",
    }
    less = {"proj_dim": 512, "candidate_subsample": candidates}
    return {
        "static selector (all data)": {**base, "component_name": "static"},
        f"less, dense Rademacher projection (default), {candidates} candidates": {
            **base,
            "component_name": "less",
            "component_params": dict(less),
        },
        f"less, sparse (sjlt) projection, {candidates} candidates": {
            **base,
            "component_name": "less",
            "component_params": {**less, "projector": "sjlt"},
        },
    }


def run_once(df: dict, out: Path, env: dict) -> float:
    cfg = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    cfg.update(
        output_dir=str(out),
        dataset_dir=str(REPO / "examples" / "data"),
        save_strategy="no",
        logging_steps=50,
        plot_loss=False,
        report_to="none",
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        per_device_eval_batch_size=32,
    )
    cfg["dataflex"] = {**df, "plot": False}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        [sys.executable, "-m", "dataflex_llamafactory.cli", "train", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"run failed:\n{res.stderr[-3000:]}")
    return float(json.loads((out / "train_results.json").read_text())["train_runtime"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--update-step", type=int, default=25)
    ap.add_argument("--candidates", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    vs = variants(args.steps, args.update_step, args.candidates)
    times: dict[str, list[float]] = {k: [] for k in vs}
    items = list(vs.items())
    with tempfile.TemporaryDirectory() as tmp:
        run_once(items[0][1], Path(tmp) / "warmup", env)
        for r in range(args.repeats):
            for j in range(len(items)):
                i = (j + r) % len(items)
                name, df = items[i]
                t = run_once(df, Path(tmp) / f"r{r}v{i}", env)
                times[name].append(t)
                print(f"repeat {r} {name}: {t:.2f} s", flush=True)
    base = statistics.median(times[items[0][0]])
    updates = (args.steps - args.update_step) // args.update_step
    lines = [
        f"### Online selection in training ({args.steps} steps, tiny Llama (336k parameters), "
        f"G = 8, {updates} updates, median of {args.repeats})",
        "",
        "Variants run interleaved, in a rotating order, after one untimed warm-up run. Each update "
        "computes per-sample Adam gradient features of the candidates and SGD features of the "
        "16 target rows, projected to 512 dimensions.",
        "",
        "| variant | train_runtime (s), median | runs (s) | ratio to static |",
        "| --- | ---: | --- | ---: |",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(
            f"| {name} | {med:.2f} | {', '.join(f'{t:.2f}' for t in ts)} | {med / base:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("select-online", table)
        medians = {k: statistics.median(ts) for k, ts in times.items()}
        write_result(
            "select-online",
            [
                headline(
                    f"{k}: train_runtime / static", med / base, goal=GOAL, op="<=",
                    source="tools/bench/select_online.py",
                )
                for k, med in medians.items()
                if k != items[0][0]
            ],
            {
                "steps": args.steps, "update_step": args.update_step,
                "candidates": args.candidates, "repeats": args.repeats,
                "runs_s": times, "median_s": medians,
            },
            title="Online selection in training",
        )


if __name__ == "__main__":
    main()
