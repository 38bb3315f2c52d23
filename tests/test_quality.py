"""The quality experiments (tools/bench/quality) at ``--tiny`` size: mixing, reweighting, flat keys.

One module-scoped fixture runs the three scripts' ``main`` in this process (each trains through
``dataflex-cli``'s own entry point, in-process, so the torch/LLaMA-Factory imports are paid once):
mixing on seeds 0 and 1, reweighting and flat keys on seed 0. The tests then check what the
scripts wrote under ``--out``: finite validation losses for every variant and seed, that they
are what an independent cross-entropy gives, mixtures that sum to 1 and match the runs' own
files, exact ties where the math says so, and flat-key runs that equal their block-form twins.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUALITY = REPO / "tools" / "bench" / "quality"
DOMAINS = ["news", "wiki", "code", "math", "noise"]
REAL = DOMAINS[:4]
MIX_VARIANTS = ["uniform", "stratified", "doremi", "odm"]


def _figures() -> list[tuple[str, int]]:
    """docs/results/'s files and their modification times."""
    folder = REPO / "docs" / "results"
    return (
        sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*")) if folder.exists() else []
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, dataflex_cache: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("quality")
    page = REPO / "docs" / "results.md"
    page_before = page.read_bytes() if page.exists() else None
    figures_before = _figures()
    env_before = dict(os.environ)
    os.environ["DATAFLEX_CACHE_DIR"] = str(dataflex_cache)
    sys.path.insert(0, str(QUALITY))
    try:
        import flat_keys
        import mixing
        import reweighting

        out = {
            "mixing": mixing.main(["--tiny", "--seeds", "0", "1", "--out", str(root / "mixing")]),
            "reweighting": reweighting.main(
                ["--tiny", "--seeds", "0", "--out", str(root / "reweighting")]
            ),
            "flat_keys": flat_keys.main(
                ["--tiny", "--seeds", "0", "--out", str(root / "flat_keys")]
            ),
        }
    finally:
        sys.path.remove(str(QUALITY))
        os.environ.clear()
        os.environ.update(env_before)
    out["root"] = root
    out["page_before"] = page_before
    out["figures_before"] = figures_before
    return out


def _finite_losses(runs: dict[str, Any], variants: list[str], seeds: list[str]) -> None:
    for v in variants:
        assert sorted(runs[v]) == seeds, (v, sorted(runs[v]))
        for s in seeds:
            loss = runs[v][s]["loss"]
            assert sorted(loss) == sorted(DOMAINS)
            for d, x in loss.items():
                # a model a few steps from its random init: finite, and near ln(2048) = 7.62
                assert math.isfinite(x) and 1.0 < x < 8.5, (v, s, d, x)
            m = runs[v][s]["metrics"]
            assert m["real avg"] == pytest.approx(sum(loss[d] for d in REAL) / 4)
            assert m["worst real"] == max(loss[d] for d in REAL)


def test_mixing_losses_are_finite_for_every_variant_and_seed(tiny: dict[str, Any]) -> None:
    res = tiny["mixing"]
    saved = json.loads((tiny["root"] / "mixing" / "results.json").read_text())
    assert saved["runs"] == res["runs"]
    _finite_losses(res["runs"], MIX_VARIANTS, ["0", "1"])
    # the seed changes the model initialisation and the data order, so the losses
    assert res["runs"]["uniform"]["0"]["loss"] != res["runs"]["uniform"]["1"]["loss"]


def test_mixing_weights_sum_to_one_and_come_from_the_runs(tiny: dict[str, Any]) -> None:
    root = tiny["root"] / "mixing"
    runs = tiny["mixing"]["runs"]
    for v in MIX_VARIANTS:
        for s, r in runs[v].items():
            w = r["weights"]
            assert len(w) == 5 and min(w) >= 0 and sum(w) == pytest.approx(1.0, abs=1e-9), (v, s, w)
    for s in ("0", "1"):
        assert runs["uniform"][s]["weights"] == pytest.approx([0.2] * 5)
        # size-proportional: packed blocks; random characters tokenise badly, so noise is largest
        eff = json.loads(
            (root / f"s{s}" / "stratified" / "dataflex" / "effective_config.json").read_text()
        )
        sizes = eff["domain_sizes"]
        assert runs["stratified"][s]["weights"] == pytest.approx([n / sum(sizes) for n in sizes])
        assert max(sizes) == sizes[DOMAINS.index("noise")]
        avg = json.loads(
            (root / f"s{s}" / "doremi-proxy" / "doremi_average_weights.json").read_text()
        )
        assert runs["doremi"][s]["weights"] == avg["average"]
        # the target trained on those weights (read through init_mixture_proportions.from_file)
        eff = json.loads(
            (root / f"s{s}" / "doremi-target" / "dataflex" / "effective_config.json").read_text()
        )
        assert eff["dataflex"]["init_mixture_proportions"]["from_file"].endswith(
            "doremi_average_weights.json"
        )
        log = root / f"s{s}" / "odm" / "dataflex" / "decisions.jsonl"
        recs = [json.loads(x) for x in log.read_text().splitlines()]
        assert runs["odm"][s]["weights"] == recs[-1]["decision"]["proportions"]
        assert runs["odm"][s]["decisions"] == len(recs)


def test_validation_loss_equals_an_independent_cross_entropy(tiny: dict[str, Any]) -> None:
    """The scripts' evaluation (dataflex_ops.per_sample_loss, padded batches) against a plain
    per-block F.cross_entropy of the same saved model on the same validation blocks."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(QUALITY))
    try:
        import _quality as q
    finally:
        sys.path.remove(str(QUALITY))
    model_dir = tiny["root"] / "mixing" / "s1" / "odm"
    data = tiny["root"] / "mixing" / "data"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = tiny["mixing"]["size"]["eval_rows"]
    for d in ("code", "noise"):
        blocks = q.eval_blocks(tok, data, d, rows=rows)
        assert len(blocks) > 1
        total, count = 0.0, 0
        with torch.no_grad():
            for b in blocks:
                ids = torch.tensor([b])
                logits = model(input_ids=ids).logits[0, :-1]
                total += float(F.cross_entropy(logits.float(), ids[0, 1:], reduction="sum"))
                count += len(b) - 1
        assert tiny["mixing"]["runs"]["odm"]["1"]["loss"][d] == pytest.approx(
            total / count, rel=1e-5
        ), d


def test_reweighting_losses_and_the_uniform_strategy_tie(tiny: dict[str, Any]) -> None:
    runs = tiny["reweighting"]["runs"]
    variants = [
        "none",
        *(
            f"loss-{s}"
            for s in ("linupper", "quadratic", "extremes", "upper", "identity", "uniform")
        ),
        "adapt",
    ]
    assert list(runs) == variants
    _finite_losses(runs, variants, ["0"])
    # true uniform weights of the loss weighter are unweighted training: the same model exactly
    assert runs["loss-uniform"]["0"]["loss"] == runs["none"]["0"]["loss"]
    # ... while a real strategy changed the training
    assert runs["loss-linupper"]["0"]["loss"] != runs["none"]["0"]["loss"]
    # per-domain weights relative to the mean: 1 for uniform weighting, not for loss weighting
    for d in DOMAINS:
        for v in ("none", "loss-uniform"):
            w = runs[v]["0"]["domain_weight"][d]
            assert w is None or w == pytest.approx(1.0), (v, d, w)
    assert any(
        w is not None and abs(w - 1) > 1e-3
        for w in runs["loss-linupper"]["0"]["domain_weight"].values()
    )
    md = (tiny["root"] / "reweighting" / "results.md").read_text()
    assert "| none (uniform weighter) |" in md and "baseline" in md
    assert "loss / uniform tied with no weighting on every seed" in md  # computed, not typed in


def test_flat_keys_decide_and_train_like_the_block_form(tiny: dict[str, Any]) -> None:
    res = tiny["flat_keys"]["paradigms"]
    assert list(res) == ["mix", "select", "weight"]
    for p, c in res.items():
        assert c["same_decisions"] and c["same_losses"], (p, c)
        assert c["decisions"] > 0 and c["steps"] > 0, (p, c)
    assert res["select"]["selections"] > 0
    assert res["mix"]["effective_config_differences"] == {}
    assert res["weight"]["effective_config_differences"] == {}
    # the flat select config names its target the predecessor's way (eval_dataset)
    assert res["select"]["effective_config_differences"] == {
        "dataflex.target_dataset": ["code_eval", None]
    }
    root = tiny["root"] / "flat_keys"
    flat = (root / "configs" / "mix-flat.yaml").read_text()
    assert "dataflex:" not in flat and "train_type: dynamic_mix" in flat
    a = (root / "mix" / "block" / "dataflex" / "decisions.jsonl").read_text()
    b = (root / "mix" / "flat" / "dataflex" / "decisions.jsonl").read_text()
    assert a == b and a.strip()


def test_reports_state_the_comparison_and_tiny_leaves_the_docs_alone(tiny: dict[str, Any]) -> None:
    root = tiny["root"]
    md = (root / "mixing" / "results.md").read_text()
    for label in ("uniform (static)", "size-proportional (static)", "DoReMi", "ODM"):
        assert f"| {label} |" in md
    assert "Δ real avg vs uniform (static)" in md and "Δ worst vs size-proportional (static)" in md
    assert "DoReMi beat" in md or "DoReMi did not beat" in md or "DoReMi tied" in md
    for png in (
        root / "mixing" / "figures" / "mixing_loss.png",
        root / "mixing" / "figures" / "mixing_weights.png",
        root / "reweighting" / "figures" / "reweighting_loss.png",
    ):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    page = REPO / "docs" / "results.md"
    assert (page.read_bytes() if page.exists() else None) == tiny["page_before"]
    assert _figures() == tiny["figures_before"]
