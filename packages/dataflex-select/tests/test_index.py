"""Nearest-neighbour index backends and streaming exact search (algorithms spec §1.6)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    DataflexPluginManager,
    Registry,
    hookimpl,
)
from dataflex_select.index import (
    FaissFlatIndex,
    FaissHNSWIndex,
    FaissIVFFlatIndex,
    IndexConfig,
    NumpyFlatIndex,
    build_index,
    default_nlist,
    index_backend_specs,
    ivf_seed,
    l2_normalize,
    resolve_index,
    streaming_topk,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _brute(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float64 squared distances of normalised rows, sorted by (distance, index)."""
    xn, qn = _unit(x).astype(np.float64), _unit(q).astype(np.float64)
    d = ((qn[:, None, :] - xn[None, :, :]) ** 2).sum(-1)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def _clustered(n: int, d: int, clusters: int, seed: int, spread: float = 0.3) -> np.ndarray:
    rng = _rng(seed)
    centers = _unit(rng.standard_normal((clusters, d)))
    labels = rng.integers(0, clusters, size=n)
    return _unit(centers[labels] + spread / np.sqrt(d) * rng.standard_normal((n, d)))


def _near(x: np.ndarray, m: int, seed: int) -> np.ndarray:
    rng = _rng(seed)
    rows = rng.choice(len(x), size=m, replace=False)
    return _unit(x[rows] + 0.02 / np.sqrt(x.shape[1]) * rng.standard_normal((m, x.shape[1])))


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


# --------------------------------------------------------------------------- exact search


def test_numpy_exact_matches_brute_force_and_sorts_ties_by_index() -> None:
    rng = _rng(1)
    x = rng.standard_normal((700, 16)).astype(np.float32)
    q = rng.standard_normal((37, 16)).astype(np.float32)
    index = build_index(x, {"backend": "numpy", "block_rows": 64, "query_batch_size": 8})
    assert isinstance(index, NumpyFlatIndex)
    assert (index.ntotal, index.dim, len(index)) == (700, 16, 700)
    d, i = index.search(q, 10)
    rd, ri = _brute(x, q, 10)
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == i.shape == (37, 10)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, atol=1e-5)
    assert np.all(np.diff(d, axis=1) >= 0)


def _duplicated(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Database of 40 distinct unit vectors, each copied 25 times at scattered rows."""
    rng = _rng(seed)
    base = _unit(rng.standard_normal((40, 24)))
    rows = rng.permutation(np.repeat(np.arange(40), 25))  # row -> which base vector
    x = base[rows]
    q = _unit(base[:12] + 0.05 * rng.standard_normal((12, 24)).astype(np.float32))
    return x, q, rows


def _expected_with_ties(x: np.ndarray, q: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Distinct vectors by float64 distance; copies of one vector in ascending row order."""
    base_ids = np.unique(rows)
    out = []
    for qv in q.astype(np.float64):
        dist = {b: float(((qv - x[np.flatnonzero(rows == b)[0]]) ** 2).sum()) for b in base_ids}
        order = sorted(base_ids, key=lambda b: dist[b])
        out.append(np.concatenate([np.flatnonzero(rows == b) for b in order])[:k])
    return np.array(out)


@pytest.mark.parametrize("k", [1, 7, 60])
def test_duplicates_come_lowest_index_first_on_every_exact_path(k: int, tmp_path: Path) -> None:
    x, q, rows = _duplicated(2)
    want = _expected_with_ties(x, q, rows, k)
    got_np = build_index(x, {"backend": "numpy", "block_rows": 97}).search(q, k)
    np.testing.assert_array_equal(got_np[1], want)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    got_stream = streaming_topk(np.load(tmp_path / "x.npy", mmap_mode="r"), q, k, block_rows=33)
    np.testing.assert_array_equal(got_stream[1], want)
    np.testing.assert_allclose(got_stream[0], got_np[0], atol=1e-6)
    # equal distances inside each returned row are in ascending index order
    d, i = got_np
    same = d[:, 1:] == d[:, :-1]
    assert np.all(i[:, 1:][same] > i[:, :-1][same])


def test_faiss_flat_equals_numpy_exact_on_random_and_duplicate_data() -> None:
    pytest.importorskip("faiss")
    rng = _rng(3)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    q = rng.standard_normal((50, 32)).astype(np.float32)
    ours = build_index(x, {"type": "flat", "backend": "faiss"})
    assert isinstance(ours, FaissFlatIndex)
    ref = build_index(x, {"type": "flat", "backend": "numpy"})
    d1, i1 = ours.search(q, 10)
    d2, i2 = ref.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, atol=1e-5)

    x, q, rows = _duplicated(4)
    for k in (5, 60):
        want = _expected_with_ties(x, q, rows, k)
        d1, i1 = build_index(x, {"backend": "faiss"}).search(q, k)
        d2, i2 = build_index(x, {"backend": "numpy"}).search(q, k)
        np.testing.assert_array_equal(i1, want)
        np.testing.assert_array_equal(i2, want)
        np.testing.assert_allclose(d1, d2, atol=1e-5)


def test_auto_resolution() -> None:
    faiss_ok = True
    try:
        import faiss  # noqa: F401
    except ImportError:
        faiss_ok = False
    flat = "faiss" if faiss_ok else "numpy"
    assert resolve_index(None, 200_000) == ("flat", flat)
    assert resolve_index({"backend": "numpy"}, 10**7) == ("flat", "numpy")
    if faiss_ok:
        assert resolve_index(None, 200_001) == ("ivf_flat", "faiss")
        assert resolve_index({"auto_flat_max_rows": 10}, 11) == ("ivf_flat", "faiss")
    assert default_nlist(0) == 1 and default_nlist(3) == 1
    assert default_nlist(10_000) == 50 and default_nlist(1_000_000) == 500


# --------------------------------------------------------------------------- approximate


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _clustered(20_000, 32, 200, seed=5)
    q = _near(x, 200, seed=6)
    _, truth = build_index(x, {"backend": "numpy"}).search(q, 10)
    return x, q, truth


def test_ivf_flat_recall_and_seeded_quantiser(clustered: tuple) -> None:
    pytest.importorskip("faiss")
    x, q, truth = clustered
    index = build_index(x, {"type": "ivf_flat"}, seed=11)
    assert isinstance(index, FaissIVFFlatIndex)
    assert index.nlist == default_nlist(20_000) == 70
    assert index.faiss_index.cp.seed == ivf_seed(11) < 2**31
    d, i = index.search(q, 10)
    assert _recall(i, truth) >= 0.95
    again = build_index(x, {"type": "ivf_flat"}, seed=11).search(q, 10)
    np.testing.assert_array_equal(again[1], i)


def test_hnsw_recall(clustered: tuple) -> None:
    pytest.importorskip("faiss")
    x, q, truth = clustered
    index = build_index(x, {"type": "hnsw", "ef_search": 64}, seed=0)
    assert isinstance(index, FaissHNSWIndex)
    assert index.faiss_index.hnsw.efConstruction == 40
    d, i = index.search(q, 10)
    assert _recall(i, truth) >= 0.95
    assert np.all(np.diff(d, axis=1) >= 0)


def test_ivf_missing_neighbours_are_requeried_exactly() -> None:
    pytest.importorskip("faiss")
    x = _clustered(2000, 16, 20, seed=8)
    q = _near(x, 30, seed=9)
    index = build_index(x, {"type": "ivf_flat", "nprobe": 1}, seed=0)
    k = 400  # far more than one list holds (about 2000 / 22 rows)
    raw_d, raw_i = index.faiss_index.search(q, k)
    assert (raw_i == -1).any(axis=1).all()  # FAISS itself comes back short on every row
    d, i = index.search(q, k)
    assert (i >= 0).all() and np.isfinite(d).all()
    ed, ei = build_index(x, {"backend": "numpy"}).search(q, k)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(d, ed, atol=1e-5)
    # k = n: every row comes back, in order
    d, i = index.search(q[:3], 2000)
    assert sorted(i[0].tolist()) == list(range(2000))


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_streaming_topk_over_memmap_equals_exact(tmp_path: Path, dtype: type) -> None:
    rng = _rng(12)
    x = rng.standard_normal((1500, 24)).astype(dtype)
    q = rng.standard_normal((40, 24)).astype(np.float32)
    path = tmp_path / "feat.bin"
    mm = np.memmap(path, dtype=dtype, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    del mm
    store = np.memmap(path, dtype=dtype, mode="r", shape=x.shape)
    d, i = streaming_topk(store, q, 15, block_rows=128, query_batch_size=16)
    ref_d, ref_i = build_index(x.astype(np.float32), {"backend": "numpy"}).search(q, 15)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, ref_d, atol=1e-6)
    # the numpy index searches a memory map in place, with the same answer
    index = build_index(store, {"backend": "numpy", "block_rows": 200})
    assert isinstance(index, NumpyFlatIndex) and index.ntotal == 1500
    np.testing.assert_array_equal(index.search(q, 15)[1], ref_i)


class _Store:
    """Duck-typed feature store: ``num_rows``, ``row_shape``, ``shard_rows``, ``rows()``."""

    def __init__(self, x: np.ndarray, shard_rows: int) -> None:
        self.x, self.shard_rows = x, shard_rows
        self.num_rows, self.row_shape = x.shape[0], (x.shape[1],)
        self.calls: list[tuple[int, int]] = []

    def rows(self, start: int, stop: int) -> np.ndarray:
        self.calls.append((start, stop))
        return self.x[start:stop]


def test_streaming_over_a_store_reads_shard_aligned_blocks_in_order() -> None:
    rng = _rng(13)
    x = rng.standard_normal((1000, 8)).astype(np.float16)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    store = _Store(x, shard_rows=300)
    d, i = streaming_topk(store, q, 4, block_rows=128)
    ref = build_index(x.astype(np.float32), {"backend": "numpy"}).search(q, 4)
    np.testing.assert_array_equal(i, ref[1])
    assert store.calls[:4] == [(0, 128), (128, 256), (256, 300), (300, 428)]
    assert all(b <= (a // 300 + 1) * 300 for a, b in store.calls)


# --------------------------------------------------------------------------- invalid data


def test_nan_rows_are_excluded_and_named(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    rng = _rng(14)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    x[[5, 17]] = np.nan
    x[40, 3] = np.inf
    q = np.concatenate([x[[6, 18]], rng.standard_normal((3, 8)).astype(np.float32)])
    clean = np.delete(np.arange(300), [5, 17, 40])
    _, want = _brute(x[clean], q, 296)
    backends = [{"backend": "numpy", "block_rows": 50}]
    try:
        import faiss  # noqa: F401

        backends += [{"type": "flat", "backend": "faiss"}, {"type": "ivf_flat", "nprobe": 2}]
    except ImportError:
        pass
    for cfg in backends:
        with caplog.at_level(logging.WARNING, logger="dataflex_select.index"):
            caplog.clear()
            index = build_index(x, cfg)
        assert "[5, 17, 40]" in caplog.text and "excluded 3 of 300" in caplog.text
        assert index.excluded_rows.tolist() == [5, 17, 40] and index.ntotal == 297
        assert index.config == IndexConfig(**cfg)
        d, i = index.search(q, 297)
        assert not np.isin(i, [5, 17, 40]).any()
        np.testing.assert_array_equal(i[:, 0], [6, 18, *clean[want[2:, 0]]])
        with pytest.raises(DataError, match=r"k = 298 .* n = 297 .*3 rows with NaN"):
            index.search(q, 298)
    with pytest.raises(DataError, match=r"rows \[5, 17, 40\]"):
        build_index(x, {"backend": "numpy", "invalid_rows": "error"})
    # streaming: excluded as well
    path = tmp_path / "x.npy"
    np.save(path, x)
    d, i = streaming_topk(np.load(path, mmap_mode="r"), q, 296, block_rows=64)
    assert not np.isin(i, [5, 17, 40]).any()
    np.testing.assert_array_equal(i, clean[want])
    with pytest.raises(DataError, match=r"rows \[5, 17, 40\]"):
        streaming_topk(x, q, 3, invalid_rows="error")
    with pytest.raises(DataError, match="k = 298"):
        streaming_topk(x, q, 298)


def test_errors_name_the_values_and_the_fix() -> None:
    x = _rng(15).standard_normal((50, 8)).astype(np.float32)
    index = build_index(x, {"backend": "numpy"})
    with pytest.raises(DataError, match=r"query dimension 6 .* index dimension 8"):
        index.search(np.zeros((2, 6), np.float32), 3)
    with pytest.raises(DataError, match=r"k = 51 .* n = 50"):
        index.search(x[:2], 51)
    with pytest.raises(DataError, match="k must be a positive integer"):
        index.search(x[:2], 0)
    with pytest.raises(DataError, match="2-D"):
        index.search(x[0], 3)
    bad_q = x[:3].copy()
    bad_q[1, 0] = np.nan
    with pytest.raises(DataError, match=r"query rows .* \[1\]"):
        index.search(bad_q, 3)
    with pytest.raises(DataError, match="empty"):
        build_index(np.zeros((0, 8), np.float32), {"backend": "numpy"})
    with pytest.raises(DataError, match="empty"):
        streaming_topk(np.zeros((0, 8), np.float32), x[:1], 1)
    with pytest.raises(DataError, match="empty"):
        streaming_topk(_Store(np.zeros((0, 8), np.float16), shard_rows=4), x[:1], 1)
    with pytest.raises(DataError, match="all 50 database rows"):
        build_index(np.full((50, 8), np.nan, np.float32), {"backend": "numpy"})
    with pytest.raises(ConfigError, match="did you mean 'nprobe'"):
        build_index(x, {"nprobes": 3})
    with pytest.raises(ConfigError, match="needs FAISS"):
        build_index(x, {"backend": "numpy", "type": "hnsw"})
    with pytest.raises(ConfigError, match="nprobe must be >= 1"):
        build_index(x, {"nprobe": 0})
    with pytest.raises(ConfigError, match="implements type flat"):
        NumpyFlatIndex({"type": "hnsw", "backend": "faiss"})
    assert index.search(np.zeros((0, 8), np.float32), 2)[1].shape == (0, 2)


def test_missing_faiss_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    x = _rng(16).standard_normal((20, 4)).astype(np.float32)
    for cfg in ({"backend": "faiss"}, {"type": "hnsw"}, {"type": "ivf_flat"}):
        with pytest.raises(ConfigError, match=r"pip install 'dataflex-select\[faiss\]'"):
            build_index(x, cfg)
    with pytest.raises(ConfigError, match=r"dataflex-select\[faiss\]"):
        FaissFlatIndex()
    # auto falls back to exact numpy search, also above the IVF threshold
    assert isinstance(build_index(x), NumpyFlatIndex)
    assert isinstance(build_index(x, {"auto_flat_max_rows": 5}), NumpyFlatIndex)


def test_normalisation_keeps_zero_rows_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]], dtype=np.float32)
    y = l2_normalize(x)
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0], [1e-18, 0.0]], rtol=1e-6)
    assert x[0, 0] == 3.0  # input untouched
    d, i = build_index(x, {"backend": "numpy"}).search(np.array([[0.0, 1.0]]), 3)
    np.testing.assert_allclose(d[0], [0.4, 1.0, 1.0], atol=1e-6)  # zero row: ‖q‖² = 1
    assert i[0].tolist() == [0, 1, 2]
    raw = build_index(x, {"backend": "numpy", "normalize": False}).search(np.array([[0.0, 1.0]]), 1)
    assert raw[1][0, 0] == 1 and raw[0][0, 0] == pytest.approx(1.0)


# --------------------------------------------------------------------------- registry / imports


def test_backend_specs_register_and_build_through_the_registry() -> None:
    class Plugin:
        @hookimpl
        def dataflex_register_index_backends(self) -> list:
            return index_backend_specs()

    pm = DataflexPluginManager()
    pm.register(Plugin(), name="index-test")
    registry = Registry(pm)
    assert registry.names("index") == ["faiss_flat", "faiss_hnsw", "faiss_ivf_flat", "numpy"]
    x = _rng(17).standard_normal((100, 8)).astype(np.float32)
    ctx = ComponentContext(seed=3)
    numpy_index = registry.create("index", "numpy", context=ctx, block_rows=16).build(x)
    assert isinstance(numpy_index, NumpyFlatIndex) and numpy_index.config.block_rows == 16
    with pytest.raises(ConfigError, match="did you mean"):
        registry.create("index", "numpy", blok_rows=16)
    if _has_faiss():
        ivf = registry.create("index", "faiss_ivf_flat", context=ctx, nprobe=3).build(x)
        assert isinstance(ivf, FaissIVFFlatIndex) and ivf.seed == 3
        assert ivf.faiss_index.cp.seed == ivf_seed(3)
        flat = registry.create("index", "faiss_flat").build(x)
        np.testing.assert_array_equal(flat.search(x[:4], 5)[1], numpy_index.search(x[:4], 5)[1])


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def test_import_loads_neither_faiss_nor_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        import dataflex_select.index as ix
        ix.index_backend_specs()
        ix.build_index([[1.0, 0.0], [0.0, 1.0]], {"backend": "numpy"}).search([[1.0, 0.0]], 1)
        print(sorted(m for m in ("faiss", "torch") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_registers_the_same_index_specs() -> None:
    from dataflex_select import plugin
    from dataflex_select.index import index_backend_specs

    assert plugin.dataflex_register_index_backends() == index_backend_specs()
