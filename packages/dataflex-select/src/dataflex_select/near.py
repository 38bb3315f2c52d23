"""The ``near`` selector: embedding kNN with round-robin de-duplication (algorithms spec §2.8).

There is no paper: it is the kNN baseline of TSDS and LESS under the predecessor's name. Each
target example ``j`` lists its ``K`` nearest pool rows ``I[j, 0..K-1]`` (ascending distance,
§1.6). The window walks that matrix column by column, so every target gets its nearest
neighbour before any target gets its second one:

    for k = 0..K-1: for j = 0..M-1: append I[j, k] unless already taken; stop at n.

When fewer than ``n`` distinct rows exist, ``on_shortfall: error`` raises with the counts and
``fill_random`` tops the window up with seeded uniform draws from the remaining rows.

Pure core: :func:`near_round_robin` (the walk over a given matrix) and
:func:`near_neighbour_matrix` (``I`` from pool and target embeddings, through
:mod:`dataflex_select.index`). :class:`NearSelector` is the shell: it asks for the embeddings
(or reads a precomputed ``indices_path``), caches ``I`` (``recompute: never``), and answers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    SelectRequest,
    SignalRequest,
    StateError,
    derive,
)
from numpy.typing import ArrayLike, NDArray

from dataflex_select.base import ScoredSelector, ScoredSelectorConfig, signal_rows
from dataflex_select.index import IndexConfig, build_index
from dataflex_select.primitives import sample_without_replacement

__all__ = [
    "EmbeddingConfig",
    "NearSelectorConfig",
    "NearSelector",
    "near_round_robin",
    "near_neighbour_matrix",
    "load_indices",
    "file_sha256",
    "STATE_INLINE_MAX",
]

log = logging.getLogger(__name__)

#: Artefacts (neighbour matrices, sparse probabilities) with at most this many entries are kept
#: inside the JSON state, so a resumed run continues on exactly the same artefact. Larger ones
#: stay in memory only: the state keeps their sha256, and a resumed run recomputes them.
STATE_INLINE_MAX = 100_000


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which embeddings a selector asks the integration for (spec §1.2).

    Attributes:
        source: ``model`` (hidden states of the model being trained) or ``external`` (a
            standalone embedding model, ``model_name_or_path``).
        model_name_or_path: The external model (a hub id or a local path); only with
            ``source: external``.
        layer: Hidden-state layer (``-1``: the final hidden state, after the final norm).
        pooling: ``mean``, ``last_token`` or ``position_weighted``.
    """

    source: Literal["model", "external"] = "model"
    model_name_or_path: str | None = None
    layer: int = -1
    pooling: Literal["mean", "last_token", "position_weighted"] = "mean"

    def __post_init__(self) -> None:
        if self.source == "external" and not self.model_name_or_path:
            raise ConfigError(
                "embedding.source is 'external' but embedding.model_name_or_path is not set; "
                "name the embedding model (a hub id or a local path)."
            )
        if self.source == "model" and self.model_name_or_path is not None:
            raise ConfigError(
                f"embedding.model_name_or_path = {self.model_name_or_path!r} is only used with "
                "embedding.source: external; set it, or drop model_name_or_path to embed with "
                "the model being trained."
            )

    def options(self) -> dict[str, Any]:
        """``SignalRequest.options`` of an ``embedding`` signal."""
        model = self.model_name_or_path if self.source == "external" else None
        return {"model": model, "layer": self.layer, "pooling": self.pooling}


@dataclass(frozen=True)
class NearSelectorConfig(ScoredSelectorConfig):
    """Config of the ``near`` selector (spec §2.8), plus the shared keys of §2.0.

    Attributes:
        indices_path: A precomputed ``M x K`` integer ``.npy`` matrix of pool rows, each row in
            ascending distance; null computes it from embeddings.
        max_K: Neighbours per target (capped at the pool size).
        index: Nearest-neighbour index (``type``, ``nprobe``, ...; :class:`IndexConfig`).
        embedding: Embeddings to ask for (:class:`EmbeddingConfig`).
        recompute: ``never`` (compute the matrix at the first update, over the whole pool, and
            keep it) or ``every_update`` (recompute over the update's candidates).
        exclude_selected: Skip rows already chosen in earlier windows of the same Flex epoch.
        on_shortfall: Fewer distinct neighbours than ``n``: ``error`` or ``fill_random``.
    """

    indices_path: str | None = None
    max_K: int = 1000
    index: IndexConfig = field(default_factory=IndexConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    recompute: Literal["never", "every_update"] = "never"
    exclude_selected: bool = False
    on_shortfall: Literal["error", "fill_random"] = "error"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_K < 1:
            raise ConfigError(f"max_K must be >= 1, got {self.max_K!r}.")
        if self.indices_path is not None and not self.indices_path.strip():
            raise ConfigError("indices_path is empty; give a .npy path or null.")


# --------------------------------------------------------------------------- core


def near_round_robin(
    neighbours: ArrayLike,
    n: int,
    on_shortfall: str = "error",
    seed: int = 0,
    num_samples: int | None = None,
    allowed: ArrayLike | None = None,
) -> NDArray[np.int64]:
    """Column-major round robin over the neighbour matrix ``I`` (spec §2.8 steps 2-3).

    Args:
        neighbours: The matrix ``I``: ``M x K`` pool indices, each row in ascending distance.
        n: Indices wanted.
        on_shortfall: ``error`` (raise when fewer than ``n`` distinct allowed indices occur in
            ``I``) or ``fill_random`` (top up with uniform draws, without replacement, from the
            allowed indices not taken, seeded by ``seed``).
        seed: Seed of the fill draw.
        num_samples: Pool size ``N`` (indices must be in ``[0, N)``); None: ``max(I) + 1``.
        allowed: Boolean mask over the pool (length ``N``): rows that may be taken. None: all.

    Returns:
        ``n`` distinct pool indices: the round-robin order, then any fill.

    Example (the spec's):
        >>> near_round_robin([[3, 1, 2], [3, 4, 0]], 4).tolist()
        [3, 1, 4, 2]
    """
    mat = np.asarray(neighbours)
    if mat.ndim == 1:
        mat = mat[None, :]
    if mat.ndim != 2 or mat.size == 0:
        raise DataError(
            f"near: the neighbour matrix must be a non-empty M x K matrix, got {mat.shape}."
        )
    if not np.issubdtype(mat.dtype, np.integer):
        raise DataError(f"near: the neighbour matrix must hold integers, got dtype {mat.dtype}.")
    mat = mat.astype(np.int64, copy=False)
    size = int(mat.max()) + 1 if num_samples is None else int(num_samples)
    if mat.min() < 0 or mat.max() >= size:
        raise DataError(
            f"near: the neighbour matrix holds indices outside [0, {size}) (min {int(mat.min())}, "
            f"max {int(mat.max())}); it does not match the training pool."
        )
    if n < 0:
        raise DataError(f"near: n must be >= 0, got {n}.")
    flat = mat.T.reshape(-1)  # column-major: all first neighbours, then all second ones, ...
    _, first = np.unique(flat, return_index=True)
    order = flat[np.sort(first)]
    mask = None if allowed is None else np.asarray(allowed, dtype=bool)
    if mask is not None:
        if mask.shape != (size,):
            raise DataError(f"near: allowed mask has shape {mask.shape}, expected ({size},).")
        order = order[mask[order]]
    if order.size >= n:
        return order[:n].copy()
    if on_shortfall == "error":
        m, k = mat.shape
        raise DataError(
            f"near: only {order.size} distinct eligible rows among the {m} x {k} neighbours, but "
            f"the window needs n = {n}; raise max_K, lower the window/budget, or set "
            "`on_shortfall: fill_random`."
        )
    if on_shortfall != "fill_random":
        raise ConfigError(f"on_shortfall must be 'error' or 'fill_random', got {on_shortfall!r}.")
    remaining = np.ones(size, dtype=bool) if mask is None else mask.copy()
    remaining[order] = False
    need = n - order.size
    pool = np.flatnonzero(remaining)
    if pool.size < need:
        raise DataError(
            f"near: fill_random needs {need} more rows but only {pool.size} eligible rows remain "
            f"(pool N = {size}); lower the window/budget."
        )
    fill = pool[sample_without_replacement(np.ones(pool.size), need, seed)]
    return np.concatenate([order, fill]).astype(np.int64)


def near_neighbour_matrix(
    pool: ArrayLike,
    targets: ArrayLike,
    max_K: int = 1000,
    index: IndexConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
) -> NDArray[np.int64]:
    """``I[j]``: the ``min(max_K, searchable rows)`` nearest pool rows of target ``j`` (§1.6).

    Vectors are ℓ₂-normalised by the index (unless ``index.normalize`` is false); distances are
    L2, ties go to the lower index. Pool rows holding NaN are never returned; target rows
    holding NaN are dropped (with a warning).

    Raises:
        DataError: no target rows, no valid pool rows, or a dimension mismatch.
    """
    xb = _matrix(pool, "pool embeddings")
    xq = _matrix(targets, "target embeddings")
    _check_dims(xb, xq)
    xq = _valid_targets(xq)
    idx = build_index(xb, index, seed)
    k = min(int(max_K), idx.ntotal)
    _, nbrs = idx.search(xq, k)
    return nbrs


def _matrix(x: ArrayLike, what: str) -> NDArray[np.float32]:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-D [rows, dim] array, got shape {arr.shape}.")
    if arr.shape[0] == 0:
        hint = (
            " (the target set is empty: give `target_dataset` some rows)"
            if "target" in what
            else ""
        )
        raise DataError(f"{what} have no rows{hint}.")
    return arr


def _check_dims(xb: NDArray[np.float32], xq: NDArray[np.float32]) -> None:
    if xb.shape[1] != xq.shape[1]:
        raise DataError(
            f"embedding dimension mismatch: pool rows have dim {xb.shape[1]} but target rows have "
            f"dim {xq.shape[1]}; embed both with the same model and layer."
        )


def _valid_targets(xq: NDArray[np.float32]) -> NDArray[np.float32]:
    ok = np.isfinite(xq).all(axis=1)
    if ok.all():
        return xq
    if not ok.any():
        raise DataError(f"all {xq.shape[0]} target embeddings hold NaN (invalid target rows).")
    log.warning("dropped %d of %d target rows with invalid embeddings.", (~ok).sum(), ok.size)
    return xq[ok]


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve(path: str) -> str:
    # Absolute, so that the state names the file unambiguously whatever the working directory.
    return os.path.abspath(os.path.expanduser(path))


def load_indices(path: str, num_samples: int) -> NDArray[np.int64]:
    """Load and check a precomputed ``M x K`` neighbour matrix (``.npy``, integers in ``[0, N)``).

    Raises:
        DataError: naming ``path`` when the file is missing, unreadable, not a non-empty 2-D
            integer matrix, or holds ids outside ``[0, N)`` (``-1`` included).
    """
    if not os.path.isfile(path):
        raise DataError(
            f"near: indices_path {path!r} does not exist; give the .npy matrix written by the "
            "offline near script (M x K pool indices), or null to compute it from embeddings."
        )
    try:
        mat = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"near: cannot read indices_path {path!r} as a .npy array: {exc}") from exc
    if mat.ndim != 2 or mat.shape[0] == 0 or mat.shape[1] == 0:
        raise DataError(
            f"near: indices_path {path!r} holds shape {mat.shape}; expected a non-empty M x K "
            "matrix (one row of neighbours per target)."
        )
    if not np.issubdtype(mat.dtype, np.integer):
        raise DataError(f"near: indices_path {path!r} holds {mat.dtype}; expected integers.")
    lo, hi = int(mat.min()), int(mat.max())
    if lo < 0 or hi >= num_samples:
        raise DataError(
            f"near: indices_path {path!r} holds ids in [{lo}, {hi}] but the pool has N = "
            f"{num_samples} rows (ids must be in [0, {num_samples}), and -1 means a missing "
            "neighbour); it was made for another dataset or with an approximate index."
        )
    return mat.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- shell


class NearSelector(ScoredSelector):
    """Embedding kNN with round-robin de-duplication (spec §2.8) on the shared shell (§2.0).

    Signals (none with ``indices_path``, none once the matrix is cached): ``embedding`` (kind
    ``embedding``, the pool rows: all of them with ``recompute: never``, else the candidates)
    and ``target_embedding`` (split ``target``), both with the options of ``embedding``.

    State: ``indices_path`` and its sha256 (checked again on resume), or the neighbour matrix
    itself when it has at most :data:`STATE_INLINE_MAX` entries; a larger computed matrix is
    kept in memory only (its sha256 is saved) and recomputed on resume, which reproduces it
    exactly only when the embeddings are the same (an external embedding model; the training
    model has moved on, so a warning says the resumed run diverges).
    ``fill_random`` draws with ``derive(seed, "near", epoch, step)``.
    """

    config_class = NearSelectorConfig
    name = "near"

    def __init__(
        self,
        config: NearSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self.config: NearSelectorConfig
        self.matrix: NDArray[np.int64] | None = None
        self._matrix_sha: str | None = None
        self._indices_path: str | None = None
        self._indices_sha: str | None = None
        self._taken_epoch: int | None = None
        self._taken: list[int] = []

    # ---- signals

    def _cached(self) -> bool:
        if self.config.indices_path is not None:
            return True
        return self.matrix is not None and self.config.recompute == "never"

    def _signals(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> list[SignalRequest]:
        if self._cached():
            return []
        rows = (
            None
            if self.config.recompute == "never"
            else self.rows_of(candidates, request.num_samples)
        )
        opts = self.config.embedding.options()
        return [
            SignalRequest("embedding", "embedding", "train", rows, opts),
            SignalRequest("target_embedding", "embedding", "target", None, opts),
        ]

    # ---- the neighbour matrix

    def _load_file(self, num_samples: int) -> NDArray[np.int64]:
        assert self.config.indices_path is not None
        path = _resolve(self.config.indices_path)
        mat = load_indices(path, num_samples)
        sha = file_sha256(path)
        if self._indices_sha is not None and sha != self._indices_sha:
            raise StateError(
                f"{self.what}: indices_path {path!r} changed since the checkpoint (sha256 "
                f"{sha[:12]} != saved {self._indices_sha[:12]}); restore the original file."
            )
        self._indices_path, self._indices_sha = path, sha
        return mat

    def _compute(self, request: SelectRequest, rows: NDArray[np.int64]) -> NDArray[np.int64]:
        pool = signal_rows(request, "embedding", len(rows), self.what)
        self.note_invalid_rows(rows, pool)  # never chosen, not even as a fill
        if "target_embedding" not in request.extras:
            signal_rows(request, "target_embedding", 0, self.what)  # raises: missing
        local = near_neighbour_matrix(
            pool,
            request.extras["target_embedding"],
            self.config.max_K,
            self.config.index,
            derive(self.seed, "near_index"),
        )
        return rows[local]

    def neighbours(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> NDArray[np.int64]:
        """The neighbour matrix for ``request`` (cached, loaded, or computed from the signals)."""
        size = request.num_samples
        if self.config.indices_path is not None:
            if self.matrix is None:
                self.matrix = self._load_file(size)
            return self.matrix
        if self.matrix is not None and self.config.recompute == "never":
            if int(self.matrix.max()) >= size:
                raise StateError(
                    f"{self.what}: the cached neighbour matrix has ids up to "
                    f"{int(self.matrix.max())} but the pool has N = {size} rows."
                )
            return self.matrix
        rows = np.arange(size, dtype=np.int64) if self.config.recompute == "never" else candidates
        mat = self._compute(request, rows)
        sha = hashlib.sha256(np.ascontiguousarray(mat, dtype="<i8").tobytes()).hexdigest()
        if self.config.recompute == "never" and self._matrix_sha not in (None, sha):
            log.warning(
                "%s: the neighbour matrix recomputed on resume differs from the saved one "
                "(sha256 %s != %s; the embeddings changed), so the resumed run diverges from an "
                "uninterrupted one. Use an external embedding model or indices_path for exact "
                "resumes of large matrices.",
                self.what,
                sha[:12],
                self._matrix_sha[:12],
            )
        self.matrix, self._matrix_sha = mat, sha
        return mat

    def _choose(
        self, request: SelectRequest, candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        size = request.num_samples
        mat = self.neighbours(request, candidates)
        allowed = self.allowed_mask(request, candidates)
        if self.config.exclude_selected:
            if self._taken_epoch != request.epoch:
                self._taken_epoch, self._taken = request.epoch, []
            allowed[np.asarray(self._taken, dtype=np.int64)] = False
        out = near_round_robin(
            mat,
            n,
            self.config.on_shortfall,
            derive(self.seed, "near", request.epoch, request.step),
            size,
            allowed,
        )
        if self.config.exclude_selected:
            self._taken.extend(int(i) for i in out)
        # report the best (lowest) neighbour rank of each candidate; NaN: not a neighbour
        rank = np.full(size, np.inf)
        flat = mat.T.reshape(-1)
        _, first = np.unique(flat, return_index=True)
        rank[flat[first]] = first // mat.shape[0]
        score = -rank[candidates]
        self.last_scores = (candidates, np.where(np.isfinite(score), score, np.nan))
        return out

    # ---- state

    def _extra_state(self) -> dict[str, Any]:
        inline = (
            self.matrix is not None
            and self.config.indices_path is None
            and self.config.recompute == "never"
            and self.matrix.size <= STATE_INLINE_MAX
        )
        return {
            "indices_path": self._indices_path,
            "indices_sha256": self._indices_sha,
            "matrix_sha256": self._matrix_sha,
            "matrix": self.matrix.tolist() if inline and self.matrix is not None else None,
            "taken_epoch": self._taken_epoch,
            "taken": list(self._taken),
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        try:
            self._indices_path = state.get("indices_path")
            self._indices_sha = state.get("indices_sha256")
            self._matrix_sha = state.get("matrix_sha256")
            mat = state.get("matrix")
            self.matrix = None if mat is None else np.asarray(mat, dtype=np.int64)
            epoch = state.get("taken_epoch")
            self._taken_epoch = None if epoch is None else int(epoch)
            self._taken = [int(i) for i in state.get("taken", [])]
        except (TypeError, ValueError) as exc:
            raise StateError(f"{self.what}: malformed saved state: {exc}") from exc
        if self.matrix is not None and (self.matrix.ndim != 2 or self.matrix.size == 0):
            raise StateError(
                f"{self.what}: the saved neighbour matrix has shape {self.matrix.shape}."
            )
        if (
            self.config.indices_path is not None
            and self._indices_path is not None
            and _resolve(self.config.indices_path) != self._indices_path
        ):
            raise StateError(
                f"{self.what}: the checkpoint used indices_path {self._indices_path!r} but this "
                f"run has {self.config.indices_path!r}."
            )
