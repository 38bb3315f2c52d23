"""``cluster_less``: cluster-accelerated LESS (algorithms spec §2.6; the predecessor's method).

LESS needs a projected gradient feature for every pool row. ``cluster_less`` clusters the pool
once by an embedding, computes LESS features for a few **representatives** per cluster only, and
gives every member its cluster's score:

1. clusters: ``k = num_clusters`` or ``⌈N / cluster_size⌉`` over the pool embeddings, by
   ``clustering_method`` (all seeded with ``derive(seed, "cluster")``, ``seed`` = the run seed):

   * ``kmeans``: Lloyd with k-means++ initialisation, at most ``clustering_max_iter`` rounds;
     an empty cluster is reseeded with the point farthest from its centroid;
   * ``spherical_kmeans``: the same on unit vectors, centroids renormalised (cosine);
   * ``farthest_first``: greedy k-center (Gonzalez), then nearest-center assignment;
   * ``random_projection_lsh``: ``bits = lsh_num_bits`` or ``min(⌈log₂ k⌉, 30)`` Gaussian
     hyperplanes, cluster = sign code mod ``k``;
   * ``random_partition``: a seeded permutation dealt round-robin into ``k`` clusters.

   Every method reports centroids as member means (spherical: normalised) and each member's
   Euclidean distance to its centroid. Rows whose embedding is not finite join no cluster and
   are never selected.
2. representatives: ``samples_per_cluster`` members per cluster, by ``representative_strategy``:
   ``random`` (``derive(seed, "reps", step)``), ``nearest`` / ``farthest`` (to the centroid, ties
   to the lower index), or ``mixed`` (alternately nearest and farthest); a smaller cluster gives
   all its members;
3. cluster feature ``φ_C = normalise(mean_{r∈reps(C)} φ̂_r)`` per checkpoint (NaN
   representative features are left out), scored against the target exactly as LESS
   (:func:`~dataflex_select.less.less_influence`);
4. members inherit ``Inf(C)``; ``top_k`` over members, equal scores ordered by ascending
   distance to the centroid, then by index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

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

from dataflex_select.base import signal_rows
from dataflex_select.less import (
    LessSelector,
    LessSelectorConfig,
    _array_hash,
    _as_2d,
    normalize_rows,
)
from dataflex_select.primitives import generator

__all__ = [
    "ClusterLessSelectorConfig",
    "ClusterLessSelector",
    "Clustering",
    "CLUSTERING_METHODS",
    "REPRESENTATIVE_STRATEGIES",
    "POOL_EMBEDDING",
    "cluster_embeddings",
    "representatives",
    "cluster_features",
    "order_members",
]

CLUSTERING_METHODS: tuple[str, ...] = (
    "kmeans",
    "spherical_kmeans",
    "farthest_first",
    "random_projection_lsh",
    "random_partition",
)
REPRESENTATIVE_STRATEGIES: tuple[str, ...] = ("random", "nearest", "farthest", "mixed")
#: Name of the pool embedding signal.
POOL_EMBEDDING = "pool_embedding"


# --------------------------------------------------------------------------- clustering


@dataclass
class Clustering:
    """A clustering of the pool.

    Attributes:
        assignment: ``[N]`` int64 cluster id, ``-1`` for rows with a non-finite embedding.
        distances: ``[N]`` float64 Euclidean distance to the cluster's centroid (NaN for ``-1``).
        num_clusters: ``k`` (some clusters may be empty, e.g. under LSH).
        embedding_sha256: Content hash of the embeddings it was computed from.
    """

    assignment: NDArray[np.int64]
    distances: NDArray[np.float64]
    num_clusters: int
    embedding_sha256: str = ""

    def members(self, cluster: int) -> NDArray[np.int64]:
        """Rows of ``cluster``, ascending."""
        return np.flatnonzero(self.assignment == cluster)


def _sq_dist_chunks(
    x: NDArray[np.float64], centers: NDArray[np.float64], chunk: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Nearest center (ties to the lower id) and squared distance, in row chunks (at most
    ``chunk`` rows, and at most about 2**24 distances, 128 MiB, at a time)."""
    n = x.shape[0]
    chunk = max(1, min(chunk, 2**24 // max(1, centers.shape[0])))
    assign = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float64)
    c_sq = np.einsum("ij,ij->i", centers, centers)
    for s in range(0, n, chunk):
        xb = x[s : s + chunk]
        d = np.einsum("ij,ij->i", xb, xb)[:, None] - 2.0 * (xb @ centers.T) + c_sq[None, :]
        a = np.argmin(d, axis=1)
        assign[s : s + chunk] = a
        best[s : s + chunk] = np.maximum(d[np.arange(len(a)), a], 0.0)
    return assign, best


def _sq_dist_to(
    x: NDArray[np.float64], c: NDArray[np.float64], x_sq: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``‖x_i − c‖²`` for every row (a matrix-vector product, not an ``N×d`` difference)."""
    return np.maximum(x_sq - 2.0 * (x @ c) + float(c @ c), 0.0)


def _means(
    x: NDArray[np.float64], assign: NDArray[np.int64], k: int, old: NDArray[np.float64] | None
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    counts = np.bincount(assign, minlength=k)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    order = np.argsort(assign, kind="stable")
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
    sums[present] = np.add.reduceat(x[order], starts, axis=0)  # much faster than np.add.at
    centers = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    if old is not None:
        centers = np.where(counts[:, None] > 0, centers, old)
    return centers, counts


def _kmeans_pp(x: NDArray[np.float64], k: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """k-means++ seeding (D² sampling); distinct points."""
    n = x.shape[0]
    x_sq = np.einsum("ij,ij->i", x, x)
    chosen = [int(rng.integers(n))]
    d2 = _sq_dist_to(x, x[chosen[0]], x_sq)
    taken = np.zeros(n, dtype=bool)
    taken[chosen[0]] = True
    for _ in range(1, k):
        weights = np.where(taken, 0.0, d2)
        total = float(weights.sum())
        if total > 0:
            r = rng.random() * total
            idx = int(np.searchsorted(np.cumsum(weights), r, side="right"))
            idx = min(idx, n - 1)
            if taken[idx]:  # only through rounding at the end of the cumsum
                idx = int(np.flatnonzero(~taken & (weights > 0))[-1])
        else:  # every remaining point duplicates a center: any untaken point
            free = np.flatnonzero(~taken)
            idx = int(free[rng.integers(len(free))])
        chosen.append(idx)
        taken[idx] = True
        d2 = np.minimum(d2, _sq_dist_to(x, x[idx], x_sq))
    return np.asarray(chosen, dtype=np.int64)


def _lloyd(
    x: NDArray[np.float64],
    k: int,
    rng: np.random.Generator,
    max_iter: int,
    chunk: int,
    spherical: bool,
) -> NDArray[np.float64]:
    centers = x[_kmeans_pp(x, k, rng)].copy()
    prev: NDArray[np.int64] | None = None
    for _ in range(max_iter):
        assign, d2 = _sq_dist_chunks(x, centers, chunk)
        if prev is not None and np.array_equal(assign, prev):
            break
        prev = assign
        new, counts = _means(x, assign, k, centers)
        if spherical:
            new = normalize_rows(new)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # reseed each empty cluster with the point farthest from its centroid (ties to the
            # lower index), a different point for each
            order = np.lexsort((np.arange(len(d2)), -d2))
            for c, idx in zip(empty, order[: empty.size], strict=False):
                new[c] = x[idx]
        centers = new
    return centers


def _farthest_first(
    x: NDArray[np.float64], k: int, rng: np.random.Generator, chunk: int
) -> NDArray[np.float64]:
    x_sq = np.einsum("ij,ij->i", x, x)
    first = int(rng.integers(x.shape[0]))
    chosen = [first]
    d2 = _sq_dist_to(x, x[first], x_sq)
    for _ in range(1, k):
        idx = int(np.argmax(d2))  # ties to the lower index
        chosen.append(idx)
        d2 = np.minimum(d2, _sq_dist_to(x, x[idx], x_sq))
    return x[np.asarray(chosen)].copy()


def cluster_embeddings(
    embeddings: ArrayLike,
    num_clusters: int,
    method: str = "kmeans",
    seed: int = 0,
    *,
    max_iter: int = 20,
    chunk_size: int = 4096,
    lsh_num_bits: int | None = None,
) -> Clustering:
    """Cluster pool embeddings (spec §2.6 step 1), numpy only.

    Args:
        embeddings: ``[N, d]`` embeddings (rows with a non-finite entry join no cluster).
        num_clusters: ``k``; capped at the number of valid rows.
        method: One of :data:`CLUSTERING_METHODS`.
        seed: Base seed; the generator is seeded with ``derive(seed, "cluster")``.
        max_iter: Lloyd rounds (``kmeans``, ``spherical_kmeans``).
        chunk_size: Rows per distance computation.
        lsh_num_bits: Hyperplanes of ``random_projection_lsh`` (null: ``min(⌈log₂ k⌉, 30)``).

    Returns:
        A :class:`Clustering`.
    """
    if method not in CLUSTERING_METHODS:
        raise ConfigError(
            f"clustering_method must be one of {', '.join(CLUSTERING_METHODS)}, got {method!r}."
        )
    if num_clusters < 1 or max_iter < 1 or chunk_size < 1:
        raise ConfigError("num_clusters, max_iter and chunk_size must be >= 1.")
    raw = _as_2d(embeddings, "pool embeddings")
    digest = _array_hash(np.ascontiguousarray(raw, dtype=np.float32))
    x_all = np.asarray(raw, dtype=np.float64)
    n_all = x_all.shape[0]
    valid = np.all(np.isfinite(x_all), axis=1)
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        raise DataError(
            f"cluster_less: none of the {n_all} pool embeddings is finite; check the embedding "
            "model and that the pool rows have text."
        )
    x = x_all[rows]
    if method == "spherical_kmeans":
        x = normalize_rows(x)
    n = x.shape[0]
    k = min(int(num_clusters), n)
    rng = generator(derive(seed, "cluster"))
    if method in ("kmeans", "spherical_kmeans"):
        centers = _lloyd(x, k, rng, max_iter, chunk_size, spherical=method == "spherical_kmeans")
        assign, _ = _sq_dist_chunks(x, centers, chunk_size)
    elif method == "farthest_first":
        centers = _farthest_first(x, k, rng, chunk_size)
        assign, _ = _sq_dist_chunks(x, centers, chunk_size)
    elif method == "random_projection_lsh":
        bits = (
            lsh_num_bits if lsh_num_bits is not None else min(max(1, math.ceil(math.log2(k))), 30)
        )
        planes = rng.standard_normal((x.shape[1], bits))
        codes = np.zeros(n, dtype=np.int64)
        for s in range(0, n, chunk_size):
            signs = (x[s : s + chunk_size] @ planes) > 0
            codes[s : s + chunk_size] = signs.astype(np.int64) @ (
                np.int64(1) << np.arange(bits, dtype=np.int64)
            )
        assign = codes % k
    else:  # random_partition
        perm = rng.permutation(n)
        assign = np.empty(n, dtype=np.int64)
        assign[perm] = np.arange(n, dtype=np.int64) % k
    centroids, _ = _means(x, assign, k, None)
    if method == "spherical_kmeans":
        centroids = normalize_rows(centroids)
    dist = np.sqrt(np.einsum("ij,ij->i", x - centroids[assign], x - centroids[assign]))
    full_assign = np.full(n_all, -1, dtype=np.int64)
    full_assign[rows] = assign
    full_dist = np.full(n_all, np.nan)
    full_dist[rows] = dist
    return Clustering(full_assign, full_dist, k, digest)


def representatives(
    clustering: Clustering,
    per_cluster: int,
    strategy: str = "random",
    seed: int | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Representatives of every cluster (spec §2.6 step 2).

    Args:
        clustering: The pool clustering.
        per_cluster: ``samples_per_cluster``; a smaller cluster gives all its members.
        strategy: One of :data:`REPRESENTATIVE_STRATEGIES`.
        seed: The generator seed of ``random`` (``derive(seed, "reps", step)``).

    Returns:
        ``(rows, clusters)``: the representative rows, grouped by ascending cluster id, and the
        cluster of each.
    """
    if strategy not in REPRESENTATIVE_STRATEGIES:
        raise ConfigError(
            f"representative_strategy must be one of {', '.join(REPRESENTATIVE_STRATEGIES)}, "
            f"got {strategy!r}."
        )
    if per_cluster < 1:
        raise ConfigError(f"samples_per_cluster must be >= 1, got {per_cluster}.")
    assign, dist = clustering.assignment, clustering.distances
    idx = np.flatnonzero(assign >= 0)
    if strategy == "random":
        if seed is None:
            raise ConfigError("representative_strategy 'random' needs a seed.")
        key = generator(seed).random(len(assign))[idx]
    elif strategy == "farthest":
        key = -dist[idx]
    else:
        key = dist[idx]
    # by cluster, then key, then index
    order = idx[np.lexsort((idx, key, assign[idx]))]
    groups = assign[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(order)]
    rows: list[NDArray[np.int64]] = []
    for s, e in zip(starts, ends, strict=True):
        members = order[s:e]  # ascending distance for nearest/mixed
        if strategy == "mixed":
            front, back = 0, len(members) - 1
            picked = []
            while len(picked) < min(per_cluster, len(members)):
                if len(picked) % 2 == 0:
                    picked.append(members[front])
                    front += 1
                else:
                    picked.append(members[back])
                    back -= 1
            rows.append(np.asarray(picked, dtype=np.int64))
        else:
            rows.append(members[:per_cluster])
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    out = np.concatenate(rows).astype(np.int64)
    return out, assign[out]


def cluster_features(
    rep_features: ArrayLike, rep_clusters: ArrayLike, num_clusters: int
) -> NDArray[np.float64]:
    """``φ_C = normalise(mean_{r∈reps(C)} φ̂_r)``: ``[k, d]``; NaN rows for clusters whose
    representatives all have non-finite features (or that have none)."""
    feats = np.asarray(_as_2d(rep_features, "representative features"), dtype=np.float64)
    clusters = np.asarray(rep_clusters, dtype=np.int64).reshape(-1)
    if clusters.shape[0] != feats.shape[0]:
        raise DataError(
            f"{feats.shape[0]} representative features for {clusters.shape[0]} representatives."
        )
    ok = np.all(np.isfinite(feats), axis=1)
    unit = normalize_rows(np.where(ok[:, None], feats, 0.0))
    sums = np.zeros((num_clusters, feats.shape[1]), dtype=np.float64)
    np.add.at(sums, clusters[ok], unit[ok])
    counts = np.bincount(clusters[ok], minlength=num_clusters)
    out = normalize_rows(sums / np.maximum(counts, 1)[:, None])
    out[counts == 0] = np.nan
    return out


def order_members(
    scores: ArrayLike, distances: ArrayLike, n: int, index: ArrayLike | None = None
) -> NDArray[np.int64]:
    """Positions of the ``n`` best members: descending score, then ascending distance to the
    centroid, then ascending index. Non-finite scores are never chosen."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    ix = np.arange(len(s)) if index is None else np.asarray(index).reshape(-1)
    finite = np.flatnonzero(np.isfinite(s))
    if n > finite.size:
        raise DataError(
            f"cluster_less: asked for {n} rows but only {finite.size} of {len(s)} candidates have "
            "a finite score (rows without a finite embedding, or clusters whose representatives "
            "have no finite feature, are never chosen)."
        )
    dd = np.where(np.isfinite(d[finite]), d[finite], np.inf)
    order = np.lexsort((ix[finite], dd, -s[finite]))
    return finite[order[:n]].astype(np.int64)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ClusterLessSelectorConfig(LessSelectorConfig):
    """Config of ``cluster_less``: every LESS key (same defaults) plus the clustering keys.

    Attributes:
        num_clusters: ``k``; null means ``⌈N / cluster_size⌉``.
        cluster_size: Target cluster size when ``num_clusters`` is null.
        samples_per_cluster: Representatives per cluster (predecessor code: 3).
        clustering_method: One of :data:`CLUSTERING_METHODS`.
        clustering_max_iter: Lloyd rounds (predecessor YAML: 10).
        clustering_batch_size: Batch size of the embedding pass.
        representative_strategy: ``random``, ``nearest``, ``farthest`` or ``mixed``.
        embedding_model_name_or_path: Embedding model; null embeds with the model being trained.
        embedding_model_dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        embedding_layer: Hidden layer to pool (-1: the last).
        embedding_pooling: ``mean``, ``last_token`` or ``position_weighted`` (§1.2).
        lsh_num_bits: Hyperplanes of ``random_projection_lsh``; null means ``min(⌈log₂ k⌉, 30)``.
        assignment_chunk_size: Rows per distance computation while clustering.
    """

    num_clusters: int | None = None
    cluster_size: int = 64
    samples_per_cluster: int = 4
    clustering_method: Literal[
        "kmeans", "spherical_kmeans", "farthest_first", "random_projection_lsh", "random_partition"
    ] = "kmeans"
    clustering_max_iter: int = 20
    clustering_batch_size: int = 8
    representative_strategy: Literal["random", "nearest", "farthest", "mixed"] = "random"
    embedding_model_name_or_path: str | None = None
    embedding_model_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    embedding_layer: int = -1
    embedding_pooling: Literal["mean", "last_token", "position_weighted"] = "mean"
    lsh_num_bits: int | None = None
    assignment_chunk_size: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_clusters is not None and self.num_clusters < 1:
            raise ConfigError(f"num_clusters must be >= 1 or null, got {self.num_clusters}.")
        for key in (
            "cluster_size",
            "samples_per_cluster",
            "clustering_max_iter",
            "clustering_batch_size",
            "assignment_chunk_size",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}.")
        if self.lsh_num_bits is not None and not 1 <= self.lsh_num_bits <= 62:
            raise ConfigError(f"lsh_num_bits must be in [1, 62] or null, got {self.lsh_num_bits}.")

    def clusters_for(self, num_samples: int) -> int:
        """``k`` for a pool of ``num_samples`` rows."""
        if self.num_clusters is not None:
            return self.num_clusters
        return max(1, math.ceil(num_samples / self.cluster_size))


# --------------------------------------------------------------------------- selector


class ClusterLessSelector(LessSelector):
    """Cluster-accelerated LESS (spec §2.6).

    **Signals, in two rounds** on the first scored update: while the clustering is not known,
    :meth:`signals` asks only for ``pool_embedding`` (``embedding``, the whole pool; options
    ``model``, ``layer``, ``pooling``, ``dtype``, ``batch_size``). Called again with that
    embedding in ``request.extras``, it clusters the pool (once per run, kept in memory) and asks
    for the LESS signals with ``train_grad@c`` restricted to the representatives (``indices`` =
    their rows). The integration therefore calls ``signals(request)`` until every returned
    signal is in ``request.extras`` (single-round selectors are unaffected by that loop).

    **Seeds.** As in LESS, ``seed`` is the projector seed; clustering (``derive(run_seed,
    "cluster")``) and random representatives (``derive(run_seed, "reps", step)``) use the run
    seed.

    **State.** The assignment and centroid distances (content-addressed ``.npy`` files under
    ``<cache_dir>/state/``, or inline without a folder), ``k``, the method and the embeddings'
    sha256, plus the LESS state. A resume restores the same clusters without re-embedding.
    """

    config_class: ClassVar[type] = ClusterLessSelectorConfig
    name: ClassVar[str] = "cluster_less"

    def __init__(
        self,
        config: ClusterLessSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self.config: ClusterLessSelectorConfig
        self.clustering: Clustering | None = None
        self._reps: tuple[int, NDArray[np.int64], NDArray[np.int64]] | None = None
        self._clustering_entries: tuple[dict[str, Any], dict[str, Any]] | None = None

    # ------------------------------------------------------------------ clustering

    def embedding_options(self) -> dict[str, Any]:
        """Options of the ``pool_embedding`` signal."""
        c = self.config
        return {
            "model": c.embedding_model_name_or_path,
            "layer": c.embedding_layer,
            "pooling": c.embedding_pooling,
            "dtype": c.embedding_model_dtype,
            "batch_size": c.clustering_batch_size,
            "normalize": True,
            "cache_dir": self.cache_dir,
        }

    def fit_clusters(self, embeddings: ArrayLike, num_samples: int | None = None) -> Clustering:
        """Cluster the pool embeddings (rows in pool order) and keep the result."""
        emb = _as_2d(embeddings, f"{self.what}: signal {POOL_EMBEDDING!r}")
        n = emb.shape[0]
        if num_samples is not None and n != num_samples:
            raise DataError(
                f"{self.what}: {POOL_EMBEDDING!r} has {n} rows but the pool has {num_samples}; "
                "the embedding must cover every pool row, in order."
            )
        c = self.config
        self.clustering = cluster_embeddings(
            emb,
            c.clusters_for(n),
            c.clustering_method,
            self.seed,
            max_iter=c.clustering_max_iter,
            chunk_size=c.assignment_chunk_size,
            lsh_num_bits=c.lsh_num_bits,
        )
        self._reps = None
        self._clustering_entries = None
        return self.clustering

    def _ensure_clusters(self, request: SelectRequest) -> Clustering:
        if self.clustering is None:
            if POOL_EMBEDDING not in request.extras:
                raise DataError(
                    f"{self.what}: the signal {POOL_EMBEDDING!r} is missing from request.extras; "
                    "call selector.signals(request) again after computing it (cluster_less asks "
                    "for the embedding first, then for the representatives' features)."
                )
            self.fit_clusters(request.extras[POOL_EMBEDDING], request.num_samples)
        assert self.clustering is not None
        if len(self.clustering.assignment) != request.num_samples:
            raise DataError(
                f"{self.what}: the clustering covers {len(self.clustering.assignment)} rows but "
                f"the pool has {request.num_samples}; the pool changed since it was clustered."
            )
        return self.clustering

    def representatives_for(self, step: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Representative rows (and their clusters) of the update at ``step``."""
        if self._reps is None or self._reps[0] != step:
            assert self.clustering is not None
            c = self.config
            seed = (
                derive(self.seed, "reps", step) if c.representative_strategy == "random" else None
            )
            rows, clusters = representatives(
                self.clustering, c.samples_per_cluster, c.representative_strategy, seed
            )
            self._reps = (step, rows, clusters)
        return self._reps[1], self._reps[2]

    # ------------------------------------------------------------------ LESS hooks

    def _signals(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> list[SignalRequest]:
        embed = SignalRequest(
            name=POOL_EMBEDDING, kind="embedding", split="train", options=self.embedding_options()
        )
        if self.clustering is None and POOL_EMBEDDING not in request.extras:
            return [embed]
        # the embedding, when it was asked for, is already computed: repeating it lets the
        # caller's loop see that this round is complete
        first = [embed] if self.clustering is None else []
        self._ensure_clusters(request)  # clusters once; checks the pool size afterwards
        return first + super()._signals(request, candidates)

    def _train_indices(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> tuple[int, ...] | None:
        rows, _ = self.representatives_for(request.step)
        return tuple(int(i) for i in rows)

    def _unit_features(
        self, request: SelectRequest, candidates: NDArray[np.int64], label: str
    ) -> NDArray[Any]:
        clustering = self._ensure_clusters(request)
        rows, clusters = self.representatives_for(request.step)
        name = f"train_grad@{label}"
        feats = signal_rows(request, name, len(rows), self.what)
        return cluster_features(feats, clusters, clustering.num_clusters)

    def _candidate_scores(
        self, unit_scores: NDArray[np.float64], candidates: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        assert self.clustering is not None
        assign = self.clustering.assignment[candidates]
        return np.where(assign >= 0, unit_scores[np.maximum(assign, 0)], np.nan)

    def _order(
        self, scores: NDArray[np.float64], candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        assert self.clustering is not None
        return order_members(scores, self.clustering.distances[candidates], n, candidates)

    # ------------------------------------------------------------------ state

    def _extra_state(self) -> dict[str, Any]:
        state = super()._extra_state()
        cl = self.clustering
        if cl is None:
            state["clustering"] = None
            return state
        if self._clustering_entries is None:
            self._clustering_entries = (
                self._artefacts.put(cl.assignment),
                self._artefacts.put(cl.distances),
            )
        state["clustering"] = {
            "method": self.config.clustering_method,
            "num_clusters": cl.num_clusters,
            "embedding_sha256": cl.embedding_sha256,
            "assignment": self._clustering_entries[0],
            "distances": self._clustering_entries[1],
        }
        return state

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        super()._load_extra_state(state)
        saved = state.get("clustering")
        self._reps = None
        self._clustering_entries = None
        if saved is None:
            self.clustering = None
            return
        if saved.get("method") != self.config.clustering_method:
            raise StateError(
                f"{self.what}: the saved clustering used method {saved.get('method')!r} but this "
                f"config has {self.config.clustering_method!r}; resume with the same method."
            )
        try:
            self.clustering = Clustering(
                assignment=self._artefacts.get(saved["assignment"]).astype(np.int64),
                distances=self._artefacts.get(saved["distances"]).astype(np.float64),
                num_clusters=int(saved["num_clusters"]),
                embedding_sha256=str(saved["embedding_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"{self.what}: malformed clustering in the saved state: {exc}"
            ) from exc
