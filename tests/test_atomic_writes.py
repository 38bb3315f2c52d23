"""Crash safety of every file a run writes: SIGKILL a writer mid-write, then read what is left.

Each test starts a child Python process that writes the real file through the real function
(``atomic_write_json`` for ``dataflex_state.json``, ``append_jsonl`` for ``decisions.jsonl`` and
``selections.jsonl``, ``FeatureStoreWriter`` for feature-store shards and their manifest, and
``atomic_write_text``/``atomic_write_json`` for the offline ``selected_ids.txt`` and
``selection_report.json``). A trap installed in the child lets the chosen write put part of its
bytes on disk (flushed and fsynced), prints ``MIDWRITE`` and blocks; the parent waits for that
line and only then sends SIGKILL. The kill point is therefore exact, with no timing race: no
sleep decides whether the kill lands before, during or after a write.

The parent then checks that the previous version is intact and loadable, that the torn bytes
really reached the disk (so the test saw a real mid-write kill), and that the next writer
recovers.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataflex_core import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from dataflex_ops.store import FeatureStore, FeatureStoreError, FeatureStoreWriter, store_key

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

# Payload builders, run both in the child (which writes) and here (which checks).
PAYLOADS = textwrap.dedent(
    '''
    import numpy as np

    def state(k):
        """A dataflex_state.json-like snapshot after update k (about 1 MB as indented JSON)."""
        return {
            "schema_version": 1, "step": 10 * k, "update_count": k, "train_type": "dynamic_mix",
            "mixer": {"weights": [k / 10, 1 - k / 10], "step": k},
            "sampler": {"consumed": 80 * k,
                        "order": [(i * 7919 + k) % 100003 for i in range(100000)]},
        }

    def record(name, step):
        """One line of decisions.jsonl or selections.jsonl at ``step``."""
        if name == "selections.jsonl":
            return {"step": step, "selected": [(step * 31 + i) % 50000 for i in range(4000)]}
        return {"step": step, "kind": "selector", "component": "less",
                "decision": {"scores": [round((step * i) % 97 / 97, 6) for i in range(2000)]}}

    def line(rec):
        """How append_jsonl serialises a record."""
        import json
        return json.dumps(dict(rec), sort_keys=True, allow_nan=False) + "\\n"

    IDENTITY = {"model": {"run": "r1", "step": 4}, "data": "fp-123", "config": {"d": 64}}
    N, R, D = 1024, 256, 64

    def features():
        return np.sin(np.arange(N * D, dtype=np.float64).reshape(N, D) / 7.0).astype(np.float32)

    def ids(version):
        return "".join(f"{(i * 13 + version) % 5000}\\n" for i in range(3000))

    def report(version):
        return {"budget": 3000, "num_samples": 5000, "version": version,
                "selected": [(i * 13 + version) % 5000 for i in range(3000)],
                "scores": [((i * version) % 101) / 101 for i in range(3000)]}
    '''
)
P: dict[str, Any] = {}
exec(PAYLOADS, P)  # noqa: S102 - our own source, shared with the child

CHILD = PAYLOADS + textwrap.dedent(
    '''
    import json, os, sys, time

    def stop(tag):
        """Report the kill point and block until the parent kills this process."""
        sys.stdout.write(f"MIDWRITE {tag}\\n")
        sys.stdout.flush()
        while True:
            time.sleep(3600)

    class Cut:
        """A file that accepts ``budget`` bytes, makes them durable, then stops mid-write."""

        def __init__(self, fh, budget, tag):
            self.fh, self.budget, self.tag = fh, budget, tag

        def write(self, data):
            data = bytes(data)
            if len(data) <= self.budget:
                self.budget -= len(data)
                return self.fh.write(data)
            self.fh.write(data[: self.budget])
            self.fh.flush()
            os.fsync(self.fh.fileno())
            stop(self.tag)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

    def trap_fdopen(nth, budget, tag):
        """Cut the ``nth`` file os.fdopen opens from now on (an atomic write's temp file)."""
        real, seen = os.fdopen, [0]

        def fdopen(fd, *a, **k):
            fh = real(fd, *a, **k)
            seen[0] += 1
            return Cut(fh, budget, tag) if seen[0] == nth else fh

        os.fdopen = fdopen

    def trap_replace(when, tag, after=False):
        """Stop just before (or after) os.replace renames a temp file onto a matching target."""
        real = os.replace

        def replace(src, dst, *a, **k):
            hit = when(os.path.basename(dst))
            if hit and not after:
                stop(tag)
            real(src, dst, *a, **k)
            if hit and after:
                stop(tag)

        os.replace = replace

    scenario, args = sys.argv[1], json.loads(sys.argv[2])

    if scenario == "state":
        from dataflex_core import atomic_write_json
        k = args["k"]
        for v in range(1, k + 1):
            if v == k:
                text = json.dumps(state(v), indent=2, sort_keys=True) + "\\n"
                if args["stage"] == "partial":
                    trap_fdopen(1, len(text.encode()) // 2, "state")
                else:
                    trap_replace(lambda name: name == "dataflex_state.json", "state")
            atomic_write_json(args["path"], state(v))
        sys.exit("the trap did not fire")

    if scenario == "jsonl":
        import dataflex_core.io as io_mod
        from dataflex_core import append_jsonl
        name, k = args["name"], args["k"]
        for step in range(1, k):
            append_jsonl(args["path"], [record(name, step)])
        real_open = open
        io_mod.open = lambda *a, **kw: Cut(real_open(*a, **kw), args["cut"], "jsonl")
        append_jsonl(args["path"], [record(name, k + j) for j in range(3)])
        sys.exit("the trap did not fire")

    if scenario == "store":
        from dataflex_ops.store import FeatureStoreWriter
        data = features()
        w = FeatureStoreWriter(args["root"], IDENTITY, N, D, dtype="float32", shard_rows=R)
        w.write(0, data[: 2 * R])  # shards 0 and 1 complete
        stage = args["stage"]
        if stage == "mid-shard":
            trap_fdopen(1, 128 + 20000, stage)  # the .npy header and part of the rows
        elif stage == "shard-renamed":
            trap_replace(lambda name: name.startswith("shard-"), stage, after=True)
        else:  # mid-manifest: the shard file completes, its manifest update is torn
            trap_fdopen(2, 300, stage)
        w.write(2 * R, data[2 * R : 3 * R])
        sys.exit("the trap did not fire")

    if scenario == "offline":
        from dataflex_core import atomic_write_json, atomic_write_text
        out = args["out"]
        # the order of offline.run_select: selected_ids.txt, then selection_report.json
        nth = 1 if args["stage"] == "ids" else 2
        text = ids(2) if nth == 1 else json.dumps(report(2), indent=2, sort_keys=True)
        size = len(text.encode())
        trap_fdopen(nth, size // 2, args["stage"])
        atomic_write_text(os.path.join(out, "selected_ids.txt"), ids(2))
        atomic_write_json(os.path.join(out, "selection_report.json"), report(2))
        sys.exit("the trap did not fire")

    sys.exit(f"unknown scenario {scenario}")
    '''
)


def kill_mid_write(scenario: str, **args: Any) -> str:
    """Run the child until it reports the kill point, SIGKILL it; return the reported tag."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, scenario, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        if not line.startswith("MIDWRITE"):
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"the child never reached the write ({line!r}); stderr:\n{err}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        return line.split()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _temps(folder: Path, name: str) -> list[Path]:
    """Temporary files an interrupted atomic write of ``name`` left behind."""
    return sorted(folder.glob(f".{name}.*.tmp"))


# --------------------------------------------------------------------------- dataflex_state.json


@pytest.mark.parametrize("stage", ["partial", "before-rename"])
def test_state_file_keeps_the_previous_version(tmp_path: Path, stage: str) -> None:
    path = tmp_path / "checkpoint-30" / "dataflex_state.json"
    k = 3  # versions 1 and 2 complete, version 3 killed
    assert kill_mid_write("state", path=str(path), k=k, stage=stage) == "state"

    assert json.loads(path.read_text()) == P["state"](k - 1)
    # the killed write really put bytes on disk, in a temp file the loader never reads
    full = len((json.dumps(P["state"](k), indent=2, sort_keys=True) + "\n").encode())
    (tmp,) = _temps(path.parent, path.name)
    assert tmp.stat().st_size == (full // 2 if stage == "partial" else full)

    atomic_write_json(path, P["state"](k))  # the next save succeeds over the leftovers
    assert json.loads(path.read_text()) == P["state"](k)


# --------------------------------------------------------------------------- decision logs


@pytest.mark.parametrize("name", ["decisions.jsonl", "selections.jsonl"])
@pytest.mark.parametrize("where", ["first-byte", "mid-second-line", "line-boundary"])
def test_jsonl_log_keeps_every_complete_line(tmp_path: Path, name: str, where: str) -> None:
    path = tmp_path / "dataflex" / name
    k = 4  # steps 1..3 appended one per call; the 4th call appends 3 records and is killed
    batch = [P["record"](name, k + j) for j in range(3)]
    lines = [P["line"](r) for r in batch]
    cut = {
        "first-byte": 1,
        "mid-second-line": len(lines[0]) + len(lines[1]) // 2,
        "line-boundary": len(lines[0]),
    }[where]
    kill_mid_write("jsonl", path=str(path), name=name, k=k, cut=cut)

    before = [P["record"](name, s) for s in range(1, k)]
    whole = [batch[0]] if cut >= len(lines[0]) else []
    raw = path.read_text()
    assert raw == "".join(P["line"](r) for r in before) + "".join(lines)[:cut]
    assert raw.endswith("\n") == (where == "line-boundary")  # a torn last line otherwise
    assert read_jsonl(path) == before + whole

    # the next append starts on a fresh line; the torn fragment stays unreadable on its own
    later = P["record"](name, 99)
    append_jsonl(path, [later])
    assert read_jsonl(path) == before + whole + [later]
    torn = [ln for ln in path.read_text().splitlines() if ln.strip()][len(before) + len(whole) : -1]
    assert len(torn) == (0 if where == "line-boundary" else 1)


# --------------------------------------------------------------------------- feature store


@pytest.mark.parametrize("stage", ["mid-shard", "shard-renamed", "mid-manifest"])
def test_feature_store_keeps_completed_shards_and_resumes(tmp_path: Path, stage: str) -> None:
    N, R, D, identity = P["N"], P["R"], P["D"], P["IDENTITY"]
    data = P["features"]()
    assert kill_mid_write("store", root=str(tmp_path), stage=stage) == stage

    folder = tmp_path / store_key(identity)
    store = FeatureStore.open(folder, expect=identity)
    assert store.bitmap.tolist() == [True, True, False, False]
    assert store.missing_shards() == [2, 3]
    store.verify()  # the completed shards match their checksums
    np.testing.assert_array_equal(store.rows(0, 2 * R), data[: 2 * R])
    with pytest.raises(FeatureStoreError, match="not written yet"):
        store.shard(2)
    with pytest.raises(FeatureStoreError, match="incomplete"):
        store.to_array()
    # where the kill landed: a torn temp shard, a renamed shard the manifest never
    # acknowledged, or a complete shard with a torn manifest update
    shard2 = folder / "shard-00002.npy"
    if stage == "mid-shard":
        assert not shard2.exists()
        assert [p.stat().st_size for p in _temps(folder, shard2.name)] == [128 + 20000]
    else:
        assert shard2.stat().st_size == 128 + R * D * 4
        if stage == "mid-manifest":
            assert [p.stat().st_size for p in _temps(folder, "manifest.json")] == [300]

    resumed = FeatureStoreWriter(tmp_path, identity, N, D, dtype="float32", shard_rows=R)
    assert resumed.missing_rows() == list(range(2 * R, N))
    resumed.write_indexed(np.arange(2 * R, N), data[2 * R :])
    done = resumed.close()
    assert done.complete
    done.verify()
    np.testing.assert_array_equal(done.to_array(), data)


# --------------------------------------------------------------------------- offline outputs


@pytest.mark.parametrize("stage", ["ids", "report"])
def test_offline_outputs_keep_the_previous_version(tmp_path: Path, stage: str) -> None:
    ids_path, report_path = tmp_path / "selected_ids.txt", tmp_path / "selection_report.json"
    atomic_write_text(ids_path, P["ids"](1))  # the previous `dataflex-cli select` run
    atomic_write_json(report_path, P["report"](1))
    assert kill_mid_write("offline", out=str(tmp_path), stage=stage) == stage

    # the file being written when the kill landed is the previous version, whole
    assert json.loads(report_path.read_text()) == P["report"](1)
    if stage == "ids":
        assert ids_path.read_text() == P["ids"](1)
        assert _temps(tmp_path, ids_path.name)
    else:
        # selected_ids.txt was already replaced; each file is whole, but the two files are
        # not replaced together (the report's `selected` is authoritative)
        assert ids_path.read_text() == P["ids"](2)
        assert _temps(tmp_path, report_path.name)
    assert all(line.isdigit() for line in ids_path.read_text().splitlines())

    atomic_write_text(ids_path, P["ids"](3))
    atomic_write_json(report_path, P["report"](3))
    assert json.loads(report_path.read_text()) == P["report"](3)
    assert ids_path.read_text() == P["ids"](3)
