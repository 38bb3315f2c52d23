"""The whole quality suite in one command: mixing, reweighting, selection and flat keys.

Each experiment runs as its own process (``python tools/bench/quality/<name>.py``) with the same
``--seeds``/``--tiny``/``--no-docs`` arguments and ``--out <out>/<name>`` when ``--out`` is given.
At default size each one writes its section of docs/results.md and its figures into
docs/results/. The suite goes on after a failed experiment and exits non-zero at the end.

    uv run --frozen python tools/bench/quality/run_all.py \\
        [--seeds 0 1 2] [--tiny] [--out DIR] [--no-docs]
        [--only mixing reweighting selection flat_keys]

Budget: under 60 min at default size, alone on a 2-core CPU (mixing + reweighting + flat keys
~25 min, selection ~25 min; each script states how its sizes were measured).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
EXPERIMENTS = ["mixing", "reweighting", "selection", "flat_keys"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    ap.add_argument("--tiny", action="store_true", help="a few steps per experiment, for tests")
    ap.add_argument(
        "--out", type=Path, default=None, help="folder for the runs (one subfolder per experiment)"
    )
    ap.add_argument(
        "--no-docs", action="store_true", help="do not write docs/results.md or docs/results/"
    )
    ap.add_argument(
        "--only", nargs="+", choices=EXPERIMENTS, default=EXPERIMENTS, help="experiments to run"
    )
    args = ap.parse_args(argv)
    times: dict[str, tuple[float, int]] = {}
    for name in [e for e in EXPERIMENTS if e in args.only]:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"== {name}: {script.relative_to(REPO)} is missing", flush=True)
            times[name] = (0.0, 127)
            continue
        cmd = [sys.executable, str(script), "--seeds", *map(str, args.seeds)]
        if args.tiny:
            cmd.append("--tiny")
        if args.no_docs:
            cmd.append("--no-docs")
        if args.out is not None:
            cmd += ["--out", str(args.out / name)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, check=False).returncode
        times[name] = (time.perf_counter() - t0, rc)
    print("\n| experiment | wall (s) | exit |\n| --- | ---: | ---: |")
    for name, (t, rc) in times.items():
        print(f"| {name} | {t:.0f} | {rc} |")
    print(f"| total | {sum(t for t, _ in times.values()):.0f} | |", flush=True)
    return 0 if all(rc == 0 for _, rc in times.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
