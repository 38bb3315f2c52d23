"""Feature store: sharded, memory-mapped ``N×d`` feature arrays keyed by content (spec §1.7, §5.6).

This module imports only the standard library and numpy (never torch, never another DataFlex
module), so any package can read a store by its path, and the module can even be loaded from
its file.

On-disk format (version 1)
--------------------------

A store lives in ``<root>/<key>/`` where ``key`` is
``sha256(json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False))`` in lowercase hex, and ``identity`` is a JSON object that names everything
the features depend on: at least ``{"model": ..., "data": ..., "config": ...}`` (model identity
such as run id + step or a checkpoint content hash; dataset fingerprint; featurizer config with
the projector spec, parameter hash and seeds). Any change of an input changes the key, so a
changed input never reuses stale features. The folder holds:

``manifest.json``
    UTF-8 JSON object with the keys

    * ``format``: ``"dataflex-feature-store"``; ``version``: ``1``;
    * ``key``: the hex key (equal to the folder name and to the hash of ``identity``);
    * ``identity``: the JSON object hashed into ``key``;
    * ``num_rows`` (``N``), ``row_shape`` (e.g. ``[d]``), ``dtype`` (numpy name, e.g.
      ``"float16"``), ``shard_rows`` (``R``), ``num_shards`` (``⌈N/R⌉``);
    * ``complete``: the completion bitmap, one ``0``/``1`` per shard;
    * ``shards``: one entry per shard, ``null`` while incomplete, else ``{"file":
      "shard-00000.npy", "start": s·R, "stop": min((s+1)·R, N), "sha256": <hex of the file>}``;
    * ``metadata``: free JSON (not hashed), e.g. timings or the producing package version.

``shard-<s:05d>.npy``
    Rows ``[s·R, min((s+1)·R, N))`` as a standard ``.npy`` file (C order, ``dtype``, shape
    ``[rows, *row_shape]``); open it with ``numpy.load(path, mmap_mode="r")``. Invalid rows
    (samples without a supervised token) are NaN.

Writing protocol: each shard is written to a temporary file in the same folder, flushed,
fsynced and renamed into place (``os.replace``); only then is its bit set, by rewriting the
manifest the same way. A reader therefore only trusts shards whose bit is 1, and a writer
killed at any point leaves the previous manifest intact and loadable; a new writer with the
same identity resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# keep the DataFlex error hierarchy when core is importable (it imports neither numpy nor torch)
try:
    from dataflex_core import DataError as _Base
except ImportError:  # pragma: no cover - the module loaded standalone by file path
    _Base = ValueError  # type: ignore[assignment,misc]

__all__ = [
    "FORMAT",
    "VERSION",
    "FeatureStoreError",
    "FeatureStore",
    "FeatureStoreWriter",
    "store_key",
    "fingerprint_rows",
]

FORMAT = "dataflex-feature-store"
VERSION = 1
MANIFEST = "manifest.json"


class FeatureStoreError(_Base):  # type: ignore[misc,valid-type]
    """A feature store is missing, incomplete, corrupt, or incompatible with the request."""


def _canonical_json(obj: Any) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def store_key(identity: Mapping[str, Any]) -> str:
    """The store key: ``sha256`` of the canonical JSON of ``identity`` (lowercase hex)."""
    try:
        text = _canonical_json(identity)
    except (TypeError, ValueError) as exc:
        raise FeatureStoreError(
            f"the store identity must be JSON-safe (no NaN, no objects): {exc}"
        ) from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_rows(rows: Iterable[Any]) -> str:
    """Content hash of a dataset: token-id sequences (int64), strings (UTF-8) or arrays.

    Each row is hashed with its kind and length, so ``[[1, 2], [3]]`` and ``[[1], [2, 3]]``
    differ.
    """
    h = hashlib.sha256()
    count = 0
    for row in rows:
        if isinstance(row, str):
            data = row.encode("utf-8")
            h.update(b"s" + len(data).to_bytes(8, "little") + data)
        else:
            arr = np.ascontiguousarray(np.asarray(row))
            if arr.dtype.kind in "iub":
                arr = arr.astype(np.int64)
            head = f"a{arr.dtype.str}{arr.shape}".encode()
            h.update(head + arr.nbytes.to_bytes(8, "little") + arr.tobytes())
        count += 1
    h.update(b"n" + count.to_bytes(8, "little"))
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(fileobj)`` into a temp file beside ``path``, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_MISSING = "<missing>"


def _first_difference(path: str, a: Any, b: Any) -> tuple[str, Any, Any]:
    """The first sub-key where two JSON values differ: ``(dotted path, a there, b there)``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
            if va != vb:
                return _first_difference(f"{path}.{key}", va, vb)
    return path, a, b


def _short(value: Any) -> str:
    text = value if value == _MISSING else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _shard_name(s: int) -> str:
    return f"shard-{s:05d}.npy"


class FeatureStore:
    """Read-only view of a store folder (see the module docstring for the format).

    Use :meth:`open`; shards are memory-mapped on first access.
    """

    def __init__(self, path: Path, manifest: Mapping[str, Any]) -> None:
        self.path = path
        self.manifest: dict[str, Any] = dict(manifest)
        self._maps: dict[int, np.ndarray] = {}

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None
    ) -> FeatureStore:
        """Open the store in folder ``path`` (``<root>/<key>``).

        Args:
            path: The store folder.
            expect: Identity entries the store must have (see :meth:`check_identity`), e.g.
                ``{"model": model_identity(model), "config": {...}}``: a store computed for
                another model, parameter set or projector is refused.

        Raises:
            FeatureStoreError: when there is no manifest, it has another format or version,
                its key does not match its identity, or it does not match ``expect``.
        """
        folder = Path(path)
        file = folder / MANIFEST
        if not file.is_file():
            raise FeatureStoreError(f"no feature store at {folder} (missing {MANIFEST}).")
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FeatureStoreError(f"{file} is not valid JSON: {exc}") from exc
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise FeatureStoreError(
                f"{file} is not a version-{VERSION} {FORMAT} manifest "
                f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})."
            )
        if store_key(manifest["identity"]) != manifest.get("key"):
            raise FeatureStoreError(f"{file}: the key does not match the identity (edited?).")
        store = cls(folder, manifest)
        if expect is not None:
            store.check_identity(expect)
        return store

    def check_identity(self, expect: Mapping[str, Any]) -> None:
        """Refuse a store whose identity differs from ``expect`` in any entry ``expect`` has.

        Only the top-level entries named in ``expect`` are compared (e.g. ``model`` and
        ``config`` but not ``data``, when target features of other data must live in the same
        space), each one as a whole; the error names the first differing sub-key.

        Raises:
            FeatureStoreError: naming the entry, both values and the fix.
        """
        stored = self.identity
        for field in expect:
            try:
                want = json.loads(_canonical_json(expect[field]))
            except (TypeError, ValueError) as exc:
                raise FeatureStoreError(
                    f"the expected identity entry {field!r} must be JSON-safe: {exc}"
                ) from exc
            have = stored.get(field, _MISSING)
            if have == want:
                continue
            where, a, b = _first_difference(field, have, want)
            what = {"model": "another model", "config": "another featurizer config"}.get(
                field, f"another {field!r}"
            )
            raise FeatureStoreError(
                f"the feature store at {self.path} was computed for {what}: {where} is "
                f"{_short(a)} in the store but {_short(b)} now. Features of different models, "
                "parameter sets or projectors are never compared; recompute the features for "
                "this model (a store keyed by the new identity) or point to the store made "
                "with it."
            )

    @classmethod
    def find(cls, root: str | os.PathLike[str], identity: Mapping[str, Any]) -> FeatureStore | None:
        """The store of ``identity`` under ``root`` if it exists (complete or not), else None."""
        folder = Path(root) / store_key(identity)
        if not (folder / MANIFEST).is_file():
            return None
        return cls.open(folder)

    # ---------------------------------------------------------------- properties

    @property
    def key(self) -> str:
        """The content key (folder name)."""
        return str(self.manifest["key"])

    @property
    def identity(self) -> dict[str, Any]:
        """What the features depend on (hashed into the key)."""
        return dict(self.manifest["identity"])

    @property
    def metadata(self) -> dict[str, Any]:
        """Free metadata (not part of the key)."""
        return dict(self.manifest.get("metadata") or {})

    @property
    def num_rows(self) -> int:
        """``N``."""
        return int(self.manifest["num_rows"])

    def __len__(self) -> int:
        return self.num_rows

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row, e.g. ``(d,)``."""
        return tuple(int(x) for x in self.manifest["row_shape"])

    @property
    def dtype(self) -> np.dtype:
        """Stored dtype."""
        return np.dtype(self.manifest["dtype"])

    @property
    def shard_rows(self) -> int:
        """Rows per shard ``R``."""
        return int(self.manifest["shard_rows"])

    @property
    def bitmap(self) -> np.ndarray:
        """Completion bitmap, one bool per shard."""
        return np.asarray(self.manifest["complete"], dtype=bool)

    @property
    def complete(self) -> bool:
        """True when every shard is written."""
        return bool(self.bitmap.all())

    def missing_shards(self) -> list[int]:
        """Indices of shards not written yet."""
        return [int(i) for i in np.flatnonzero(~self.bitmap)]

    def shard_range(self, s: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of shard ``s``."""
        start = s * self.shard_rows
        return start, min(start + self.shard_rows, self.num_rows)

    # ---------------------------------------------------------------- reading

    def shard(self, s: int) -> np.ndarray:
        """Shard ``s`` as a read-only memory map.

        Raises:
            FeatureStoreError: when the shard is not complete or its file is inconsistent.
        """
        if not 0 <= s < len(self.bitmap):
            raise IndexError(f"shard {s} out of range (0..{len(self.bitmap) - 1}).")
        if not self.bitmap[s]:
            raise FeatureStoreError(f"shard {s} of {self.path} is not written yet.")
        if s not in self._maps:
            entry = self.manifest["shards"][s]
            arr = np.load(self.path / entry["file"], mmap_mode="r")
            start, stop = self.shard_range(s)
            if arr.shape != (stop - start, *self.row_shape) or arr.dtype != self.dtype:
                raise FeatureStoreError(
                    f"{entry['file']} has shape {arr.shape} and dtype {arr.dtype}, the manifest "
                    f"says {(stop - start, *self.row_shape)} and {self.dtype}."
                )
            self._maps[s] = arr
        return self._maps[s]

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` (a memmap view inside one shard, else a copy)."""
        stop = self.num_rows if stop is None else stop
        if not 0 <= start <= stop <= self.num_rows:
            raise IndexError(f"rows [{start}, {stop}) out of range (N = {self.num_rows}).")
        r = self.shard_rows
        first, last = start // r, max(stop - 1, start) // r
        if first == last and stop > start:
            base = first * r
            return self.shard(first)[start - base : stop - base]
        parts = []
        for s in range(first, last + 1):
            s0, s1 = self.shard_range(s)
            lo, hi = max(start, s0), min(stop, s1)
            if hi > lo:
                parts.append(self.shard(s)[lo - s0 : hi - s0])
        if not parts:
            return np.empty((0, *self.row_shape), dtype=self.dtype)
        return np.concatenate(parts)

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order), as a new array."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.row_shape), dtype=self.dtype)
        shard_of = idx // self.shard_rows
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            out[sel] = self.shard(int(s))[idx[sel] - int(s) * self.shard_rows]
        return out

    def to_array(self) -> np.ndarray:
        """All ``N`` rows (the memmap itself for a one-shard store, else a concatenated copy).

        Raises:
            FeatureStoreError: when the store is incomplete.
        """
        if not self.complete:
            raise FeatureStoreError(
                f"{self.path} is incomplete: shards {self.missing_shards()[:8]} are missing."
            )
        if len(self.bitmap) == 1:
            return self.shard(0)
        return self.rows(0, self.num_rows)

    def valid(self) -> np.ndarray:
        """``[N]`` bool: rows without NaN (requires a complete store)."""
        arr = self.to_array()
        return ~np.isnan(arr.reshape(arr.shape[0], -1)).any(axis=1)

    def verify(self) -> None:
        """Check every written shard's sha256 against the manifest.

        Raises:
            FeatureStoreError: naming the first corrupt shard.
        """
        for entry in self.manifest["shards"]:
            if entry is None:
                continue
            digest = _sha256_file(self.path / entry["file"])
            if digest != entry["sha256"]:
                raise FeatureStoreError(f"{entry['file']} in {self.path} is corrupt (sha256).")


class FeatureStoreWriter:
    """Writes a store shard by shard; resumes an interrupted one with the same identity.

    Rows may arrive in any order (``write`` / ``write_indexed``); a shard is written as soon
    as all its rows are there. Rows of shards that are already complete are skipped. One
    writer per store at a time (rank 0 after gathering).

    Args:
        root: Folder that holds stores; the store goes to ``root/<key>``.
        identity: JSON object of everything the features depend on (hashed into the key).
        num_rows: ``N``.
        row_shape: Shape of one row (``d`` or ``(d,)``).
        dtype: Stored dtype (spec default ``float16``, written after normalisation).
        shard_rows: Rows per shard ``R``.
        metadata: Free JSON saved in the manifest (not hashed).

    Raises:
        FeatureStoreError: when a store with this key exists with another layout.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        identity: Mapping[str, Any],
        num_rows: int,
        row_shape: int | Sequence[int],
        *,
        dtype: str | np.dtype = "float16",
        shard_rows: int = 8192,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if num_rows < 1 or shard_rows < 1:
            raise FeatureStoreError(
                f"num_rows and shard_rows must be >= 1, got {num_rows}, {shard_rows}."
            )
        shape = (
            (int(row_shape),)
            if isinstance(row_shape, (int, np.integer))
            else tuple(int(x) for x in row_shape)
        )
        self.key = store_key(identity)
        self.path = Path(root) / self.key
        self.dtype = np.dtype(dtype)
        layout = {
            "num_rows": int(num_rows),
            "row_shape": list(shape),
            "dtype": self.dtype.name,
            "shard_rows": int(shard_rows),
        }
        num_shards = (num_rows + shard_rows - 1) // shard_rows
        self.path.mkdir(parents=True, exist_ok=True)
        existing = self.path / MANIFEST
        if existing.is_file():
            store = FeatureStore.open(self.path)
            old = {k: store.manifest[k] for k in layout}
            if old != layout:
                raise FeatureStoreError(
                    f"a store with key {self.key[:12]}… exists at {self.path} with layout {old}, "
                    f"not {layout}; use another root or delete it."
                )
            self.manifest = store.manifest
            if metadata:
                self.manifest["metadata"] = {**(self.manifest.get("metadata") or {}), **metadata}
        else:
            self.manifest = {
                "format": FORMAT,
                "version": VERSION,
                "key": self.key,
                "identity": json.loads(_canonical_json(identity)),
                **layout,
                "num_shards": num_shards,
                "complete": [0] * num_shards,
                "shards": [None] * num_shards,
                "metadata": dict(metadata or {}),
            }
            self._write_manifest()
        self.num_rows = int(num_rows)
        self.row_shape = shape
        self.shard_rows = int(shard_rows)
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # ---------------------------------------------------------------- state

    @property
    def complete(self) -> bool:
        """True when every shard is written."""
        return all(self.manifest["complete"])

    def missing_shards(self) -> list[int]:
        """Shards still to write."""
        return [i for i, done in enumerate(self.manifest["complete"]) if not done]

    def missing_rows(self) -> list[int]:
        """Row indices of the shards still to write (what a resumed pass must compute)."""
        out: list[int] = []
        for s in self.missing_shards():
            start = s * self.shard_rows
            out.extend(range(start, min(start + self.shard_rows, self.num_rows)))
        return out

    # ---------------------------------------------------------------- writing

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write consecutive rows ``[start, start + len(rows))``."""
        rows = np.asarray(rows)
        self.write_indexed(np.arange(start, start + rows.shape[0]), rows)

    def write_indexed(self, indices: Sequence[int] | np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows[j]`` at row ``indices[j]``; flushes every shard that becomes full."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = np.asarray(rows)
        if rows.shape != (len(idx), *self.row_shape):
            raise FeatureStoreError(
                f"rows have shape {rows.shape}, expected {(len(idx), *self.row_shape)}."
            )
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_rows):
            raise FeatureStoreError(f"row index out of range [0, {self.num_rows}).")
        shard_of = idx // self.shard_rows
        for s in np.unique(shard_of):
            s = int(s)
            if self.manifest["complete"][s]:
                continue
            sel = np.flatnonzero(shard_of == s)
            start = s * self.shard_rows
            n = min(self.shard_rows, self.num_rows - start)
            if s not in self._buffers:
                self._buffers[s] = (
                    np.empty((n, *self.row_shape), dtype=self.dtype),
                    np.zeros(n, dtype=bool),
                )
            buf, filled = self._buffers[s]
            local = idx[sel] - start
            buf[local] = rows[sel].astype(self.dtype, copy=False)
            filled[local] = True
            if filled.all():
                self._flush(s)

    def _flush(self, s: int) -> None:
        buf, _ = self._buffers.pop(s)
        name = _shard_name(s)
        target = self.path / name
        _atomic_write(target, lambda fh: np.save(fh, buf, allow_pickle=False))
        start = s * self.shard_rows
        self.manifest["shards"][s] = {
            "file": name,
            "start": start,
            "stop": start + buf.shape[0],
            "sha256": _sha256_file(target),
        }
        self.manifest["complete"][s] = 1
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1, sort_keys=True, allow_nan=False) + "\n"
        _atomic_write(self.path / MANIFEST, lambda fh: fh.write(text.encode("utf-8")))

    def close(self) -> FeatureStore:
        """Drop unfinished buffers (their shards stay missing) and return a reader."""
        self._buffers.clear()
        return FeatureStore.open(self.path)

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._buffers.clear()
