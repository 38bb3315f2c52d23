"""Registers the featurizers of ``dataflex-ops`` and answers the featurizer capability hooks.

torch is imported inside the hook functions, never at module import, so that plugin discovery
(``dataflex-cli components``) stays fast.

Featurizers: ``per_sample_loss``, ``embedding``, ``per_sample_grad``, ``projector_dense`` and
``projector_sparse`` (projectors are featurizers of gradients: ``project(grads)``), and the
inference featurizers ``generation`` and ``sequence_logprob`` (:mod:`dataflex_ops.inference`,
which handles plain, DDP and ZeRO-3 models itself).

``dataflex_make_featurizer`` has two implementations here: ``zero3_make_featurizer`` answers
only for DeepSpeed ZeRO-3 partitioned models (parameters tagged ``ds_id``/``ds_status``) and
returns None otherwise; the plain ``dataflex_make_featurizer`` is the ``trylast`` fallback. A
third party can add FSDP2 the same way.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from dataflex_core import ComponentContext, ComponentSpec, hookimpl

__all__ = [
    "FEATURIZER_KINDS",
    "dataflex_register_featurizers",
    "dataflex_make_featurizer",
    "zero3_make_featurizer",
    "dataflex_compute_features",
    "dataflex_register_reward_backends",
]

#: Featurizer kinds this plugin builds: kind -> (plain factory, ZeRO-3 factory).
FEATURIZER_KINDS: dict[str, tuple[str, str]] = {
    "per_sample_loss": ("dataflex_ops.loss:PerSampleLoss", "dataflex_ops.loss:PerSampleLoss"),
    "embedding": ("dataflex_ops.embed:Embedding", "dataflex_ops.distributed:Zero3Embedding"),
    "per_sample_grad": (
        "dataflex_ops.grads:PerSampleGrad",
        "dataflex_ops.distributed:Zero3PerSampleGrad",
    ),
    "projector_dense": (
        "dataflex_ops.projection:DenseProjector",
        "dataflex_ops.projection:DenseProjector",
    ),
    "projector_sparse": (
        "dataflex_ops.projection:SparseProjector",
        "dataflex_ops.projection:SparseProjector",
    ),
    # one class each: they shard and run in lockstep themselves
    "generation": ("dataflex_ops.inference:Generation", "dataflex_ops.inference:Generation"),
    "sequence_logprob": (
        "dataflex_ops.inference:SequenceLogprob",
        "dataflex_ops.inference:SequenceLogprob",
    ),
}

#: Keys of a ``dataflex_make_featurizer`` context that are runtime objects, not config keys.
RUNTIME_KEYS: tuple[str, ...] = ("optimizer", "component_context")

#: Kinds ``dataflex_compute_features`` computes from a model and a batch.
COMPUTE_KINDS: tuple[str, ...] = (
    "per_sample_loss",
    "embedding",
    "per_sample_grad",
    "generation",
    "sequence_logprob",
)

#: Featurizers kept for ``dataflex_compute_features`` (each may hold a projector cache).
_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, bool, str], Any] = OrderedDict()


@hookimpl
def dataflex_register_featurizers() -> list[ComponentSpec]:
    """The featurizers of dataflex-ops (lazy factories: nothing imports torch here)."""
    return [
        ComponentSpec(
            kind="featurizer",
            name="per_sample_loss",
            factory="dataflex_ops.loss:PerSampleLoss",
            summary="Per-sample causal-LM loss (token mean or sum), float32 in sequence chunks.",
            paper="",
        ),
        ComponentSpec(
            kind="featurizer",
            name="embedding",
            factory="dataflex_ops.embed:Embedding",
            summary="Mean / last-token / position-weighted pooled hidden states, l2-normalised.",
            paper="",
        ),
        ComponentSpec(
            kind="featurizer",
            name="per_sample_grad",
            factory="dataflex_ops.grads:PerSampleGrad",
            summary="Per-sample gradients (vmap, loop, hooks, LoGra factorized), Adam, projection.",
            paper="arXiv:2402.04333 (LESS); arXiv:2405.13954 (LoGra)",
        ),
        ComponentSpec(
            kind="featurizer",
            name="projector_dense",
            factory="dataflex_ops.projection:DenseProjector",
            summary="Seeded dense Rademacher/Gaussian random projection, streamed in blocks.",
            paper="arXiv:2303.14186 (TRAK)",
        ),
        ComponentSpec(
            kind="featurizer",
            name="projector_sparse",
            factory="dataflex_ops.projection:SparseProjector",
            summary="Seeded sparse JL / CountSketch projection (s nonzeros per coordinate).",
            paper="arXiv:1012.1577 (Kane-Nelson)",
        ),
        ComponentSpec(
            kind="featurizer",
            name="generation",
            factory="dataflex_ops.inference:Generation",
            summary="Batched, per-row seeded generation from the live model (NICE rollouts).",
            paper="",
        ),
        ComponentSpec(
            kind="featurizer",
            name="sequence_logprob",
            factory="dataflex_ops.inference:SequenceLogprob",
            summary="Log-likelihood of each response given its prompt (sum or token mean).",
            paper="",
        ),
    ]


def _load(path: str) -> Any:
    from dataflex_core.registry import load_object

    return load_object(path, "featurizer factory")


def _build(kind: str, zero3: bool, options: Mapping[str, Any], runtime: Mapping[str, Any]) -> Any:
    factory = _load(FEATURIZER_KINDS[kind][1 if zero3 else 0])
    ctx = runtime.get("component_context")
    if ctx is None:
        extras = {k: v for k, v in runtime.items() if k != "component_context"}
        ctx = ComponentContext(extras=extras)
    return factory(dict(options), ctx)


def _split(context: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    ctx = dict(context or {})
    runtime = {k: ctx.pop(k) for k in RUNTIME_KEYS if k in ctx}
    return ctx, runtime


def _partitioned(model: Any) -> bool:
    if "torch" not in sys.modules:  # no torch module can exist yet: nothing to inspect
        return False
    from dataflex_ops._common import is_zero3_model

    try:
        return is_zero3_model(model)
    except Exception:  # noqa: BLE001 - not a torch module: not ours to answer
        return False


@hookimpl(specname="dataflex_make_featurizer")
def zero3_make_featurizer(model: Any, kind: str, context: Mapping[str, Any]) -> Any | None:
    """ZeRO-3 implementation: answers only for DeepSpeed ZeRO-3 partitioned models.

    Per-sample gradients run the ``loop`` strategy in lockstep (vmap is rejected); embeddings
    and losses are plain forwards. Returns None for any other model or an unknown kind.
    """
    if kind not in FEATURIZER_KINDS or not _partitioned(model):
        return None
    options, runtime = _split(context)
    return _build(kind, True, options, runtime)


@hookimpl(trylast=True)
def dataflex_make_featurizer(model: Any, kind: str, context: Mapping[str, Any]) -> Any | None:
    """Plain fallback: builds ``kind`` from the config keys in ``context``.

    ``context`` holds the featurizer's config keys (validated strictly) and optionally the
    runtime keys ``optimizer`` (live optimizer for Adam features) and ``component_context``.
    Returns None for a kind this plugin does not know.
    """
    if kind not in FEATURIZER_KINDS:
        return None
    options, runtime = _split(context)
    return _build(kind, _partitioned(model), options, runtime)


def _cached(kind: str, zero3: bool, options: Mapping[str, Any]) -> Any:
    """Featurizers are reused across calls with equal options, so a projector's matrix cache
    and an ``auto`` strategy decision survive from one batch to the next."""
    try:
        key = (kind, zero3, json.dumps(options, sort_keys=True, default=repr))
    except (TypeError, ValueError):
        return _build(kind, zero3, options, {})
    hit = _cache.get(key)
    if hit is None:
        hit = _build(kind, zero3, options, {})
        _cache[key] = hit
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return hit


@hookimpl(trylast=True)
def dataflex_compute_features(
    model: Any, batch: Any, kind: str, options: Mapping[str, Any]
) -> Any | None:
    """Computes ``per_sample_loss``, ``embedding``, ``per_sample_grad``, ``generation`` and
    ``sequence_logprob``; None otherwise.

    ``options`` holds the featurizer's config keys (e.g. :class:`~dataflex_ops.loss.
    PerSampleLossConfig`, :class:`~dataflex_ops.embed.EmbeddingConfig`,
    :class:`~dataflex_ops.grads.PerSampleGradConfig`, :class:`~dataflex_ops.inference.
    GenerateConfig`, :class:`~dataflex_ops.inference.ScoreConfig`), validated strictly: an
    unknown key is a :class:`~dataflex_core.ConfigError` naming the closest valid one. ZeRO-3
    partitioned models get the ZeRO-3 featurizers.
    """
    if kind not in COMPUTE_KINDS:
        return None
    featurizer = _cached(kind, _partitioned(model), dict(options or {}))
    return featurizer(model, batch)


@hookimpl
def dataflex_register_reward_backends() -> list[ComponentSpec]:
    """The ``local_model`` NICE reward backend (a sequence-classification reward model)."""
    from dataflex_ops.reward_backend import reward_backend_specs

    return reward_backend_specs()
