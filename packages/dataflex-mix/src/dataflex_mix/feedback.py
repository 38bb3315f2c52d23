"""Build a :class:`~dataflex_core.MixFeedback` from per-sample losses and domain ids.

For training loops outside the LLaMA-Factory integration: after an optimizer step, hand the
step's per-sample token-mean losses, each sample's **own** domain id and (optionally) its
supervised-token count to :func:`feedback_from_samples`, and pass the result to ``mixer.step``.
Each sample's loss is credited to its own domain. (The predecessor credited a whole mixed batch
to the domain of its first sample.) In a distributed run, gather the per-sample arrays, or
all-reduce the per-domain sums, before building the feedback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from dataflex_core import DataError, MixFeedback
from numpy.typing import ArrayLike

__all__ = ["feedback_from_samples"]


def feedback_from_samples(
    step: int,
    losses: ArrayLike,
    domains: ArrayLike,
    num_domains: int,
    *,
    token_counts: ArrayLike | None = None,
    excess_loss_sums: ArrayLike | None = None,
    eval_loss: ArrayLike | None = None,
    extras: Mapping[str, Any] | None = None,
) -> MixFeedback:
    """Per-domain sums of one step's samples, in float64.

    Args:
        step: Completed optimizer steps ``s`` (after this step).
        losses: Per-sample token-mean losses ``ℓ_i`` (length ``n``).
        domains: Per-sample domain ids in ``[0, num_domains)`` (length ``n``).
        num_domains: ``K``.
        token_counts: Supervised tokens per sample; default 1 each, which makes the per-domain
            "token mean" the sample mean.
        excess_loss_sums: Per-sample ``Σ_t max(ℓ_t - ℓ_ref_t, 0)`` for DoReMi (optional).
        eval_loss: Per-domain eval losses (Aioli), passed through.
        extras: Passed through (e.g. ``{"gate_loads": ...}`` for dynamic_moe).

    Returns:
        A :class:`MixFeedback` with ``loss_sum[k] = Σ_{i∈k} ℓ_i·m_i``, ``token_count[k] =
        Σ_{i∈k} m_i``, ``sample_count``, ``sample_loss_sum``, the optional ``excess_loss_sum``,
        and the per-sample ``sample_losses`` / ``sample_domains``.

    Raises:
        DataError: on mismatched lengths or a domain id outside ``[0, num_domains)``.
    """
    loss = np.asarray(losses, dtype=np.float64).reshape(-1)
    dom = np.asarray(domains).reshape(-1)
    n = loss.size
    if dom.size != n:
        raise DataError(f"losses has {n} entries but domains has {dom.size}; give one per sample.")
    if n and (
        not np.issubdtype(dom.dtype, np.integer) or dom.min() < 0 or dom.max() >= num_domains
    ):
        raise DataError(
            f"domains must be integer ids in [0, {num_domains}), got {dom.tolist()!r:.120}."
        )
    dom = dom.astype(np.int64)
    tok = (
        np.ones(n)
        if token_counts is None
        else np.asarray(token_counts, dtype=np.float64).reshape(-1)
    )
    if tok.size != n:
        raise DataError(f"token_counts has {tok.size} entries but there are {n} samples.")

    def per_domain(weights: np.ndarray) -> tuple[float, ...]:
        return tuple(np.bincount(dom, weights=weights, minlength=num_domains).tolist())

    excess = None
    if excess_loss_sums is not None:
        e = np.asarray(excess_loss_sums, dtype=np.float64).reshape(-1)
        if e.size != n:
            raise DataError(f"excess_loss_sums has {e.size} entries but there are {n} samples.")
        excess = per_domain(e)
    return MixFeedback(
        step=int(step),
        loss_sum=per_domain(loss * tok),
        token_count=per_domain(tok),
        sample_count=per_domain(np.ones(n)),
        sample_loss_sum=per_domain(loss),
        excess_loss_sum=excess,
        sample_losses=tuple(loss.tolist()),
        sample_domains=tuple(int(d) for d in dom),
        eval_loss=None if eval_loss is None else tuple(np.asarray(eval_loss, float).tolist()),
        extras=dict(extras or {}),
    )
