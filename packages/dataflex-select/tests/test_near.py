"""The ``near`` selector (spec §2.8): round-robin over target neighbours."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, SelectRequest, StateError, derive
from dataflex_select.near import (
    NearSelector,
    file_sha256,
    load_indices,
    near_neighbour_matrix,
    near_round_robin,
)
from dataflex_select.primitives import sample_without_replacement
from dataflex_testing import SelectorConformance


def _req(step: int = 0, n: int = 4, N: int = 10, **kw: Any) -> SelectRequest:
    base: dict[str, Any] = {"step": step, "epoch": 0, "update": 0, "n": n, "num_samples": N}
    base.update(kw)
    return SelectRequest(**base)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- core


def test_round_robin_spec_example() -> None:
    nbrs = [[3, 1, 2], [3, 4, 0]]
    assert near_round_robin(nbrs, 4).tolist() == [3, 1, 4, 2]
    assert near_round_robin(nbrs, 5).tolist() == [3, 1, 4, 2, 0]
    assert near_round_robin(nbrs, 0).tolist() == []


def test_round_robin_shortfall() -> None:
    nbrs = [[3, 1, 2], [3, 4, 0]]
    with pytest.raises(DataError, match=r"only 5 distinct .* n = 7"):
        near_round_robin(nbrs, 7, num_samples=10)
    got = near_round_robin(nbrs, 8, "fill_random", seed=3, num_samples=10)
    assert got[:5].tolist() == [3, 1, 4, 2, 0] and len(set(got.tolist())) == 8
    rest = np.array([5, 6, 7, 8, 9])
    assert got[5:].tolist() == rest[sample_without_replacement(np.ones(5), 3, 3)].tolist()
    with pytest.raises(DataError, match="only 5 eligible"):
        near_round_robin(nbrs, 11, "fill_random", num_samples=10)


def test_round_robin_allowed_mask_and_bad_ids() -> None:
    allowed = np.ones(6, dtype=bool)
    allowed[[3, 4]] = False
    assert near_round_robin([[3, 1, 2], [3, 4, 0]], 3, num_samples=6, allowed=allowed).tolist() == [
        1,
        2,
        0,
    ]
    with pytest.raises(DataError, match="outside"):
        near_round_robin([[3, -1]], 1, num_samples=6)
    with pytest.raises(DataError, match="outside"):
        near_round_robin([[3, 6]], 1, num_samples=6)


def test_neighbour_matrix_is_exact_knn() -> None:
    rng = np.random.default_rng(0)
    xb = _unit(rng.normal(size=(40, 5)))
    xq = _unit(rng.normal(size=(6, 5)))
    got = near_neighbour_matrix(xb, xq, max_K=7, index={"backend": "numpy"})
    d = ((xq[:, None, :] - xb[None, :, :]) ** 2).sum(-1)
    assert got.tolist() == np.argsort(d, axis=1, kind="stable")[:, :7].tolist()
    # max_K above N is capped at N
    assert near_neighbour_matrix(xb, xq, max_K=1000, index={"backend": "numpy"}).shape == (6, 40)


def test_neighbour_matrix_bad_input() -> None:
    xb = _unit(np.eye(4) + 0.1)
    with pytest.raises(DataError, match="dim 4 but target rows have dim 3"):
        near_neighbour_matrix(xb, np.ones((2, 3)))
    with pytest.raises(DataError, match="target set is empty"):
        near_neighbour_matrix(xb, np.ones((0, 4)))


# --------------------------------------------------------------------------- selector


def _embeddings(
    N: int = 30, M: int = 4, dim: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(N, dim))), _unit(rng.normal(size=(M, dim)))


def test_selector_uses_round_robin_on_embeddings_and_caches() -> None:
    xb, xq = _embeddings()
    sel = NearSelector({"max_K": 5, "index": {"backend": "numpy"}})
    req = _req(step=1, n=8, N=30)
    sigs = {s.name: s for s in sel.signals(req)}
    assert set(sigs) == {"embedding", "target_embedding"}
    assert sigs["embedding"].indices is None and sigs["target_embedding"].split == "target"
    assert sigs["embedding"].options == {"model": None, "layer": -1, "pooling": "mean"}
    got = sel.select(dataclasses.replace(req, extras={"embedding": xb, "target_embedding": xq}))
    nbrs = near_neighbour_matrix(xb, xq, 5, {"backend": "numpy"})
    assert got == near_round_robin(nbrs, 8).tolist()
    # recompute: never → no more signals, same answer
    assert sel.signals(_req(step=2, n=8, N=30)) == []
    assert sel.select(_req(step=2, n=8, N=30)) == got
    state = json.loads(json.dumps(sel.state_dict()))
    assert state["algorithm"]["matrix"] == nbrs.tolist()


def test_exclude_selected_walks_deeper_within_an_epoch() -> None:
    xb, xq = _embeddings()
    sel = NearSelector({"max_K": 30, "exclude_selected": True, "index": {"backend": "numpy"}})
    extras = {"embedding": xb, "target_embedding": xq}
    a = sel.select(_req(step=1, n=6, N=30, extras=extras))
    b = sel.select(_req(step=2, n=6, N=30, update=1))
    nbrs = near_neighbour_matrix(xb, xq, 30, {"backend": "numpy"})
    assert a + b == near_round_robin(nbrs, 12).tolist()
    c = sel.select(_req(step=3, n=6, N=30, epoch=1))  # a new Flex epoch starts over
    assert c == a


def test_every_update_recomputes_on_candidates() -> None:
    xb, xq = _embeddings()
    sel = NearSelector(
        {"recompute": "every_update", "candidate_subsample": 12, "index": {"backend": "numpy"}}
    )
    req = _req(step=4, n=5, N=30)
    cand = sel.candidates(req)
    (emb, _) = sel.signals(req)
    assert emb.indices == tuple(cand.tolist())
    got = sel.select(
        dataclasses.replace(req, extras={"embedding": xb[cand], "target_embedding": xq})
    )
    assert set(got) <= set(cand.tolist())
    nbrs = cand[near_neighbour_matrix(xb[cand], xq, 1000, {"backend": "numpy"})]
    assert got == near_round_robin(nbrs, 5, num_samples=30).tolist()
    assert len(sel.signals(_req(step=5, n=5, N=30))) == 2
    assert sel.state_dict()["algorithm"]["matrix"] is None


def test_indices_path(tmp_path: Path) -> None:
    path = tmp_path / "top_indices.npy"
    np.save(path, np.array([[3, 1, 2], [3, 4, 0]]))
    sel = NearSelector({"indices_path": str(path)})
    assert sel.signals(_req()) == []
    assert sel.select(_req(n=4)) == [3, 1, 4, 2]
    state = json.loads(json.dumps(sel.state_dict()))
    assert state["algorithm"]["indices_path"] == str(path)
    assert state["algorithm"]["indices_sha256"] == file_sha256(str(path))
    assert state["algorithm"]["matrix"] is None
    with pytest.raises(DataError, match=r"only 5 distinct"):
        sel.select(_req(n=6))
    fill = NearSelector({"indices_path": str(path), "on_shortfall": "fill_random", "seed": 2})
    got = fill.select(_req(step=9, n=7))
    rest = np.array([5, 6, 7, 8, 9])
    seed = derive(2, "near", 0, 9)
    assert got == [3, 1, 4, 2, 0] + rest[sample_without_replacement(np.ones(5), 2, seed)].tolist()
    # resume: the file is checked against the saved hash
    resumed = NearSelector({"indices_path": str(path)})
    resumed.load_state_dict(state)
    assert resumed.select(_req(n=4)) == [3, 1, 4, 2]
    np.save(path, np.array([[1, 3, 2], [3, 4, 0]]))
    changed = NearSelector({"indices_path": str(path)})
    changed.load_state_dict(state)
    with pytest.raises(StateError, match="changed"):
        changed.select(_req(n=4))


def test_indices_path_bad_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    with pytest.raises(DataError, match=str(missing)):
        NearSelector({"indices_path": str(missing)}).select(_req())
    cases = {
        "neg.npy": np.array([[0, -1]]),
        "range.npy": np.array([[0, 10]]),
        "empty.npy": np.zeros((0, 3), dtype=np.int64),
        "flat.npy": np.array([1, 2, 3]),
        "float.npy": np.array([[0.0, 1.0]]),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(DataError, match=name):
            load_indices(str(tmp_path / name), 10)


def test_selector_bad_signals() -> None:
    xb, xq = _embeddings()
    sel = NearSelector({"index": {"backend": "numpy"}})
    with pytest.raises(DataError, match="target set is empty"):
        sel.select(_req(N=30, extras={"embedding": xb, "target_embedding": np.zeros((0, 6))}))
    with pytest.raises(DataError, match="dimension mismatch"):
        sel.select(_req(N=30, extras={"embedding": xb, "target_embedding": xq[:, :5]}))
    with pytest.raises(DataError, match="target_embedding"):
        sel.select(_req(N=30, extras={"embedding": xb}))
    with pytest.raises(DataError, match="budget"):
        NearSelector({"selection_scope": "pool", "budget": 31}).select(
            _req(N=30, extras={"embedding": xb, "target_embedding": xq})
        )


def test_invalid_pool_embeddings_are_never_selected() -> None:
    xb, xq = _embeddings(N=12)
    xb[[0, 5]] = math.nan
    sel = NearSelector({"index": {"backend": "numpy"}})
    got = sel.select(_req(n=10, N=12, extras={"embedding": xb, "target_embedding": xq}))
    assert not {0, 5} & set(got)
    with pytest.raises(DataError, match="distinct"):
        NearSelector({"index": {"backend": "numpy"}}).select(
            _req(n=11, N=12, extras={"embedding": xb, "target_embedding": xq})
        )


def test_config_errors() -> None:
    for bad in (
        {"max_K": 0},
        {"recompute": "sometimes"},
        {"on_shortfall": "pad"},
        {"embedding": {"source": "external"}},
        {"embedding": {"model_name_or_path": "x"}},
        {"embedding": {"pooling": "max"}},
        {"index": {"typ": "flat"}},
        {"indices_path": ""},
    ):
        with pytest.raises(ConfigError):
            NearSelector(bad)
    ext = NearSelector({"embedding": {"source": "external", "model_name_or_path": "m", "layer": 3}})
    (sig, _) = ext.signals(_req())
    assert sig.options == {"model": "m", "layer": 3, "pooling": "mean"}


class TestNearConformance(SelectorConformance):
    component_class = NearSelector

    def valid_configs(self):
        return [
            {},
            {"max_K": 3, "on_shortfall": "fill_random"},
            {"exclude_selected": True},
            {"recompute": "every_update", "candidate_subsample": 0.5},
            {"selection_scope": "pool", "budget": 0.3},
            {"candidate_subsample": 40, "exclude_recent": 1, "index": {"backend": "numpy"}},
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
    out = _run_doc_examples("near.md")
    assert out.splitlines()[0] == "[3, 1, 4, 2]" and "[0, 1, 2, 3, 4]" in out
