"""Benchmark of dataflex-ops feature extraction on the CPU-sized tiny Llama.

Per-sample gradient throughput (vmap, loop, hooks, factorized; samples/s) and projection time
(dense per-tensor streamed / cached, TRAK-style basic, sparse JL) side by side, printed as a
markdown table with the command, the machine and the date.

Usage::

    python tools/bench/features.py                     # print the table
    python tools/bench/features.py --write docs/benchmarks.md

``--write`` replaces the ``## Features`` section between the markers
``<!-- bench:features:start -->`` and ``<!-- bench:features:end -->`` (appended when absent).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

START = "<!-- bench:features:start -->"
END = "<!-- bench:features:end -->"

#: The integration's tiny model dimensions (dataflex_llamafactory.assets.TINY_LLAMA_CONFIG),
#: with a 2048-token vocabulary.
LLAMA = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


def _build(seed: int = 0) -> Any:
    import torch
    import transformers

    config = transformers.LlamaConfig(**LLAMA)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.LlamaForCausalLM(config)


def _batch(n: int, length: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, LLAMA["vocab_size"], (n, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    labels[:, : length // 4] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()  # warm-up (first vmap call traces; first projection fills caches)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(
    samples: int, length: int, proj_dim: int, repeat: int, threads: int
) -> list[dict[str, Any]]:
    import torch
    from dataflex_ops import factorized_grads, make_projector, per_sample_grads

    # one thread by default: on a shared 2-core machine, OpenMP threads that wait on each other
    # made timings 10-100x slower and unstable
    torch.set_num_threads(threads)
    model = _build()
    batch = _batch(samples, length)
    sets: dict[str, tuple[Any, Any]] = {"linear": (model, ["_proj", "lm_head"])}
    try:
        import peft

        lora = peft.get_peft_model(
            _build(),
            peft.LoraConfig(
                r=8,
                lora_alpha=16,
                target_modules=[
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ],
            ),
        )
        sets["lora"] = (lora, "lora")
    except ImportError:  # pragma: no cover - peft is optional
        pass

    rows: list[dict[str, Any]] = []
    grads_for_projection = None
    for set_name, (m, params) in sets.items():
        dims = None
        for strategy in ("vmap", "loop", "hooks", "factorized"):
            if strategy == "factorized":
                fn = lambda m=m, params=params: factorized_grads(m, batch, params=params)  # noqa: E731
            else:
                fn = lambda m=m, params=params, s=strategy: per_sample_grads(  # noqa: E731
                    m, batch, params=params, strategy=s, chunk_size=8
                )
            seconds, out = _time(fn, repeat)
            width = out.values.shape[1] if strategy == "factorized" else out.num_params
            if strategy != "factorized":
                dims = width
                if set_name == "linear" and strategy == "vmap":
                    grads_for_projection = out.grads
            rows.append(
                {
                    "what": f"per-sample grad, {set_name} ({dims:,} params)",
                    "method": strategy,
                    "out_dim": width,
                    "seconds": seconds,
                    "rate": samples / seconds,
                }
            )

    assert grads_for_projection is not None
    p = sum(g[0].numel() for g in grads_for_projection.values())
    projections = [
        (
            "dense rademacher, per_tensor, streamed",
            {"projector": "rademacher", "projector_cache_bytes": 0},
        ),
        ("dense rademacher, per_tensor, cached", {"projector": "rademacher"}),
        (
            "dense rademacher, trak_basic",
            {"projector": "rademacher", "projection_seeding": "trak_basic"},
        ),
        ("sparse JL s=1", {"projector": "sjlt", "sjlt_nnz": 1}),
        ("sparse JL s=4", {"projector": "sjlt", "sjlt_nnz": 4}),
    ]
    for label, cfg in projections:
        proj = make_projector(
            {
                **cfg,
                "proj_dim": proj_dim,
                "projector_cache_bytes": cfg.get("projector_cache_bytes", 2**31),
            }
        )
        seconds, _ = _time(lambda proj=proj: proj.project(grads_for_projection), repeat)
        rows.append(
            {
                "what": f"projection of {samples} x {p:,} to d={proj_dim}",
                "method": label,
                "out_dim": proj_dim,
                "seconds": seconds,
                "rate": samples / seconds,
            }
        )
    return rows


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (
        f"{cpu}, {os.cpu_count()} cores, {device}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def render(
    rows: list[dict[str, Any]],
    argv: list[str],
    samples: int,
    length: int,
    repeat: int,
    threads: int,
) -> str:
    cmd = "python tools/bench/features.py " + " ".join(shlex.quote(a) for a in argv)
    lines = [
        "## Features",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {_machine()}  ",
        f"Date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Tiny Llama (hidden 64, 2 layers, vocabulary {LLAMA['vocab_size']}), {samples} samples of "
        f"up to {length} tokens, eager attention, float32, {threads} torch thread(s); best of "
        f"{repeat} after a warm-up. "
        "`linear` = every nn.Linear weight (attention, MLP, lm_head); `lora` = rank-8 LoRA on "
        "all projections. `factorized` is LoGra with k_in = k_out = 16 (projected features, "
        "not the full gradient).",
        "",
        "| what | method | output dim | seconds | samples/s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {r['method']} | {r['out_dim']:,} | {r['seconds']:.4f} "
            f"| {r['rate']:,.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of ``path`` (or append it)."""
    block = f"{START}\n{section}{END}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    text = text.replace("No benchmark has been run yet.\n\n", "").replace(
        "No benchmark has been run yet.\n", ""
    )
    if START in text and END in text:
        pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.S)
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--proj-dim", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--write", type=Path, default=None, help="markdown file to update")
    args = parser.parse_args(argv)
    rows = run(args.samples, args.length, args.proj_dim, args.repeat, args.threads)
    table = render(rows, argv, args.samples, args.length, args.repeat, args.threads)
    print(table)
    if args.write is not None:
        write_section(args.write, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
