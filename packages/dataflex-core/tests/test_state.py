"""check_json_safe: plain JSON data with finite numbers, and nothing that would not round-trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dataflex_core import StateError, check_json_safe


@pytest.mark.parametrize(
    "obj",
    [
        None,
        True,
        0,
        -3,
        2**70,
        1.5,
        "text",
        [],
        {},
        {"a": [1, 2.5, None, "x", {"b": [True, False]}]},
        {"nested": {"deeper": {"p": [0.25, 0.75]}}},
    ],
)
def test_json_data_passes(obj: Any) -> None:
    check_json_safe(obj)
    assert json.loads(json.dumps(obj)) == obj


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected(bad: float) -> None:
    with pytest.raises(StateError, match="finite"):
        check_json_safe({"p": [0.5, bad]})


def test_error_names_the_path() -> None:
    with pytest.raises(StateError) as exc:
        check_json_safe({"a": [1, {"b": float("nan")}]})
    assert "state.a[1].b" in str(exc.value)


def test_custom_root_path() -> None:
    with pytest.raises(StateError, match=r"^mixer\.x is nan"):
        check_json_safe({"x": float("nan")}, path="mixer")


def test_tuples_are_rejected() -> None:
    # JSON turns tuples into lists, so a state holding tuples would not compare equal after a
    # save/load round trip.
    with pytest.raises(StateError, match="tuple"):
        check_json_safe({"p": (0.5, 0.5)})


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", object(), 1 + 2j, frozenset()])
def test_other_types_are_rejected_with_a_fix(bad: Any) -> None:
    with pytest.raises(StateError) as exc:
        check_json_safe({"v": bad})
    assert type(bad).__name__ in str(exc.value)
    assert "tolist" in str(exc.value)


def test_non_string_keys_are_rejected() -> None:
    with pytest.raises(StateError, match="non-string key 1"):
        check_json_safe({1: "a"})


def test_state_error_is_a_dataflex_error() -> None:
    from dataflex_core import DataflexError

    assert issubclass(StateError, DataflexError)
