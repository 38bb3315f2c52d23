"""Nearest-neighbour search over ℓ₂-normalised vectors (algorithms spec §1.6).

One interface, several backends:

* ``numpy``: exact search by blocked matrix products (query blocks × database blocks) with a
  running top-k, so memory stays bounded. A memory-mapped array or a feature store is searched
  in place, block by block, never loaded whole (:func:`streaming_topk`).
* ``faiss_flat``: exact search with FAISS ``IndexFlatL2``.
* ``faiss_ivf_flat``: FAISS ``IndexIVFFlat``; ``nlist = max(1, ⌊√n⌋ // 2)``, ``nprobe = 10``, and
  the k-means seed comes from ``derive(seed, "ivf")``.
* ``faiss_hnsw``: FAISS ``IndexHNSWFlat`` with ``M = 32``.

:func:`build_index` resolves ``type: auto`` (``flat`` up to 200,000 rows, else ``ivf_flat``) and
``backend: auto`` (FAISS when it is importable, else numpy).

Contract of every backend's ``search(queries, k) -> (distances, indices)``:

* ``distances`` are **squared** L2 distances (float32, ``[m, k]``), ``indices`` int64 ``[m, k]``
  row positions in the vectors given to ``build`` (excluded rows keep their positions).
* Each row is in ascending distance; equal distances are ordered by ascending index.
* Exact backends (``numpy``, ``faiss_flat``, and ``streaming_topk``) return exactly the ``k``
  smallest ``(distance, index)`` pairs, where *distance* is the float32 value the backend
  computed: of several rows at the same distance, the lower indices win. Bit-identical
  database rows always get equal distances, so duplicates are returned lowest index first.
* Approximate backends (``ivf_flat``, ``hnsw``) may miss neighbours, but never return ``-1``:
  a query row for which FAISS returns ``-1`` or a non-finite distance is searched again exactly.
* Database rows holding NaN or ±inf are excluded (``invalid_rows: exclude``, the default: they
  are never returned and a warning names them) or refused (``invalid_rows: error``).

FAISS is imported only when a FAISS backend is built; this module never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import math
import mmap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ComponentSpec,
    ConfigError,
    DataError,
    derive,
    parse_config,
)
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "IndexConfig",
    "NearestNeighborIndex",
    "NumpyFlatIndex",
    "FaissFlatIndex",
    "FaissIVFFlatIndex",
    "FaissHNSWIndex",
    "build_index",
    "resolve_index",
    "streaming_topk",
    "l2_normalize",
    "default_nlist",
    "ivf_seed",
    "faiss_available",
    "index_backend_specs",
    "AUTO_FLAT_MAX_ROWS",
    "FAISS_INSTALL_HINT",
]

log = logging.getLogger(__name__)

#: ``type: auto`` uses exact (flat) search up to this many database rows, IVF above (§1.6).
AUTO_FLAT_MAX_ROWS = 200_000

FAISS_INSTALL_HINT = "install `dataflex-select[faiss]` (pip install 'dataflex-select[faiss]')"

#: Index of an empty slot of the running top-k (sorts after every real row index).
_EMPTY = np.iinfo(np.int64).max

_EPS = 1e-12


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class IndexConfig:
    """Config of a nearest-neighbour index (spec §1.6).

    Attributes:
        type: ``auto`` (``flat`` if ``n <= auto_flat_max_rows`` else ``ivf_flat``), ``flat``
            (exact), ``ivf_flat`` or ``hnsw`` (approximate, FAISS only).
        backend: ``auto`` (FAISS when importable, else numpy), ``numpy`` (exact only) or
            ``faiss``.
        nlist: IVF lists; None means ``max(1, ⌊√n⌋ // 2)``.
        nprobe: IVF lists visited per query.
        hnsw_m: HNSW neighbours per node (``M``).
        ef_search: HNSW search beam (raised to ``k`` when ``k`` is larger).
        ef_construction: HNSW construction beam.
        query_batch_size: Queries per matrix product in exact numpy search.
        block_rows: Database rows per block in exact numpy search (and rows read per block from
            a memory-mapped store); memory peaks near ``query_batch_size · block_rows · 4``
            bytes plus one block of the database.
        normalize: ℓ₂-normalise database and queries (``x / max(‖x‖, 1e-12)``; zero vectors stay
            zero). False searches the vectors as given.
        invalid_rows: Database rows with NaN/inf: ``exclude`` them (never returned; a warning
            names them) or raise (``error``).
        auto_flat_max_rows: Largest database that ``type: auto`` searches exactly.
        seed: Base seed of the IVF k-means; None means the run seed (``context.seed``).
    """

    type: Literal["auto", "flat", "ivf_flat", "hnsw"] = "auto"
    backend: Literal["auto", "numpy", "faiss"] = "auto"
    nlist: int | None = None
    nprobe: int = 10
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 40
    query_batch_size: int = 1024
    block_rows: int = 16384
    normalize: bool = True
    invalid_rows: Literal["exclude", "error"] = "exclude"
    auto_flat_max_rows: int = AUTO_FLAT_MAX_ROWS
    seed: int | None = None

    def __post_init__(self) -> None:
        positive = {
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
            "ef_construction": self.ef_construction,
            "query_batch_size": self.query_batch_size,
            "block_rows": self.block_rows,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value!r}.")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(
                f"nlist must be >= 1 or null (max(1, isqrt(n) // 2)), got {self.nlist!r}."
            )
        if self.auto_flat_max_rows < 0:
            raise ConfigError(f"auto_flat_max_rows must be >= 0, got {self.auto_flat_max_rows!r}.")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0 or null (the run seed), got {self.seed!r}.")
        if self.backend == "numpy" and self.type in ("ivf_flat", "hnsw"):
            raise ConfigError(
                f"index type {self.type!r} needs FAISS, but backend is 'numpy' (exact search "
                "only); set backend: faiss (or auto), or type: flat."
            )


def _parse(config: IndexConfig | Mapping[str, Any] | None) -> IndexConfig:
    return parse_config(IndexConfig, config, where="index config")


def default_nlist(n: int) -> int:
    """``max(1, ⌊√n⌋ // 2)`` IVF lists for ``n`` database rows (spec §1.6)."""
    return max(1, math.isqrt(max(int(n), 0)) // 2)


def ivf_seed(seed: int) -> int:
    """The FAISS k-means seed: ``derive(seed, "ivf")`` reduced to 31 bits (FAISS takes an int)."""
    return derive(seed, "ivf") & 0x7FFFFFFF


# --------------------------------------------------------------------------- faiss


def _import_faiss(what: str = "the faiss index backend") -> Any:
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise ConfigError(
            f"{what} needs FAISS, which is not importable ({exc}); {FAISS_INSTALL_HINT}, or set "
            "index backend: numpy (exact search, no FAISS)."
        ) from exc


def faiss_available() -> bool:
    """True when ``import faiss`` works (it is imported to find out)."""
    try:
        importlib.import_module("faiss")
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- rows


def l2_normalize(x: ArrayLike) -> NDArray[np.float32]:
    """``x / max(‖x‖₂, 1e-12)`` row-wise, as a new float32 array; zero rows stay zero."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D array [rows, dim], got shape {arr.shape}.")
    return _normalize_rows(np.array(arr, dtype=np.float32, order="C", copy=True))


def _normalize_rows(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Normalise the float32 C-contiguous rows of ``x`` in place and return it."""
    if x.shape[0] == 0:
        return x
    sq = np.einsum("ij,ij->i", x, x)
    if not np.all(np.isfinite(sq)):
        # float32 overflow of the squared norm: recompute those rows in float64
        bad = ~np.isfinite(sq)
        norms64 = np.sqrt(
            np.einsum("ij,ij->i", x[bad].astype(np.float64), x[bad].astype(np.float64))
        )
        norms = np.sqrt(sq, where=~bad, out=np.zeros_like(sq))
        norms[bad] = norms64.astype(np.float32)
    else:
        norms = np.sqrt(sq)
    np.maximum(norms, np.float32(_EPS), out=norms)
    np.divide(x, norms[:, None], out=x)
    return x


def _sq_norms(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.einsum("ij,ij->i", x, x)


def _prepare_block(
    raw: Any, dim: int, normalize: bool
) -> tuple[NDArray[np.float32], NDArray[np.bool_] | None]:
    """A float32 C-contiguous copy of ``raw`` (normalised) and its finite-row mask (None: all)."""
    block = np.array(raw, dtype=np.float32, order="C", copy=True)
    if block.ndim != 2 or block.shape[1] != dim:
        raise DataError(
            f"database block has shape {block.shape}; expected [rows, {dim}]. The database must "
            "be a 2-D array (or a store whose rows(start, stop) returns [rows, dim])."
        )
    finite = np.isfinite(block).all(axis=1)
    valid: NDArray[np.bool_] | None = None
    if not finite.all():
        valid = finite
        block[~finite] = 0.0
    if normalize:
        _normalize_rows(block)
    return block, valid


def _drop_pages(view: Any) -> None:
    """Tell the kernel we are done with the mapped pages under ``view`` (a memmap slice).

    Copying a block out of a memory map leaves its pages mapped, and mapped file pages count in
    the process's resident set; ``MADV_DONTNEED`` unmaps them (the data stays in the page cache
    and on disk). Skipped for copy-on-write maps, whose private changes it would discard.
    """
    mm = getattr(view, "_mmap", None)
    if (
        not isinstance(mm, mmap.mmap)
        or getattr(view, "mode", "c") == "c"
        or not hasattr(mmap, "MADV_DONTNEED")
        or not isinstance(view, np.ndarray)
        or not view.flags.c_contiguous
        or view.nbytes == 0
    ):
        return
    try:
        base = np.frombuffer(mm, dtype=np.uint8)
        start = view.ctypes.data - base.ctypes.data
        del base
        if start < 0 or start + view.nbytes > len(mm):
            return
        aligned = start - start % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, aligned, start + view.nbytes - aligned)
    except (ValueError, OSError, BufferError):  # pragma: no cover - best effort
        pass


class _RowSource:
    """Row blocks of an in-memory array, a memory map, or a store with ``num_rows``/``rows``."""

    def __init__(self, database: Any) -> None:
        self.database = database
        if hasattr(database, "num_rows") and hasattr(database, "rows"):
            self.num_rows = int(database.num_rows)
            row_shape = getattr(database, "row_shape", None)
            if self.num_rows == 0:
                self.dim = int(row_shape[-1]) if row_shape else 0
            elif row_shape is not None:
                row_shape = tuple(int(s) for s in row_shape)
                if len(row_shape) != 1:
                    raise DataError(
                        f"the feature store has rows of shape {row_shape}; nearest-neighbour "
                        "search needs 1-D rows (a [rows, dim] store)."
                    )
                self.dim = row_shape[0]
            else:
                first = np.asarray(database.rows(0, min(1, self.num_rows)))
                if first.ndim != 2:
                    raise DataError(f"rows(0, 1) returned shape {first.shape}; expected [1, dim].")
                self.dim = int(first.shape[1])
            self._get = database.rows
        else:
            if not (hasattr(database, "shape") and hasattr(database, "__getitem__")):
                database = np.asarray(database)
                self.database = database
            shape = tuple(database.shape)
            if len(shape) != 2:
                raise DataError(
                    f"the database must be 2-D [rows, dim], got shape {shape}; reshape it (e.g. "
                    "x.reshape(len(x), -1))."
                )
            self.num_rows, self.dim = int(shape[0]), int(shape[1])
            self._get = lambda a, b: database[a:b]

    def blocks(
        self, block_rows: int, normalize: bool
    ) -> Iterator[tuple[int, NDArray[np.float32], NDArray[np.bool_] | None]]:
        """Yield ``(start, float32 rows, valid mask or None)`` in row order."""
        # Feature stores are sharded: blocks never straddle a shard, so each block is a view
        # into one shard's memory map whose pages can be released after the copy.
        shard = getattr(self.database, "shard_rows", None)
        shard = int(shard) if isinstance(shard, (int, np.integer)) and shard > 0 else 0
        start = 0
        while start < self.num_rows:
            stop = min(start + block_rows, self.num_rows)
            if shard:
                stop = min(stop, (start // shard + 1) * shard)
            raw = self._get(start, stop)
            block, valid = _prepare_block(raw, self.dim, normalize)
            if block.shape[0] != stop - start:
                raise DataError(
                    f"the database returned {block.shape[0]} rows for rows [{start}, {stop})."
                )
            _drop_pages(raw)
            del raw
            yield start, block, valid
            start = stop


def _is_streamed(database: Any) -> bool:
    """Memory maps and stores are searched in place; anything else is copied into memory."""
    return isinstance(database, np.memmap) or (
        hasattr(database, "num_rows") and hasattr(database, "rows")
    )


def _describe_rows(rows: NDArray[np.int64], limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f", ... ({rows.size} in all)" if rows.size > limit else ""
    return f"[{shown}{more}]"


def _handle_invalid(invalid: NDArray[np.int64], num_rows: int, mode: str) -> None:
    if invalid.size == 0:
        return
    if mode == "error":
        raise DataError(
            f"{invalid.size} of {num_rows} database rows hold NaN or inf values: rows "
            f"{_describe_rows(invalid)}. Fix or drop them, or set index invalid_rows: exclude "
            "to leave them out of the search."
        )
    log.warning(
        "nearest-neighbour index: excluded %d of %d database rows holding NaN or inf values "
        "(rows %s); they are never returned.",
        invalid.size,
        num_rows,
        _describe_rows(invalid),
    )


def _prepare_queries(queries: ArrayLike, dim: int, normalize: bool) -> NDArray[np.float32]:
    q = np.asarray(queries)
    if q.ndim != 2:
        raise DataError(
            f"queries must be a 2-D array [m, dim], got shape {q.shape}; for one query pass "
            "q[None, :]."
        )
    if q.shape[1] != dim:
        raise DataError(
            f"query dimension {q.shape[1]} does not match the index dimension {dim}; embed the "
            f"queries with the same model/projection as the database (dim {dim})."
        )
    q = np.array(q, dtype=np.float32, order="C", copy=True)
    bad = ~np.isfinite(q).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{rows.size} of {q.shape[0]} query rows hold NaN or inf values: rows "
            f"{_describe_rows(rows)}. Drop them before searching."
        )
    if normalize:
        _normalize_rows(q)
    return q


def _check_k(k: Any, ntotal: int, excluded: int = 0) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}.")
    if k > ntotal:
        extra = f" ({excluded} rows with NaN/inf were excluded)" if excluded else ""
        raise DataError(
            f"asked for k = {k} neighbours but the index holds n = {ntotal} searchable rows"
            f"{extra}; use k <= {ntotal}."
        )
    return int(k)


# --------------------------------------------------------------------------- exact top-k


def _sort_rows(d: NDArray[np.float32], i: NDArray[np.int64]) -> tuple[NDArray, NDArray]:
    """Sort each row by (distance, index)."""
    if d.shape[1] <= 1:
        return d, i
    order = np.lexsort((i, d), axis=1)
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def _block_topk(dist: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The ``min(k, width)`` smallest ``(distance, column)`` pairs of each row (unsorted)."""
    r, width = dist.shape
    if width <= k:
        return dist, np.broadcast_to(np.arange(width, dtype=np.int64), (r, width))
    part = np.argpartition(dist, (k - 1, k), axis=1)
    rows = np.arange(r)[:, None]
    kth = dist[rows[:, 0], part[:, k - 1]]
    nxt = dist[rows[:, 0], part[:, k]]
    cols = part[:, :k]
    # argpartition picks arbitrary members of a tie that straddles the k-th place; such rows
    # get a stable sort, which keeps the lowest columns of the tie.
    tie = np.flatnonzero(kth == nxt)
    if tie.size:
        cols = cols.copy()
        cols[tie] = np.argsort(dist[tie], axis=1, kind="stable")[:, :k]
    return dist[rows, cols], cols.astype(np.int64, copy=False)


def _merge_block(
    best_d: NDArray[np.float32],
    best_i: NDArray[np.int64],
    part: NDArray[np.float32],
    qn: NDArray[np.float32],
    ids: NDArray[np.int64],
    k: int,
) -> None:
    """Merge one block into the running top-k (in place).

    ``part[r, c] = −2 q_r·v_c + ‖v_c‖²``; the distance is ``max((part + ‖q_r‖²), 0)`` in float32,
    computed only for the entries that can enter. ``best_d``/``best_i`` ``[r, k]`` are sorted by
    (distance, index), and every id in ``ids`` is larger than every index already held, so an
    entry that only *equals* the current k-th distance never enters (the held one has the lower
    index).
    """
    r, nb = part.shape
    full = best_i[:, k - 1] != _EMPTY
    dense_parts = [np.flatnonzero(~full)]  # rows not yet full take every entry (inf included)
    rows_full = np.flatnonzero(full)
    if rows_full.size:
        sub = part if rows_full.size == r else part[rows_full]
        thr, qf = best_d[rows_full, k - 1], qn[rows_full]
        # fl(part + qn) < thr implies part < thr − qn in exact arithmetic; the margin covers
        # the rounding of the subtraction, and the exact merge below drops extra candidates.
        lim = thr - qf + np.float32(1e-6) * (np.abs(thr) + np.abs(qf))
        flat = np.flatnonzero(sub < lim[:, None])  # row-major: columns ascend within a row
        if flat.size:
            rr, cc = np.divmod(flat, nb)
            counts = np.bincount(rr, minlength=rows_full.size)
            heavy = counts > max(k, 64)
            if heavy.any():
                dense_parts.append(rows_full[heavy])
                keep = ~heavy[rr]
                rr, cc = rr[keep], cc[keep]
                counts[heavy] = 0
            if rr.size:
                _merge_sparse(best_d, best_i, part, qn, ids, k, rows_full, rr, cc, counts)
    dense = np.concatenate(dense_parts) if len(dense_parts) > 1 else dense_parts[0]
    if dense.size:
        sub = part[dense]
        sub += qn[dense, None]
        np.maximum(sub, np.float32(0.0), out=sub)
        sub_d, cols = _block_topk(sub, k)
        cat_d = np.concatenate([best_d[dense], sub_d], axis=1)
        cat_i = np.concatenate([best_i[dense], ids[cols]], axis=1)
        order = np.lexsort((cat_i, cat_d), axis=1)[:, :k]
        best_d[dense] = np.take_along_axis(cat_d, order, axis=1)
        best_i[dense] = np.take_along_axis(cat_i, order, axis=1)


def _merge_sparse(
    best_d: NDArray[np.float32],
    best_i: NDArray[np.int64],
    part: NDArray[np.float32],
    qn: NDArray[np.float32],
    ids: NDArray[np.int64],
    k: int,
    rows_full: NDArray[np.int64],
    rr: NDArray[np.int64],
    cc: NDArray[np.int64],
    counts: NDArray[np.int64],
) -> None:
    """Merge a few candidates per row: ``(rows_full[rr], cc)``, ``counts`` per ``rows_full``."""
    has = np.flatnonzero(counts)
    rows = rows_full[has]
    cnt = counts[has]
    width = int(cnt.max())
    slot = np.repeat(np.arange(has.size), cnt)  # rr is sorted, so entries group by row
    pos = np.arange(rr.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    grow = rows_full[rr]
    vals = part[grow, cc] + qn[grow]
    np.maximum(vals, np.float32(0.0), out=vals)
    pad_d = np.full((rows.size, width), np.inf, dtype=np.float32)
    pad_i = np.full((rows.size, width), _EMPTY, dtype=np.int64)
    pad_d[slot, pos] = vals
    pad_i[slot, pos] = ids[cc]
    cat_d = np.concatenate([best_d[rows], pad_d], axis=1)
    cat_i = np.concatenate([best_i[rows], pad_i], axis=1)
    order = np.lexsort((cat_i, cat_d), axis=1)[:, :k]
    best_d[rows] = np.take_along_axis(cat_d, order, axis=1)
    best_i[rows] = np.take_along_axis(cat_i, order, axis=1)


class _ExactSearch:
    """Running exact top-k of a fixed set of queries over database blocks given in row order."""

    def __init__(
        self, queries: NDArray[np.float32], k: int, query_batch_size: int, block_rows: int
    ):
        m = queries.shape[0]
        self.k = k
        self.qb = max(1, min(query_batch_size, m))
        self.q2 = queries * np.float32(-2.0)  # -2 q·v exactly (power-of-two scaling)
        self.qn = _sq_norms(queries)
        self.best_d = np.full((m, k), np.inf, dtype=np.float32)
        self.best_i = np.full((m, k), _EMPTY, dtype=np.int64)
        self._buf = np.empty(self.qb * max(1, block_rows), dtype=np.float32)

    def add(
        self,
        block: NDArray[np.float32],
        ids: NDArray[np.int64],
        norms: NDArray[np.float32] | None = None,
    ) -> None:
        """Merge database rows ``block`` (prepared, finite) with global ids ``ids`` (ascending)."""
        nb = block.shape[0]
        if nb == 0:
            return
        vn = _sq_norms(block) if norms is None else norms
        if self._buf.size < self.qb * nb:
            self._buf = np.empty(self.qb * nb, dtype=np.float32)
        m = self.q2.shape[0]
        for a in range(0, m, self.qb):
            b = min(a + self.qb, m)
            dist = self._buf[: (b - a) * nb].reshape(b - a, nb)
            np.matmul(self.q2[a:b], block.T, out=dist)
            dist += vn  # ‖u−v‖² = (−2u·v + ‖v‖²) + ‖u‖², clamped at 0 like FAISS
            _merge_block(self.best_d[a:b], self.best_i[a:b], dist, self.qn[a:b], ids, self.k)

    def result(self) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        return self.best_d, self.best_i


# --------------------------------------------------------------------------- streaming


def streaming_topk(
    database: Any,
    queries: ArrayLike,
    k: int,
    *,
    block_rows: int = 65536,
    query_batch_size: int = 1024,
    normalize: bool = True,
    invalid_rows: Literal["exclude", "error"] = "exclude",
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Exact top-k of ``queries`` over a database read block by block (spec §1.6, §1.7).

    The database is read sequentially, ``block_rows`` rows at a time, and each block is upcast
    to float32 (float16 stores included), normalised, and merged into a running top-k per
    query. Peak memory is about ``block_rows · dim · (itemsize + 4)`` for the block plus
    ``min(query_batch_size, m) · block_rows · 4`` for the distances plus the queries and the
    ``[m, k]`` results, whatever the size of the database. Pages of a memory map are released
    (``MADV_DONTNEED``) after each block is copied, so the resident set does not grow with the
    file; the file's pages may stay in the OS page cache, which is not process memory.

    Args:
        database: A 2-D array-like indexable by row slices (``np.ndarray``, ``np.memmap``,
            ``np.load(path, mmap_mode="r")``, an h5py dataset, ...) or an object with
            ``num_rows`` and ``rows(start, stop)`` (e.g. ``dataflex_ops.FeatureStore``).
        queries: ``[m, dim]`` query vectors (held in memory).
        k: Neighbours per query.
        block_rows: Database rows per block.
        query_batch_size: Queries per matrix product.
        normalize: ℓ₂-normalise database rows and queries.
        invalid_rows: ``exclude`` rows with NaN/inf (never returned, logged) or ``error``.

    Returns:
        ``(squared distances float32 [m, k], indices int64 [m, k])``: ascending distance, ties to
        the lower index; equal to the exact ``numpy`` index on the same rows.

    Raises:
        DataError: on an empty database, a dimension mismatch, NaN queries, invalid rows with
            ``invalid_rows: error``, or ``k`` larger than the number of valid rows.
    """
    if block_rows < 1 or query_batch_size < 1:
        raise ConfigError(
            f"block_rows and query_batch_size must be >= 1, got {block_rows} and "
            f"{query_batch_size}."
        )
    source = _RowSource(database)
    if source.num_rows == 0:
        raise DataError(
            "the database is empty (0 rows); build the features first (nothing to search)."
        )
    q = _prepare_queries(queries, source.dim, normalize)
    k = _check_k(k, source.num_rows)
    return _search_source(source, q, k, block_rows, query_batch_size, normalize, invalid_rows)


def _search_source(
    source: _RowSource,
    q: NDArray[np.float32],
    k: int,
    block_rows: int,
    query_batch_size: int,
    normalize: bool,
    invalid_rows: str,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    search = _ExactSearch(q, k, query_batch_size, block_rows)
    invalid: list[NDArray[np.int64]] = []
    for start, block, valid in source.blocks(block_rows, normalize):
        if valid is None:
            ids = np.arange(start, start + block.shape[0], dtype=np.int64)
        else:
            bad = start + np.flatnonzero(~valid)
            if invalid_rows == "error":
                _handle_invalid(bad, source.num_rows, "error")
            invalid.append(bad)
            ids = start + np.flatnonzero(valid)
            block = block[valid]
        if q.shape[0]:
            search.add(block, ids)
        del block
    excluded = np.concatenate(invalid) if invalid else np.empty(0, dtype=np.int64)
    _handle_invalid(excluded, source.num_rows, invalid_rows)
    valid_rows = source.num_rows - excluded.size
    if valid_rows == 0:
        raise DataError(
            f"all {source.num_rows} database rows hold NaN or inf values; nothing to search."
        )
    _check_k(k, valid_rows, excluded.size)
    return search.result()


# --------------------------------------------------------------------------- indexes


class NearestNeighborIndex:
    """Shared shell of the index backends.

    Built as ``Class(config, context)`` (the registry's calling convention; ``config`` may be
    an :class:`IndexConfig`, a mapping, or None), then filled with :meth:`build`.

    Attributes:
        config: The parsed :class:`IndexConfig`.
        seed: Effective base seed (``config.seed``, else ``context.seed``).
        num_rows: Rows given to :meth:`build`, excluded rows included.
        excluded_rows: Positions of the rows left out because they hold NaN/inf.
    """

    config_class: ClassVar[type] = IndexConfig
    #: ``index.type`` values this backend implements, and its backend family.
    types: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def __init__(
        self,
        config: IndexConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config = _parse(config)
        self.context = context if context is not None else ComponentContext()
        self.seed: int = (
            self.config.seed if self.config.seed is not None else int(self.context.seed)
        )
        if self.config.type != "auto" and self.config.type not in self.types:
            raise ConfigError(
                f"index backend {self.name!r} implements type {' or '.join(self.types)}, but the "
                f"config says type: {self.config.type!r}; use build_index() (or the matching "
                "backend) to choose by type."
            )
        if self.config.backend not in ("auto", self.family):
            raise ConfigError(
                f"index backend {self.name!r} is a {self.family} backend, but the config says "
                f"backend: {self.config.backend!r}."
            )
        self.num_rows = 0
        self.excluded_rows: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._dim: int | None = None
        self._ntotal = 0
        self._ids: NDArray[np.int64] | None = None  # stored position -> row; None = identity

    # ---- building

    def _load(self, vectors: Any) -> NDArray[np.float32]:
        """Prepared (normalised, float32, finite) rows of ``vectors``; records the exclusions."""
        source = _RowSource(vectors)
        if source.num_rows == 0:
            raise DataError(
                f"index {self.name!r}: the database is empty (0 rows); give at least one vector."
            )
        out = np.empty((source.num_rows, source.dim), dtype=np.float32)
        masks: list[tuple[int, NDArray[np.bool_]]] = []
        for start, block, valid in source.blocks(self.config.block_rows, self.config.normalize):
            out[start : start + block.shape[0]] = block
            if valid is not None:
                masks.append((start, valid))
        self.num_rows, self._dim = source.num_rows, source.dim
        if masks:
            keep = np.ones(source.num_rows, dtype=bool)
            for start, valid in masks:
                keep[start : start + valid.size] = valid
            self.excluded_rows = np.flatnonzero(~keep).astype(np.int64)
            _handle_invalid(self.excluded_rows, source.num_rows, self.config.invalid_rows)
            if not keep.any():
                raise DataError(
                    f"index {self.name!r}: all {source.num_rows} database rows hold NaN or inf "
                    "values; nothing to search."
                )
            self._ids = np.flatnonzero(keep).astype(np.int64)
            out = out[keep]
        else:
            self.excluded_rows = np.empty(0, dtype=np.int64)
            self._ids = None
        self._ntotal = out.shape[0]
        return out

    def build(self, vectors: Any) -> NearestNeighborIndex:
        """Index ``vectors`` ``[n, dim]`` (replacing any previous content); returns ``self``."""
        raise NotImplementedError

    # ---- properties

    @property
    def ntotal(self) -> int:
        """Searchable rows (excluded rows not counted)."""
        return self._ntotal

    @property
    def dim(self) -> int:
        """Vector dimension."""
        if self._dim is None:
            raise DataError(f"index {self.name!r} is empty; call build(vectors) first.")
        return self._dim

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        dim = self._dim if self._dim is not None else "?"
        return f"{type(self).__name__}(ntotal={self._ntotal}, dim={dim})"

    # ---- searching

    def _begin_search(self, queries: ArrayLike, k: int) -> tuple[NDArray[np.float32], int]:
        if self._dim is None:
            raise DataError(f"index {self.name!r} is empty; call build(vectors) before search().")
        q = _prepare_queries(queries, self._dim, self.config.normalize)
        return q, _check_k(k, self._ntotal, self.excluded_rows.size)

    def _finish(
        self, d: NDArray[np.floating], i: NDArray[np.integer]
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        d = np.ascontiguousarray(d, dtype=np.float32)
        i = np.ascontiguousarray(i, dtype=np.int64)
        if self._ids is not None:
            i = self._ids[i]  # monotone map: keeps the tie order
        return _sort_rows(d, i)

    def search(self, queries: ArrayLike, k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """The ``k`` nearest database rows of each query.

        Args:
            queries: ``[m, dim]`` vectors (normalised here when ``config.normalize``).
            k: Neighbours per query, ``1 <= k <= ntotal``.

        Returns:
            ``(squared L2 distances float32 [m, k], row indices int64 [m, k])``, each row in
            ascending distance, ties to the lower index; never ``-1``.

        Raises:
            DataError: dimension mismatch (naming both), NaN queries, or ``k > ntotal``.
        """
        raise NotImplementedError


class NumpyFlatIndex(NearestNeighborIndex):
    """Exact search in numpy: blocked ``Q·Vᵀ`` with a running top-k (no FAISS needed).

    An in-memory array is normalised into a float32 copy at :meth:`build`. A memory map
    (``np.memmap``, ``np.load(..., mmap_mode="r")``) or a store with ``num_rows``/``rows`` is not
    copied: every :meth:`search` streams it block by block (:func:`streaming_topk`).
    """

    types = ("flat",)
    family = "numpy"
    name = "numpy"

    def __init__(
        self,
        config: IndexConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self._vectors: NDArray[np.float32] | None = None
        self._norms: NDArray[np.float32] | None = None
        self._source: _RowSource | None = None

    def build(self, vectors: Any) -> NumpyFlatIndex:
        if _is_streamed(vectors):
            source = _RowSource(vectors)
            if source.num_rows == 0:
                raise DataError(
                    f"index {self.name!r}: the database is empty (0 rows); give at least one "
                    "vector."
                )
            self._source, self._vectors, self._norms = source, None, None
            self.num_rows, self._dim, self._ntotal = source.num_rows, source.dim, source.num_rows
            self.excluded_rows, self._ids = np.empty(0, dtype=np.int64), None
            return self
        self._source = None
        self._vectors = self._load(vectors)
        self._norms = _sq_norms(self._vectors)
        return self

    def search(self, queries: ArrayLike, k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        q, k = self._begin_search(queries, k)
        if self._source is not None:
            return _search_source(
                self._source,
                q,
                k,
                self.config.block_rows,
                self.config.query_batch_size,
                self.config.normalize,
                self.config.invalid_rows,
            )
        return self._finish(*self._search_prepared(q, k))

    def _search_prepared(
        self, q: NDArray[np.float32], k: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Exact search of prepared queries; indices are stored positions (before the id map)."""
        assert self._vectors is not None and self._norms is not None
        rows = self.config.block_rows
        search = _ExactSearch(q, k, self.config.query_batch_size, rows)
        if q.shape[0]:
            for start in range(0, self._ntotal, rows):
                stop = min(start + rows, self._ntotal)
                search.add(
                    self._vectors[start:stop],
                    np.arange(start, stop, dtype=np.int64),
                    self._norms[start:stop],
                )
        return search.result()


class _FaissIndex(NearestNeighborIndex):
    family = "faiss"

    def __init__(
        self,
        config: IndexConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self._faiss = _import_faiss(f"index backend {self.name!r}")
        self._index: Any = None
        self._exact: NumpyFlatIndex | None = None  # exact re-query of missing neighbours

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (None before :meth:`build`)."""
        return self._index

    def _keep_exact(self, vectors: NDArray[np.float32]) -> None:
        exact = NumpyFlatIndex(
            IndexConfig(
                type="flat",
                backend="numpy",
                query_batch_size=self.config.query_batch_size,
                block_rows=self.config.block_rows,
                normalize=self.config.normalize,
            ),
            self.context,
        )
        exact._vectors, exact._norms = vectors, _sq_norms(vectors)
        exact._dim = vectors.shape[1]
        exact._ntotal = exact.num_rows = vectors.shape[0]
        self._exact = exact

    def _search_params(self, k: int) -> Any:
        return None

    def search(self, queries: ArrayLike, k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        q, k = self._begin_search(queries, k)
        if q.shape[0] == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        params = self._search_params(k)
        if params is None:
            d, i = self._index.search(q, k)
        else:
            d, i = self._index.search(q, k, params=params)
        missing = np.flatnonzero((i < 0).any(axis=1) | ~np.isfinite(d).all(axis=1))
        if missing.size:
            if self._exact is None:  # pragma: no cover - flat never misses when k <= ntotal
                raise DataError(
                    f"index {self.name!r} returned -1 for {missing.size} queries; rebuild it."
                )
            log.debug(
                "index %s: %d of %d queries had missing neighbours; re-queried exactly.",
                self.name,
                missing.size,
                q.shape[0],
            )
            ed, ei = self._exact._search_prepared(q[missing], k)
            d, i = d.copy(), i.copy()
            d[missing], i[missing] = ed, ei
        return self._finish(d, i)


class FaissFlatIndex(_FaissIndex):
    """Exact search with FAISS ``IndexFlatL2`` (squared L2, like the numpy backend)."""

    types = ("flat",)
    name = "faiss_flat"

    def build(self, vectors: Any) -> FaissFlatIndex:
        x = self._load(vectors)
        index = self._faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        self._index = index
        return self


class FaissIVFFlatIndex(_FaissIndex):
    """FAISS ``IndexIVFFlat`` (L2): ``nlist`` k-means lists, ``nprobe`` visited per query.

    The k-means training seed is :func:`ivf_seed` of the effective seed, so the quantiser is
    reproducible. A float32 copy of the vectors is kept for the exact re-query of queries that
    come back with fewer than ``k`` neighbours.
    """

    types = ("ivf_flat",)
    name = "faiss_ivf_flat"

    def build(self, vectors: Any) -> FaissIVFFlatIndex:
        faiss = self._faiss
        x = self._load(vectors)
        n, d = x.shape
        nlist = self.config.nlist if self.config.nlist is not None else default_nlist(n)
        if nlist > n:
            raise DataError(
                f"index {self.name!r}: nlist = {nlist} exceeds the n = {n} database rows; set "
                f"nlist <= {n} (or null for max(1, isqrt(n) // 2) = {default_nlist(n)})."
            )
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
        index.cp.seed = ivf_seed(self.seed)
        index.train(x)
        index.add(x)
        index.nprobe = min(self.config.nprobe, nlist)
        self._quantizer = quantizer  # keep the Python owner alive as long as the index
        self._index = index
        self.nlist = nlist
        self._keep_exact(x)
        return self

    def _search_params(self, k: int) -> Any:
        return self._faiss.SearchParametersIVF(nprobe=min(self.config.nprobe, self.nlist))


class FaissHNSWIndex(_FaissIndex):
    """FAISS ``IndexHNSWFlat`` (L2) with ``M = hnsw_m``; ``efSearch = max(ef_search, k)``.

    Graph construction is multi-threaded, so the graph (and rarely a result) can differ between
    runs. A float32 copy of the vectors is kept for the exact re-query of missing neighbours.
    """

    types = ("hnsw",)
    name = "faiss_hnsw"

    def build(self, vectors: Any) -> FaissHNSWIndex:
        x = self._load(vectors)
        index = self._faiss.IndexHNSWFlat(x.shape[1], self.config.hnsw_m)
        index.hnsw.efConstruction = self.config.ef_construction
        index.add(x)
        self._index = index
        self._keep_exact(x)
        return self

    def _search_params(self, k: int) -> Any:
        return self._faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))


_BACKENDS: dict[tuple[str, str], type[NearestNeighborIndex]] = {
    ("flat", "numpy"): NumpyFlatIndex,
    ("flat", "faiss"): FaissFlatIndex,
    ("ivf_flat", "faiss"): FaissIVFFlatIndex,
    ("hnsw", "faiss"): FaissHNSWIndex,
}


def _num_rows(vectors: Any) -> int:
    if hasattr(vectors, "num_rows") and hasattr(vectors, "rows"):
        return int(vectors.num_rows)
    shape = getattr(vectors, "shape", None)
    if shape is None:
        return len(vectors)
    return int(shape[0]) if len(shape) else 0


def resolve_index(config: IndexConfig | Mapping[str, Any] | None, n: int) -> tuple[str, str]:
    """The ``(type, backend)`` that :func:`build_index` uses for ``n`` database rows.

    * ``type: auto`` → ``flat`` if ``n <= auto_flat_max_rows`` else ``ivf_flat``; when FAISS is
      not importable and the backend is ``auto`` (or ``numpy``), large databases fall back to
      exact numpy search (with a log message).
    * ``backend: auto`` → ``faiss`` when importable, else ``numpy`` (exact ``flat`` only; asking
      for ``ivf_flat``/``hnsw`` without FAISS raises with the install hint).
    """
    cfg = _parse(config)
    kind = cfg.type
    if kind == "auto":
        kind = "flat" if n <= cfg.auto_flat_max_rows else "ivf_flat"
        if kind == "ivf_flat" and (cfg.backend == "numpy" or not faiss_available()):
            if cfg.backend == "faiss":
                _import_faiss("index type 'ivf_flat'")
            log.info(
                "index type auto: %d rows would use ivf_flat, but %s; using exact numpy search.",
                n,
                "backend is numpy" if cfg.backend == "numpy" else "FAISS is not installed",
            )
            kind = "flat"
    backend = cfg.backend
    if backend == "auto":
        if kind == "flat":
            backend = "faiss" if faiss_available() else "numpy"
        else:
            backend = "faiss"
    if backend == "faiss":
        _import_faiss(f"index type {kind!r}")
    return kind, backend


def build_index(
    vectors: Any,
    config: IndexConfig | Mapping[str, Any] | None = None,
    seed: int | None = None,
    *,
    context: ComponentContext | None = None,
) -> NearestNeighborIndex:
    """Build the index that ``config`` asks for over ``vectors`` ``[n, dim]``.

    Args:
        vectors: The database: an array, a memory map or a store with ``num_rows``/``rows``.
        config: An :class:`IndexConfig` or a mapping of its keys (validated strictly).
        seed: Base seed (IVF quantiser); overrides ``context.seed``; ``config.seed`` wins.
        context: Runtime facts passed to the backend.

    Returns:
        A built :class:`NearestNeighborIndex`.
    """
    cfg = _parse(config)
    ctx = context if context is not None else ComponentContext()
    if seed is not None:
        ctx = ComponentContext(**{**ctx.__dict__, "seed": int(seed)})
    kind, backend = resolve_index(cfg, _num_rows(vectors))
    return _BACKENDS[(kind, backend)](cfg, ctx).build(vectors)


def index_backend_specs() -> list[ComponentSpec]:
    """The index backends of ``dataflex-select`` (the plugin registers the same specs as
    literals, so that discovery does not import numpy; a test keeps the two equal)."""
    config = "dataflex_select.index:IndexConfig"
    return [
        ComponentSpec(
            kind="index",
            name="numpy",
            factory="dataflex_select.index:NumpyFlatIndex",
            config=config,
            summary="Exact squared-L2 search in numpy (blocked, streams memory maps).",
        ),
        ComponentSpec(
            kind="index",
            name="faiss_flat",
            factory="dataflex_select.index:FaissFlatIndex",
            config=config,
            summary="Exact squared-L2 search with FAISS IndexFlatL2 (extra: faiss).",
        ),
        ComponentSpec(
            kind="index",
            name="faiss_ivf_flat",
            factory="dataflex_select.index:FaissIVFFlatIndex",
            config=config,
            summary="Approximate search with FAISS IndexIVFFlat, exact re-query of misses.",
            paper="arXiv:1702.08734",
        ),
        ComponentSpec(
            kind="index",
            name="faiss_hnsw",
            factory="dataflex_select.index:FaissHNSWIndex",
            config=config,
            summary="Approximate search with FAISS IndexHNSWFlat, exact re-query of misses.",
            paper="arXiv:1603.09320",
        ),
    ]
