"""Registers the mixers of ``dataflex-mix`` (entry point ``dataflex_mix`` in group ``dataflex``).

Imports only ``dataflex_core``: the factories are ``"module:Class"`` strings, so discovery
(``dataflex-cli components``) imports neither numpy nor torch.
"""

from __future__ import annotations

from dataflex_core import ComponentSpec, hookimpl

__all__ = ["dataflex_register_mixers"]


@hookimpl
def dataflex_register_mixers() -> list[ComponentSpec]:
    """The ``static`` and ``random`` mixers."""
    return [
        ComponentSpec(
            kind="mixer",
            name="static",
            factory="dataflex_mix.mixers:StaticMixer",
            summary="Fixed domain proportions (null means uniform).",
            paper="",
        ),
        ComponentSpec(
            kind="mixer",
            name="random",
            factory="dataflex_mix.mixers:RandomMixer",
            summary="Random proportions per update from a seeded Dirichlet or normalised uniform.",
            paper="",
        ),
    ]
