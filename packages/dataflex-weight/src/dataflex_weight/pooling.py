"""Pooling of hidden states into one embedding per sample (spec §1.2), numpy and torch.

With ``M_{i,t}`` the attention mask and ``r_{i,t}`` the 1-based rank of token ``t`` among sample
``i``'s unmasked tokens (so the padding side does not matter):

* ``position_weighted`` (ADAPT): ``e_i = sum_t M r h_t / sum_t M r``;
* ``mean``: ``e_i = sum_t M h_t / sum_t M``;
* ``last_token``: ``h`` at the last unmasked position.

The result is ℓ2-normalised, ``x / max(||x||, eps)``, unless ``normalize=False``. A sample with
no unmasked token pools to the zero vector. numpy inputs compute in float64; tensors stay on
their device and compute in float32 (float64 for float64 hidden states), without a host sync.

``dataflex-ops`` computes embeddings for the integration; this copy lets a standalone user of
``dataflex-weight`` (and its tests) pool without depending on ``dataflex-ops``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from dataflex_core import ConfigError, DataError

from dataflex_weight.common import is_torch_tensor

__all__ = ["PoolingMethod", "POOLING_METHODS", "pool_embeddings", "position_weighted_pool"]

PoolingMethod = Literal["position_weighted", "mean", "last_token"]
POOLING_METHODS: tuple[str, ...] = ("position_weighted", "mean", "last_token")


def _check(hidden_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> None:
    if len(hidden_shape) not in (2, 3) or tuple(mask_shape) != tuple(hidden_shape[:-1]):
        raise DataError(
            f"pooling expects hidden states [B, T, H] with an attention mask [B, T] (or [T, H] "
            f"with [T]), got {tuple(hidden_shape)} and {tuple(mask_shape)}."
        )


def pool_embeddings(
    hidden: Any,
    attention_mask: Any,
    method: str = "position_weighted",
    *,
    normalize: bool = True,
    eps: float = 1e-12,
) -> Any:
    """Pool ``hidden`` ``[B, T, H]`` (or ``[T, H]``) over the unmasked tokens.

    Args:
        hidden: Hidden states, a numpy array or a torch tensor.
        attention_mask: ``[B, T]`` (or ``[T]``), nonzero where the token is real.
        method: ``position_weighted``, ``mean`` or ``last_token``.
        normalize: Return ``x / max(||x||_2, eps)``.
        eps: Norm floor.

    Returns:
        ``[B, H]`` (or ``[H]``) embeddings, numpy float64 or a tensor on ``hidden``'s device.

    Raises:
        ConfigError: on an unknown ``method``.
        DataError: on mismatched shapes.
    """
    if method not in POOLING_METHODS:
        raise ConfigError(f"unknown pooling {method!r}; valid: {', '.join(POOLING_METHODS)}.")
    if is_torch_tensor(hidden):
        import torch

        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        mask = torch.as_tensor(attention_mask, device=hidden.device)
        _check(tuple(hidden.shape), tuple(mask.shape))
        m = (mask != 0).to(dtype)
        rank = torch.cumsum(m, dim=-1) * m
        if method == "position_weighted":
            weights = rank
        elif method == "mean":
            weights = m
        else:
            weights = (rank == rank.amax(dim=-1, keepdim=True)).to(dtype) * m
        total = weights.sum(dim=-1, keepdim=True)
        weights = weights / torch.where(total > 0, total, torch.ones_like(total))
        # einsum "...t,...th->...h": a float copy of hidden, never the product [B, T, H]
        out = torch.matmul(weights.unsqueeze(-2), hidden.detach().to(dtype)).squeeze(-2)
        if normalize:
            out = out / torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_min(eps)
        return out
    h = np.asarray(hidden, dtype=np.float64)
    mask = np.asarray(attention_mask)
    _check(h.shape, mask.shape)
    m = (mask != 0).astype(np.float64)
    rank = np.cumsum(m, axis=-1) * m
    if method == "position_weighted":
        weights = rank
    elif method == "mean":
        weights = m
    else:
        weights = (rank == rank.max(axis=-1, keepdims=True)).astype(np.float64) * m
    total = weights.sum(axis=-1, keepdims=True)
    weights = weights / np.where(total > 0, total, 1.0)
    out = np.einsum("...t,...th->...h", weights, h)
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), eps)
    return out


def position_weighted_pool(
    hidden: Any, attention_mask: Any, *, normalize: bool = True, eps: float = 1e-12
) -> Any:
    """ADAPT's pooling (spec §1.2): ``e_i = sum_t M r h_t / sum_t M r``, then normalised.

    Example:
        >>> position_weighted_pool([[1, 0], [0, 1], [5, 5]], [1, 1, 0]).round(6).tolist()
        [0.447214, 0.894427]
    """
    return pool_embeddings(
        hidden, attention_mask, "position_weighted", normalize=normalize, eps=eps
    )
