"""The ``tsds`` selector (spec §2.9): closed-form water-filling over target neighbours."""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, SelectRequest, StateError, derive
from dataflex_select.primitives import sample_with_replacement, sample_without_replacement
from dataflex_select.tsds import (
    TsdsSelector,
    tsds_density,
    tsds_distribution,
    tsds_neighbour_cap,
    tsds_probabilities,
    tsds_sample,
)
from dataflex_testing import SelectorConformance

NUMPY = {"backend": "numpy"}


def _req(step: int = 0, n: int = 4, N: int = 10, **kw: Any) -> SelectRequest:
    base: dict[str, Any] = {"step": step, "epoch": 0, "update": 0, "n": n, "num_samples": N}
    base.update(kw)
    return SelectRequest(**base)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- water-filling


def test_spec_examples() -> None:
    d, i = [0, 1, 2, 4], [0, 1, 2, 3]
    p = tsds_probabilities(d, i, [2, 1, 1, 1], alpha=0.2, C=1.0, M=1)
    assert np.allclose(p, [0.2, 0.4, 0.4, 0.0], atol=1e-12)
    p = tsds_probabilities(d, i, [1, 1, 1, 1], alpha=0.2, C=1.0, M=1)
    assert np.allclose(p, [1 / 3, 1 / 3, 1 / 3, 0.0], atol=1e-12)


def test_alpha_one_sigma_zero_puts_one_over_m_on_each_nearest() -> None:
    rng = np.random.default_rng(1)
    xb = _unit(rng.normal(size=(50, 4)))
    xq = _unit(rng.normal(size=(5, 4)))
    p = tsds_distribution(xb, xq, alpha=1.0, sigma=0.0, max_K=10, index=NUMPY)
    nearest = np.argmin(((xq[:, None] - xb[None]) ** 2).sum(-1), axis=1)
    expected = np.zeros(50)
    np.add.at(expected, nearest, 1 / 5)
    assert np.allclose(p, expected, atol=1e-12)


def _official(d: np.ndarray, i: np.ndarray, rho: np.ndarray, alpha: float, C: float, N: int):
    """The official tsds.py loop, line for line (with its final renormalisation)."""
    M, K = d.shape
    last_k = [0] * M
    heap = [(1.0 / rho[j][0], 0, j) for j in range(M)]
    heapq.heapify(heap)
    cost = np.zeros(M)
    wsum = [d[j][0] / rho[j][0] for j in range(M)]
    total, s = 0.0, 0.0
    while heap:
        count, k, j = heapq.heappop(heap)
        s = count
        total -= cost[j]
        cost[j] = d[j][k + 1] * count - wsum[j]
        total += cost[j]
        if alpha / C * total >= (1 - alpha) * M:
            break
        last_k[j] = k
        if k < K - 2:
            count += 1.0 / rho[j][k + 1]
            heapq.heappush(heap, (count, k + 1, j))
            wsum[j] += d[j][k + 1] / rho[j][k + 1]
    p = np.zeros(N)
    for j in range(M):
        psum = 0.0
        for k in range(last_k[j] + 1):
            w = 1.0 / M / s / rho[j][k]
            p[i[j][k]] += w
            psum += w
        p[i[j][last_k[j] + 1]] += max(1.0 / M - psum, 0)
    return p / p.sum()


@pytest.mark.parametrize("seed", range(6))
def test_invariants_and_official_loop_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    N, M, K = 60, 7, 12
    xb = _unit(rng.normal(size=(N, 5)))
    xq = _unit(rng.normal(size=(M, 5)))
    sq = ((xq[:, None] - xb[None]) ** 2).sum(-1)
    i = np.argsort(sq, axis=1, kind="stable")[:, :K]
    d = np.sqrt(np.take_along_axis(sq, i, axis=1)).astype(np.float64)
    rho = tsds_density(xb, i, sigma=0.75, kde_K=20, index=NUMPY)
    assert np.all(rho >= 1.0 - 1e-5)  # the point itself, up to float32 self-distance
    alpha = float(rng.uniform(0.1, 0.9))
    p = tsds_probabilities(d, i, rho, alpha=alpha, C=float(rng.uniform(0.5, 5)), M=M, num_samples=N)
    assert math.isclose(p.sum(), 1.0, abs_tol=1e-12) and np.all(p >= 0)
    # each query contributes exactly 1/M: give every query its own rows (same d and ρ) and
    # sum the mass on them
    own = (np.arange(M)[:, None] * K + np.arange(K)[None, :]).astype(np.int64)
    q = tsds_probabilities(d, own, rho, alpha=alpha, C=2.0, M=M, num_samples=M * K)
    assert np.allclose(q.reshape(M, K).sum(axis=1), 1.0 / M, atol=1e-12, rtol=0)
    support = set(np.flatnonzero(p).tolist())
    assert support <= set(i.reshape(-1).tolist())
    # the official loop gives the same p (its renormalisation is a no-op here)
    alpha_c = (alpha, 5.0)
    p = tsds_probabilities(d, i, rho, *alpha_c, M=M, num_samples=N)
    assert np.allclose(p, _official(d, i, rho, *alpha_c, N), atol=1e-12)


def test_per_query_mass_is_one_over_m() -> None:
    # Two disjoint neighbour lists: each query's mass stays on its own rows.
    d = np.array([[0.0, 0.5, 1.0, 1.5], [0.1, 0.2, 0.3, 2.0]])
    i = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    for alpha in (0.05, 0.3, 0.6, 0.95, 1.0):
        p = tsds_probabilities(d, i, np.ones_like(d), alpha, 2.0, 2)
        assert math.isclose(p[:4].sum(), 0.5, abs_tol=1e-12), alpha
        assert math.isclose(p[4:].sum(), 0.5, abs_tol=1e-12), alpha


def test_density() -> None:
    # points on a line: 0, 0.5, 3; σ = 1 → ρ(0) = 1 + (1 - 0.25) = 1.75, ρ(3) = 1
    xb = np.array([[0.0], [0.5], [3.0]], dtype=np.float32)
    nbrs = np.array([[0, 1], [2, 1]])
    rho = tsds_density(xb, nbrs, sigma=1.0, kde_K=10, index=NUMPY)
    assert np.allclose(rho, [[1.75, 1.75], [1.0, 1.75]])
    assert np.array_equal(tsds_density(xb, nbrs, sigma=0.0, kde_K=10), np.ones((2, 2)))
    # K_kde = 1: only the point itself
    assert np.allclose(tsds_density(xb, nbrs, sigma=1.0, kde_K=1, index=NUMPY), 1.0)


def test_neighbour_cap() -> None:
    assert tsds_neighbour_cap(5000, 30, "n") == 30
    assert tsds_neighbour_cap(5000, 30, "n_div_10") == 3
    assert tsds_neighbour_cap(4, 30, "n") == 4
    with pytest.raises(DataError, match="N >= 20"):
        tsds_neighbour_cap(5000, 19, "n_div_10")
    with pytest.raises(DataError, match="K >= 2"):
        tsds_probabilities([0.0], [0], [1.0], 0.5, 5.0)


def test_bad_core_input() -> None:
    with pytest.raises(DataError, match="no rows"):
        tsds_probabilities(np.zeros((0, 3)), np.zeros((0, 3), dtype=int), np.ones((0, 3)), 0.5, 5.0)
    with pytest.raises(DataError, match="-1"):
        tsds_probabilities([0, 1], [0, -1], [1, 1], 0.5, 5.0)
    xb = _unit(np.random.default_rng(0).normal(size=(10, 4)))
    with pytest.raises(DataError, match="dim 4 but target rows have dim 3"):
        tsds_distribution(xb, np.ones((2, 3)), index=NUMPY)
    with pytest.raises(DataError, match="target set is empty"):
        tsds_distribution(xb, np.ones((0, 4)), index=NUMPY)


# --------------------------------------------------------------------------- sampling


def test_sampling_modes() -> None:
    p = np.array([0.5, 0.0, 0.3, 0.2, 0.0])
    got = tsds_sample(p, 9, 7)
    assert got.tolist() == sample_with_replacement(p, 9, 7).tolist()
    assert (
        tsds_sample(p, 3, 7, "without_replacement").tolist()
        == sample_without_replacement(p, 3, 7).tolist()
    )
    with pytest.raises(DataError, match="only 3 have p > 0"):
        tsds_sample(p, 4, 7, "without_replacement")
    filled = tsds_sample(p, 5, 7, "without_replacement", "fill_random")
    assert sorted(filled.tolist()) == [0, 1, 2, 3, 4] and set(filled[:3].tolist()) == {0, 2, 3}
    allowed = np.array([False, True, True, True, True])
    assert 0 not in tsds_sample(p, 20, 1, allowed=allowed).tolist()
    with pytest.raises(DataError, match="no candidate row"):
        tsds_sample(p, 2, 1, allowed=np.array([False, True, False, False, True]))


# --------------------------------------------------------------------------- selector


def _embeddings(N: int = 40, M: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(N, 6))), _unit(rng.normal(size=(M, 6)))


def test_selector_draws_from_p_and_caches() -> None:
    xb, xq = _embeddings()
    sel = TsdsSelector({"seed": 3, "max_K": 8, "index": NUMPY})
    assert sel.distinct is False
    req = _req(step=2, n=16, N=40)
    sigs = {s.name: s for s in sel.signals(req)}
    assert set(sigs) == {"embedding", "target_embedding"} and sigs["embedding"].indices is None
    got = sel.select(dataclasses.replace(req, extras={"embedding": xb, "target_embedding": xq}))
    p = tsds_distribution(xb, xq, max_K=8, index=NUMPY, seed=derive(3, "tsds_index"))
    assert np.allclose(sel.probabilities, p)
    assert got == sample_with_replacement(p, 16, derive(3, "tsds", 0, 2)).tolist()
    assert sel.signals(_req(step=4, N=40)) == []
    state = json.loads(json.dumps(sel.state_dict(), allow_nan=False))
    sparse = state["algorithm"]["p"]
    assert sparse["rows"] == np.flatnonzero(p).tolist()
    fresh = TsdsSelector({"seed": 3, "max_K": 8, "index": NUMPY})
    fresh.load_state_dict(state)
    assert fresh.signals(_req(step=4, N=40)) == []
    assert fresh.select(_req(step=4, n=8, N=40)) == sel.select(_req(step=4, n=8, N=40))


def test_selector_deterministic_given_seed() -> None:
    xb, xq = _embeddings()
    extras = {"embedding": xb, "target_embedding": xq}
    runs = [
        TsdsSelector({"seed": 9, "index": NUMPY}).select(_req(step=5, n=10, N=40, extras=extras))
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    other = TsdsSelector({"seed": 10, "index": NUMPY}).select(
        _req(step=5, n=10, N=40, extras=extras)
    )
    assert other != runs[0]


def test_without_replacement_selector() -> None:
    xb, xq = _embeddings()
    extras = {"embedding": xb, "target_embedding": xq}
    sel = TsdsSelector({"sampling": "without_replacement", "alpha": 0.9, "index": NUMPY})
    assert sel.distinct
    got = sel.select(_req(n=3, N=40, extras=extras))
    assert len(set(got)) == 3
    nnz = int(np.count_nonzero(sel.probabilities))
    with pytest.raises(DataError, match=f"only {nnz} have p > 0"):
        sel.select(_req(n=nnz + 1, N=40))
    fill = TsdsSelector(
        {
            "sampling": "without_replacement",
            "on_shortfall": "fill_random",
            "alpha": 0.9,
            "index": NUMPY,
        }
    )
    assert len(set(fill.select(_req(n=nnz + 5, N=40, extras=extras)))) == nnz + 5


def test_official_compat_caps_k_at_n_over_10() -> None:
    xb, xq = _embeddings(N=30)
    sel = TsdsSelector({"official_compat": True, "index": {"backend": "faiss"}})
    assert sel.config.effective_k_cap == "n_div_10"
    assert sel.config.effective_index.type == "ivf_flat"
    explicit = TsdsSelector({"official_compat": True, "k_cap": "n", "index": {"type": "flat"}})
    assert explicit.config.effective_k_cap == "n" and explicit.config.effective_index.type == "flat"
    small = TsdsSelector({"official_compat": True, "index": {"type": "flat", **NUMPY}})
    got = small.select(_req(n=4, N=30, extras={"embedding": xb, "target_embedding": xq}))
    assert len(got) == 4
    assert np.count_nonzero(small.probabilities) <= 3 * 5  # K = ⌊30/10⌋ = 3 per target
    # an explicit numpy backend keeps exact search under official_compat
    assert (
        TsdsSelector({"official_compat": True, "index": NUMPY}).config.effective_index.type
        == "auto"
    )
    with pytest.raises(DataError, match="N >= 20"):
        TsdsSelector({"official_compat": True, "index": NUMPY}).select(
            _req(N=15, extras={"embedding": xb[:15], "target_embedding": xq})
        )


def test_probs_path(tmp_path: Path) -> None:
    path = tmp_path / "tsds_probs.npy"
    np.save(path, np.array([0.0, 2.0, 0.0, 6.0, 2.0]))
    sel = TsdsSelector({"probs_path": str(path), "seed": 1})
    assert sel.signals(_req(N=5)) == []
    got = sel.select(_req(step=3, n=6, N=5))
    assert (
        got == sample_with_replacement([0, 0.2, 0, 0.6, 0.2], 6, derive(1, "tsds", 0, 3)).tolist()
    )
    state = json.loads(json.dumps(sel.state_dict()))
    assert state["algorithm"]["probs_sha256"] and state["algorithm"]["p"] is None
    np.save(path, np.array([1.0, 2.0, 0.0, 6.0, 2.0]))
    changed = TsdsSelector({"probs_path": str(path), "seed": 1})
    changed.load_state_dict(state)
    with pytest.raises(StateError, match="changed"):
        changed.select(_req(N=5))
    missing = tmp_path / "missing.npy"
    with pytest.raises(DataError, match=str(missing)):
        TsdsSelector({"probs_path": str(missing)}).select(_req(N=5))
    for name, arr in {"short.npy": np.ones(4), "neg.npy": np.array([1, -1, 0, 0, 1.0])}.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(DataError, match=name):
            TsdsSelector({"probs_path": str(tmp_path / name)}).select(_req(N=5))


def test_selector_bad_input() -> None:
    xb, xq = _embeddings()
    sel = TsdsSelector({"index": NUMPY})
    with pytest.raises(DataError, match="target set is empty"):
        sel.select(_req(N=40, extras={"embedding": xb, "target_embedding": np.zeros((0, 6))}))
    with pytest.raises(DataError, match="dimension mismatch"):
        sel.select(_req(N=40, extras={"embedding": xb, "target_embedding": xq[:, :4]}))
    with pytest.raises(DataError, match="budget"):
        TsdsSelector({"selection_scope": "pool", "budget": 41}).select(
            _req(N=40, extras={"embedding": xb, "target_embedding": xq})
        )
    # rows with invalid (NaN) embeddings get p = 0 and are never drawn
    bad = xb.copy()
    bad[[1, 2]] = math.nan
    sel = TsdsSelector({"index": NUMPY, "sigma": 0.0, "alpha": 0.2})
    got = sel.select(_req(n=200, N=40, extras={"embedding": bad, "target_embedding": xq}))
    assert not {1, 2} & set(got) and sel.probabilities[[1, 2]].tolist() == [0.0, 0.0]


def test_config_errors() -> None:
    for bad in (
        {"alpha": 1.5},
        {"C": 0.0},
        {"sigma": -1.0},
        {"max_K": 1},
        {"kde_K": 0},
        {"k_cap": "n_div_100"},
        {"sampling": "multinomial"},
        {"probs_path": " "},
        {"alfa": 0.5},
    ):
        with pytest.raises(ConfigError):
            TsdsSelector(bad)


class TestTsdsConformance(SelectorConformance):
    component_class = TsdsSelector
    distinct_indices = False  # with_replacement (the default) repeats rows

    def valid_configs(self):
        return [
            {},
            {"sampling": "without_replacement", "on_shortfall": "fill_random", "sigma": 0.0},
            {"alpha": 0.8, "C": 1.0, "max_K": 20, "kde_K": 5, "index": {"backend": "numpy"}},
            {"recompute": "every_update", "candidate_subsample": 0.6},
            {"selection_scope": "pool", "budget": 0.3},
            {"official_compat": True, "index": {"type": "flat"}, "exclude_recent": 1},
        ]


class TestTsdsWithoutReplacementConformance(SelectorConformance):
    component_class = TsdsSelector

    def build(self, context, **config):
        return TsdsSelector(
            {"sampling": "without_replacement", "on_shortfall": "fill_random", **config}, context
        )


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
    out = _run_doc_examples("tsds.md").splitlines()
    assert out[0] == "[0.2, 0.4, 0.4, 0.0]"
    assert out[1].startswith("0.5 32 ") and out[2].startswith("0.9 32 ")
