"""Per-step cost of sample weighting, in one process: standard loss against weighted losses.

``run_overhead.py --paradigm weight`` times whole ``dataflex-cli train`` runs, whose spread on a
shared 2-core VM (10-14 s for the same run) is larger than the overhead it looks for. This
benchmark times only what weighting changes in a training step, on the bundled tiny Llama, the
same batch for every variant, interleaved (A B C A B C ...), one thread:

* ``standard``: ``model(input_ids, labels=labels).loss`` (the loss the trainer uses without
  DataFlex), backward, AdamW step;
* ``weighted: <weighter>``: ``model(input_ids)``, ``dataflex_ops.per_sample_loss`` on the logits,
  the weighter's ``weigh`` and ``objective`` on a ``WeightFeedback`` (as ``compute_loss`` does
  on one rank), backward, AdamW step.

    uv run --frozen python tools/bench/weight_step.py --steps 60 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import headline, write_result, write_section  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per variant (after 10 warm-up)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from dataflex_core.specs import WeightFeedback
    from dataflex_llamafactory.assets import resolve_model
    from dataflex_ops.loss import per_sample_loss
    from transformers import AutoModelForCausalLM

    import dataflex_weight as dw

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-llama"), dtype=torch.float32)
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length))
    labels = ids.clone()
    labels[0, args.length // 2 :] = -100  # rows of different supervised lengths, as after padding
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def standard() -> torch.Tensor:
        return model(input_ids=ids, labels=labels).loss

    def weighted(weighter: object) -> object:
        def step() -> torch.Tensor:
            out = model(input_ids=ids)
            values, valid = per_sample_loss(out.logits, labels)
            det = values.detach()
            fb = WeightFeedback(
                step=1, losses=values, valid=valid, token_counts=(labels[:, 1:] != -100).sum(1),
                global_losses=det, global_valid=valid & torch.isfinite(det),
            )
            return weighter.objective(fb, weighter.weigh(fb))  # type: ignore[attr-defined]

        return step

    variants = {
        "standard loss (no DataFlex)": standard,
        "weighted: uniform": weighted(dw.UniformWeighter({})),
        "weighted: loss (linupper)": weighted(dw.LossWeighter({"strategy": "linupper"})),
        "weighted: loss (quadratic)": weighted(dw.LossWeighter({"strategy": "quadratic"})),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for it in range(args.steps + 10):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            loss = fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if it >= 10:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["standard loss (no DataFlex)"])
    ratios = {k: statistics.median(v) / base for k, v in times.items()}
    lines = [
        f"### Weighting cost per training step (tiny Llama, batch {args.batch} x {args.length}, "
        f"{args.threads} thread, median of {args.steps} interleaved steps)",
        "",
        "| variant | step time (ms), median | p10-p90 (ms) | ratio to standard loss |",
        "| --- | ---: | --- | ---: |",
    ]
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        lines.append(
            f"| {name} | {statistics.median(ts) * 1e3:.1f} | {q[0] * 1e3:.1f}-{q[-1] * 1e3:.1f} | "
            f"{ratios[name]:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("weight-step", table)
        write_result(
            "weight-step",
            [headline(f"{k}: step time / standard loss", r) for k, r in ratios.items()
             if k != "standard loss (no DataFlex)"],
            {"steps": args.steps, "batch": args.batch, "length": args.length,
             "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()}},
            title="Weighting cost per training step",
        )
    return ratios


if __name__ == "__main__":
    main()
