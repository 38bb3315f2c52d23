"""Generation, scoring, rewards and per-domain losses with two CPU ranks (gloo) equal one rank:
DeepSpeed ZeRO-3 (lockstep, an odd number of prompts, rows finishing at different steps) and
DDP. A deadlock would fail the run through the 90 s collective timeout, not hang it."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

WORKER = Path(__file__).with_name("inference_worker.py")


def _load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dataflex_ops_inference_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    worker = _load_worker()
    path = tmp_path_factory.mktemp("reward")
    worker.build_model(seed=3, classifier=True).save_pretrained(path)
    worker.build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(reward_dir: Path) -> dict:
    worker = _load_worker()
    return worker.run_all(worker.build_model(), worker.build_tokenizer(), str(reward_dir))


@pytest.fixture(scope="module")
def two_ranks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, reward_dir: Path
) -> dict[str, dict]:
    """Both modes in one two-process spawn (the imports are paid once): DDP, then ZeRO-3 when
    DeepSpeed is installed and the ZeRO-3 test is selected."""
    modes = ["ddp"]
    selected = {item.name for item in request.session.items}
    if importlib.util.find_spec("deepspeed") is not None and (
        "test_zero3_two_ranks_equal_one_rank" in selected
    ):
        modes.append("zero3")
    out = tmp_path_factory.mktemp("two_ranks")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(var, None)
    ports = ",".join(_free_port() for _ in modes)
    proc = subprocess.run(
        [sys.executable, str(WORKER), ",".join(modes), str(out), ports, str(reward_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {mode: torch.load(out / f"{mode}.pt", weights_only=False) for mode in modes}


def _close(a: list[float], b: list[float]) -> bool:
    return all(
        (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-5 * max(1.0, abs(y))
        for x, y in zip(a, b, strict=True)
    ) and len(a) == len(b)


def _compare(two: dict, one: dict) -> None:
    for key in ("greedy", "greedy_texts", "sampled", "early", "early_reasons", "hook_generation"):
        assert two[key] == one[key], key
    for key in ("score_sum", "score_mean", "reward_logprob", "reward_cls"):
        assert _close(two[key], one[key]), (key, two[key], one[key])
    assert two["domain_losses"].keys() == one["domain_losses"].keys()
    for name, value in one["domain_losses"].items():
        assert abs(two["domain_losses"][name] - value) < 1e-5


def test_reference_run_is_sane(reference: dict) -> None:
    assert len(reference["greedy"]) == 7 and all(len(s) == 1 for s in reference["greedy"])
    assert all(len(s) == 3 for s in reference["sampled"])
    # the many-EOS run really finishes rows early and at different steps
    reasons = [r for rows in reference["early_reasons"] for r in rows]
    lengths = {len(t) for rows in reference["early"] for t in rows}
    assert "eos" in reasons and len(lengths) > 2


@pytest.mark.distributed
@pytest.mark.deepspeed
def test_zero3_two_ranks_equal_one_rank(two_ranks: dict, reference: dict) -> None:
    pytest.importorskip("deepspeed")
    two = two_ranks["zero3"]
    assert two["partitioned"]  # the policy really is ZeRO-3 partitioned
    assert two["reward_partitioned"]  # and the reward model was loaded partitioned
    assert two["zero3_flag_kept"]  # the trainer's DeepSpeed registration survived the load
    assert two["explicit_partitioned"]
    assert _close(two["reward_cls_explicit"], reference["reward_cls"])
    calls = two["forward_calls"]
    assert calls[0] == calls[1] > 0  # lockstep: the same number of collective forwards
    _compare(two, reference)


@pytest.mark.distributed
def test_ddp_two_ranks_equal_one_rank(two_ranks: dict, reference: dict) -> None:
    two = two_ranks["ddp"]
    assert not two["partitioned"] and not two["reward_partitioned"]
    _compare(two, reference)
