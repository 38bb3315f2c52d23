"""Small helpers shared by the mixers: max-shifted softmax, config checks, state readers.

Private to ``dataflex_mix``; the public helpers (``check_feedback``, ``check_domains``) live in
:mod:`dataflex_mix.mixers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from dataflex_core import ConfigError, StateError
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "softmax",
    "check_finite",
    "check_positive",
    "check_unit_interval",
    "check_count",
    "per_domain_proportions",
    "state_vector",
    "state_matrix",
    "state_float",
    "state_int",
    "state_choice",
]


def softmax(x: ArrayLike) -> NDArray[np.float64]:
    """``exp(x - max x) / Σ exp(x - max x)``, always max-shifted (spec §0.1).

    Entries equal to ``-inf`` (``log 0``) get probability 0; at least one entry must be finite.
    """
    arr = np.asarray(x, dtype=np.float64)
    shifted = arr - np.max(arr)
    e = np.exp(shifted)
    return e / e.sum()


def check_finite(value: float, key: str, fix: str) -> None:
    """Raise ConfigError naming ``key`` when ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}; {fix}")


def check_positive(value: float, key: str, fix: str) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` is finite and > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}; {fix}")


def check_unit_interval(value: float, key: str, fix: str, *, closed_right: bool = True) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` lies in ``[0, 1]`` (or ``[0, 1)``)."""
    ok = math.isfinite(value) and value >= 0 and (value <= 1 if closed_right else value < 1)
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ConfigError(f"{key} must lie in {interval}, got {value!r}; {fix}")


def check_count(value: int, key: str, minimum: int, fix: str) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}; {fix}")


def per_domain_proportions(
    values: Sequence[float], k: int, key: str, what: str
) -> NDArray[np.float64]:
    """Normalise a configured per-domain list, checking its length against the ``k`` domains.

    Raises:
        ConfigError: prefixed with ``what`` (the component), naming ``key``, the value and the fix.
    """
    from dataflex_mix.primitives import normalize_proportions

    try:
        return normalize_proportions(values, k, key=key)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------- state readers


def state_vector(
    state: Mapping[str, Any],
    key: str,
    k: int,
    what: str,
    *,
    nonnegative: bool = False,
    optional: bool = False,
) -> NDArray[np.float64] | None:
    """Read a float vector of length ``k`` from a saved state, or raise StateError."""
    if key not in state or state[key] is None:
        if optional:
            return None
        raise StateError(f"{what}: the saved state has no {key!r} entry.")
    try:
        arr = np.asarray([float(x) for x in state[key]], dtype=np.float64)
    except (TypeError, ValueError):
        raise StateError(f"{what}: the saved {key!r} is not a list of numbers.") from None
    if arr.shape != (k,) or not np.all(np.isfinite(arr)) or (nonnegative and np.any(arr < 0)):
        raise StateError(
            f"{what}: the saved {key!r} = {arr.tolist()!r:.200} is not a finite"
            f"{' non-negative' if nonnegative else ''} vector of {k} entries."
        )
    return arr


def state_matrix(
    state: Mapping[str, Any], key: str, k: int, what: str, *, optional: bool = False
) -> NDArray[np.float64] | None:
    """Read a finite ``k x k`` float matrix from a saved state, or raise StateError."""
    if key not in state or state[key] is None:
        if optional:
            return None
        raise StateError(f"{what}: the saved state has no {key!r} entry.")
    try:
        arr = np.asarray([[float(x) for x in row] for row in state[key]], dtype=np.float64)
    except (TypeError, ValueError):
        raise StateError(f"{what}: the saved {key!r} is not a matrix of numbers.") from None
    if arr.shape != (k, k) or not np.all(np.isfinite(arr)):
        raise StateError(f"{what}: the saved {key!r} is not a finite {k}x{k} matrix.")
    return arr


def state_float(state: Mapping[str, Any], key: str, what: str) -> float:
    """Read a finite float from a saved state, or raise StateError."""
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StateError(f"{what}: the saved state has an invalid {key!r}: {value!r}.")
    return float(value)


def state_int(
    state: Mapping[str, Any], key: str, what: str, *, optional: bool = False
) -> int | None:
    """Read a non-negative int from a saved state (None allowed when ``optional``)."""
    value = state.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"{what}: the saved state has an invalid {key!r}: {value!r}.")
    return value


def state_choice(state: Mapping[str, Any], key: str, choices: Sequence[str], what: str) -> str:
    """Read a string that must be one of ``choices``."""
    value = state.get(key)
    if value not in choices:
        raise StateError(
            f"{what}: the saved state has {key!r} = {value!r}; expected one of {list(choices)}."
        )
    return str(value)
