"""``tools/bench/run_all.py``: the suite runs benchmarks, and rewrites a page from their results.

Runs the two cheapest benchmarks (numpy only, no model) with ``--quick`` against a page in a
temporary folder and checks what the suite produced: the page's summary header and table, the
benchmarks' own sections, their JSON results (headline numbers whose goal verdicts agree with
the numbers) and the summary plot, while the real docs/benchmarks.md stays untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "tools" / "bench" / "run_all.py"
REAL_PAGE = REPO / "docs" / "benchmarks.md"
CHEAP = ("mixer-update-time", "knn")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("DATAFLEX_BENCH_PAGE", None)
    return env


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_quick_suite_writes_page_results_and_plot(tmp_path: Path) -> None:
    page = tmp_path / "site" / "benchmarks.md"
    real_before = _sha(REAL_PAGE)
    real_results = sorted((REAL_PAGE.parent / "benchmarks").glob("*")) if REAL_PAGE.exists() else []
    res = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", "--only", *CHEAP, "--page", str(page)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _sha(REAL_PAGE) == real_before, "--quick must not touch docs/benchmarks.md"
    assert sorted((REAL_PAGE.parent / "benchmarks").glob("*")) == real_results

    # JSON results, one per benchmark run, next to the page
    folder = page.parent / "benchmarks"
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(f"{n}.json" for n in CHEAP)
    results = {n: json.loads((folder / f"{n}.json").read_text()) for n in CHEAP}
    for name, data in results.items():
        assert data["name"] == name and data["headlines"], data
        assert "--write" in data["command"] and data["machine"] and data["date"]
        for h in data["headlines"]:
            assert h["value"] is not None and math.isfinite(h["value"]) and h["value"] > 0, h
            if h["goal"] is None:
                assert h["met"] is None
            else:  # the verdict is the comparison of the number with the goal
                assert h["met"] == (
                    h["value"] <= h["goal"] if h["op"] == "<=" else h["value"] >= h["goal"]
                )
    knn = results["knn"]
    assert [h["goal"] for h in knn["headlines"]] == [1.1, 5.0, 2.0]  # parts (a), (b), (c)
    assert knn["results"]["stream"]["streaming_topk (pages released)"]["top1_is_source"] == 1.0
    update = results["mixer-update-time"]["results"]["median_us"]["8"]
    assert set(update) >= {"static", "random", "odm", "doremi", "dynamic_moe"}
    assert all(v > 0 for v in update.values())

    # the page: a fresh summary on top, every section kept, the two just run rewritten
    text = page.read_text()
    before = REAL_PAGE.read_text() if REAL_PAGE.exists() else ""
    assert text.startswith("# Benchmarks\n")
    head = text.split("<!-- bench-summary:end -->")[0]
    suite = "uv run --frozen python tools/bench/run_all.py --quick --only " + " ".join(CHEAP)
    assert f"_Suite command_: `{suite}" in head
    for data in results.values():
        for h in data["headlines"]:
            assert h["label"] in head, h["label"]
    assert "![Headline numbers against their goals](benchmarks/summary.png)" in head
    sections = re.findall(r"<!-- bench:([\w-]+):start -->", text)
    assert sections == re.findall(r"<!-- bench:([\w-]+):start -->", before) or not before
    assert set(CHEAP) <= set(sections)
    for name in CHEAP:
        body = text.split(f"<!-- bench:{name}:start -->")[1].split(f"<!-- bench:{name}:end -->")[0]
        assert "--repeats" in body and "--write" in body, body[-400:]  # the quick command
        assert f'<a id="bench-{name}"></a>\n<!-- bench:{name}:start -->' in text
    png = folder / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # re-rendering from the JSON files keeps one header and one anchor per section
    res = subprocess.run(
        [sys.executable, str(RUN_ALL), "--summary-only", "--page", str(page)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    again = page.read_text()
    assert again.count("<!-- bench-summary:start -->") == 1 and again.count("# Benchmarks\n") == 1
    assert again.count('<a id="bench-knn"></a>') == 1
    assert (
        again.split("<!-- bench-summary:end -->")[1] == text.split("<!-- bench-summary:end -->")[1]
    )


def test_quick_refuses_the_real_page() -> None:
    res = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", "--page", str(REAL_PAGE)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 2 and "never writes the real docs/benchmarks.md" in res.stderr
