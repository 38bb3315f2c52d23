"""Registers the selectors of ``dataflex-select`` (entry point ``dataflex_select``).

Imports only ``dataflex_core``: the factories are ``"module:Class"`` strings, so discovery
imports neither numpy, torch nor faiss.
"""

from __future__ import annotations

from dataflex_core import ComponentSpec, hookimpl

__all__ = [
    "dataflex_register_selectors",
    "dataflex_register_index_backends",
    "dataflex_register_reward_backends",
]


@hookimpl
def dataflex_register_selectors() -> list[ComponentSpec]:
    """Every selector of dataflex-select."""
    return [
        ComponentSpec(
            kind="selector",
            name="static",
            factory="dataflex_select.selectors:StaticSelector",
            summary="All data: windows walk a seeded permutation of the pool per Flex epoch.",
            paper="",
        ),
        ComponentSpec(
            kind="selector",
            name="random",
            factory="dataflex_select.selectors:RandomSelector",
            summary="Uniformly random windows, seeded by epoch and step.",
            paper="",
        ),
        ComponentSpec(
            kind="selector",
            name="loss",
            factory="dataflex_select.loss:LossSelector",
            summary="Loss-quantile importance sampling: the focus band of current losses is drawn "
            "focus_weight times more often.",
            paper="",
        ),
        ComponentSpec(
            kind="selector",
            name="delta_loss",
            factory="dataflex_select.delta_loss:DeltaLossSelector",
            summary="Learning-progress window: a sigmoid-sliding window over rows ranked by "
            "reference loss minus current loss.",
            paper="",
        ),
        ComponentSpec(
            kind="selector",
            name="near",
            factory="dataflex_select.near:NearSelector",
            summary="Embedding kNN of the target set, taken round-robin (every target's nearest "
            "row first).",
            paper="",
        ),
        ComponentSpec(
            kind="selector",
            name="tsds",
            factory="dataflex_select.tsds:TsdsSelector",
            summary="TSDS: optimal-transport sampling distribution with a kernel-density "
            "diversity term, closed-form water-filling.",
            paper="arXiv:2410.11303",
        ),
        ComponentSpec(
            kind="selector",
            name="dsir",
            factory="dataflex_select.dsir:DsirSelector",
            summary="DSIR: importance resampling with hashed n-gram features of raw text.",
            paper="arXiv:2302.03169",
        ),
        ComponentSpec(
            kind="selector",
            name="less",
            factory="dataflex_select.less:LessSelector",
            summary="LESS: top-k by (max over subtasks of the mean) cosine of Adam gradient "
            "features with target gradients, over checkpoints.",
            paper="arXiv:2402.04333",
        ),
        ComponentSpec(
            kind="selector",
            name="cluster_less",
            factory="dataflex_select.cluster_less:ClusterLessSelector",
            summary="LESS on a few representatives per embedding cluster; members inherit "
            "their cluster's score.",
            paper="",
        ),
        ComponentSpec(
            kind="selector",
            name="nice",
            factory="dataflex_select.nice:NiceSelector",
            summary="NICE: LESS with Monte-Carlo policy-gradient target features from rewards "
            "of generated answers.",
            paper="ICML 2025, OpenReview 2wt8m5HUBs",
        ),
    ]


@hookimpl
def dataflex_register_reward_backends() -> list[ComponentSpec]:
    """The ``rule`` and ``http`` NICE reward backends (stdlib only)."""
    from dataflex_select.rewards import reward_backend_specs

    return reward_backend_specs()


@hookimpl
def dataflex_register_index_backends() -> list[ComponentSpec]:
    """The nearest-neighbour index backends (spec literals: discovery imports no numpy)."""
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
