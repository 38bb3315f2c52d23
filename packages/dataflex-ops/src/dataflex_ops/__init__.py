"""DataFlex ops: model-dependent operations: per-sample losses, embeddings, per-sample
gradients, Adam preconditioning, random projections, the feature store, sharded passes, and
batched generation and scoring (inference).

Names are imported lazily (PEP 562): plugin discovery imports ``dataflex_ops.plugin`` and
therefore this package, and must not pay for importing torch.

Example:
    >>> import torch
    >>> from dataflex_ops import per_sample_loss
    >>> logits = torch.zeros(1, 3, 2)
    >>> labels = torch.tensor([[-100, 0, 0]])
    >>> per_sample_loss(logits, labels)[0]
    tensor([0.6931])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> defining module
_LAZY: dict[str, str] = {
    "PerSampleLoss": "dataflex_ops.loss",
    "PerSampleLossConfig": "dataflex_ops.loss",
    "PerSampleLossUnavailable": "dataflex_ops.loss",
    "per_sample_loss": "dataflex_ops.loss",
    "token_counts": "dataflex_ops.loss",
    "Embedding": "dataflex_ops.embed",
    "EmbeddingConfig": "dataflex_ops.embed",
    "pool_hidden": "dataflex_ops.embed",
    "embed_batch": "dataflex_ops.embed",
    "embed_dataset": "dataflex_ops.embed",
    "embed_texts": "dataflex_ops.embed",
    "grouped_sequence_grads": "dataflex_ops.grouped_grads",
    "PerSampleGrad": "dataflex_ops.grads",
    "PerSampleGradConfig": "dataflex_ops.grads",
    "PerSampleGrads": "dataflex_ops.grads",
    "FactorizedGrads": "dataflex_ops.grads",
    "GradStrategyError": "dataflex_ops.grads",
    "per_sample_grads": "dataflex_ops.grads",
    "factorized_grads": "dataflex_ops.grads",
    "select_parameters": "dataflex_ops.grads",
    "canonical_name": "dataflex_ops.grads",
    "parameter_hash": "dataflex_ops.grads",
    "AdamMoments": "dataflex_ops.adam",
    "MissingMomentError": "dataflex_ops.adam",
    "adam_precondition": "dataflex_ops.adam",
    "precondition_grads": "dataflex_ops.adam",
    "load_trainer_moments": "dataflex_ops.adam",
    "trainer_parameter_groups": "dataflex_ops.adam",
    "checkpoint_lr_weights": "dataflex_ops.adam",
    "combine_checkpoints": "dataflex_ops.adam",
    "ProjectorConfig": "dataflex_ops.projection",
    "Projector": "dataflex_ops.projection",
    "DenseProjector": "dataflex_ops.projection",
    "SparseProjector": "dataflex_ops.projection",
    "make_projector": "dataflex_ops.projection",
    "factor_matrix": "dataflex_ops.projection",
    "FeatureStore": "dataflex_ops.store",
    "FeatureStoreWriter": "dataflex_ops.store",
    "FeatureStoreError": "dataflex_ops.store",
    "store_key": "dataflex_ops.store",
    "fingerprint_rows": "dataflex_ops.store",
    "shard_indices": "dataflex_ops.distributed",
    "assemble_by_index": "dataflex_ops.distributed",
    "gather_by_index": "dataflex_ops.distributed",
    "sharded_features": "dataflex_ops.distributed",
    "model_identity": "dataflex_ops.identity",
    "checkpoint_identity": "dataflex_ops.identity",
    "GenerateConfig": "dataflex_ops.inference",
    "ScoreConfig": "dataflex_ops.inference",
    "Generations": "dataflex_ops.inference",
    "generate": "dataflex_ops.inference",
    "generate_sequences": "dataflex_ops.inference",
    "score": "dataflex_ops.inference",
    "score_sequences": "dataflex_ops.inference",
    "RewardModelConfig": "dataflex_ops.inference",
    "RewardModelScorer": "dataflex_ops.inference",
    "TokenizerMismatch": "dataflex_ops.inference",
    "tokenizer_fingerprint": "dataflex_ops.inference",
    "check_same_tokenizer": "dataflex_ops.inference",
    "domain_eval_losses": "dataflex_ops.inference",
    "Generation": "dataflex_ops.inference",
    "SequenceLogprob": "dataflex_ops.inference",
}

__all__ = [
    "AdamMoments",
    "DenseProjector",
    "Embedding",
    "EmbeddingConfig",
    "FactorizedGrads",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureStoreWriter",
    "GenerateConfig",
    "Generation",
    "Generations",
    "GradStrategyError",
    "MissingMomentError",
    "PerSampleGrad",
    "PerSampleGradConfig",
    "PerSampleGrads",
    "PerSampleLoss",
    "PerSampleLossConfig",
    "PerSampleLossUnavailable",
    "Projector",
    "ProjectorConfig",
    "RewardModelConfig",
    "RewardModelScorer",
    "ScoreConfig",
    "SequenceLogprob",
    "SparseProjector",
    "TokenizerMismatch",
    "adam_precondition",
    "assemble_by_index",
    "canonical_name",
    "check_same_tokenizer",
    "checkpoint_identity",
    "checkpoint_lr_weights",
    "combine_checkpoints",
    "domain_eval_losses",
    "embed_batch",
    "embed_dataset",
    "embed_texts",
    "factor_matrix",
    "factorized_grads",
    "fingerprint_rows",
    "gather_by_index",
    "generate",
    "generate_sequences",
    "load_trainer_moments",
    "make_projector",
    "model_identity",
    "parameter_hash",
    "per_sample_grads",
    "per_sample_loss",
    "pool_hidden",
    "precondition_grads",
    "score",
    "score_sequences",
    "select_parameters",
    "shard_indices",
    "sharded_features",
    "store_key",
    "token_counts",
    "tokenizer_fingerprint",
    "trainer_parameter_groups",
]

if TYPE_CHECKING:
    from dataflex_ops.adam import (
        AdamMoments,
        MissingMomentError,
        adam_precondition,
        checkpoint_lr_weights,
        combine_checkpoints,
        load_trainer_moments,
        precondition_grads,
        trainer_parameter_groups,
    )
    from dataflex_ops.distributed import (
        assemble_by_index,
        gather_by_index,
        shard_indices,
        sharded_features,
    )
    from dataflex_ops.embed import (
        Embedding,
        EmbeddingConfig,
        embed_batch,
        embed_dataset,
        embed_texts,
        pool_hidden,
    )
    from dataflex_ops.grads import (
        FactorizedGrads,
        GradStrategyError,
        PerSampleGrad,
        PerSampleGradConfig,
        PerSampleGrads,
        canonical_name,
        factorized_grads,
        parameter_hash,
        per_sample_grads,
        select_parameters,
    )
    from dataflex_ops.identity import (
        checkpoint_identity,
        model_identity,
    )
    from dataflex_ops.inference import (
        GenerateConfig,
        Generation,
        Generations,
        RewardModelConfig,
        RewardModelScorer,
        ScoreConfig,
        SequenceLogprob,
        TokenizerMismatch,
        check_same_tokenizer,
        domain_eval_losses,
        generate,
        generate_sequences,
        score,
        score_sequences,
        tokenizer_fingerprint,
    )
    from dataflex_ops.loss import (
        PerSampleLoss,
        PerSampleLossConfig,
        PerSampleLossUnavailable,
        per_sample_loss,
        token_counts,
    )
    from dataflex_ops.projection import (
        DenseProjector,
        Projector,
        ProjectorConfig,
        SparseProjector,
        factor_matrix,
        make_projector,
    )
    from dataflex_ops.store import (
        FeatureStore,
        FeatureStoreError,
        FeatureStoreWriter,
        fingerprint_rows,
        store_key,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dataflex_ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
