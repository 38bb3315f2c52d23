"""The pluggy markers of the ``dataflex`` project."""

from __future__ import annotations

import pluggy

PROJECT = "dataflex"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
