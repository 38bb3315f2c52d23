"""Benchmark: batched generation (``dataflex_ops.inference``) against a loop of
``model.generate``, one prompt at a time.

Same tiny Llama (hidden 64, 2 layers, vocabulary 2048, eager attention, float32, built from
``LlamaConfig`` with seeded weights), the same 32 prompts of 8 to 40 tokens, greedy decoding,
the same ``max_new_tokens``, in one invocation with one torch thread (``torch.set_num_threads(1)``,
so that the numbers are stable on a shared machine). Throughput counts the generated tokens
(up to and including an EOS); the outputs of both are checked to be identical. Each variant
runs once to warm up, then the best of ``--repeats`` runs is reported.

Usage::

    python tools/bench/generation.py            # print the table
    python tools/bench/generation.py --write    # also write it to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import headline, write_result, write_section  # noqa: E402

LLAMA = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def build_model() -> Any:
    import torch
    import transformers

    config = transformers.LlamaConfig(**LLAMA)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    return model.eval()


def build_tokenizer() -> Any:
    """Word-level: ``<pad>`` 0, ``<s>`` 1 (prepended), ``</s>`` 2, ``<unk>`` 3, ``w4..w2047``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, LLAMA["vocab_size"])})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_prompts(n: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = rng.integers(7, 40, size=n)  # plus <s>: 8 to 40 tokens
    return [
        " ".join(f"w{t}" for t in rng.integers(4, LLAMA["vocab_size"], size=k)) for k in lengths
    ]


def hf_loop(model: Any, tok: Any, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    import torch

    out = []
    with torch.no_grad():
        for prompt in prompts:
            enc = tok(prompt, return_tensors="pt")
            ids = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0
            )
            new = ids[0, enc["input_ids"].shape[1] :].tolist()
            if 2 in new:  # HF pads nothing for a single row, but stop at EOS to be sure
                new = new[: new.index(2) + 1]
            out.append(new)
    return out


def ours(
    model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    from dataflex_ops.inference import generate_sequences

    res = generate_sequences(
        model,
        tok,
        prompts,
        {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "progress": False},
    )
    return [samples[0] for samples in res.token_ids]


def best_of(fn: Callable[[], list[list[int]]], repeats: int) -> tuple[float, list[list[int]]]:
    result = fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    model, tok = build_model(), build_tokenizer()
    prompts = build_prompts(args.prompts)
    m = args.max_new_tokens

    t_hf, ref = best_of(lambda: hf_loop(model, tok, prompts, m), args.repeats)
    rows: list[tuple[str, str, float]] = [("`model.generate`, one prompt at a time", "1", t_hf)]
    results: dict[str, list[list[int]]] = {}
    for bs in (8, args.prompts):
        t, got = best_of(lambda bs=bs: ours(model, tok, prompts, m, bs), args.repeats)
        results[str(bs)] = got
        rows.append(("`dataflex_ops.generate`, batched", str(bs), t))
    tokens = sum(len(r) for r in ref)
    for key, got in results.items():
        if got != ref:
            raise SystemExit(f"batch size {key}: outputs differ from model.generate")

    lines = [
        "## Generation",
        "",
        f"Tiny Llama (hidden 64, 2 layers, vocabulary 2048, eager attention, float32), "
        f"{len(prompts)} prompts of 8 to 40 tokens, greedy, max_new_tokens = {m}, "
        f"`torch.set_num_threads(1)`; best of {args.repeats} after a warm-up. Both produce the "
        f"same {tokens} tokens (checked).",
        "",
        "| method | batch size | seconds | tokens/s | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, bs, t in rows:
        lines.append(f"| {name} | {bs} | {t:.3f} | {tokens / t:,.0f} | {t_hf / t:.1f}x |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("generation", table)
        t_best = rows[-1][2]
        write_result(
            "generation",
            [
                headline(
                    f"batched generation (batch {args.prompts}) speed-up over `model.generate` "
                    "one prompt at a time",
                    t_hf / t_best,
                )
            ],
            {
                "prompts": len(prompts),
                "max_new_tokens": m,
                "tokens": tokens,
                "rows": [
                    {"method": n, "batch_size": int(bs), "seconds": t, "tokens_per_s": tokens / t}
                    for n, bs, t in rows
                ],
            },
            title="Generation",
        )


if __name__ == "__main__":
    main()
