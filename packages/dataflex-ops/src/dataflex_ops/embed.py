"""Embeddings: pooled hidden states of a causal LM or an encoder (algorithms spec §1.2).

With ``M_{i,t}`` the attention mask and ``r_{i,t}`` the 1-based rank of token ``t`` among sample
``i``'s unmasked tokens (so the padding side does not matter):

* ``mean``: ``e_i = Σ_t M h_t / Σ_t M``;
* ``last_token``: ``h`` at the last unmasked position;
* ``position_weighted`` (ADAPT): ``e_i = Σ_t M r h_t / Σ_t M r``.

The output is ``ê_i = e_i / max(‖e_i‖₂, 1e-12)`` in float32. A sample without an unmasked
token is invalid: its row is NaN and ``valid_i = False``.

The hidden states are ``hidden_states[layer]`` of any HF model called with
``output_hidden_states=True``; ``layer = -1`` is the final hidden state (after the final norm
for HF decoders, ``last_hidden_state`` for encoders such as BERT). Everything runs under
``torch.no_grad()`` in eval mode, and the caller's mode is restored.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from dataflex_core import ComponentContext, ConfigError, DataError, parse_config

from dataflex_ops._common import (
    check_token_batch,
    compact_rows,
    eval_mode,
    iter_batches,
    model_inputs,
    unwrap_model,
)

__all__ = [
    "POOLINGS",
    "EmbeddingConfig",
    "Embedding",
    "pool_hidden",
    "hidden_states_of",
    "embed_batch",
    "embed_dataset",
    "embed_texts",
]

log = logging.getLogger(__name__)

Pooling = Literal["mean", "last_token", "position_weighted"]

#: The pooling rules of §1.2.
POOLINGS: tuple[str, ...] = ("mean", "last_token", "position_weighted")


def pool_hidden(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pooling: Pooling = "mean",
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool ``[B, T, H]`` hidden states into one float32 vector per sample.

    Args:
        hidden: ``[B, T, H]`` hidden states (any float dtype).
        attention_mask: ``[B, T]`` mask (nonzero = real token); None means all real.
        pooling: ``mean``, ``last_token`` or ``position_weighted``.
        normalize: Divide each row by ``max(‖e‖₂, 1e-12)`` (the spec's output).

    Returns:
        ``(embeddings [B, H] float32, valid [B] bool)``; invalid rows (no unmasked token) are NaN.

    Raises:
        ConfigError: on an unknown ``pooling``.
        ValueError: on mismatched shapes.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
    if hidden.dim() != 3:
        raise ValueError(f"expected hidden states [B, T, H], got {tuple(hidden.shape)}.")
    b, t, _ = hidden.shape
    if attention_mask is None:
        mask = torch.ones(b, t, device=hidden.device, dtype=torch.float32)
    else:
        if attention_mask.shape != (b, t):
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match hidden states "
                f"{tuple(hidden.shape)}."
            )
        mask = (attention_mask.to(hidden.device) != 0).to(torch.float32)
    counts = mask.sum(dim=1)
    valid = counts > 0
    if pooling == "mean":
        weights = mask
    else:
        rank = torch.cumsum(mask, dim=1) * mask  # 1-based rank among unmasked tokens, 0 on pads
        if pooling == "position_weighted":
            weights = rank
        else:  # last_token: the token whose rank equals the count
            weights = ((rank == counts[:, None]) & (mask > 0)).to(torch.float32)
    total = weights.sum(dim=1, keepdim=True).clamp(min=1e-30)
    emb = torch.einsum("bt,bth->bh", weights, hidden.float()) / total
    if normalize:
        emb = emb / emb.norm(dim=1, keepdim=True).clamp(min=1e-12)
    emb = torch.where(valid[:, None], emb, torch.full_like(emb, float("nan")))
    return emb, valid


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def hidden_states_of(
    model: torch.nn.Module, inputs: Mapping[str, Any], layer: int = -1
) -> torch.Tensor:
    """``hidden_states[layer]`` of one forward pass (no grad is managed here).

    Causal LMs whose ``forward`` accepts ``logits_to_keep`` are asked for the last position's
    logits only, so the full-vocabulary logits are never built.

    Raises:
        ValueError: when the model returns no hidden states or ``layer`` is out of range.
    """
    kwargs = dict(inputs)
    kwargs["output_hidden_states"] = True
    kwargs.setdefault("return_dict", True)
    forward = unwrap_model(model).forward
    if _accepts(forward, "logits_to_keep"):
        kwargs.setdefault("logits_to_keep", 1)
    if _accepts(forward, "use_cache"):
        kwargs.setdefault("use_cache", False)
    out = model(**kwargs)
    hidden = getattr(out, "hidden_states", None)
    if hidden is None and isinstance(out, Mapping):
        hidden = out.get("hidden_states")
    if hidden is None:
        last = getattr(out, "last_hidden_state", None)
        if last is not None and layer == -1:
            return last
        raise ValueError(
            f"{type(model).__name__} returned no hidden_states; embeddings need an HF model that "
            "supports output_hidden_states=True."
        )
    if not -len(hidden) <= layer < len(hidden):
        raise ValueError(
            f"layer {layer} is out of range: the model returns {len(hidden)} hidden states "
            f"(embeddings + {len(hidden) - 1} layers); use -1 for the final one."
        )
    return hidden[layer]


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in unwrap_model(model).parameters():
        return p.device
    return torch.device("cpu")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def embed_batch(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    layer: int = -1,
    pooling: Pooling = "mean",
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed one batch: ``(values [B, H] float32, valid [B] bool)``, detached.

    Each row's unmasked tokens are moved to the front first, so the padding side does not
    change the positions the model sees (nor the embedding). Runs under ``torch.no_grad()``
    in eval mode and restores the caller's mode. ``labels`` and the DataFlex side keys of the
    batch are not passed to the model.
    """
    inputs = _to_device(model_inputs(batch), _device_of(model))
    ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    if ids is not None:
        check_token_batch(ids, "embeddings")
    if isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor) and ids.dim() == 2:
        # real tokens first: positions 0..n-1 whatever the padding side
        seq = {
            k: v
            for k, v in inputs.items()
            if k not in ("input_ids", "attention_mask")
            and isinstance(v, torch.Tensor)
            and v.shape[:2] == ids.shape
        }
        ids, mask, seq, _ = compact_rows(ids, mask, seq)
        inputs.update(seq, input_ids=ids, attention_mask=mask)
    with eval_mode(model), torch.no_grad():
        hidden = hidden_states_of(model, inputs, layer)
        return pool_hidden(hidden, inputs.get("attention_mask"), pooling, normalize)


@dataclass(frozen=True)
class EmbeddingConfig:
    """Config of the ``embedding`` featurizer.

    Attributes:
        layer: Index into ``hidden_states``; ``-1`` is the final hidden state.
        pooling: ``mean``, ``last_token`` or ``position_weighted``.
        normalize: ℓ₂-normalise each embedding (the spec's output; off only for diagnostics).
        batch_size: Rows per forward pass when embedding a dataset.
    """

    layer: int = -1
    pooling: Pooling = "mean"
    normalize: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")


class Embedding:
    """Featurizer: pooled, normalised hidden states of a batch (spec §1.2).

    Args:
        config: An :class:`EmbeddingConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts (unused).
    """

    config_class = EmbeddingConfig

    def __init__(
        self,
        config: EmbeddingConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: EmbeddingConfig = parse_config(
            EmbeddingConfig, config, where="featurizer 'embedding'"
        )
        self.context = context if context is not None else ComponentContext()

    def __call__(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Embed a batch: ``{"values": [B, H] float32, "valid": [B] bool}``."""
        values, valid = embed_batch(
            model,
            batch,
            layer=self.config.layer,
            pooling=self.config.pooling,
            normalize=self.config.normalize,
        )
        return {"values": values, "valid": valid}


def embed_dataset(
    model: torch.nn.Module,
    data: Any,
    *,
    layer: int = -1,
    pooling: Pooling = "mean",
    normalize: bool = True,
    batch_size: int = 16,
    collate_fn: Callable[[Sequence[Any]], Mapping[str, Any]] | None = None,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    desc: str = "embedding",
) -> dict[str, torch.Tensor]:
    """Embed a whole dataset, batch by batch, with a progress bar.

    Args:
        model: Any HF causal LM or encoder.
        data: An indexable dataset of tokenised examples (``input_ids`` lists; collated with
            ``collate_fn``, default right padding), or an iterable of ready batches.
        layer, pooling, normalize: As in :func:`embed_batch`.
        batch_size: Rows per forward pass (datasets only).
        collate_fn: Builds a batch from a list of examples.
        indices: Rows of ``data`` to embed, in this order (datasets only).
        progress: Show a tqdm bar.
        desc: The bar's label.

    Returns:
        ``{"values": [N, H] float32 (CPU), "valid": [N] bool}`` in data order.
    """
    from tqdm.auto import tqdm

    batches, total = iter_batches(data, batch_size, collate_fn, indices)
    values: list[torch.Tensor] = []
    valid: list[torch.Tensor] = []
    for batch in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
        v, m = embed_batch(model, batch, layer=layer, pooling=pooling, normalize=normalize)
        values.append(v.cpu())
        valid.append(m.cpu())
    if not values:
        raise DataError("embed_dataset got no rows to embed.")
    return {"values": torch.cat(values), "valid": torch.cat(valid)}


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layer: int = -1,
    pooling: Pooling = "mean",
    normalize: bool = True,
    batch_size: int = 32,
    max_length: int = 512,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Embed raw texts with a standalone model and its tokenizer (e.g. a sentence encoder).

    Raises:
        DataError: when a text is empty (spec §1.2: an empty rendering is an error).
    """
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise DataError(
            f"{len(empty)} text(s) are empty (first at position {empty[0]}); check which raw "
            "fields are rendered for the embedding model."
        )

    class _Texts:
        def __len__(self) -> int:
            return len(texts)

        def __getitem__(self, i: int) -> str:
            return texts[i]

    def collate(rows: Sequence[str]) -> Mapping[str, Any]:
        enc = tokenizer(
            list(rows), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return dict(enc)

    return embed_dataset(
        model,
        _Texts(),
        layer=layer,
        pooling=pooling,
        normalize=normalize,
        batch_size=batch_size,
        collate_fn=collate,
        progress=progress,
        desc="embedding texts",
    )
