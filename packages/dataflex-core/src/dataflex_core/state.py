"""Helpers for JSON-safe component state."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dataflex_core.errors import StateError

__all__ = ["check_json_safe"]


def check_json_safe(obj: Any, path: str = "state") -> None:
    """Raise :class:`StateError` if ``obj`` is not plain JSON data with finite numbers.

    Tuples are rejected too: they come back from JSON as lists, so a state holding them would
    not round-trip to an equal object.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return
    if isinstance(obj, int):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise StateError(f"{path} is {obj!r}; state must hold finite numbers only.")
        return
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            check_json_safe(v, f"{path}[{i}]")
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise StateError(f"{path} has non-string key {k!r}; JSON keys are strings.")
            check_json_safe(v, f"{path}.{k}")
        return
    raise StateError(
        f"{path} has a value of type {type(obj).__name__} ({obj!r:.60}); convert it to plain "
        "lists, numbers and strings (e.g. ndarray.tolist(), int(x)) before returning it."
    )
