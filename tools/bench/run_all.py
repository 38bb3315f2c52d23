"""The performance suite in one command: every benchmark, then the summary of docs/benchmarks.md.

Runs each benchmark of ``tools/bench`` with the arguments its table on the page was produced
with (one at a time, in a fresh process each), then rewrites the top of the page: the date, the
machine, this command, a summary table of each benchmark's headline numbers against its goal
(read from the ``docs/benchmarks/<name>.json`` files the benchmarks write) and a plot of them
(``docs/benchmarks/summary.png``). Each benchmark's own section stays as the benchmark wrote it.

    uv run --frozen python tools/bench/run_all.py                # everything
    uv run --frozen python tools/bench/run_all.py --only knn generation
    uv run --frozen python tools/bench/run_all.py --quick        # smoke test: tiny sizes, temp page
    uv run --frozen python tools/bench/run_all.py --summary-only # re-render the top of the page

``--quick`` runs every benchmark with its smallest arguments and writes to a temporary copy of the
page (or ``--page``), never to the real docs. ``mix_overhead.py`` (issue 3's shortcut) runs
``overhead-mix`` and ``mixer-update-time`` with the same arguments; the suite runs those two
directly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import BENCH_PAGE, PAGE_ENV, REPO, machine, now, results_dir  # noqa: E402

SUMMARY_START = "<!-- bench-summary:start -->"
SUMMARY_END = "<!-- bench-summary:end -->"


@dataclass(frozen=True)
class Bench:
    """One benchmark: its script, the arguments of its documented run and of ``--quick``."""

    name: str  # the section name on the page and the JSON file name
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    page_arg: bool = False  # the script takes the page as ``--write PATH`` (else ``--write``)


BENCHMARKS: tuple[Bench, ...] = (
    Bench(
        "features",
        "features.py",
        (),
        tuple(
            "--samples 4 --length 16 --proj-dim 256 --repeat 1 --lora-samples 4 "
            "--full-samples 2 --blocks 1".split()
        ),
        page_arg=True,
    ),
    Bench(
        "knn",
        "knn.py",
        (),
        tuple(
            "--rows 20000 --dim 32 --clusters 40 --queries 50 --exact-sizes 20000 --nprobe 5 "
            "--ef-search 64 --repeats 1 --stream-rows 65536 --stream-queries 5 "
            "--block-rows 8192".split()
        ),
    ),
    Bench(
        "overhead-mix",
        "run_overhead.py",
        tuple("--paradigm mix --steps 200 --repeats 3".split()),
        tuple("--paradigm mix --steps 10 --repeats 1".split()),
    ),
    Bench(
        "overhead-weight",
        "run_overhead.py",
        tuple("--paradigm weight --steps 300 --repeats 5".split()),
        tuple("--paradigm weight --steps 4 --repeats 1".split()),
    ),
    Bench("weight-step", "weight_step.py", ("--steps", "100"), ("--steps", "3")),
    Bench("mixer-update-time", "mixer_update_time.py", (), ("--domains", "8", "--repeats", "5")),
    Bench(
        "select-online",
        "select_online.py",
        tuple("--steps 200 --candidates 256 --repeats 3".split()),
        # the window is G * update_step = 16 rows: at least that many candidates
        tuple("--steps 4 --update-step 2 --candidates 32 --repeats 1".split()),
    ),
    Bench(
        "generation",
        "generation.py",
        (),
        tuple("--prompts 4 --max-new-tokens 4 --repeats 1".split()),
    ),
)
NAMES = [b.name for b in BENCHMARKS]


# --------------------------------------------------------------------------- running
def bench_command(bench: Bench, quick: bool, page: Path) -> list[str]:
    args = list(bench.quick if quick else bench.full)
    if bench.page_arg:  # repo-relative when it can be: the path is shown in the section
        shown = page.relative_to(REPO) if page.is_relative_to(REPO) else page
        args += ["--write", str(shown)]
    else:
        args.append("--write")
    return [sys.executable, str(HERE / bench.script), *args]


def run_benchmarks(benches: list[Bench], quick: bool, page: Path) -> dict[str, dict[str, Any]]:
    """Run ``benches`` one at a time; returns name -> {seconds, returncode, command}."""
    env = dict(os.environ, **{PAGE_ENV: str(page)}, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    status: dict[str, dict[str, Any]] = {}
    for bench in benches:
        cmd = bench_command(bench, quick, page)
        shown = " ".join(["python", str(Path(cmd[1]).relative_to(REPO)), *cmd[2:]])
        print(f"== {bench.name}: {shown}", flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=REPO, env=env, check=False)
        seconds = time.perf_counter() - t0
        status[bench.name] = {"seconds": seconds, "returncode": res.returncode, "command": shown}
        print(f"== {bench.name}: exit {res.returncode} after {seconds:.0f} s", flush=True)
    return status


# --------------------------------------------------------------------------- the summary
def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """The JSON result of every benchmark in ``folder``, in suite order, then others by name."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        found[data.get("name", path.stem)] = data
    order = [n for n in NAMES if n in found] + sorted(n for n in found if n not in NAMES)
    return {n: found[n] for n in order}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{text}x" if unit == "x" else f"{text} {unit}"


def goal_ratio(h: dict[str, Any]) -> float | None:
    """How far a headline is from its goal, oriented so that <= 1 meets it:
    value / goal for an at-most goal, goal / value for an at-least goal."""
    value, goal = h.get("value"), h.get("goal")
    if value is None or goal is None or value <= 0:
        return None
    return value / goal if h["op"] == "<=" else goal / value


def summary_table(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| benchmark | headline | measured | goal | met | run on |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for name, data in results.items():
        for h in data.get("headlines", []):
            unit = "x" if h["unit"] == "x" else f" {h['unit']}"
            goal = (
                f"{'≤' if h['op'] == '<=' else '≥'} {h['goal']:g}{unit} ({h['goal_source']})"
                if h.get("goal") is not None
                else "none stated"
            )
            met = {True: "yes", False: "**no**", None: "—"}[h.get("met")]
            lines.append(
                f"| [{data.get('title', name)}](#bench-{name}) | {h['label']} | "
                f"{_fmt(h.get('value'), h['unit'])} | {goal} | {met} | {data.get('date', '')} |"
            )
    return lines


def summary_plot(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Bars of measured / goal (log scale; <= 1 meets the goal) for every headline with a goal.
    Returns False (and writes nothing) when no headline has a goal and a value."""
    rows = [
        (f"{name}: {h['label']}", goal_ratio(h), h.get("met"))
        for name, data in results.items()
        for h in data.get("headlines", [])
    ]
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [textwrap.shorten(r[0], 150, placeholder="...") for r in rows]
    labels = ["\n".join(textwrap.wrap(label, 75)) for label in labels]
    ratios = [r[1] for r in rows]
    low = min(min(ratios), 1.0) / 3
    high = max(max(ratios), 1.0) * 3
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(rows) + 1.8))
    ys = list(range(len(rows)))[::-1]
    colors = ["#2e7d32" if met else "#c62828" for _, _, met in rows]
    ax.barh(ys, [r - low for r in ratios], left=low, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel(
        "measured / goal ('at most' goals), goal / measured ('at least' goals): "
        "left of 1 meets the goal (green)",
        fontsize=9,
    )
    ax.set_title("Headline numbers against their goals")
    for y, ratio in zip(ys, ratios, strict=True):
        ax.text(ratio, y, f" {ratio:.3g}", va="center", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def header(results: dict[str, dict[str, Any]], cmd: str, plotted: bool, status: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Benchmarks are not tests: they live in `tools/bench/` and write their tables to this",
        "page, each with the command that produced it and the machine it ran on. One command",
        "runs them all and rewrites this summary:",
        "",
        SUMMARY_START,
        f"_Suite command_: `{cmd}`  ",
        f"_Machine_: {machine()}  ",
        f"_Date_: {now()}",
        "",
    ]
    failed = [n for n, s in status.items() if s["returncode"] != 0]
    if status:
        ran = ", ".join(f"{n} {s['seconds']:.0f} s" for n, s in status.items())
        lines += [f"Ran: {ran}." + (f" **Failed**: {', '.join(failed)}." if failed else ""), ""]
    if results:
        lines += [
            "Headline numbers of each benchmark (from `docs/benchmarks/<name>.json`, written by",
            "the benchmark itself) against the goal stated for it; the sections below have the",
            "tables.",
            "",
            *summary_table(results),
            "",
        ]
        if plotted:
            lines += ["![Headline numbers against their goals](benchmarks/summary.png)", ""]
    else:
        lines += ["No benchmark has written a result yet.", ""]
    lines.append(SUMMARY_END)
    return "\n".join(lines) + "\n"


def rewrite_page(page: Path, cmd: str, status: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Replace everything above the first benchmark section of ``page`` with the summary."""
    from dataflex_core import atomic_write_text

    folder = results_dir(page)
    results = load_results(folder) if folder.is_dir() else {}
    plotted = summary_plot(results, folder / "summary.png")
    text = page.read_text() if page.exists() else ""
    # the header is everything up to the end of the previous summary, else up to the first section
    end, first = text.find(SUMMARY_END), text.find("<!-- bench:")
    if end >= 0:
        cut = end + len(SUMMARY_END)
    else:
        cut = first if first >= 0 else len(text)
    sections = text[cut:].lstrip("\n")
    for name in results:  # an anchor before each section, for the links of the summary table
        marker = f"<!-- bench:{name}:start -->"
        anchor = f'<a id="bench-{name}"></a>\n'
        if marker in sections and anchor + marker not in sections:
            sections = sections.replace(marker, anchor + marker)
    atomic_write_text(page, header(results, cmd, plotted, status) + "\n" + sections.lstrip("\n"))
    return {"results": results, "plotted": plotted}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only",
        nargs="+",
        choices=NAMES,
        metavar="NAME",
        help=f"run only these benchmarks (of: {', '.join(NAMES)})",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, written to a temporary copy of the page (a smoke test)",
    )
    ap.add_argument(
        "--page",
        type=Path,
        default=None,
        help="the page to write (default: docs/benchmarks.md; with --quick a temp copy)",
    )
    ap.add_argument(
        "--summary-only",
        action="store_true",
        help="run nothing; rewrite the summary from the JSON results",
    )
    args = ap.parse_args(argv)

    page = args.page
    if page is None:
        if args.quick:
            page = Path(tempfile.mkdtemp(prefix="dataflex-bench-")) / "benchmarks.md"
        else:
            page = BENCH_PAGE
    page = page.resolve()
    if args.quick and page == BENCH_PAGE.resolve():
        ap.error("--quick never writes the real docs/benchmarks.md; give another --page")
    if not page.exists():
        page.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BENCH_PAGE, page) if BENCH_PAGE.exists() else page.write_text("# Benchmarks\n")

    cmd = " ".join(["uv run --frozen python tools/bench/run_all.py", *argv])
    status: dict[str, dict[str, Any]] = {}
    if not args.summary_only:
        benches = [b for b in BENCHMARKS if not args.only or b.name in args.only]
        status = run_benchmarks(benches, args.quick, page)
    out = rewrite_page(page, cmd, status)
    failed = [n for n, s in status.items() if s["returncode"] != 0]
    print(
        f"wrote {page} (summary of {len(out['results'])} benchmark results"
        f"{', plot ' + str(results_dir(page) / 'summary.png') if out['plotted'] else ''})"
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
