"""Update time of every ``dataflex-mix`` mixer for 8, 64 and 1024 domains.

Times ``mixer.step(feedback)`` (validation, the pure update, the state snapshot) on realistic,
pre-built feedback, and prints a markdown table of the median over the repeats, in microseconds
per update, with the command and the machine. numpy only; no model, no torch.

Rows:

* ``static``, ``random``, ``doremi``, ``odm``: one update per call;
* ``dynamic_moe``: one update from gate loads ``[K, 4 layers, 8 experts]``;
* ``aioli (step)``: an ordinary step of the state machine (within a phase);
* ``aioli (round end)``: the step that ends LearnParams (un-smooth ``A``, normalise, update ``p``),
  which solves a ``K x K`` system.

Usage::

    python tools/bench/mixer_update_time.py              # 8, 64, 1024 domains
    python tools/bench/mixer_update_time.py --domains 8 64 --repeats 50
    python tools/bench/mixer_update_time.py --write      # also into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from dataflex_core import ComponentContext, MixFeedback
from dataflex_mix import (
    AioliMixer,
    DoremiMixer,
    DynamicMoeMixer,
    OdmMixer,
    RandomMixer,
    StaticMixer,
)

LAYERS, EXPERTS = 4, 8


def _feedbacks(k: int, n: int, rng: np.random.Generator, gate_loads: bool) -> list[MixFeedback]:
    out = []
    for s in range(n):
        tokens = rng.integers(50, 500, size=k).astype(np.float64)
        per_token = rng.uniform(1.0, 4.0, size=k)
        extras = {}
        if gate_loads:
            extras["gate_loads"] = rng.integers(1, 100, size=(k, LAYERS, EXPERTS)).astype(float)
        out.append(
            MixFeedback(
                step=s + 1,
                loss_sum=tuple((tokens * per_token).tolist()),
                token_count=tuple(tokens.tolist()),
                sample_count=tuple(rng.integers(1, 9, size=k).astype(float).tolist()),
                excess_loss_sum=tuple((tokens * rng.uniform(0, 0.5, size=k)).tolist()),
                eval_loss=tuple(rng.uniform(2.0, 3.0, size=k).tolist()),
                extras=extras,
            )
        )
    return out


def _median_us(calls: list[Callable[[], object]]) -> float:
    times = []
    for call in calls:
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def bench(k: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Median microseconds per update of every mixer for ``k`` domains."""
    rng = np.random.Generator(np.random.PCG64(seed))
    ctx = ComponentContext(domains=tuple(f"d{i}" for i in range(k)), seed=seed)
    fbs = _feedbacks(k, repeats, rng, gate_loads=False)
    results: dict[str, float] = {}
    simple = {
        "static": StaticMixer(None, ctx),
        "random": RandomMixer(None, ctx),
        "doremi": DoremiMixer({"vocab_size": 32000}, ctx),
        "odm": OdmMixer(None, ctx),
    }
    for name, mixer in simple.items():
        mixer.step(fbs[0])  # warm up code paths
        results[name] = _median_us([lambda m=mixer, f=f: m.step(f) for f in fbs])

    gate = _feedbacks(k, max(3, repeats // 4), rng, gate_loads=True)
    moe = DynamicMoeMixer(None, ctx)
    moe.step(gate[0])
    results["dynamic_moe"] = _median_us([lambda f=f: moe.step(f) for f in gate])

    # Aioli: long phases so that most calls are ordinary steps; the first call starts round 0.
    aioli = AioliMixer({"lp_rounds": 1, "lp_steps": repeats + 2, "update_steps": 1}, ctx)
    aioli.step(fbs[0])
    results["aioli (step)"] = _median_us([lambda f=f: aioli.step(f) for f in fbs])
    # Round ends: drive fresh mixers (lp_steps 1, one sweep) to the step that finishes
    # LearnParams and time only that step.
    ends = []
    for r in range(max(3, min(repeats, 2000 // k + 3))):
        m = AioliMixer({"lp_rounds": 1, "lp_steps": 1, "update_steps": 1, "seed": r}, ctx)
        for s in range(k):  # start + K - 1 block ends
            m.step(fbs[s % len(fbs)])
        ends.append(lambda m=m: m.step(fbs[-1]))
    results["aioli (round end)"] = _median_us(ends)
    return results


def _cpu_name() -> str:
    """``platform.processor()``, or the model name from /proc/cpuinfo when that is richer."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({name})"
    except OSError:
        pass
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, nargs="+", default=[8, 64, 1024])
    parser.add_argument("--repeats", type=int, default=200, help="timed updates per mixer")
    parser.add_argument(
        "--write", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    # Large K: fewer repeats (each update is slower; the median settles quickly).
    table = {
        k: bench(k, args.repeats if k < 1024 else max(20, args.repeats // 4)) for k in args.domains
    }
    names = list(next(iter(table.values())))
    shown = " ".join(["python", "tools/bench/mixer_update_time.py", *sys.argv[1:]])
    print(f"Command: `{shown}`")
    print(
        f"Machine: {_cpu_name()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    print()
    lines = [
        "| mixer | " + " | ".join(f"K = {k} (µs)" for k in args.domains) + " |",
        "| --- | " + " | ".join("---:" for _ in args.domains) + " |",
    ]
    for name in names:
        cells = " | ".join(f"{table[k][name]:,.1f}" for k in args.domains)
        lines.append(f"| `{name}` | {cells} |")
    lines += ["", "Median of one `mixer.step(feedback)` call, feedback prepared beforehand."]
    body = "\n".join(lines)
    print(body)
    if args.write:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _common import headline, write_result, write_section  # shared writers

        write_section("mixer-update-time", body)
        k = max(args.domains)
        slowest = max(names, key=lambda n: table[k][n])
        write_result(
            "mixer-update-time",
            [headline(f"slowest mixer update at K = {k} (`{slowest}`)", table[k][slowest], "µs")],
            {"domains": args.domains, "median_us": {str(kk): v for kk, v in table.items()}},
            title="Mixer update time",
        )


if __name__ == "__main__":
    main()
