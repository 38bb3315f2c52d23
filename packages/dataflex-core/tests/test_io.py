"""Atomic writes: readers see the old file or the new one, never a half-written one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dataflex_core import append_jsonl, atomic_write_json, atomic_write_text
from dataflex_core.io import atomic_write_bytes


def leftovers(folder: Path) -> list[str]:
    """Temporary files the atomic writer might leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_text_creates_parents_and_returns_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    returned = atomic_write_text(target, "héllo\n")
    assert returned == target
    assert target.read_text(encoding="utf-8") == "héllo\n"
    assert leftovers(target.parent) == []


def test_write_accepts_str_path(tmp_path: Path) -> None:
    atomic_write_text(str(tmp_path / "s.txt"), "x")
    assert (tmp_path / "s.txt").read_text() == "x"


def test_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_write_bytes(tmp_path: Path) -> None:
    target = tmp_path / "b.bin"
    atomic_write_bytes(target, b"\x00\x01\xff")
    assert target.read_bytes() == b"\x00\x01\xff"


def test_failed_replace_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    atomic_write_text(target, "old content")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_text(target, "new content")
    monkeypatch.undo()
    assert target.read_text() == "old content"
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_failed_write_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    atomic_write_text(target, "old content")

    def broken_fsync(fd: int) -> None:
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        atomic_write_text(target, "new content")
    monkeypatch.undo()
    assert target.read_text() == "old content"
    assert leftovers(tmp_path) == []


def test_interrupt_during_write_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    atomic_write_text(target, "old content")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new content")
    monkeypatch.undo()
    assert target.read_text() == "old content"
    assert leftovers(tmp_path) == []


def test_write_json_is_sorted_indented_and_newline_terminated(tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    atomic_write_json(target, {"b": 1, "a": [1.5, None, "x"]})
    text = target.read_text()
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"')
    assert "\n  " in text
    assert json.loads(text) == {"a": [1.5, None, "x"], "b": 1}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_write_json_rejects_non_finite_and_keeps_old_file(tmp_path: Path, bad: float) -> None:
    target = tmp_path / "s.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": bad})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert leftovers(tmp_path) == []


def test_append_jsonl_creates_and_appends(tmp_path: Path) -> None:
    target = tmp_path / "logs" / "decisions.jsonl"
    append_jsonl(target, [{"step": 1, "p": [0.5, 0.5]}])
    append_jsonl(target, [{"step": 2, "p": [0.25, 0.75]}, {"step": 3, "b": 1, "a": 2}])
    lines = target.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "p": [0.5, 0.5]},
        {"step": 2, "p": [0.25, 0.75]},
        {"a": 2, "b": 1, "step": 3},
    ]
    assert lines[2] == '{"a": 2, "b": 1, "step": 3}'  # one compact, key-sorted line each
    assert leftovers(target.parent) == []


def test_append_jsonl_with_no_records_keeps_content(tmp_path: Path) -> None:
    target = tmp_path / "d.jsonl"
    append_jsonl(target, [{"x": 1}])
    append_jsonl(target, [])
    assert target.read_text() == '{"x": 1}\n'


def test_append_jsonl_rejects_nan_and_keeps_old_lines(tmp_path: Path) -> None:
    target = tmp_path / "d.jsonl"
    append_jsonl(target, [{"x": 1}])
    with pytest.raises(ValueError):
        append_jsonl(target, [{"x": 2}, {"x": float("nan")}])
    assert target.read_text() == '{"x": 1}\n'


def test_append_jsonl_recovers_from_a_torn_last_line(tmp_path: Path) -> None:
    from dataflex_core import read_jsonl

    target = tmp_path / "d.jsonl"
    append_jsonl(target, [{"x": 1}])
    with open(target, "a") as fh:  # what a writer killed mid-line leaves behind
        fh.write('{"x": 2, "y"')
    assert read_jsonl(target) == [{"x": 1}]
    append_jsonl(target, [{"x": 3}])
    assert read_jsonl(target) == [{"x": 1}, {"x": 3}]


def test_truncate_jsonl_keeps_earlier_steps_and_drops_a_torn_line(tmp_path) -> None:
    from dataflex_core import append_jsonl, read_jsonl, truncate_jsonl

    log = tmp_path / "decisions.jsonl"
    append_jsonl(log, [{"step": s, "x": s * 2} for s in range(5)])
    with log.open("a") as fh:
        fh.write('{"step": 9, "x"')  # a writer killed mid-append
    assert truncate_jsonl(log, 2) == 3
    assert read_jsonl(log) == [{"step": 0, "x": 0}, {"step": 1, "x": 2}, {"step": 2, "x": 4}]
    assert log.read_text().endswith("\n")
    append_jsonl(log, [{"step": 3, "x": 6}])
    assert [r["step"] for r in read_jsonl(log)] == [0, 1, 2, 3]
    assert truncate_jsonl(tmp_path / "missing.jsonl", 1) == 0
