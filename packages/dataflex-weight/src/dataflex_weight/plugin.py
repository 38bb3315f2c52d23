"""Registers the weighters of ``dataflex-weight`` (entry point ``dataflex_weight``).

Imports only ``dataflex_core``: the factories are ``"module:Class"`` strings, so discovery never
imports numpy-heavy modules or torch.
"""

from __future__ import annotations

from dataflex_core import ComponentSpec, hookimpl

__all__ = ["dataflex_register_weighters"]


@hookimpl
def dataflex_register_weighters() -> list[ComponentSpec]:
    """The ``uniform``, ``loss``, ``adapt`` and ``custom`` weighters."""
    return [
        ComponentSpec(
            kind="weighter",
            name="uniform",
            factory="dataflex_weight.weighters:UniformWeighter",
            summary="Weight 1 for every valid sample (the unweighted baseline).",
            paper="",
        ),
        ComponentSpec(
            kind="weighter",
            name="loss",
            factory="dataflex_weight.loss:LossWeighter",
            summary="Loss-based sample reweighting: softmax of a strategy of the normalised loss.",
            paper="arXiv:2502.06733",
        ),
        ComponentSpec(
            kind="weighter",
            name="adapt",
            factory="dataflex_weight.adapt:AdaptWeighter",
            summary="ADAPT: sigmoid of the similarity to the mean target anchor (unverified).",
            paper="arXiv:2605.05227",
        ),
        ComponentSpec(
            kind="weighter",
            name="custom",
            factory="dataflex_weight.custom:CustomWeighter",
            summary="Weights from a user function 'package.module:fn' (template: uniform).",
            paper="",
        ),
    ]
