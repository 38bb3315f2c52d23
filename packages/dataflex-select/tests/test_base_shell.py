"""The shared shell of the signal-driven selectors (``dataflex_select.base``, spec §2.0).

A tiny ``ScoredSelector`` stands in for a real algorithm: its score is ``request.extras["score"]``
when given (one value per candidate, in candidate order), else ``-index``; it takes the top-n.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from dataflex_core import (
    ConfigError,
    DataError,
    SelectRequest,
    SignalRequest,
    StateError,
    derive,
)
from dataflex_select.base import ScoredSelector, ScoredSelectorConfig
from dataflex_select.primitives import generator, sample_without_replacement, top_k
from dataflex_select.selectors import warmup_indices
from dataflex_testing import SelectorConformance


class LowestIndex(ScoredSelector):
    """Scores ``-index`` (or ``extras["score"]``); picks the top-n."""

    config_class = ScoredSelectorConfig
    name = "lowest_index"

    def _signals(self, request: SelectRequest, candidates: Any) -> list[SignalRequest]:
        return [
            SignalRequest("loss", "loss", indices=self.rows_of(candidates, request.num_samples))
        ]

    def _choose(self, request: SelectRequest, candidates: Any, n: int) -> Any:
        score = request.extras.get("score")
        s = -candidates.astype(np.float64) if score is None else np.asarray(score, dtype=float)
        self.last_scores = (candidates, s)
        return candidates[top_k(s, n)]


def _req(step: int = 0, n: int = 4, N: int = 50, **kw: Any) -> SelectRequest:
    base: dict[str, Any] = {"step": step, "epoch": 0, "update": 0, "n": n, "num_samples": N}
    base.update(kw)
    return SelectRequest(**base)


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state, allow_nan=False))


# --------------------------------------------------------------------------- warmup, subsample


def test_warmup_draw_is_uniform_and_seeded() -> None:
    sel = LowestIndex({"seed": 3})
    got = sel.select(_req(epoch=2, update=-1, warmup=True, n=6))
    assert got == warmup_indices(3, 2, 6, 50).tolist()
    g = generator(derive(3, "warmup", 2)).gumbel(size=50)
    assert got == np.argsort(-g, kind="stable")[:6].tolist()
    assert sel.signals(_req(update=-1, warmup=True)) == []  # the warmup draw needs no signal


@pytest.mark.parametrize("subsample, size", [(0.3, 15), (20, 20)])
def test_candidate_subsample_scores_a_seeded_subset(subsample: float | int, size: int) -> None:
    sel = LowestIndex({"seed": 1, "candidate_subsample": subsample})
    req = _req(step=7, epoch=1)
    expected = np.sort(sample_without_replacement(np.ones(50), size, derive(1, "candidates", 1, 7)))
    cand = sel.candidates(req)
    assert cand.tolist() == expected.tolist()
    (sig,) = sel.signals(req)
    assert sig.indices == tuple(expected.tolist())
    got = sel.select(req)
    assert got == expected[:4].tolist()  # the lowest candidates, not the lowest rows
    assert set(got) <= set(expected.tolist())
    assert sel.last_scores is not None and sel.last_scores[0].tolist() == expected.tolist()
    # another step, another subset; unscored rows are never picked
    for step in range(20):
        req = _req(step=step)
        assert set(sel.select(req)) <= set(sel.candidates(req).tolist())


def test_whole_pool_signal_has_no_indices() -> None:
    (sig,) = LowestIndex().signals(_req())
    assert sig.indices is None


def test_exclude_recent_excludes_the_last_r_windows() -> None:
    sel = LowestIndex({"exclude_recent": 2})
    w = [sel.select(_req(step=s)) for s in range(4)]
    assert w[0] == [0, 1, 2, 3]
    assert w[1] == [4, 5, 6, 7]
    assert w[2] == [8, 9, 10, 11]
    assert w[3] == [0, 1, 2, 3]  # window 0 is no longer among the last two
    assert 0 not in sel.candidates(_req()).tolist() and 8 not in sel.candidates(_req()).tolist()


def test_too_few_candidates_is_a_clear_error() -> None:
    sel = LowestIndex({"candidate_subsample": 3})
    with pytest.raises(DataError, match="only 3 candidates"):
        sel.select(_req(n=4))


def test_nan_scores_are_never_selected() -> None:
    score = np.arange(10, dtype=float)
    score[[9, 7, 2]] = math.nan
    sel = LowestIndex()
    got = sel.select(_req(n=7, N=10, extras={"score": score}))
    assert sorted(got) == [0, 1, 3, 4, 5, 6, 8]
    with pytest.raises(DataError, match="finite"):
        sel.select(_req(n=8, N=10, extras={"score": score}))


# --------------------------------------------------------------------------- pool scope


@pytest.mark.parametrize("budget, size", [(0.2, 10), (7, 7), (1.0, 50)])
def test_pool_scope_picks_budget_once_and_walks_permutations(budget: Any, size: int) -> None:
    sel = LowestIndex({"selection_scope": "pool", "budget": budget, "seed": 5})
    first = _req(step=3)
    assert len(sel.signals(first)) == 1
    served = []
    for k in range(6):
        req = _req(step=3 + 2 * k)
        if k:
            assert sel.signals(req) == []  # the subset is picked once
        served += sel.select(req)
    pool = list(range(size))  # the lowest `budget` rows
    assert sel.state_dict()["pool"] == pool
    # every pass over the subset covers it before any row repeats
    for p in range(len(served) // size):
        assert sorted(served[p * size : (p + 1) * size]) == pool
    perm = generator(derive(5, "pool_window", 3, 0)).permutation(size)
    assert served[: min(size, 4)] == [pool[i] for i in perm[: min(size, 4)]]


def test_pool_refresh_repicks() -> None:
    sel = LowestIndex({"selection_scope": "pool", "budget": 6, "refresh": True})
    a = sel.select(_req(step=1, n=3))
    assert set(a) <= set(range(6)) and sel.state_dict()["pool_cursor"] == 3
    score = np.arange(50, dtype=float)  # now the highest rows win
    assert len(sel.signals(_req(step=2))) == 1
    b = sel.select(_req(step=2, n=3, extras={"score": score}))
    assert set(b) <= set(range(44, 50))
    state = sel.state_dict()
    assert state["pool"] == list(range(44, 50)) and state["pool_step"] == 2
    assert state["pool_cursor"] == 3


def test_budget_errors_name_the_key() -> None:
    with pytest.raises(DataError, match="budget"):
        LowestIndex({"selection_scope": "pool", "budget": 51}).select(_req())
    for bad in (0, -3, 0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="budget"):
            LowestIndex({"selection_scope": "pool", "budget": bad})
    for bad in (0, 0.0, 1.5):
        with pytest.raises(ConfigError, match="candidate_subsample"):
            LowestIndex({"candidate_subsample": bad})
    with pytest.raises(ConfigError, match="exclude_recent"):
        LowestIndex({"exclude_recent": -1})


def test_integer_budget_is_a_count_not_a_fraction() -> None:
    # parse_config tries union members in order; an int must stay an int.
    sel = LowestIndex({"selection_scope": "pool", "budget": 5, "candidate_subsample": 30})
    assert sel.config.budget == 5 and isinstance(sel.config.budget, int)
    assert isinstance(sel.config.candidate_subsample, int)
    sel.select(_req(n=2))
    assert len(sel.state_dict()["pool"]) == 5


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "config",
    [
        {"selection_scope": "pool", "budget": 9, "seed": 2},
        {"selection_scope": "pool", "budget": 0.3, "refresh": True, "candidate_subsample": 0.5},
        {"exclude_recent": 2, "candidate_subsample": 25},
    ],
)
def test_resume_mid_pool_equals_straight_run(config: dict[str, Any]) -> None:
    requests = [_req(step=s, n=4, epoch=s // 5) for s in range(10)]
    straight = LowestIndex(config)
    expected = [straight.select(r) for r in requests]
    first = LowestIndex(config)
    for r in requests[:3]:
        first.select(r)
    state = _roundtrip(first.state_dict())
    if config.get("budget") == 9:
        assert state["pool_cursor"] == 12  # one full pass of 9 and three rows into the next
    resumed = LowestIndex(config)
    resumed.load_state_dict(state)
    assert [resumed.select(r) for r in requests[3:]] == expected[3:]
    assert _roundtrip(resumed.state_dict()) == _roundtrip(straight.state_dict())


def test_resume_with_another_seed_is_refused() -> None:
    state = LowestIndex({"seed": 1}).state_dict()
    with pytest.raises(StateError, match="seed"):
        LowestIndex({"seed": 2}).load_state_dict(state)
    with pytest.raises(StateError, match="malformed"):
        LowestIndex({"seed": 1}).load_state_dict({**state, "pool_cursor": "x"})


class TestShellConformance(SelectorConformance):
    component_class = LowestIndex

    def valid_configs(self):
        return [
            {},
            {"selection_scope": "pool", "budget": 0.3},
            {"selection_scope": "pool", "budget": 20, "refresh": True},
            {"candidate_subsample": 0.5, "exclude_recent": 2},
        ]
