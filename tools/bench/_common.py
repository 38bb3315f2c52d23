"""Shared helpers of the benchmarks: machine description and docs/benchmarks.md sections."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_PAGE = REPO / "docs" / "benchmarks.md"


def machine() -> str:
    """One line naming the machine: CPU, cores, Python, torch/numpy versions."""
    parts = [platform.processor() or platform.machine(), f"{os.cpu_count()} cores", f"Python {sys.version.split()[0]}"]
    for mod in ("numpy", "torch", "transformers"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001 - optional
            pass
    try:
        import torch

        parts.append("CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
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


def write_section(name: str, body: str, page: Path = BENCH_PAGE) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME:start/end -->`` markers."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{start}\n{body.rstrip()}\n\n_Command_: `{command()}`  \n_Machine_: {machine()}  \n_Date_: {stamp}\n{end}"
    text = page.read_text() if page.exists() else "# Benchmarks\n"
    text = text.replace("No benchmark has been run yet.\n", "")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    from dataflex_core import atomic_write_text

    atomic_write_text(page, text)
