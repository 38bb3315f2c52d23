"""Tiny model, tokenizer and two-process workers of the inference tests (never collected).

Usage: ``python inference_worker.py ddp,zero3 OUT_DIR PORT1,PORT2 REWARD_DIR``. For each mode
both ranks run :func:`run_all` (generation, scoring, rewards, per-domain losses, the hook) in
a fresh process group; rank 0 saves the results with ``torch.save`` to ``OUT_DIR/<mode>.pt``.
"""

from __future__ import annotations

import datetime
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
    "bos_token_id": 1,
    "eos_token_id": 2,
}

#: An odd number of prompts of different lengths (7 -> shards of 4 and 3 + 1 padding).
PROMPTS: list[str] = [
    "w5 w6 w7",
    "w10",
    "w11 w12 w13 w14 w15 w16 w17",
    "w20 w21",
    "w30 w31 w32 w33",
    "w40 w41 w42 w43 w44 w45",
    "w50 w51",
]
RESPONSES: list[str] = ["w8 w9", "w10 w11 w12", "", "w22", "w34 w35 w36 w37", "w46", "w52 w53"]

#: Extra end-of-sequence ids for one run: rows then finish after a few steps, at different
#: steps on different ranks, which is what the ZeRO-3 lockstep must survive.
MANY_EOS: list[int] = [2, *range(4, 24)]


def build_tokenizer(vocab_size: int = 64) -> Any:
    """A word-level tokenizer: ``<pad>`` 0, ``<s>`` 1 (prepended), ``</s>`` 2, ``<unk>`` 3,
    and the words ``w4 .. w{vocab_size-1}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_model(seed: int = 0, classifier: bool = False, **overrides: Any) -> torch.nn.Module:
    """A tiny seeded Llama (causal LM, or a one-label sequence classifier); global RNG untouched."""
    import transformers

    config = transformers.LlamaConfig(**{**TINY_LLAMA, **overrides})
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if classifier:
            config.num_labels = 1
            config.pad_token_id = 0
            return transformers.LlamaForSequenceClassification(config)
        return transformers.LlamaForCausalLM(config)


def eval_domains() -> dict[str, list[dict[str, list[int]]]]:
    """Two domains of tokenised examples (3 and 2 rows); the first two tokens are the prompt."""
    g = torch.Generator().manual_seed(11)
    rows = []
    for i in range(5):
        ids = torch.randint(4, 64, (4 + i % 3,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100, -100, *ids[2:]]})
    return {"a": rows[:3], "b": rows[3:]}


#: The reward model's config in :func:`run_all`.
REWARD: dict[str, Any] = {"template": "{prompt} {response}", "progress": False, "batch_size": 3}


def run_all(model: Any, tokenizer: Any, reward_dir: str | None) -> dict:
    """Every inference entry point on the same inputs; the result is plain Python data."""
    from dataflex_core import get_plugin_manager
    from dataflex_ops.inference import (
        RewardModelScorer,
        domain_eval_losses,
        generate_sequences,
        score_sequences,
    )

    out: dict[str, Any] = {}
    greedy = generate_sequences(
        model, tokenizer, PROMPTS, {"max_new_tokens": 10, "batch_size": 2, "progress": False}
    )
    out["greedy"] = greedy.token_ids
    out["greedy_texts"] = greedy.texts
    sampled = generate_sequences(
        model,
        tokenizer,
        PROMPTS,
        {
            "max_new_tokens": 8,
            "do_sample": True,
            "temperature": 1.3,
            "top_k": 40,
            "top_p": 0.95,
            "num_return_sequences": 3,
            "seed": 5,
            "batch_size": 4,
            "progress": False,
        },
    )
    out["sampled"] = sampled.texts
    module = getattr(model, "module", model)
    saved = module.generation_config.eos_token_id
    module.generation_config.eos_token_id = MANY_EOS
    try:
        early = generate_sequences(
            model,
            tokenizer,
            PROMPTS,
            {
                "max_new_tokens": 12,
                "do_sample": True,
                "seed": 9,
                "batch_size": 1,
                "progress": False,
            },
        )
    finally:
        module.generation_config.eos_token_id = saved
    out["early"] = early.token_ids
    out["early_reasons"] = early.finish_reasons
    scores = score_sequences(
        model, tokenizer, PROMPTS, RESPONSES, {"batch_size": 3, "progress": False}
    )
    out["score_sum"] = scores["sum"]
    out["score_mean"] = scores["mean"]
    out["domain_losses"] = domain_eval_losses(model, eval_domains(), batch_size=2, progress=False)
    hook = get_plugin_manager().hook.dataflex_compute_features
    feats = hook(
        model=model,
        batch={"prompts": PROMPTS, "tokenizer": tokenizer},
        kind="generation",
        options={"max_new_tokens": 6, "progress": False},
    )
    out["hook_generation"] = feats["values"]
    logprob = RewardModelScorer(model, tokenizer, {"head": "logprob", "progress": False})
    out["reward_logprob"] = logprob.score(PROMPTS, RESPONSES)
    if reward_dir is not None:
        # under ZeRO-3 the worker keeps a trainer's HfDeepSpeedConfig alive: the reward model
        # is then loaded partitioned without being told
        reward = RewardModelScorer(reward_dir, config=REWARD, policy_tokenizer=tokenizer)
        out["reward_cls"] = reward.score(PROMPTS, RESPONSES)
        out["reward_partitioned"] = all(hasattr(p, "ds_id") for p in reward.module.parameters())
    return out


def _disable_shm_build() -> None:
    """DeepSpeed JIT-builds a shared-memory comm op on first init (about 45 s with g++)."""
    import deepspeed  # noqa: F401

    module = sys.modules.get("deepspeed.comm.torch")
    if module is not None and hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda: None


ZERO3 = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    "zero_allow_untested_optimizer": True,
}


def run_mode(rank: int, mode: str, out_file: str, port: str, reward_dir: str) -> None:
    """One process group (``ddp``: gloo + DDP; ``zero3``: DeepSpeed ZeRO-3), then torn down."""
    os.environ["MASTER_PORT"] = port
    # a deadlock becomes an error after this long instead of a hang
    timeout = datetime.timedelta(seconds=90)
    import torch.distributed as dist

    tokenizer = build_tokenizer()
    trainer_like = None
    if mode == "ddp":
        dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timeout)
        model = torch.nn.parallel.DistributedDataParallel(build_model())
    else:
        _disable_shm_build()
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", timeout=timeout)
        engine, *_ = deepspeed.initialize(model=build_model(), model_parameters=None, config=ZERO3)
        model = engine.module
        from transformers.integrations import HfDeepSpeedConfig

        trainer_like = HfDeepSpeedConfig(ZERO3)  # what a ZeRO-3 HF Trainer run keeps alive
    calls = [0]
    inner = getattr(model, "module", model)
    inner.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    result = run_all(model, tokenizer, reward_dir)
    result["partitioned"] = all(hasattr(p, "ds_id") for p in inner.parameters())
    if trainer_like is not None:
        from dataflex_ops.inference import RewardModelScorer
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        result["zero3_flag_kept"] = is_deepspeed_zero3_enabled()  # the trainer's registration
        del trainer_like
        # and explicitly, with no trainer config registered
        explicit = RewardModelScorer(reward_dir, config=REWARD, deepspeed_config=ZERO3)
        result["reward_cls_explicit"] = explicit.score(PROMPTS, RESPONSES)
        result["explicit_partitioned"] = all(
            hasattr(p, "ds_id") for p in explicit.module.parameters()
        )
    counts: list[Any] = [None] * WORLD
    dist.all_gather_object(counts, calls[0])
    result["forward_calls"] = counts
    if rank == 0:
        torch.save(result, out_file)
    dist.barrier()
    del model, inner
    dist.destroy_process_group()


def worker(rank: int, modes: str, out_dir: str, ports: str, reward_dir: str) -> None:
    """Run each of the comma-separated ``modes`` in turn (one spawn pays the imports once);
    rank 0 writes ``OUT_DIR/<mode>.pt``."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1"
    )
    torch.set_num_threads(1)
    for mode, port in zip(modes.split(","), ports.split(","), strict=True):
        run_mode(rank, mode, os.path.join(out_dir, f"{mode}.pt"), port, reward_dir)


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(
        worker, args=(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]), nprocs=WORLD, join=True
    )
