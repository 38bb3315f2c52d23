"""Mixing benchmarks of issue 3, in one command.

1. Wall time of dynamic-mixing runs against a static run of the same tiny model and steps
   (``run_overhead.py --paradigm mix``: interleaved repeats, median train_runtime, ratio).
2. Update time of each mixer for 8, 64 and 1024 domains (``mixer_update_time.py``).

    uv run --frozen python tools/bench/mix_overhead.py --steps 200 --repeats 3 --write
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    extra = ["--write"] if args.write else []
    subprocess.run([sys.executable, str(HERE / "run_overhead.py"), "--paradigm", "mix",
                    "--steps", str(args.steps), "--repeats", str(args.repeats), *extra], check=True)
    subprocess.run([sys.executable, str(HERE / "mixer_update_time.py"), *extra], check=True)


if __name__ == "__main__":
    main()
