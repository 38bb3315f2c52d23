"""Feature store (spec §1.7, §5.6): atomic shards, resume, content keys, torch-free reading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataflex_ops.store import (
    FeatureStore,
    FeatureStoreError,
    FeatureStoreWriter,
    fingerprint_rows,
    store_key,
)

IDENTITY = {
    "model": {"run_id": "r1", "step": 40},
    "data": fingerprint_rows([[1, 2, 3], [4, 5]]),
    "config": {"kind": "per_sample_grad", "proj_dim": 8, "seed": 0},
}


def _rows(n: int = 10, d: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def test_roundtrip_memmap_and_manifest(tmp_path: Path) -> None:
    rows = _rows()
    rows[3] = np.nan  # an invalid sample
    writer = FeatureStoreWriter(tmp_path, IDENTITY, 10, 8, dtype="float16", shard_rows=4)
    writer.write_indexed([9, 8], rows[[9, 8]])  # any order; shard 2 = rows 8..9 completes
    assert writer.manifest["complete"] == [0, 0, 1]
    writer.write(0, rows[:8])
    store = writer.close()
    assert store.path == tmp_path / store_key(IDENTITY)
    assert store.complete and store.num_rows == 10 and store.row_shape == (8,)
    assert isinstance(store.shard(0), np.memmap)
    full = store.to_array()
    np.testing.assert_array_equal(full, rows.astype(np.float16))
    np.testing.assert_array_equal(store.rows(3, 9), rows[3:9].astype(np.float16))
    np.testing.assert_array_equal(store.take([9, 0, 5]), rows[[9, 0, 5]].astype(np.float16))
    assert store.valid().tolist() == [i != 3 for i in range(10)]
    store.verify()
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["format"] == "dataflex-feature-store" and manifest["version"] == 1
    assert manifest["shards"][1] == {
        "file": "shard-00001.npy",
        "start": 4,
        "stop": 8,
        "sha256": manifest["shards"][1]["sha256"],
    }
    # the documented format is plain numpy: no DataFlex code is needed to read a shard
    np.testing.assert_array_equal(np.load(store.path / "shard-00002.npy"), full[8:])


def test_killed_writer_keeps_previous_manifest_and_resumes(tmp_path: Path, monkeypatch) -> None:
    rows = _rows()
    writer = FeatureStoreWriter(tmp_path, IDENTITY, 10, 8, shard_rows=4)
    writer.write(0, rows[:8])  # shards 0 and 1 written
    before = (writer.path / "manifest.json").read_bytes()

    real_save = np.save

    def dying_save(fh, arr, **kwargs):  # writes half a shard, then the process "dies"
        fh.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt("killed mid-shard")

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        writer.write(8, rows[8:])
    monkeypatch.setattr(np, "save", real_save)

    assert (writer.path / "manifest.json").read_bytes() == before
    assert not (writer.path / "shard-00002.npy").exists()
    assert not list(writer.path.glob(".*tmp"))  # the temp file was removed
    store = FeatureStore.open(writer.path)
    assert store.bitmap.tolist() == [True, True, False] and not store.complete
    np.testing.assert_array_equal(store.rows(0, 8), rows[:8].astype(np.float16))
    with pytest.raises(FeatureStoreError, match="incomplete"):
        store.to_array()
    with pytest.raises(FeatureStoreError, match="not written"):
        store.shard(2)

    again = FeatureStoreWriter(tmp_path, IDENTITY, 10, 8, shard_rows=4)  # resume
    assert again.missing_rows() == [8, 9]
    again.write(0, rows)  # complete shards are skipped
    done = again.close()
    assert done.complete
    np.testing.assert_array_equal(done.to_array(), rows.astype(np.float16))


def test_changed_input_changes_the_key(tmp_path: Path) -> None:
    other_data = {**IDENTITY, "data": fingerprint_rows([[1, 2, 3], [4, 6]])}
    other_step = {**IDENTITY, "model": {"run_id": "r1", "step": 41}}
    keys = {store_key(i) for i in (IDENTITY, other_data, other_step)}
    assert len(keys) == 3
    a = FeatureStoreWriter(tmp_path, IDENTITY, 2, 3).path
    b = FeatureStoreWriter(tmp_path, other_data, 2, 3).path
    assert a != b and a.parent == b.parent == tmp_path
    assert FeatureStore.find(tmp_path, other_step) is None
    assert store_key(dict(reversed(list(IDENTITY.items())))) == store_key(IDENTITY)
    assert fingerprint_rows([[1, 2], [3]]) != fingerprint_rows([[1], [2, 3]])


def test_layout_mismatch_and_tampering_are_errors(tmp_path: Path) -> None:
    FeatureStoreWriter(tmp_path, IDENTITY, 10, 8, shard_rows=4)
    with pytest.raises(FeatureStoreError, match="layout"):
        FeatureStoreWriter(tmp_path, IDENTITY, 10, 8, shard_rows=5)
    path = tmp_path / store_key(IDENTITY) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["identity"]["model"]["step"] = 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(FeatureStoreError, match="key does not match"):
        FeatureStore.open(path.parent)
    with pytest.raises(FeatureStoreError, match="no feature store"):
        FeatureStore.open(tmp_path / "nothing")
    with pytest.raises(FeatureStoreError, match="JSON-safe"):
        store_key({"x": float("nan")})


def test_corrupt_shard_is_detected(tmp_path: Path) -> None:
    writer = FeatureStoreWriter(tmp_path, IDENTITY, 4, 2, shard_rows=4, dtype="float32")
    store = (writer.write(0, np.ones((4, 2))), writer.close())[1]
    data = (store.path / "shard-00000.npy").read_bytes()
    (store.path / "shard-00000.npy").write_bytes(data[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(FeatureStoreError, match="corrupt"):
        FeatureStore.open(store.path).verify()


def test_reading_does_not_import_torch(tmp_path: Path) -> None:
    writer = FeatureStoreWriter(tmp_path, IDENTITY, 5, 3, shard_rows=2, dtype="float32")
    writer.write(0, np.arange(15, dtype=np.float32).reshape(5, 3))
    path = writer.close().path
    code = (
        "import sys\n"
        "from dataflex_ops.store import FeatureStore\n"
        f"s = FeatureStore.open({str(path)!r})\n"
        "assert s.to_array().sum() == 105 and s.complete\n"
        "assert 'torch' not in sys.modules, 'reading a feature store imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # the module also works loaded from its file, without dataflex_ops on the path
    import dataflex_ops.store as mod

    by_path = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('fs', {mod.__file__!r})\n"
        "fs = importlib.util.module_from_spec(spec); spec.loader.exec_module(fs)\n"
        f"assert fs.FeatureStore.open({str(path)!r}).rows(1, 4).shape == (3, 3)\n"
        "assert 'torch' not in sys.modules and 'dataflex_ops' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", by_path], check=True)
