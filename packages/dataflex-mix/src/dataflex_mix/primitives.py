"""Shared sampling primitives (algorithms spec §0.3), numpy only.

Spec §0.3 makes these semantics normative and has every package that samples carry its own
copy, so that no package imports a sibling. The copies in ``dataflex_mix.primitives`` and
``dataflex_select.primitives`` are identical; ``dataflex_testing.check_primitives`` checks each.
Keep them in sync: edit one, copy it over the other.

All randomness comes from ``Generator(PCG64(seed))`` with a seed derived by
:func:`dataflex_core.derive`; nothing here touches numpy's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from dataflex_core import ConfigError, DataError
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "generator",
    "top_k",
    "sample_without_replacement",
    "sample_with_replacement",
    "largest_remainder",
    "blend_indices",
    "normalize_proportions",
]


def generator(seed: int) -> np.random.Generator:
    """Return ``Generator(PCG64(seed))``, the only kind of generator DataFlex samples from.

    Args:
        seed: A non-negative integer, normally ``dataflex_core.derive(base, *labels)``.
    """
    return np.random.Generator(np.random.PCG64(int(seed)))


def _count(n: int, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"{what} must be a non-negative integer, got {n!r}.")
    return int(n)


def _probabilities(p: ArrayLike, what: str = "p") -> NDArray[np.float64]:
    """Validate a non-negative, finite, non-zero weight vector (not necessarily normalised)."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{what} must be a non-empty 1-D vector, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what} has non-finite entries: {arr.tolist()!r:.200}.")
    if np.any(arr < 0):
        raise DataError(f"{what} has negative entries: {arr.tolist()!r:.200}.")
    if not arr.sum() > 0:
        raise DataError(f"{what} sums to 0; at least one entry must be positive.")
    return arr


def top_k(score: ArrayLike, n: int) -> NDArray[np.int64]:
    """Indices of the ``n`` largest scores, largest first.

    The sort is stable and descending, so ties go to the lower index. Non-finite scores
    (NaN, +inf, -inf) are never chosen.

    Args:
        score: A 1-D array of scores.
        n: How many indices to return.

    Returns:
        An int64 array of ``n`` distinct indices.

    Raises:
        DataError: if ``n`` exceeds the number of finite scores.
    """
    n = _count(n)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    finite = np.flatnonzero(np.isfinite(s))
    if n > finite.size:
        raise DataError(
            f"top_k: asked for {n} indices but only {finite.size} of {s.size} scores are finite."
        )
    if n == 0:
        return np.empty(0, dtype=np.int64)
    vals = s[finite]
    if n < vals.size:
        # argpartition is O(N); pick the n-th largest value, then keep everything above it
        # plus the lowest-index entries equal to it, so ties still go to the lower index.
        kth = vals[np.argpartition(-vals, n - 1)[n - 1]]
        above = np.flatnonzero(vals > kth)
        equal = np.flatnonzero(vals == kth)[: n - above.size]
        cand = np.sort(np.concatenate([above, equal]))
    else:
        cand = np.arange(vals.size)
    order = cand[np.argsort(-vals[cand], kind="stable")]
    return finite[order].astype(np.int64, copy=False)


def sample_with_replacement(p: ArrayLike, n: int, seed: int) -> NDArray[np.int64]:
    """Draw ``c ~ Multinomial(n, p)`` and emit index ``i`` ``c_i`` times, ascending.

    Callers that need a random order shuffle afterwards (the window sampler does).

    Args:
        p: Non-negative weights (normalised here).
        n: Number of draws.
        seed: Seed of ``Generator(PCG64(seed))``.

    Returns:
        An int64 array of length ``n``, sorted ascending; indices with ``p_i = 0`` never appear.
    """
    n = _count(n)
    arr = _probabilities(p)
    support = np.flatnonzero(arr > 0)
    # Draw over the support only: numpy gives the last category the remainder, which must
    # never land on a zero-probability index through rounding.
    q = arr[support] / arr[support].sum()
    counts = generator(seed).multinomial(n, q)
    return np.repeat(support, counts).astype(np.int64, copy=False)


def sample_without_replacement(
    p: ArrayLike, n: int, seed: int, replacement: bool = False
) -> NDArray[np.int64]:
    """Gumbel-top-k: ``n`` distinct indices drawn with probabilities ``p``, without replacement.

    ``κ_i = log p_i + g_i`` with ``g_i ~ Gumbel(0, 1)`` from ``Generator(PCG64(seed))``; the ``n``
    largest ``κ`` are returned in draw order. This has the distribution of ``n`` sequential draws
    without replacement. Indices with ``p_i = 0`` have ``κ_i = -inf`` and are never chosen.

    Args:
        p: Non-negative weights (need not sum to 1).
        n: Number of indices.
        seed: Seed of ``Generator(PCG64(seed))``.
        replacement: Allow ``n > nnz(p)``: then draw with replacement instead
            (:func:`sample_with_replacement`). Without it such a request raises.

    Returns:
        An int64 array of ``n`` indices.

    Raises:
        DataError: if ``n > nnz(p)`` and ``replacement`` is False.
    """
    n = _count(n)
    arr = _probabilities(p)
    nnz = int(np.count_nonzero(arr))
    if n > nnz:
        if replacement:
            return sample_with_replacement(arr, n, seed)
        raise DataError(
            f"cannot draw {n} distinct indices from {nnz} with non-zero probability; lower n, or "
            "allow replacement (e.g. `replacement: true`)."
        )
    gumbel = generator(seed).gumbel(size=arr.size)
    with np.errstate(divide="ignore"):
        kappa = np.log(arr) + gumbel
    return top_k(kappa, n)


def largest_remainder(p: ArrayLike, n: int) -> NDArray[np.int64]:
    """Split ``n`` units over ``p`` by the largest-remainder (Hamilton) rule.

    ``c_k = floor(n·p_k)``; the ``n - Σc`` leftover units go, one each, to the largest fractional
    parts ``n·p_k - c_k``, ties to the lower ``k``. Entries with ``p_k = 0`` get nothing.
    Example: ``p = [0.5, 0.25, 0.25]``, ``n = 10`` gives ``[5, 3, 2]``.

    Args:
        p: Non-negative weights (normalised here).
        n: Units to split.

    Returns:
        An int64 array with the same length as ``p`` that sums to ``n``.
    """
    n = _count(n)
    arr = _probabilities(p)
    raw = n * (arr / arr.sum())
    counts = np.floor(raw).astype(np.int64)
    frac = raw - counts
    frac[arr == 0] = -1.0  # never top up a zero-probability entry through rounding
    left = n - int(counts.sum())
    if left > 0:
        counts[np.argsort(-frac, kind="stable")[:left]] += 1
    elif left < 0:  # only reachable through float rounding; take from the smallest remainders
        counts[np.argsort(frac, kind="stable")[:-left]] -= 1
    return counts


def blend_indices(weights: ArrayLike, n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Deterministic Megatron-style blending (``build_blending_indices``, arXiv 1909.08053).

    For sample ``s = 0, 1, ...`` with ``s' = max(s, 1)``: choose
    ``k* = argmax_k (w_k·s' - c_k)`` (ties to the lowest ``k``), emit ``(k*, c_{k*})`` and
    increment ``c_{k*}``. Every prefix tracks ``w`` with bounded error. Domains with weight 0
    are never chosen (Megatron would pick one on an exact tie at error 0).
    Example: ``w = [0.75, 0.25]``, ``n = 4`` gives domains ``[0, 1, 0, 0]`` and within-domain
    indices ``[0, 0, 1, 2]``.

    Args:
        weights: Non-negative domain weights (normalised here).
        n: Number of samples.

    Returns:
        ``(domains, within)``: int64 arrays of length ``n``.
    """
    n = _count(n)
    arr = _probabilities(weights, "weights")
    w: list[float] = (arr / arr.sum()).tolist()
    live = [k for k, wk in enumerate(w) if wk > 0]
    counts = [0] * len(w)
    domains = np.empty(n, dtype=np.int64)
    within = np.empty(n, dtype=np.int64)
    # A plain Python loop: K is small, and numpy's per-call overhead would dominate.
    for s in range(n):
        sp = float(max(s, 1))
        best = live[0]
        best_err = w[best] * sp - counts[best]
        for k in live[1:]:
            err = w[k] * sp - counts[k]
            if err > best_err:
                best, best_err = k, err
        domains[s] = best
        within[s] = counts[best]
        counts[best] += 1
    return domains, within


def normalize_proportions(
    p: Sequence[float] | ArrayLike, K: int, *, key: str = "proportions"
) -> NDArray[np.float64]:
    """Validate a proportion vector from a config and normalise it onto the simplex.

    Args:
        p: The configured proportions (any non-negative scale).
        K: The number of domains it must cover.
        key: The config key, for messages.

    Returns:
        A float64 array of length ``K`` that sums to 1.

    Raises:
        ConfigError: naming ``key``, the value and the fix, when ``p`` has the wrong length, a
            non-finite or negative entry, or sums to 0.
    """
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a list of {K} non-negative numbers, got {p!r}.") from None
    shown = arr.tolist() if arr.ndim == 1 else p
    if arr.ndim != 1 or arr.size != K:
        raise ConfigError(
            f"{key} has {arr.size if arr.ndim == 1 else 'a non-list'} entries {shown!r} but there "
            f"are {K} domains; give one non-negative number per domain, in config order."
        )
    if not all(math.isfinite(x) for x in shown):
        raise ConfigError(f"{key} = {shown!r} has a non-finite entry; use finite numbers >= 0.")
    if np.any(arr < 0):
        raise ConfigError(f"{key} = {shown!r} has a negative entry; every entry must be >= 0.")
    total = float(arr.sum())
    if not total > 0:
        raise ConfigError(
            f"{key} = {shown!r} sums to 0; give at least one domain a positive proportion."
        )
    return arr / total
