"""Strict configuration parsing for frozen dataclass configs.

A component declares its hyperparameters as a frozen dataclass. :func:`parse_config` builds it
from a plain mapping (YAML, CLI overrides) and rejects what a silent parser would drop: unknown
keys (naming the closest valid key), missing required keys, and values of the wrong type.
Range checks live in each config's ``__post_init__`` and raise :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from dataflex_core.errors import ConfigError

__all__ = ["parse_config", "config_to_dict", "closest", "unknown_key_error", "EmptyConfig"]

log = logging.getLogger(__name__)

C = TypeVar("C")

_MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class EmptyConfig:
    """Config of a component that takes no hyperparameters."""


def closest(key: str, valid: typing.Iterable[str]) -> str | None:
    """Return the valid key closest to ``key``, or None when nothing is close."""
    matches = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_key_error(key: str, valid: typing.Iterable[str], where: str) -> ConfigError:
    """Build the error for an unknown key, with a did-you-mean hint and the valid keys."""
    valid = sorted(valid)
    hint = closest(key, valid)
    msg = f"unknown key {key!r} in {where}"
    if hint:
        msg += f"; did you mean {hint!r}?"
    msg += f" Valid keys: {', '.join(valid) if valid else '(none: this component takes no keys)'}."
    return ConfigError(msg)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (lists become tuples for tuples)."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(a is value for a in args)):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _Mismatch
            items = [_coerce(v, a, where) for v, a in zip(value, args, strict=True)]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, where) for v in value]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        if args:
            return {_coerce(k, args[0], where): _coerce(v, args[1], where) for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return parse_config(tp, value, where=where)
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value


def parse_config(cls: type[C], data: Mapping[str, Any] | C | None = None, *, where: str = "") -> C:
    """Build the frozen dataclass ``cls`` from ``data``, strictly.

    Args:
        cls: A dataclass type. It may define ``__aliases__: ClassVar[dict[str, str]]`` mapping
            deprecated key names to current ones; each use logs one warning.
        data: A mapping of keys to values, an instance of ``cls`` (returned unchanged), or None
            (all defaults).
        where: What the config belongs to, for messages (e.g. ``"mixer 'random'"``).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: on an unknown key (naming the closest valid key), a missing required key,
            a value of the wrong type, or a value that ``__post_init__`` rejects.
    """
    where = where or f"{cls.__name__}"
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of keys to values, got {type(data).__name__} {data!r}."
        )
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{where}: config class {cls!r} is not a dataclass.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    aliases: Mapping[str, str] = getattr(cls, "__aliases__", {}) or {}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"{where}: keys must be strings, got {raw_key!r}.")
        key = raw_key
        if key not in fields and key in aliases:
            key = aliases[key]
            log.warning("%s: key %r is deprecated; use %r instead.", where, raw_key, key)
        if key not in fields:
            raise unknown_key_error(raw_key, fields, where)
        if key in kwargs:
            raise ConfigError(f"{where}: key {key!r} is given twice (once through an alias).")
        tp = hints.get(key, Any)
        try:
            kwargs[key] = _coerce(value, tp, f"{where}.{key}")
        except _Mismatch:
            raise ConfigError(
                f"{where}: key {key!r} must be {_type_name(tp)}, got {type(value).__name__} "
                f"{value!r}."
            ) from None
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is _MISSING and f.default_factory is _MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}.")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a JSON-safe dict of a dataclass config (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    return conv(config)
