"""Sharded feature passes (spec §5.3): index sharding and gathering; W=2 equals W=1 under
DDP (gloo) and DeepSpeed ZeRO-3 on the CPU."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from dataflex_core import DataError
from dataflex_ops import assemble_by_index, gather_by_index, shard_indices

WORKER = Path(__file__).with_name("dist_worker.py")


def test_shard_indices_cover_and_pad() -> None:
    assert [shard_indices(5, r, 2).tolist() for r in range(2)] == [[0, 1, 2], [3, 4, 4]]
    assert [shard_indices(2, r, 3).tolist() for r in range(3)] == [[0], [1], [1]]
    for n, w in ((7, 2), (8, 4), (3, 5), (1, 1)):
        shards = [shard_indices(n, r, w) for r in range(w)]
        assert len({len(s) for s in shards}) == 1  # same count on every rank (lockstep)
        assert sorted(set(np.concatenate(shards).tolist())) == list(range(n))
        starts = [s[0] for s in shards if len(s)]
        assert starts == sorted(starts)  # contiguous, in rank order
    with pytest.raises(ValueError):
        shard_indices(4, 2, 2)


def test_assemble_by_index_drops_duplicates_and_rejects_gaps() -> None:
    a = torch.tensor([[0.0], [1.0], [2.0]])
    b = torch.tensor([[3.0], [4.0], [4.0]])
    out = assemble_by_index([[0, 1, 2], [3, 4, 4]], [a, b], 5)
    assert out[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    shuffled = assemble_by_index(
        [np.array([4, 0]), np.array([2, 1, 3])], [np.array([4, 0]), np.array([2, 1, 3])], 5
    )
    assert shuffled.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match=r"\[3\]"):
        assemble_by_index([[0, 1, 2], [4]], [a, b[:1]], 5)
    with pytest.raises(DataError, match="out of range"):
        assemble_by_index([[0, 9]], [a[:2]], 5)
    # without a process group gather_by_index only assembles (and checks) the local rows
    valid = gather_by_index(np.array([1, 0]), torch.tensor([True, False]), 2)
    assert valid.tolist() == [False, True]


def _load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dataflex_ops_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run_two_ranks(mode: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{mode}.pt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), mode, str(out), _free_port()],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return torch.load(out, weights_only=False)


def _reference(linear_only: bool = False) -> dict:
    worker = _load_worker()
    return worker.features(worker.build_model(), world=1, rank=0, linear_only=linear_only)


def _compare(two: dict, one: dict) -> None:
    kinds = [k for k in one if not k.endswith(("_valid", "_type", "_strategy"))]
    assert set(kinds) <= set(two)
    for kind in kinds:
        assert torch.equal(two[kind + "_valid"], one[kind + "_valid"]), kind
        a, b = two[kind], one[kind]
        assert a.shape == b.shape, kind
        for i in range(a.shape[0]):
            rel = float((a[i] - b[i]).norm() / b[i].norm())
            assert rel < 1e-5, (kind, i, rel)


@pytest.mark.distributed
def test_ddp_two_ranks_equal_one_rank(tmp_path: Path) -> None:
    two = _run_two_ranks("ddp", tmp_path)
    assert two["per_sample_grad_strategy"] == "vmap"
    _compare(two, _reference())


@pytest.mark.distributed
@pytest.mark.deepspeed
def test_zero3_two_ranks_equal_one_rank(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    two = _run_two_ranks("zero3", tmp_path)
    assert two["partitioned"]  # really ZeRO-3 partitioned parameters
    assert two["per_sample_grad_type"] == "Zero3PerSampleGrad"  # the ZeRO-3 hook answered
    assert two["embedding_type"] == "Zero3Embedding"
    assert two["per_sample_grad_strategy"] == "loop"
    assert two["grad_hooks_strategy"] == "hooks"
    assert two["grad_factorized_strategy"] == "factorized"
    _compare(two, _reference(linear_only=True))
