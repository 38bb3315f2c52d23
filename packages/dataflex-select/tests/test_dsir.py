"""The ``dsir`` selector (spec §2.10): hashed n-gram importance resampling."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from typing import Any

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, SelectRequest, SignalRequest, StateError, derive
from dataflex_select.dsir import (
    DsirSelector,
    dsir_log_weights,
    dsir_scores,
    fit_bucket_distribution,
    gumbel_top_k,
    hash_bucket,
    ngram_buckets,
    ngram_counts,
    wordpunct_tokenize,
)
from dataflex_select.primitives import sample_without_replacement, top_k
from dataflex_testing import SelectorConformance


def _req(step: int = 0, n: int = 4, N: int = 8, **kw: Any) -> SelectRequest:
    base: dict[str, Any] = {"step": step, "epoch": 0, "update": 0, "n": n, "num_samples": N}
    base.update(kw)
    return SelectRequest(**base)


# --------------------------------------------------------------------------- features


def test_hash_bucket_spec_example() -> None:
    assert hash_bucket("the", 10000) == 8288
    assert hash_bucket("the", 10000) == int(hashlib.sha256(b"the").hexdigest(), 16) % 10000


def test_wordpunct_matches_nltk() -> None:
    # nltk's documented WordPunctTokenizer example
    text = "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\n\nThanks."
    assert wordpunct_tokenize(text) == [
        "Good", "muffins", "cost", "$", "3", ".", "88", "in", "New", "York", ".",
        "Please", "buy", "me", "two", "of", "them", ".", "Thanks", ".",
    ]  # fmt: skip
    assert wordpunct_tokenize("don't... é-ça!?") == ["don", "'", "t", "...", "é", "-", "ça", "!?"]


def test_ngram_buckets_lowercase_unigrams_then_bigrams() -> None:
    got = ngram_buckets("The cat SAT", ngrams=2, num_buckets=10000).tolist()
    grams = ["the", "cat", "sat", "the cat", "cat sat"]
    assert got == [hash_bucket(g, 10000) for g in grams]
    assert ngram_buckets("a b c", ngrams=1, num_buckets=7).tolist() == [
        hash_bucket(g, 7) for g in "abc"
    ]
    counts = ngram_counts("the the", ngrams=2, num_buckets=10000)
    assert counts[8288] == 2 and counts.sum() == 3


def test_log_weight_spec_example() -> None:
    lw = dsir_log_weights([2, 1, 0], [0.5, 0.25, 0.25], [0.25, 0.25, 0.5])
    assert abs(lw - 2 * np.log(2)) < 1e-6 and abs(lw - 1.386294) < 1e-6
    mat = dsir_log_weights([[2, 1, 0], [0, 0, 1]], [0.5, 0.25, 0.25], [0.25, 0.25, 0.5])
    assert np.allclose(mat, [2 * np.log(2), -np.log(2)], atol=1e-6)


def test_fit_cap_counts_only_the_first_texts() -> None:
    texts = ["a b", "c d", "e f"]
    full = fit_bucket_distribution(texts, ngrams=1, num_buckets=100)
    capped = fit_bucket_distribution(texts, ngrams=1, num_buckets=100, max_tokens=3)
    assert np.count_nonzero(full) == 6
    assert capped[hash_bucket("e", 100)] == 0 and np.isclose(capped.sum(), 1.0)


def _texts(vocab: list[str], count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocab, size=12)) for _ in range(count)]


MATH_WORDS = "solve equation integral derivative prove sum even matrix vector limit".split()
COOK_WORDS = "whisk eggs sugar butter bake bread oven onions fry soup".split()


def test_target_like_texts_get_higher_log_weight() -> None:
    target = _texts(MATH_WORDS, 100, 0)
    pool = _texts(MATH_WORDS, 20, 1) + _texts(COOK_WORDS, 20, 2)
    for ngrams in (1, 2):
        lw = dsir_scores(pool, target, ngrams=ngrams, num_buckets=10000)
        assert lw[:20].min() > lw[20:].max(), ngrams
    # a text that shares a target-like part scores in between
    mixed = " ".join(MATH_WORDS[:6] + COOK_WORDS[:6])
    lw = dsir_scores(pool + [mixed], target, ngrams=1, num_buckets=10000)
    assert lw[20:40].max() < lw[40] < lw[:20].min()
    with pytest.raises(DataError, match="target set has no rows"):
        dsir_scores(pool, [])


def test_gumbel_top_k_is_sample_without_replacement_in_log_space() -> None:
    lw = np.array([0.5, -1.0, 2.0, 0.0, 1.0])
    for seed in range(5):
        assert (
            gumbel_top_k(lw, 3, seed).tolist()
            == sample_without_replacement(np.exp(lw), 3, seed).tolist()
        )
    huge = np.array([900.0, 1000.0, -np.inf, 950.0])  # exp would overflow
    assert gumbel_top_k(huge, 3, 0).tolist().count(2) == 0


# --------------------------------------------------------------------------- selector


POOL = _texts(MATH_WORDS, 4, 1) + _texts(COOK_WORDS, 4, 2)
TARGET = _texts(MATH_WORDS, 30, 3)


def _pool_extras() -> dict[str, Any]:
    return {"text": POOL, "target_text": TARGET}


def test_selector_signals_and_top_k() -> None:
    sel = DsirSelector(
        {"top_k": True, "num_buckets": 997, "text_fields": ["instruction", "output"]}
    )
    sigs = {s.name: s for s in sel.signals(_req())}
    assert set(sigs) == {"text", "target_text"}
    assert sigs["text"].kind == "text" and sigs["text"].indices is None
    assert sigs["target_text"].split == "target"
    assert sigs["text"].options == {"text_fields": ["instruction", "output"]}
    got = sel.select(_req(extras=_pool_extras()))
    lw = dsir_scores(POOL, TARGET, num_buckets=997)
    assert got == top_k(lw, 4).tolist()
    assert set(got) <= {0, 1, 2, 3}
    assert sel.signals(_req(step=1)) == []  # computed once


def test_selector_gumbel_draw_uses_the_derived_seed() -> None:
    sel = DsirSelector({"seed": 5, "candidate_subsample": 6})
    req = _req(step=3, epoch=1, extras=_pool_extras())
    cand = sel.candidates(req)
    got = sel.select(req)
    lw = dsir_scores(POOL, TARGET)
    assert got == cand[gumbel_top_k(lw[cand], 4, derive(5, "dsir", 1, 3))].tolist()


def test_selector_state_checks_the_weights_on_resume() -> None:
    sel = DsirSelector({"seed": 1})
    sel.select(_req(extras=_pool_extras()))
    state = json.loads(json.dumps(sel.state_dict()))
    digest = state["algorithm"]["log_weights_sha256"]
    assert isinstance(digest, str) and len(digest) == 64
    same = DsirSelector({"seed": 1})
    same.load_state_dict(state)
    assert len(same.signals(_req(step=2))) == 2  # recomputed from the texts, not stored
    assert same.select(_req(step=2, extras=_pool_extras())) == DsirSelector({"seed": 1}).select(
        _req(step=2, extras=_pool_extras())
    )
    changed = DsirSelector({"seed": 1})
    changed.load_state_dict(state)
    with pytest.raises(StateError, match="differ"):
        changed.select(_req(step=2, extras={**_pool_extras(), "target_text": POOL[4:]}))


def test_selector_bad_input() -> None:
    with pytest.raises(DataError, match="target set has no rows"):
        DsirSelector().select(_req(extras={"text": POOL, "target_text": []}))
    with pytest.raises(DataError, match="'text' is missing"):
        DsirSelector().select(_req(extras={"target_text": TARGET}))
    with pytest.raises(DataError, match="expected str"):
        DsirSelector().select(_req(extras={"text": [1] * 8, "target_text": TARGET}))
    with pytest.raises(DataError, match="budget"):
        DsirSelector({"selection_scope": "pool", "budget": 9}).select(_req(extras=_pool_extras()))
    with pytest.raises(DataError, match="distinct|finite"):
        DsirSelector().select(_req(n=9, extras=_pool_extras()))


def test_config_errors() -> None:
    for bad in (
        {"ngrams": 0},
        {"num_buckets": 0},
        {"num_tokens_to_fit": 0},
        {"num_tokens_to_fit": "all"},
        {"tokenizer": "spacy"},
        {"text_fields": []},
        {"n_grams": 2},
    ):
        with pytest.raises(ConfigError):
            DsirSelector(bad)
    assert DsirSelector().config.tokens_to_fit == 100_000 * 10000
    assert DsirSelector({"num_tokens_to_fit": 50}).config.tokens_to_fit == 50


@pytest.mark.skipif(importlib.util.find_spec("nltk") is not None, reason="nltk is installed")
def test_word_tokenize_needs_nltk() -> None:
    with pytest.raises(ConfigError, match="nltk"):
        DsirSelector({"tokenizer": "word_tokenize"})


class TestDsirConformance(SelectorConformance):
    component_class = DsirSelector

    def signal_value(self, signal: SignalRequest, request: SelectRequest) -> Any:
        # Raw text does not change during training: make it independent of the step.
        if signal.kind == "text":
            request = dataclasses.replace(request, step=0, epoch=0)
        return super().signal_value(signal, request)

    def valid_configs(self):
        return [
            {},
            {"top_k": True, "ngrams": 1, "num_buckets": 101},
            {"num_tokens_to_fit": 200, "text_fields": ["instruction"]},
            {"selection_scope": "pool", "budget": 0.3},
            {"candidate_subsample": 0.5, "exclude_recent": 1},
        ]


# --------------------------------------------------------------------------- docs


def _run_doc_examples(page: str) -> str:
    """Run every python block of ``docs/select/<page>`` and return what it printed."""
    import contextlib
    import io
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "docs" / "select" / page
    if not path.exists():
        pytest.skip(f"{path} is not part of this checkout")
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
    assert blocks, f"{page} has no python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks:
            exec(compile(code, str(path), "exec"), {"__name__": "doc_example"})
    return out.getvalue()


def test_docs_example_runs() -> None:
    out = _run_doc_examples("dsir.md").splitlines()
    assert out[:2] == ["8288", "1.386294"] and out[-1] == "True"
