"""Registers the mixers of ``dataflex-mix`` (entry point ``dataflex_mix`` in group ``dataflex``).

Imports only ``dataflex_core``: the factories are ``"module:Class"`` strings, so discovery
(``dataflex-cli components``) imports neither numpy nor torch.
"""

from __future__ import annotations

from dataflex_core import ComponentSpec, hookimpl

__all__ = ["dataflex_register_mixers"]


@hookimpl
def dataflex_register_mixers() -> list[ComponentSpec]:
    """The ``static``, ``random``, ``doremi``, ``odm``, ``aioli`` and ``dynamic_moe`` mixers."""
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
        ComponentSpec(
            kind="mixer",
            name="doremi",
            factory="dataflex_mix.doremi:DoremiMixer",
            summary="DoReMi proxy: α from excess loss over a reference model; output ᾱ.",
            paper="arXiv:2305.10429",
        ),
        ComponentSpec(
            kind="mixer",
            name="odm",
            factory="dataflex_mix.odm:OdmMixer",
            summary="Online Data Mixing: EXP3-style bandit over domains rewarded by training loss.",
            paper="arXiv:2312.02406",
        ),
        ComponentSpec(
            kind="mixer",
            name="aioli",
            factory="dataflex_mix.aioli:AioliMixer",
            summary="Aioli: LearnParams rounds estimate the mixing law from eval losses.",
            paper="arXiv:2411.05735",
        ),
        ComponentSpec(
            kind="mixer",
            name="dynamic_moe",
            factory="dataflex_mix.dynamic_moe:DynamicMoeMixer",
            summary="MoE gate-load redundancy: upweight domains routed unlike the others.",
            paper="arXiv:2406.11256",
        ),
    ]
