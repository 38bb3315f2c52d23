"""Benchmark of dataflex-ops feature extraction on the CPU-sized tiny Llama.

Part ``basic``: per-sample gradient throughput (vmap, loop, hooks, factorized; samples/s) and
projection time (dense per-tensor streamed / cached, TRAK-style basic, sparse JL) side by side.

Part ``compare`` (issue 4): LESS-style gradient features against the predecessor's way on a tiny
Llama (hidden 128, 4 layers, 64-token sequences, d = 8192), for LoRA and full-parameter
gradients. The predecessor's way is one sample at a time, ``loss.backward()``, flattened
``p.grad``, and a dense Rademacher projection regenerated block by block for every projected
batch by ``trak.projectors.BasicProjector`` itself (our bit-identical ``trak_basic`` mode when
``traker`` is not installed). Ours is batched per-sample gradients plus our projection. Each
variant runs in its own subprocess (one torch thread), which reports its time and its peak RSS
(``ru_maxrss``); a reference subprocess that only builds the model and the batch gives the
RSS the work adds. One training step (forward + backward + AdamW step) on the same batch is
timed the same way.

Everything is printed as markdown tables with the command, the machine and the date.

Usage::

    python tools/bench/features.py                     # print the tables
    python tools/bench/features.py --write docs/benchmarks.md
    python tools/bench/features.py --part compare      # only the comparison

``--write`` replaces the ``## Features`` section between the markers
``<!-- bench:features:start -->`` and ``<!-- bench:features:end -->`` (appended when absent).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import shlex
import subprocess
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


def _time(fn: Callable[[], Any], repeat: int, slow: float = 3.0) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()  # warm-up (first vmap call traces; first projection fills caches)
    if time.perf_counter() - t0 > slow:
        repeat = 1  # seconds-long calls: one timed run keeps the benchmark short
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


# --------------------------------------------------------------------------- vs the predecessor

#: The comparison model of issue 4: a tiny Llama with hidden size 128 and 4 layers.
CMP_LLAMA = {
    "vocab_size": 2048,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}
CMP_LENGTH = 64
CMP_PROMPT = 16  # the first 16 labels are -100 (a prompt), the other 48 tokens are supervised
TRAK_BLOCK = 128  # LESS's block_size for BasicProjector
LESS_PROJECT_INTERVAL = 16  # LESS stacks 16 per-sample gradients per projector call


def _cmp_model(kind: str) -> Any:
    """The comparison model: ``lora`` (PEFT r=8 on q_proj/v_proj) or ``full``."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**CMP_LLAMA)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    if kind == "lora":
        import peft

        cfg = peft.LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
        )
        model = peft.get_peft_model(model, cfg)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a trained adapter: lora_B is not zero
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    return model


def _cmp_batch(n: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CMP_LLAMA["vocab_size"], (n, CMP_LENGTH), generator=g)
    labels = ids.clone()
    labels[:, :CMP_PROMPT] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _trak_projector(grad_dim: int, proj_dim: int) -> tuple[Any, str]:
    """TRAK's BasicProjector as LESS builds it (seed 0, block 128), float32 on the CPU."""
    import torch

    try:
        from trak.projectors import BasicProjector, ProjectionType
    except ImportError:  # our mode is tested bit-identical to it
        from dataflex_ops import DenseProjector

        proj = DenseProjector(
            {
                "projection_seeding": "trak_basic",
                "proj_dim": proj_dim,
                "block_size": TRAK_BLOCK,
            }
        )
        return (lambda x: proj.project(x)), "dataflex trak_basic (traker not installed)"
    proj = BasicProjector(
        grad_dim=grad_dim,
        proj_dim=proj_dim,
        seed=0,
        proj_type=ProjectionType.rademacher,
        device=torch.device("cpu"),
        block_size=TRAK_BLOCK,
        dtype=torch.float32,
        model_id=0,
    )
    return (lambda x: proj.project(x, model_id=0)), "trak.projectors.BasicProjector"


def _child(variant: str, n: int, proj_dim: int, blocks: int) -> dict[str, Any]:
    """One variant, in this (fresh) process; returns times and the peak RSS."""
    import torch

    torch.set_num_threads(1)
    kind, what, *rest = variant.split(":")
    model = _cmp_model(kind)
    batch = _cmp_batch(n)
    params = [p for p in model.parameters() if p.requires_grad]
    num_params = sum(p.numel() for p in params)
    out: dict[str, Any] = {"variant": variant, "samples": n, "params": num_params}
    if what == "ref":
        pass
    elif what == "train":
        opt = torch.optim.AdamW(params, lr=1e-4)
        model.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            opt.step()

        step()  # warm-up; creates the Adam state
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - t0)
        out.update(seconds=best)
    elif what == "base":
        # the predecessor's way (LESS collect_grads): batch of one, loss.backward(), flat
        # p.grad, and every 16 gradients one BasicProjector call, which regenerates each
        # P x 128 block. With blocks < d/128 the projector runs on the first `blocks` blocks
        # and its time is scaled to d (the cost is the same for every block).
        d_run = proj_dim
        if num_params * TRAK_BLOCK * 4 * (proj_dim // TRAK_BLOCK) > 512 * 2**20:
            d_run = min(proj_dim, blocks * TRAK_BLOCK)  # a minute or more per call: scale
        project, label = _trak_projector(num_params, d_run)
        scale = proj_dim / d_run

        def grad_of(i: int) -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            loss = model(
                input_ids=batch["input_ids"][i : i + 1], labels=batch["labels"][i : i + 1]
            ).loss
            loss.backward()
            return torch.cat([p.grad.reshape(-1) for p in params])

        def one_pass() -> tuple[float, float]:
            t_grad = t_proj = 0.0
            pending: list[torch.Tensor] = []
            for i in range(n):
                t0 = time.perf_counter()
                pending.append(grad_of(i))
                t_grad += time.perf_counter() - t0
                if len(pending) == LESS_PROJECT_INTERVAL or i == n - 1:
                    t0 = time.perf_counter()
                    project(torch.stack(pending))
                    t_proj += time.perf_counter() - t0
                    pending = []
            return t_grad, t_proj

        grad_of(0)  # warm-up
        # best of 2 like the fast variants, unless a pass takes minutes (scaled projection)
        passes = [one_pass() for _ in range(1 if scale > 1 else 2)]
        t_grad, t_proj = min(passes, key=lambda p: p[0] + p[1] * scale)
        model.zero_grad(set_to_none=True)
        out.update(
            grad_seconds=t_grad,
            proj_seconds=t_proj * scale,
            seconds=t_grad + t_proj * scale,
            projector=label,
            extrapolated=scale > 1,
            measured_dim=d_run,
        )
    elif what == "ours":
        from dataflex_ops import make_projector, per_sample_grads

        strategy, projector = rest
        d_run = proj_dim
        cfg: dict[str, Any] = {"proj_dim": proj_dim}
        if projector == "sjlt":
            cfg.update(projector="sjlt", sjlt_nnz=1)
        else:  # the LESS default: dense Rademacher, per_tensor seeding, cached while it fits
            cfg.update(projector="rademacher")
            if num_params * proj_dim * 4 > 512 * 2**20:
                # R does not fit the default 512 MiB cache: most tiles are regenerated per
                # call. Run the first `blocks` column blocks, with the cache budget scaled
                # alike (so the same tensors are cached), and scale the time to d.
                d_run = min(proj_dim, blocks * 128)
                cfg.update(proj_dim=d_run, projector_cache_bytes=512 * 2**20 * d_run // proj_dim)
        scale = proj_dim / d_run
        proj = make_projector(cfg)

        def grads() -> Any:
            return per_sample_grads(
                model, batch, params="trainable", strategy=strategy, chunk_size=8
            ).grads

        t0 = time.perf_counter()
        warm = grads()  # warm-up: vmap traces, the projector fills its cache
        t_first_grad = time.perf_counter() - t0
        t0 = time.perf_counter()
        proj.project(warm)
        t_first_proj = time.perf_counter() - t0
        del warm
        repeat = 1 if t_first_grad + t_first_proj > 5 else 3
        t_grad = t_proj = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            g = grads()
            t1 = time.perf_counter()
            proj.project(g)
            t2 = time.perf_counter()
            del g
            t_grad, t_proj = min(t_grad, t1 - t0), min(t_proj, t2 - t1)
        out.update(
            grad_seconds=t_grad,
            proj_seconds=t_proj * scale,
            seconds=t_grad + t_proj * scale,
            first_proj_seconds=t_first_proj * scale,
            extrapolated=scale > 1,
            measured_dim=d_run,
        )
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    out["maxrss_mib"] = _maxrss_mib()
    return out


def _run_child(variant: str, n: int, proj_dim: int, blocks: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant,
        "--samples",
        str(n),
        "--proj-dim",
        str(proj_dim),
        "--blocks",
        str(blocks),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON ") :])
            print(
                f"  {variant}: {result.get('seconds', 0):.3f} s (process {wall:.0f} s)",
                file=sys.stderr,
            )
            return result
    raise RuntimeError(f"variant {variant} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


#: (set, per-sample gradient strategies to try) of the comparison; hooks cannot take the
#: embeddings and norms of a full-parameter gradient.
CMP_SETS = {"lora": ("hooks", "vmap"), "full": ("vmap", "loop")}


def compare(
    n_lora: int, n_full: int, proj_dim: int, blocks: int
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for kind, strategies in CMP_SETS.items():
        n = n_lora if kind == "lora" else n_full
        variants = [f"{kind}:ref", f"{kind}:train", f"{kind}:base"]
        variants += [f"{kind}:ours:{s}:sjlt" for s in strategies]
        variants += [f"{kind}:ours:{strategies[0]}:dense"]
        results[kind] = [_run_child(v, n, proj_dim, blocks) for v in variants]
    return results


def _cmp_row(
    name: str,
    r: dict[str, Any],
    note: str,
    *,
    n: int,
    base: dict[str, Any],
    train: dict[str, Any],
    ref: dict[str, Any],
) -> str:
    return (
        f"| {name} | {r['grad_seconds']:.3f} | {r['proj_seconds']:.3f} | "
        f"{r['seconds']:.3f} | {n / r['seconds']:,.1f} | "
        f"{base['seconds'] / r['seconds']:,.1f}x | "
        f"{r['seconds'] / train['seconds']:,.2f} | {r['maxrss_mib']:,.0f} | "
        f"{r['maxrss_mib'] - ref['maxrss_mib']:,.0f} | {note} |"
    )


def render_compare(
    results: dict[str, list[dict[str, Any]]], proj_dim: int, blocks: int
) -> list[str]:
    goals = {"lora": 15.0, "full": 100.0}
    title = {"lora": "LoRA (r=8 on q_proj, v_proj)", "full": "full-parameter"}
    lines = [
        "### LESS-style features against the predecessor's way",
        "",
        f"Tiny Llama: hidden {CMP_LLAMA['hidden_size']}, {CMP_LLAMA['num_hidden_layers']} "
        f"layers, intermediate {CMP_LLAMA['intermediate_size']}, vocabulary "
        f"{CMP_LLAMA['vocab_size']}, eager attention, float32; every sample is {CMP_LENGTH} "
        f"tokens with the first {CMP_PROMPT} labels masked; the same samples for every "
        f"variant; projection to d = {proj_dim}. Each variant runs in a fresh subprocess with "
        "`torch.set_num_threads(1)` (and `OMP_NUM_THREADS=1`) on a shared machine, so compare "
        "rows of one run, not across runs. Times are for all the samples after a warm-up "
        "(ours and the training step: best of 3 unless a pass takes seconds; predecessor: "
        "best of 2 unless its projection is scaled). *Predecessor*: one sample at a "
        "time, `loss.backward()`, "
        f"flattened `p.grad`, and every {LESS_PROJECT_INTERVAL} gradients one call of "
        "`trak.projectors.BasicProjector` (seed 0, block 128, float32: LESS uses float16 on "
        "GPUs, which is slow on CPUs), which regenerates every P×128 block per call. *Ours*: "
        "`per_sample_grads` on the whole batch (chunk 8) and `make_projector(...)`: `sjlt` = "
        "sparse JL with s = 1; `dense` = the LESS default, Rademacher with `per_tensor` "
        "seeding, `R_p` cached while it fits the 512 MiB default cache (warm: the one-time "
        "cache fill is in the last column). RSS = peak resident memory of the variant's "
        "process (`ru_maxrss`); +RSS = that minus the reference process, which only builds "
        "the model and the batch.",
        "",
    ]
    for kind, rows in results.items():
        by = {r["variant"].split(":", 1)[1]: r for r in rows}
        ref, train, base = by["ref"], by["train"], by["base"]
        n = base["samples"]
        ours = [r for k, r in by.items() if k.startswith("ours")]
        best = min(ours, key=lambda r: r["seconds"])
        lines += [
            f"**{title[kind]}**: P = {base['params']:,} gradient values, {n} samples.",
            "",
            "| variant | grads (s) | projection (s) | total (s) | samples/s | speed-up | "
            "× train step | RSS (MiB) | +RSS (MiB) | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]

        note = base["projector"]
        if base.get("extrapolated"):
            note += f"; projection timed on {base['measured_dim']} of {proj_dim} columns, scaled"
        fmt = {"n": n, "base": base, "train": train, "ref": ref}
        lines.append(_cmp_row("predecessor: loop + backward + BasicProjector", base, note, **fmt))
        for r in ours:
            _, _, strategy, projector = r["variant"].split(":")
            note = f"first call {r['first_proj_seconds']:.2f} s" if projector == "dense" else ""
            if r.get("extrapolated"):
                note += (
                    f"; R does not fit the cache: timed on {r['measured_dim']} of {proj_dim} "
                    "columns, scaled"
                )
            name = f"ours: {strategy} + {projector}" + (" (best)" if r is best else "")
            lines.append(_cmp_row(name, r, note.strip("; "), **fmt))
        lines.append(
            f"| one training step (forward + backward + AdamW) on the {n} samples | | | "
            f"{train['seconds']:.3f} | {n / train['seconds']:,.1f} | | 1.0 | "
            f"{train['maxrss_mib']:,.0f} | {train['maxrss_mib'] - ref['maxrss_mib']:,.0f} | |"
        )
        speed = base["seconds"] / best["seconds"]
        ratio = best["seconds"] / train["seconds"]
        dense = next(r for r in ours if r["variant"].endswith(":dense"))
        lines += [
            "",
            f"Goals (issue 4) for {title[kind]}: speed-up ≥ {goals[kind]:.0f}x — "
            f"{'met' if speed >= goals[kind] else 'not met'} by the best variant "
            f"({speed:,.1f}x); with the dense LESS-default projector "
            f"{base['seconds'] / dense['seconds']:,.1f}x "
            f"({'met' if base['seconds'] / dense['seconds'] >= goals[kind] else 'not met'}). "
            f"Feature extraction ≤ 2x one training step — "
            f"{'met' if ratio <= 2 else 'not met'} by the best variant ({ratio:,.2f}x); "
            f"dense {dense['seconds'] / train['seconds']:,.2f}x.",
            "",
        ]
    return lines


def compare_headlines(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The goals of issue 4, as ``_common.headline`` records (best variant of each set)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import headline

    goals = {"lora": 15.0, "full": 100.0}
    title = {"lora": "LoRA", "full": "full-parameter"}
    out = []
    for kind, rows in results.items():
        by = {r["variant"].split(":", 1)[1]: r for r in rows}
        best = min((r for k, r in by.items() if k.startswith("ours")), key=lambda r: r["seconds"])
        out += [
            headline(
                f"{title[kind]} LESS features: speed-up over the predecessor (best variant)",
                by["base"]["seconds"] / best["seconds"],
                goal=goals[kind],
                op=">=",
                source="issue 4",
            ),
            headline(
                f"{title[kind]} LESS features: time / one training step (best variant)",
                best["seconds"] / by["train"]["seconds"],
                goal=2.0,
                op="<=",
                source="issue 4",
            ),
        ]
    return out


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
    compare_lines: list[str] | None = None,
    seconds: float | None = None,
) -> str:
    cmd = "python tools/bench/features.py " + " ".join(shlex.quote(a) for a in argv)
    lines = [
        "## Features",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {_machine()}  ",
        f"Date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}"
        + (f"  \nWall time of the whole benchmark: {seconds:.0f} s" if seconds else ""),
        "",
    ]
    if compare_lines:
        lines += compare_lines
    if not rows:
        return "\n".join(lines) + "\n"
    lines += [
        "### Per-sample gradient strategies and projections",
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
    parser.add_argument(
        "--part", choices=("all", "basic", "compare"), default="all", help="what to run"
    )
    parser.add_argument("--lora-samples", type=int, default=32, help="compare: LoRA samples")
    parser.add_argument("--full-samples", type=int, default=16, help="compare: full samples")
    parser.add_argument(
        "--blocks",
        type=int,
        default=8,
        help="compare: 128-column blocks timed where a dense projection regenerates its "
        "matrix per call (the time is scaled to --proj-dim); d/128 times it all",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:  # one comparison variant, in a fresh process
        result = _child(args.child, args.samples, args.proj_dim, args.blocks)
        print("BENCH_JSON " + json.dumps(result))
        return 0
    if args.write is not None and args.part != "all":
        parser.error("--write replaces the whole section: run it with --part all")
    t0 = time.perf_counter()
    compare_lines = None
    results: dict[str, list[dict[str, Any]]] = {}
    if args.part in ("all", "compare"):
        print("comparison with the predecessor's way:", file=sys.stderr)
        results = compare(args.lora_samples, args.full_samples, args.proj_dim, args.blocks)
        compare_lines = render_compare(results, args.proj_dim, args.blocks)
    rows: list[dict[str, Any]] = []
    if args.part in ("all", "basic"):
        rows = run(args.samples, args.length, args.proj_dim, args.repeat, args.threads)
    table = render(
        rows,
        argv,
        args.samples,
        args.length,
        args.repeat,
        args.threads,
        compare_lines,
        time.perf_counter() - t0,
    )
    print(table)
    if args.write is not None:
        write_section(args.write, table)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import write_result

        write_result(
            "features",
            compare_headlines(results),
            {"compare": results, "basic": rows, "proj_dim": args.proj_dim},
            page=args.write,
            title="Features",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
