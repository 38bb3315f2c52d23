"""The ``tsds`` selector: TSDS, task-specific data selection (algorithms spec §2.9).

Reference: Liu, Karbasi, Rekatsinas, "TSDS: Data Selection for Task-Specific Model Finetuning",
NeurIPS 2024, arXiv 2410.11303 (official code: ZifanL/TSDS, ``tsds.py``).

TSDS picks a sampling distribution ``p`` over the pool that matches the target distribution in
optimal-transport cost, regularised towards diversity (a kernel density estimate down-weights
near-duplicates). With the K nearest pool rows of each of the ``M`` targets, the optimum has a
closed form found by water-filling: every target spreads its mass ``1/M`` over its nearest
neighbours in proportion to ``1/ρ`` up to a common level ``s``, where ``α`` trades transport
cost against the regulariser (``C`` scales the cost).

Pure core: :func:`tsds_probabilities` (the water-filling, on given distances, indices and
densities), :func:`tsds_density` (the kernel density over the union of the neighbour lists) and
:func:`tsds_distribution` (both, from embeddings, through :mod:`dataflex_select.index`).
:class:`TsdsSelector` is the shell: it asks for the embeddings (or reads ``probs_path``), caches
``p``, and samples windows from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
import math
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
from dataflex_select.index import IndexConfig, build_index, faiss_available, l2_normalize
from dataflex_select.near import (
    STATE_INLINE_MAX,
    EmbeddingConfig,
    _check_dims,
    _matrix,
    _valid_targets,
    file_sha256,
)
from dataflex_select.primitives import sample_with_replacement, sample_without_replacement

__all__ = [
    "TsdsSelectorConfig",
    "TsdsSelector",
    "tsds_probabilities",
    "tsds_density",
    "tsds_distribution",
    "tsds_neighbour_cap",
    "tsds_sample",
    "load_probabilities",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TsdsSelectorConfig(ScoredSelectorConfig):
    """Config of the ``tsds`` selector (spec §2.9), plus the shared keys of §2.0.

    Attributes:
        alpha: ``α`` in [0, 1]: weight of the transport cost against the diversity regulariser
            (predecessor 0.6).
        C: Scale of the transport cost; > 0.
        sigma: Kernel bandwidth of the density ``ρ``; 0 turns the density off (``ρ ≡ 1``).
        max_K: Neighbours per target before the cap; >= 2.
        kde_K: Neighbours of the density estimate; >= 1.
        k_cap: ``n`` (``K = min(max_K, N)``) or ``n_div_10`` (``min(max_K, ⌊N/10⌋)``, the official
            code); null: ``n``, or ``n_div_10`` with ``official_compat``.
        official_compat: The official code's choices: ``k_cap: n_div_10`` (unless ``k_cap`` is
            set) and ``index.type: ivf_flat`` (when ``index.type`` is ``auto`` and the backend is
            not ``numpy``; without FAISS, ``auto`` stays exact).
        index: Nearest-neighbour index (:class:`IndexConfig`).
        embedding: Embeddings to ask for (:class:`EmbeddingConfig`).
        normalize_embeddings: ℓ₂-normalise the embeddings (the official code uses them as
            given).
        sampling: ``with_replacement`` (a multinomial sample, as in the paper and official
            code) or ``without_replacement`` (Gumbel-top-k).
        on_shortfall: ``without_replacement`` with ``n > nnz(p)``: ``error`` or ``fill_random``
            (top up uniformly from the rows with ``p = 0``).
        probs_path: A precomputed ``p`` (``.npy``, length ``N``); null computes it.
        recompute: ``never`` (compute ``p`` at the first update, over the whole pool, and keep
            it) or ``every_update`` (recompute over the update's candidates).
    """

    alpha: float = 0.5
    C: float = 5.0
    sigma: float = 0.75
    max_K: int = 5000
    kde_K: int = 1000
    k_cap: Literal["n", "n_div_10"] | None = None
    official_compat: bool = False
    index: IndexConfig = field(default_factory=IndexConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    normalize_embeddings: bool = True
    sampling: Literal["with_replacement", "without_replacement"] = "with_replacement"
    on_shortfall: Literal["error", "fill_random"] = "error"
    probs_path: str | None = None
    recompute: Literal["never", "every_update"] = "never"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha!r}.")
        if not (math.isfinite(self.C) and self.C > 0):
            raise ConfigError(f"C must be a finite number > 0, got {self.C!r}.")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ConfigError(f"sigma must be a finite number >= 0, got {self.sigma!r}.")
        if self.max_K < 2:
            raise ConfigError(
                f"max_K must be >= 2 (TSDS needs two neighbours), got {self.max_K!r}."
            )
        if self.kde_K < 1:
            raise ConfigError(f"kde_K must be >= 1, got {self.kde_K!r}.")
        if self.probs_path is not None and not self.probs_path.strip():
            raise ConfigError("probs_path is empty; give a .npy path or null.")

    @property
    def effective_k_cap(self) -> str:
        """``k_cap`` after ``official_compat``."""
        if self.k_cap is not None:
            return self.k_cap
        return "n_div_10" if self.official_compat else "n"

    @property
    def effective_index(self) -> IndexConfig:
        """``index`` after ``official_compat`` and ``normalize_embeddings``."""
        idx = self.index
        # The official IVF index, unless the index is pinned to exact numpy search (or FAISS is
        # missing and the backend is auto: then auto falls back to exact search).
        if self.official_compat and idx.type == "auto" and idx.backend != "numpy":
            if idx.backend == "faiss" or faiss_available():
                idx = dataclasses.replace(idx, type="ivf_flat")
        # Normalisation is done (or not) before indexing, once, by normalize_embeddings.
        return dataclasses.replace(idx, normalize=False)


# --------------------------------------------------------------------------- core


def tsds_probabilities(
    d: ArrayLike,
    i: ArrayLike,
    rho: ArrayLike,
    alpha: float,
    C: float,
    M: int | None = None,
    *,
    num_samples: int | None = None,
) -> NDArray[np.float64]:
    """TSDS sampling probabilities by closed-form water-filling (spec §2.9 steps 3-4).

    Args:
        d: ``M x K`` L2 distances (not squared) of each target's neighbours, ascending.
        i: ``M x K`` pool indices of those neighbours.
        rho: ``M x K`` densities ``ρ(i[j, k])`` (all ones when ``σ = 0``).
        alpha: ``α``.
        C: ``C``.
        M: Number of targets (the rows of ``d``); checked when given.
        num_samples: Length of ``p`` (the pool size); None: ``max(i) + 1``.
        A single target may be given as 1-D vectors.

    Returns:
        ``p`` (float64, length ``num_samples``), on the simplex; each target contributes ``1/M``.

    The heap holds ``(count, k, j)`` tuples, so ties break on ``k``, then ``j``, as in the
    official code. A target whose first tuple was never popped when the loop stops (possible
    only when ``α`` is close to 1) puts its whole ``1/M`` on its nearest neighbour; the official
    code would give it ``1/(M·s·ρ)`` there and renormalise ``p`` afterwards.

    Example (the spec's):
        >>> tsds_probabilities([0, 1, 2, 4], [0, 1, 2, 3], [2, 1, 1, 1], 0.2, 1.0).tolist()
        [0.2, 0.4, 0.4, 0.0]
    """
    dist = np.asarray(d, dtype=np.float64)
    idx = np.asarray(i)
    dens = np.asarray(rho, dtype=np.float64)
    if dist.ndim == 1:
        dist, idx, dens = dist[None, :], idx[None, :], dens[None, :]
    if dist.ndim != 2 or dist.shape != idx.shape or dist.shape != dens.shape:
        raise DataError(
            f"tsds: d {dist.shape}, i {idx.shape} and rho {dens.shape} must be M x K matrices of "
            "one shape."
        )
    m, K = dist.shape
    if M is not None and M != m:
        raise DataError(f"tsds: M = {M} but d has {m} rows.")
    if m == 0:
        raise DataError("tsds: the target set has no rows; give `target_dataset` some examples.")
    if K < 2:
        raise DataError(f"tsds: need K >= 2 neighbours per target, got K = {K}.")
    if not np.all(np.isfinite(dist)) or not np.all(np.isfinite(dens)) or np.any(dens <= 0):
        raise DataError("tsds: distances must be finite and densities finite and > 0.")
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0:
        raise DataError("tsds: neighbour indices must be non-negative integers (no -1).")
    size = int(idx.max()) + 1 if num_samples is None else int(num_samples)
    if idx.max() >= size:
        raise DataError(f"tsds: neighbour index {int(idx.max())} is outside the pool of {size}.")

    # Python floats and lists: the heap loop is scalar, and numpy scalars are slower here.
    dl = dist.tolist()
    inv = (1.0 / dens).tolist()
    last_k = [0] * m
    wsum = [dl[j][0] * inv[j][0] for j in range(m)]  # A_j = Σ_k d_{j,k} / ρ_{j,k}
    cost = [0.0] * m
    heap = [(inv[j][0], 0, j) for j in range(m)]
    heapq.heapify(heap)
    popped = [False] * m
    total = 0.0
    s = 0.0
    rhs = (1.0 - alpha) * m
    scale = alpha / C
    while heap:
        c, k, j = heapq.heappop(heap)
        s = c
        total -= cost[j]
        cost[j] = dl[j][k + 1] * c - wsum[j]
        total += cost[j]
        if scale * total >= rhs:
            break
        last_k[j] = k
        popped[j] = True
        if k < K - 2:
            heapq.heappush(heap, (c + inv[j][k + 1], k + 1, j))
            wsum[j] += dl[j][k + 1] * inv[j][k + 1]

    inv_m = 1.0 / m
    lk = np.asarray(last_k, dtype=np.int64)
    done = np.asarray(popped, dtype=bool)
    # 1/(M s ρ_{j,k}) for k <= lastK_j, then the residual on neighbour lastK_j + 1.
    take = (np.arange(K)[None, :] <= lk[:, None]) & done[:, None]
    w = np.where(take, inv_m / (s * dens), 0.0)
    rows = np.arange(m)
    resid = np.maximum(inv_m - w.sum(axis=1), 0.0)
    resid_at = np.where(done, idx[rows, np.minimum(lk + 1, K - 1)], idx[:, 0])
    resid = np.where(done, resid, inv_m)  # never popped: all of 1/M on the nearest neighbour
    p = np.zeros(size, dtype=np.float64)
    np.add.at(p, idx[take], w[take])
    np.add.at(p, resid_at, resid)
    return p


def tsds_density(
    pool: ArrayLike,
    neighbours: ArrayLike,
    sigma: float,
    kde_K: int,
    *,
    index: IndexConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
    kde_cap: int | None = None,
) -> NDArray[np.float64]:
    """Kernel densities ``ρ`` of the neighbours (spec §2.9 step 2), an ``M x K`` matrix.

    ``U`` is the union of ``neighbours``; for ``u ∈ U``,
    ``ρ(u) = Σ_{v ∈ kNN_{K_kde}(u) within U} max(0, 1 − ‖u − v‖² / σ²)`` (squared distances; ``u``
    itself is included, so ``ρ >= 1``), with ``K_kde = min(kde_K, |U|)`` (and ``<= kde_cap`` when
    given, the official ``⌊N/10⌋``). ``σ = 0`` gives ``ρ ≡ 1``.

    Args:
        pool: ``N x D`` pool embeddings (as searched; normalise them first if wanted).
        neighbours: ``M x K`` pool indices.
        sigma: Bandwidth ``σ``.
        kde_K: ``K_kde`` before the caps.
        index: Index config for the search within ``U`` (normalisation is not applied).
        seed: Seed of an IVF quantiser.
        kde_cap: Extra cap on ``K_kde``.
    """
    nbrs = np.asarray(neighbours, dtype=np.int64)
    if sigma == 0:
        return np.ones(nbrs.shape, dtype=np.float64)
    xb = np.asarray(pool, dtype=np.float32)
    uniq, inverse = np.unique(nbrs, return_inverse=True)
    sub = np.ascontiguousarray(xb[uniq])
    cfg = dataclasses.replace(_index_config(index), normalize=False)
    kk = min(int(kde_K), uniq.size)
    if kde_cap is not None:
        kk = max(1, min(kk, int(kde_cap)))
    sq, _ = build_index(sub, cfg, seed).search(sub, kk)
    kernel = np.maximum(0.0, 1.0 - sq.astype(np.float64) / (sigma * sigma))
    rho_u = kernel.sum(axis=1)
    return rho_u[inverse.reshape(nbrs.shape)]


def _index_config(index: IndexConfig | Mapping[str, Any] | None) -> IndexConfig:
    if isinstance(index, IndexConfig):
        return index
    from dataflex_core import parse_config

    return parse_config(IndexConfig, index, where="index config")


def tsds_neighbour_cap(max_K: int, num_rows: int, k_cap: str = "n") -> int:
    """``K = min(max_K, N)`` (``k_cap: n``) or ``min(max_K, ⌊N/10⌋)`` (``n_div_10``); ``K >= 2``."""
    K = min(int(max_K), num_rows if k_cap == "n" else num_rows // 10)
    if K < 2:
        hint = " (k_cap n_div_10 needs N >= 20; use k_cap: n)" if k_cap == "n_div_10" else ""
        raise DataError(
            f"tsds: K = {K} neighbours per target for N = {num_rows} rows; need K >= 2{hint}."
        )
    return K


def tsds_distribution(
    pool: ArrayLike,
    targets: ArrayLike,
    *,
    alpha: float = 0.5,
    C: float = 5.0,
    sigma: float = 0.75,
    max_K: int = 5000,
    kde_K: int = 1000,
    k_cap: str = "n",
    normalize: bool = True,
    index: IndexConfig | Mapping[str, Any] | None = None,
    seed: int = 0,
) -> NDArray[np.float64]:
    """TSDS ``p`` over the pool rows from pool and target embeddings (spec §2.9 steps 1-4).

    Pool rows holding NaN are never neighbours (``p = 0``); target rows holding NaN are dropped.

    Raises:
        DataError: empty target set, dimension mismatch, or ``K < 2``.
    """
    xb = _matrix(pool, "pool embeddings")
    xq = _matrix(targets, "target embeddings")
    _check_dims(xb, xq)
    xq = _valid_targets(xq)
    if normalize:
        finite = np.isfinite(xb).all(axis=1)
        xb = np.where(finite[:, None], l2_normalize(np.where(finite[:, None], xb, 0.0)), np.nan)
        xb = xb.astype(np.float32)
        xq = l2_normalize(xq)
    cfg = dataclasses.replace(_index_config(index), normalize=False)
    idx = build_index(xb, cfg, seed)
    K = min(tsds_neighbour_cap(max_K, xb.shape[0], k_cap), idx.ntotal)
    if K < 2:
        raise DataError(f"tsds: only {idx.ntotal} pool rows have valid embeddings; need >= 2.")
    sq, nbrs = idx.search(xq, K)
    dist = np.sqrt(np.maximum(sq.astype(np.float64), 0.0))
    cap = xb.shape[0] // 10 if k_cap == "n_div_10" else None
    rho = tsds_density(xb, nbrs, sigma, kde_K, index=cfg, seed=seed, kde_cap=cap)
    return tsds_probabilities(dist, nbrs, rho, alpha, C, xq.shape[0], num_samples=xb.shape[0])


def tsds_sample(
    p: ArrayLike,
    n: int,
    seed: int,
    sampling: str = "with_replacement",
    on_shortfall: str = "error",
    allowed: ArrayLike | None = None,
) -> NDArray[np.int64]:
    """Draw ``n`` pool rows from ``p`` (spec §2.9 step 5).

    ``with_replacement``: ``sample_with_replacement`` (ascending; the window sampler shuffles).
    ``without_replacement``: Gumbel-top-k; ``n > nnz(p)`` raises unless ``on_shortfall:
    fill_random``, which takes every row with ``p > 0`` and fills up with uniform draws from the
    allowed rows with ``p = 0`` (seed ``derive(seed, "fill")``). ``allowed`` masks rows out
    (``p`` is renormalised over the rest).
    """
    q = np.asarray(p, dtype=np.float64).copy()
    mask = None if allowed is None else np.asarray(allowed, dtype=bool)
    if mask is not None:
        q[~mask] = 0.0
    if not q.sum() > 0:
        raise DataError(
            "tsds: no candidate row has positive probability (the rows TSDS favours are all "
            "excluded or unscored); raise candidate_subsample or lower exclude_recent."
        )
    if sampling == "with_replacement":
        return sample_with_replacement(q, n, seed)
    nnz = int(np.count_nonzero(q))
    if n <= nnz:
        return sample_without_replacement(q, n, seed)
    if on_shortfall == "error":
        raise DataError(
            f"tsds: without_replacement needs n = {n} distinct rows but only {nnz} have p > 0; "
            "lower the window/budget, use `sampling: with_replacement`, or set "
            "`on_shortfall: fill_random`."
        )
    head = sample_without_replacement(q, nnz, seed)
    rest = np.ones(q.size, dtype=bool) if mask is None else mask.copy()
    rest[q > 0] = False
    pool = np.flatnonzero(rest)
    need = n - nnz
    if pool.size < need:
        raise DataError(f"tsds: fill_random needs {need} more rows but only {pool.size} remain.")
    fill = pool[sample_without_replacement(np.ones(pool.size), need, derive(seed, "fill"))]
    return np.concatenate([head, fill]).astype(np.int64)


def load_probabilities(path: str, num_samples: int) -> NDArray[np.float64]:
    """Load and check a precomputed TSDS ``p`` (``.npy``, length ``N``, finite, >= 0, Σ > 0).

    Raises:
        DataError: naming ``path`` when the file is missing or its content is unusable.
    """
    if not os.path.isfile(path):
        raise DataError(
            f"tsds: probs_path {path!r} does not exist; give the .npy vector written by the "
            "offline TSDS script (one probability per pool row), or null to compute it."
        )
    try:
        p = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"tsds: cannot read probs_path {path!r} as a .npy array: {exc}") from exc
    if p.ndim != 1 or p.shape[0] != num_samples:
        raise DataError(
            f"tsds: probs_path {path!r} holds shape {p.shape} but the pool has N = {num_samples} "
            "rows; it was made for another dataset."
        )
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or not p.sum() > 0:
        raise DataError(
            f"tsds: probs_path {path!r} must hold finite, non-negative probabilities with a "
            "positive sum."
        )
    return p / p.sum()


# --------------------------------------------------------------------------- shell


def _sha(p: NDArray[np.float64]) -> str:
    return hashlib.sha256(np.ascontiguousarray(p, dtype="<f8").tobytes()).hexdigest()


class TsdsSelector(ScoredSelector):
    """TSDS (spec §2.9) on the shared shell (§2.0).

    Signals (none with ``probs_path``, none once ``p`` is cached): ``embedding`` (the pool rows:
    all of them with ``recompute: never``, else the candidates) and ``target_embedding`` (split
    ``target``), both with the options of ``embedding``. Windows are drawn with
    ``derive(seed, "tsds", epoch, step)`` from ``p`` restricted to the update's candidates.
    With ``sampling: with_replacement`` (default) a window can repeat rows
    (``distinct`` is False).

    State: ``probs_path`` and its sha256 (checked on resume), or ``p`` itself as sparse
    ``(rows, values)`` when it has at most :data:`STATE_INLINE_MAX` non-zeros; a larger computed
    ``p`` is kept in memory only (its sha256 is saved) and recomputed on resume, which reproduces
    it only for unchanged embeddings (a warning says when it does not).
    """

    config_class = TsdsSelectorConfig
    name = "tsds"

    def __init__(
        self,
        config: TsdsSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self.config: TsdsSelectorConfig
        self.distinct = self.config.sampling == "without_replacement"
        self.probabilities: NDArray[np.float64] | None = None
        self._p_sha: str | None = None
        self._probs_path: str | None = None
        self._probs_sha: str | None = None

    def _cached(self) -> bool:
        if self.config.probs_path is not None:
            return True
        return self.probabilities is not None and self.config.recompute == "never"

    def _signals(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> list[SignalRequest]:
        if self._cached():
            return []
        never = self.config.recompute == "never"
        rows = None if never else self.rows_of(candidates, request.num_samples)
        opts = self.config.embedding.options()
        return [
            SignalRequest("embedding", "embedding", "train", rows, opts),
            SignalRequest("target_embedding", "embedding", "target", None, opts),
        ]

    def _load_file(self, num_samples: int) -> NDArray[np.float64]:
        assert self.config.probs_path is not None
        path = os.path.abspath(os.path.expanduser(self.config.probs_path))
        p = load_probabilities(path, num_samples)
        sha = file_sha256(path)
        if self._probs_sha is not None and sha != self._probs_sha:
            raise StateError(
                f"{self.what}: probs_path {path!r} changed since the checkpoint (sha256 "
                f"{sha[:12]} != saved {self._probs_sha[:12]}); restore the original file."
            )
        self._probs_path, self._probs_sha = path, sha
        return p

    def distribution(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """``p`` over the whole pool for ``request`` (cached, loaded, or computed)."""
        size = request.num_samples
        if self.config.probs_path is not None:
            if self.probabilities is None:
                self.probabilities = self._load_file(size)
            return self.probabilities
        if self._cached():
            assert self.probabilities is not None
            if self.probabilities.size != size:
                raise StateError(
                    f"{self.what}: the cached p has {self.probabilities.size} entries but the pool "
                    f"has N = {size} rows."
                )
            return self.probabilities
        never = self.config.recompute == "never"
        rows = np.arange(size, dtype=np.int64) if never else candidates
        pool = signal_rows(request, "embedding", len(rows), self.what)
        self.note_invalid_rows(rows, pool)  # never chosen, not even as a fill
        if "target_embedding" not in request.extras:
            signal_rows(request, "target_embedding", 0, self.what)  # raises: missing
        cfg = self.config
        local = tsds_distribution(
            pool,
            request.extras["target_embedding"],
            alpha=cfg.alpha,
            C=cfg.C,
            sigma=cfg.sigma,
            max_K=cfg.max_K,
            kde_K=cfg.kde_K,
            k_cap=cfg.effective_k_cap,
            normalize=cfg.normalize_embeddings,
            index=cfg.effective_index,
            seed=derive(self.seed, "tsds_index"),
        )
        p = np.zeros(size, dtype=np.float64)
        p[rows] = local
        sha = _sha(p)
        if never and self._p_sha not in (None, sha):
            log.warning(
                "%s: p recomputed on resume differs from the saved one (sha256 %s != %s; the "
                "embeddings changed), so the resumed run diverges from an uninterrupted one.",
                self.what,
                sha[:12],
                self._p_sha[:12],
            )
        self.probabilities, self._p_sha = p, sha
        return p

    def _choose(
        self, request: SelectRequest, candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        p = self.distribution(request, candidates)
        allowed = self.allowed_mask(request, candidates)
        self.last_scores = (candidates, p[candidates])
        return tsds_sample(
            p,
            n,
            derive(self.seed, "tsds", request.epoch, request.step),
            self.config.sampling,
            self.config.on_shortfall,
            allowed,
        )

    def _extra_state(self) -> dict[str, Any]:
        sparse = None
        p = self.probabilities
        if p is not None and self.config.probs_path is None and self.config.recompute == "never":
            nz = np.flatnonzero(p)
            if nz.size <= STATE_INLINE_MAX:
                sparse = {"size": int(p.size), "rows": nz.tolist(), "values": p[nz].tolist()}
        return {
            "probs_path": self._probs_path,
            "probs_sha256": self._probs_sha,
            "p_sha256": self._p_sha,
            "p": sparse,
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        try:
            self._probs_path = state.get("probs_path")
            self._probs_sha = state.get("probs_sha256")
            self._p_sha = state.get("p_sha256")
            sparse = state.get("p")
            if sparse is None:
                self.probabilities = None
            else:
                p = np.zeros(int(sparse["size"]), dtype=np.float64)
                p[np.asarray(sparse["rows"], dtype=np.int64)] = np.asarray(
                    sparse["values"], dtype=np.float64
                )
                self.probabilities = p
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise StateError(f"{self.what}: malformed saved state: {exc}") from exc
