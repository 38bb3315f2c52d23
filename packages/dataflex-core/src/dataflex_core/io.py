"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "append_jsonl",
    "read_jsonl",
    "truncate_jsonl",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically. NaN and infinities are rejected."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def append_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Append records to a JSONL file: one ``write`` of whole lines, flushed and fsynced.

    All records are serialised first (a NaN anywhere rejects the whole call and leaves the file
    as it was). Appending costs O(new lines), so a log of every step stays cheap. A writer
    killed mid-write can leave at most one torn last line without a newline; :func:`read_jsonl`
    ignores it, and a later append starts on a fresh line.
    """
    target = Path(path)
    new = "".join(json.dumps(dict(r), sort_keys=True, allow_nan=False) + "\n" for r in records)
    if not new:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a torn line from a killed writer: end it
                new = "\n" + new
        fh.write(new.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    return target


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file written by :func:`append_jsonl`, skipping torn (unparsable) lines."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_jsonl(path: str | os.PathLike[str], max_step: int, key: str = "step") -> int:
    """Keep only the records of a JSONL log with ``record[key] <= max_step``, atomically.

    Used on resume: decisions made after the checkpoint are dropped (the resumed run makes them
    again). A torn last line (a writer killed mid-append) and records without ``key`` are
    dropped too. Returns the number of records kept; a missing file keeps 0.
    """
    target = Path(path)
    if not target.exists():
        return 0
    keep = [r for r in read_jsonl(target) if isinstance(r.get(key), int) and r[key] <= max_step]
    atomic_write_text(target, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
    return len(keep)
