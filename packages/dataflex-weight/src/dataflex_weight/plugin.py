"""Registers the weighters of ``dataflex-weight`` (entry point ``dataflex_weight``).

Imports only ``dataflex_core``: the factories are ``"module:Class"`` strings.
"""

from __future__ import annotations

from dataflex_core import ComponentSpec, hookimpl

__all__ = ["dataflex_register_weighters"]


@hookimpl
def dataflex_register_weighters() -> list[ComponentSpec]:
    """The ``uniform`` weighter."""
    return [
        ComponentSpec(
            kind="weighter",
            name="uniform",
            factory="dataflex_weight.weighters:UniformWeighter",
            summary="Weight 1 for every valid sample (the unweighted baseline).",
            paper="",
        ),
    ]
