"""The ``loss`` (spec §2.3) and ``delta_loss`` (spec §2.4) selectors."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, SelectRequest, StateError, derive
from dataflex_select.delta_loss import (
    DeltaLossSelector,
    delta_loss_weights,
    delta_loss_window,
)
from dataflex_select.loss import LossSelector, loss_bands, loss_probabilities, select_by_loss
from dataflex_select.primitives import sample_with_replacement, sample_without_replacement
from dataflex_testing import SelectorConformance


def _req(step: int = 0, n: int = 4, N: int = 10, **kw: Any) -> SelectRequest:
    base: dict[str, Any] = {"step": step, "epoch": 0, "update": 0, "n": n, "num_samples": N}
    base.update(kw)
    return SelectRequest(**base)


# --------------------------------------------------------------------------- loss: math


def test_loss_spec_example() -> None:
    losses = [1, 2, 3, 4, 5, 6]
    assert np.allclose(np.quantile(losses, [0.33, 0.66]), [2.65, 4.3])
    assert loss_bands(losses).tolist() == [0, 0, 1, 1, 2, 2]
    p1 = loss_probabilities(losses, "medium", 5.0, (0.33, 0.66), 1.0)
    assert np.allclose(p1, np.array([1, 1, 5, 5, 1, 1]) / 14, atol=1e-9, rtol=0)
    p05 = loss_probabilities(losses, "medium", 5.0, (0.33, 0.66), 0.5)
    assert np.allclose(p05, np.array([1, 1, 25, 25, 1, 1]) / 54, atol=1e-9, rtol=0)
    high = loss_probabilities(losses, "high")
    assert np.allclose(high, np.array([1, 1, 1, 1, 5, 5]) / 14, atol=1e-9)
    low = loss_probabilities(losses, "low", focus_weight=3.0)
    assert np.allclose(low, np.array([3, 3, 1, 1, 1, 1]) / 10, atol=1e-9)


def test_invalid_losses_get_zero_probability_and_are_never_drawn() -> None:
    losses = np.array([1.0, math.nan, 3.0, 4.0, math.inf, 6.0, 2.0])
    p = loss_probabilities(losses)
    assert p[1] == 0 and p[4] == 0 and math.isclose(p.sum(), 1.0)
    for seed in range(30):
        assert not {1, 4} & set(select_by_loss(losses, 5, seed).tolist())
    with pytest.raises(DataError, match="valid loss"):
        select_by_loss(losses, 6, 0)
    with pytest.raises(DataError, match="finite"):
        loss_probabilities([math.nan, math.nan])


def test_draw_is_gumbel_top_k_with_the_derived_seed() -> None:
    rng = np.random.default_rng(0)
    losses = rng.uniform(0, 5, size=40)
    sel = LossSelector({"seed": 11, "focus": "high", "temperature": 0.5})
    got = sel.select(_req(step=6, epoch=2, n=8, N=40, extras={"loss": losses}))
    p = loss_probabilities(losses, "high", 5.0, (0.33, 0.66), 0.5)
    assert got == sample_without_replacement(p, 8, derive(11, "loss", 2, 6)).tolist()
    assert sel.last_scores is not None and np.allclose(sel.last_scores[1], p)


def test_replacement_uses_multinomial_and_allows_n_above_N() -> None:
    losses = np.arange(1.0, 7.0)
    sel = LossSelector({"seed": 2, "replacement": True})
    got = sel.select(_req(step=1, n=20, N=6, extras={"loss": losses}))
    p = loss_probabilities(losses)
    assert got == sample_with_replacement(p, 20, derive(2, "loss", 0, 1)).tolist()
    with pytest.raises(DataError, match="distinct"):
        LossSelector({"seed": 2}).select(_req(n=7, N=6, extras={"loss": losses}))


def test_loss_signals() -> None:
    sel = LossSelector({"batch_size": 16, "candidate_subsample": 4})
    (sig,) = sel.signals(_req())
    assert (sig.name, sig.kind, sig.split) == ("loss", "loss", "train")
    assert sig.options == {"batch_size": 16} and sig.indices is not None and len(sig.indices) == 4
    (sig,) = LossSelector().signals(_req())
    assert sig.indices is None
    with pytest.raises(DataError, match="'loss' is missing"):
        LossSelector().select(_req())
    with pytest.raises(DataError, match="3 rows but 10"):
        LossSelector().select(_req(extras={"loss": [1.0, 2.0, 3.0]}))


def test_loss_config_errors() -> None:
    for bad in (
        {"quantiles": [0.7, 0.3]},
        {"quantiles": [0.1, 1.2]},
        {"temperature": 0.0},
        {"focus_weight": -1.0},
        {"focus": "middle"},
        {"batch_size": 0},
        {"focuss": "high"},
    ):
        with pytest.raises(ConfigError):
            LossSelector(bad)
    with pytest.raises(DataError, match="budget"):
        LossSelector({"selection_scope": "pool", "budget": 11}).select(
            _req(extras={"loss": np.ones(10)})
        )


class TestLossConformance(SelectorConformance):
    component_class = LossSelector

    def valid_configs(self):
        return [
            {},
            {"focus": "high", "temperature": 0.5, "quantiles": [0.2, 0.8]},
            {"replacement": True},
            {"selection_scope": "pool", "budget": 0.3},
            {"candidate_subsample": 0.5, "exclude_recent": 1},
        ]


# --------------------------------------------------------------------------- delta_loss: math


def test_delta_loss_window_spec_example() -> None:
    got = [delta_loss_window(10, u, 3, 0.2, 10.0) for u in (1, 2, 3)]
    assert [g[:2] for g in got] == [(0, 2), (4, 6), (7, 9)]
    assert np.allclose([g[2] for g in got], [0.006693, 0.5, 0.993307], atol=1e-6)
    # U = 1: x = 0 instead of the predecessor's 0/0
    assert delta_loss_window(10, 1, 1)[:2] == (0, 2)
    with pytest.raises(DataError, match="outside"):
        delta_loss_window(10, 4, 3)


def test_delta_loss_weights() -> None:
    # Δ ranks: rows 3, 0, 5, 1, 4, 2 (descending); row 6 invalid; rows 4, 2 negative.
    delta = np.array([4.0, 2.0, -3.0, 5.0, -1.0, 3.0, math.nan])
    # N = 6 valid rows, w = 0.5 → width 3; u = 3 of 3 → start = floor(σ(5)·0.5·6) = 2.
    # positions [2, 5): rows 5, 1, 4
    w = delta_loss_weights(
        delta, 3, 3, window_size=0.5, outside_weight=0.1, truncate_negative=False
    )
    assert w.tolist() == [0.1, 1.0, 0.1, 0.1, 1.0, 1.0, 0.0]
    # truncate_negative: end <= #{Δ >= 0} = 4 → positions [2, 4): rows 5, 1
    w = delta_loss_weights(delta, 3, 3, window_size=0.5, outside_weight=0.1)
    assert w.tolist() == [0.1, 1.0, 0.1, 0.1, 0.1, 1.0, 0.0]
    # an empty window (every Δ negative) makes all valid rows equal
    w = delta_loss_weights(-np.abs(delta), 2, 3, outside_weight=0.0)
    assert w.tolist() == [1.0] * 6 + [0.0]
    # ties go to the lower index
    w = delta_loss_weights(np.ones(10), 1, 3, window_size=0.2, outside_weight=0.0)
    assert w.tolist() == [1.0, 1.0] + [0.0] * 8
    with pytest.raises(DataError, match="finite"):
        delta_loss_weights([math.nan], 1, 1)


# --------------------------------------------------------------------------- delta_loss: shell


def _extras(U: int = 3, **kw: Any) -> dict[str, Any]:
    return {"updates_per_epoch": U, **kw}


def test_delta_loss_initial_reference_flow() -> None:
    N = 20
    ref = np.linspace(5.0, 3.0, N)
    sel = DeltaLossSelector({"seed": 4, "outside_weight": 0.0, "candidate_subsample": 15})
    req = _req(step=2, n=3, N=N, extras=_extras())
    sigs = {s.name: s for s in sel.signals(req)}
    assert set(sigs) == {"loss", "reference_loss"}
    assert sigs["reference_loss"].indices is None and sigs["reference_loss"].kind == "loss"
    assert sigs["reference_loss"].options["reference"] == "initial"
    assert sigs["loss"].indices is not None and len(sigs["loss"].indices) == 15
    cand = sel.candidates(req)
    now = ref[cand] - np.arange(15.0)  # Δ = 0..14 over the candidates: the last ones learnt most
    got = sel.select(dataclasses.replace(req, extras=_extras(loss=now, reference_loss=ref)))
    # u = 1 of 3 → the top ⌈0.2·15⌉ = 3 ranks (largest Δ), outside weight 0 → exactly those
    assert sorted(got) == sorted(cand[-3:].tolist())
    w = delta_loss_weights(np.arange(15.0), 1, 3, outside_weight=0.0)
    expected = cand[sample_without_replacement(w, 3, derive(4, "delta_loss", 0, 2))]
    assert got == expected.tolist()
    state = json.loads(json.dumps(sel.state_dict(), allow_nan=False))
    assert state["algorithm"]["reference_step"] == 0
    assert np.allclose(state["algorithm"]["reference"], ref)
    # later updates ask only for the current losses
    (sig,) = sel.signals(_req(step=4, N=N, update=1, extras=_extras()))
    assert sig.name == "loss"


def test_delta_loss_first_update_reference_is_uniform_first_window() -> None:
    N = 12
    losses = np.arange(N, dtype=float)
    losses[5] = math.nan
    sel = DeltaLossSelector({"reference": "first_update", "seed": 1})
    req = _req(step=3, n=4, N=N, extras=_extras())
    (sig,) = sel.signals(req)
    assert sig.name == "loss" and sig.indices is None
    got = sel.select(dataclasses.replace(req, extras=_extras(loss=losses)))
    assert got == sample_without_replacement(np.ones(N), 4, derive(1, "delta_loss", 0, 3)).tolist()
    state = json.loads(json.dumps(sel.state_dict(), allow_nan=False))
    assert state["algorithm"]["reference_step"] == 3
    assert state["algorithm"]["reference"][5] is None  # NaN is stored as null
    fresh = DeltaLossSelector({"reference": "first_update", "seed": 1})
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and math.isnan(fresh.reference[5])
    # the second update draws from the window: row 5 (no Δ) is never chosen
    later = _req(step=5, update=1, n=11, N=N, extras=_extras(loss=losses - 1.0))
    assert 5 not in fresh.select(later)
    with pytest.raises(DataError, match="distinct"):
        fresh.select(dataclasses.replace(later, n=12))


def test_delta_loss_needs_updates_per_epoch_and_a_matching_pool() -> None:
    sel = DeltaLossSelector()
    ref = {"loss": np.ones(10), "reference_loss": np.ones(10)}
    with pytest.raises(DataError, match="updates_per_epoch"):
        sel.select(_req(extras=ref))
    with pytest.raises(DataError, match="reference_loss"):
        sel.select(_req(extras=_extras(loss=np.ones(10))))
    sel.select(_req(extras=_extras(**ref)))
    with pytest.raises(StateError, match="N = 11"):
        sel.select(_req(N=11, extras=_extras(loss=np.ones(11))))
    with pytest.raises(DataError, match="outside"):
        sel.select(_req(update=3, extras=_extras(loss=np.ones(10))))


def test_delta_loss_config_errors() -> None:
    for bad in (
        {"window_size": 0.0},
        {"window_size": 1.5},
        {"steepness": -1.0},
        {"outside_weight": -0.1},
        {"reference": "start"},
        {"windows_size": 0.2},
    ):
        with pytest.raises(ConfigError):
            DeltaLossSelector(bad)


class TestDeltaLossConformance(SelectorConformance):
    component_class = DeltaLossSelector

    def request(self, step: int, epoch: int, update: int) -> SelectRequest:
        req = super().request(step, epoch, update)
        return dataclasses.replace(
            req, extras={**req.extras, "updates_per_epoch": self.updates_per_epoch}
        )

    def valid_configs(self):
        return [
            {},
            {"reference": "first_update"},
            {"truncate_negative": False, "steepness": 3.0, "window_size": 0.5},
            {"selection_scope": "pool", "budget": 20},
            {"candidate_subsample": 0.5},
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


def test_docs_examples_run() -> None:
    out = _run_doc_examples("loss.md")
    assert "[1.0, 1.0, 5.0, 5.0, 1.0, 1.0]" in out and "64 64\nTrue" in out
    out = _run_doc_examples("delta_loss.md")
    assert "[(0, 2), (4, 6), (7, 9)]" in out and out.rstrip().endswith("True")
