"""Registers the selectors of ``dataflex-select`` (entry point ``dataflex_select``).

Imports only ``dataflex_core``: the factories are ``"module:Class"`` strings, so discovery
imports neither numpy, torch nor faiss.
"""

from __future__ import annotations

from dataflex_core import ComponentSpec, hookimpl

__all__ = ["dataflex_register_selectors"]


@hookimpl
def dataflex_register_selectors() -> list[ComponentSpec]:
    """The ``static`` and ``random`` selectors."""
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
    ]
