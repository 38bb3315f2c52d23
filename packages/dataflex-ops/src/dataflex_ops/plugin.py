"""Registers the featurizers of ``dataflex-ops`` and answers ``dataflex_compute_features``.

torch is imported inside the hook functions, never at module import, so that plugin discovery
(``dataflex-cli components``) stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataflex_core import ComponentSpec, hookimpl

__all__ = ["dataflex_register_featurizers", "dataflex_compute_features"]


@hookimpl
def dataflex_register_featurizers() -> list[ComponentSpec]:
    """The ``per_sample_loss`` featurizer."""
    return [
        ComponentSpec(
            kind="featurizer",
            name="per_sample_loss",
            factory="dataflex_ops.loss:PerSampleLoss",
            summary="Per-sample causal-LM loss (token mean or sum), float32 in sequence chunks.",
            paper="",
        ),
    ]


@hookimpl(trylast=True)
def dataflex_compute_features(
    model: Any, batch: Any, kind: str, options: Mapping[str, Any]
) -> Any | None:
    """Plain (unpartitioned) fallback: answers ``kind="per_sample_loss"``, None otherwise.

    ``options`` holds :class:`~dataflex_ops.loss.PerSampleLossConfig` keys (``reduction``,
    ``chunk_size``, ``ignore_index``), validated strictly.
    """
    if kind != "per_sample_loss":
        return None
    from dataflex_ops.loss import PerSampleLoss  # imports torch: only when asked to compute

    return PerSampleLoss(dict(options or {}))(model, batch)
