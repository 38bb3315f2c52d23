"""Two-process workers for the distributed tests (run as a script, never collected).

Usage: ``python dist_worker.py {ddp|zero3} OUT_FILE PORT``. Each rank computes features of its
shard; rank 0 saves the gathered ``[N, ...]`` results with ``torch.save`` to ``OUT_FILE``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

WORLD = 2

TINY_LLAMA: dict[str, Any] = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def build_model() -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(**TINY_LLAMA)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(config)


def dataset(n: int = 7) -> list[dict[str, list[int]]]:
    """Tokenised examples of different lengths; the first two tokens are the prompt."""
    g = torch.Generator().manual_seed(11)
    rows = []
    for i in range(n):
        ids = torch.randint(0, 64, (4 + i % 4,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100, -100, *ids[2:]]})
    return rows


#: (result name, featurizer kind, options); ``linear_only`` runs are added under ZeRO-3
KINDS: list[tuple[str, str, dict[str, Any]]] = [
    ("per_sample_grad", "per_sample_grad", {"strategy": "auto", "params": "trainable"}),
    ("embedding", "embedding", {"pooling": "position_weighted"}),
    ("per_sample_loss", "per_sample_loss", {}),
]
LINEAR_ONLY: list[tuple[str, str, dict[str, Any]]] = [
    ("grad_hooks", "per_sample_grad", {"strategy": "hooks", "params": ["_proj", "lm_head"]}),
    ("grad_factorized", "per_sample_grad", {"strategy": "factorized", "params": ["_proj"]}),
]


def features(
    model: torch.nn.Module, world: int | None, rank: int | None, linear_only: bool = False
) -> dict[str, Any]:
    from dataflex_core import get_plugin_manager
    from dataflex_ops.distributed import sharded_features

    pm = get_plugin_manager()
    data = dataset()
    out: dict[str, Any] = {}
    for name, kind, options in KINDS + (LINEAR_ONLY if linear_only else []):
        featurizer = pm.hook.dataflex_make_featurizer(model=model, kind=kind, context=options)
        got = sharded_features(
            featurizer, model, data, batch_size=2, world_size=world, rank=rank, progress=False
        )
        out[name] = got["values"].cpu()
        out[name + "_valid"] = got["valid"].cpu()
        out[name + "_type"] = type(featurizer).__name__
        if "strategy" in got:
            out[name + "_strategy"] = got["strategy"]
    return out


def _disable_shm_build() -> None:
    """DeepSpeed JIT-builds a shared-memory comm op on first init (about 45 s with g++)."""
    import deepspeed  # noqa: F401

    module = sys.modules.get("deepspeed.comm.torch")
    if module is not None and hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda: None


def worker(rank: int, mode: str, out_file: str, port: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
    )
    torch.set_num_threads(1)
    if mode == "ddp":
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        model = torch.nn.parallel.DistributedDataParallel(build_model())
    else:
        _disable_shm_build()
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
            "zero_allow_untested_optimizer": True,
        }
        engine, *_ = deepspeed.initialize(model=build_model(), model_parameters=None, config=config)
        model = engine.module
        import torch.distributed as dist
    result = features(model, None, None, linear_only=mode == "zero3")
    if mode == "zero3":
        result["partitioned"] = all(hasattr(p, "ds_id") for p in model.parameters())
    if rank == 0:
        torch.save(result, out_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(sys.argv[1], sys.argv[2], sys.argv[3]), nprocs=WORLD, join=True)
