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
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
EXPERIMENTS = ["mixing", "reweighting", "selection", "flat_keys"]
PAGE = REPO / "docs" / "results.md"
_TITLES = {"mixing": "Mixing", "selection": "Selection", "reweighting": "Reweighting", "flat_keys": "Flat keys"}


def summary(page: Path = PAGE) -> str:
    """Every computed verdict of the experiments' sections, gathered in one place.

    Copies the bullet lines each experiment wrote from its own numbers (nothing is typed in) and
    each section's wall time, so the top of the page says where dynamic data helped and where
    it did not, and stays true when the suite is rerun.
    """
    text = page.read_text()
    lines = ["Each line below is copied from the experiment's section, where it was computed from "
             "per-seed paired differences; the tables are further down.", ""]
    walls: list[tuple[str, str]] = []
    for name, title in _TITLES.items():
        section = f"quality-{name.replace('_', '-')}"
        m = re.search(rf"<!-- bench:{section}:start -->(.*?)<!-- bench:{section}:end -->", text, re.S)
        body = m.group(1) if m else ""
        verdicts = [
            ln for ln in body.splitlines()
            if (ln.startswith("- ") and re.search(r"\b(beat|tied|did not beat)\b", ln))
            or (ln.startswith("All ") and "flat-key" in ln)
            or (ln.startswith("At ") and "than random" in ln)
        ]
        # selection writes one verdict paragraph per model; name the model it belongs to
        models = re.findall(r"^#### (.+)$", body, re.M)
        if name == "selection" and len(models) == len(verdicts):
            verdicts = [f"- {m}: {v}" for m, v in zip(models, verdicts, strict=True)]
        lines.append(f"**{title}**")
        lines.append("")
        lines.extend(verdicts or ["- not run yet"])
        lines.append("")
        wall = re.findall(r"Wall time[^:\n]*: ([0-9.]+ (?:s|min)[^.\n]*(?:\.\d+)?[^.\n]*)", body)
        walls.append((title, "; ".join(wall) if wall else "not run"))
    lines += ["| experiment | wall time of its last run |", "| --- | --- |"]
    lines += [f"| {t} | {w} |" for t, w in walls]
    return "\n".join(lines)


def write_summary(page: Path = PAGE) -> None:
    sys.path.insert(0, str(HERE.parent))
    from _common import write_section

    write_section("quality-summary", summary(page), page=page)


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
    ap.add_argument(
        "--summary-only", action="store_true",
        help="only regather the verdicts of docs/results.md into its summary section",
    )
    args = ap.parse_args(argv)
    if args.summary_only:
        write_summary()
        return 0
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
    if not (args.tiny or args.no_docs):
        write_summary()
    return 0 if all(rc == 0 for _, rc in times.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
