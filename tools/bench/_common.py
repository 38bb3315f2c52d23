"""Shared helpers of the benchmarks: machine description, docs/benchmarks.md sections, and the
machine-readable result of each benchmark (``docs/benchmarks/<name>.json``).

``DATAFLEX_BENCH_PAGE`` points every benchmark at another page (``run_all.py --quick`` writes a
temporary copy instead of the real docs); the JSON results go to a ``benchmarks/`` folder next to
the page.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BENCH_PAGE = REPO / "docs" / "benchmarks.md"
PAGE_ENV = "DATAFLEX_BENCH_PAGE"


def bench_page() -> Path:
    """The page benchmarks write to: ``$DATAFLEX_BENCH_PAGE``, else docs/benchmarks.md."""
    env = os.environ.get(PAGE_ENV)
    return Path(env).resolve() if env else BENCH_PAGE


def results_dir(page: Path | None = None) -> Path:
    """Folder of the JSON results (and the summary plot) of ``page``: ``<page dir>/benchmarks``."""
    return (page or bench_page()).resolve().parent / "benchmarks"


def machine() -> str:
    """One line naming the machine: CPU, cores, Python, torch/numpy versions."""
    parts = [
        platform.processor() or platform.machine(),
        f"{os.cpu_count()} cores",
        f"Python {sys.version.split()[0]}",
    ]
    for mod in ("numpy", "torch", "transformers"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001 - optional
            pass
    try:
        import torch

        parts.append(
            "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        )
    except Exception:  # noqa: BLE001
        pass
    return ", ".join(parts)


def command() -> str:
    """The command line that ran this benchmark, relative to the repo."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["uv run --frozen python", str(script), *sys.argv[1:]])


def now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_section(name: str, body: str, page: Path | None = None) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME:start/end -->`` markers."""
    page = page or bench_page()
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    stamp = f"_Command_: `{command()}`  \n_Machine_: {machine()}  \n_Date_: {now()}"
    block = f"{start}\n{body.rstrip()}\n\n{stamp}\n{end}"
    text = page.read_text() if page.exists() else "# Benchmarks\n"
    text = text.replace("No benchmark has been run yet.\n", "")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _m: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    from dataflex_core import atomic_write_text

    atomic_write_text(page, text)


def headline(
    label: str,
    value: float | None,
    unit: str = "x",
    goal: float | None = None,
    op: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """One headline number of a benchmark, with its goal when one is stated.

    Args:
        label: What the number is, in words.
        value: The measured value (None when it could not be measured, e.g. a part was skipped).
        unit: ``x`` for ratios, else the unit (``s``, ``µs``, ``GB``).
        goal: The stated goal, or None when none is stated.
        op: ``<=`` (at most the goal) or ``>=`` (at least); required with ``goal``.
        source: Where the goal is stated (an issue, a docstring).
    """
    if goal is not None and op not in ("<=", ">="):
        raise ValueError(f"headline {label!r}: a goal needs op '<=' or '>=', got {op!r}")
    finite = value is not None and math.isfinite(value)
    met = None
    if goal is not None and finite:
        met = bool(value <= goal) if op == "<=" else bool(value >= goal)
    return {
        "label": label,
        "value": float(value) if finite else None,
        "unit": unit,
        "goal": goal,
        "op": op if goal is not None else None,
        "met": met,
        "goal_source": source if goal is not None else None,
    }


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()  # numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_result(
    name: str,
    headlines: list[dict[str, Any]],
    results: dict[str, Any] | None = None,
    page: Path | None = None,
    title: str | None = None,
) -> Path:
    """Write ``<results_dir(page)>/<name>.json``: the headlines (see :func:`headline`), the raw
    results, the command, the machine and the date. Returns the path."""
    path = results_dir(page) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "name": name,
        "title": title or name,
        "date": now(),
        "command": command(),
        "machine": machine(),
        "headlines": _clean(headlines),
        "results": _clean(results or {}),
    }
    from dataflex_core import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n")
    return path
