"""Nearest-neighbour search: exact speed, approximate recall, and streaming memory.

Three parts, side by side in one invocation (``dataflex_select.index``, spec §1.6):

* **(a) exact top-k.** Search time of our ``numpy`` backend and our ``flat`` FAISS wrapper
  (``IndexFlatL2`` plus query normalisation, the ``(distance, index)`` re-sort and the id map)
  against raw FAISS ``IndexFlatIP`` and ``IndexFlatL2`` on the same normalised vectors. Goal: our
  exact path at most 1.1x raw FAISS flat.
* **(b) approximate search.** Clustered embeddings (``--rows`` x ``--dim`` float32, ``--clusters``
  Gaussian clusters around random unit centres, per-dimension noise ``spread/√dim``, rows
  normalised) and ``--queries`` queries drawn near data rows. recall@k of ``ivf_flat`` and
  ``hnsw`` against the exact answer, and their search speed-up over exact search (our ``flat``).
  Goal: recall@10 >= 0.95 at >= 5x exact speed.
* **(c) streaming exact top-k.** A float16 ``[--stream-rows, --dim]`` file (8 GiB by default)
  written in chunks to ``--stream-dir``, searched with ``streaming_topk`` over ``np.memmap`` in a
  fresh child process that reports its peak resident set (``ru_maxrss`` and ``VmHWM``). The
  library copies each block out of the map and releases the mapped pages with
  ``MADV_DONTNEED``; ``--naive`` adds a run with that release switched off, to show what a plain
  memmap scan costs. Goal: peak RSS <= 2 GB. The file is deleted afterwards.

Times are the best of ``--repeats`` interleaved runs (the machine may be shared).

Usage::

    python tools/bench/knn.py                                   # full size (about 10 min, 2 cores)
    python tools/bench/knn.py --rows 200000 --stream-rows 2000000 --parts a b c   # smaller
    python tools/bench/knn.py --write                           # also into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from dataflex_select.index import build_index, streaming_topk

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- helpers


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def clustered(
    rows: int, dim: int, clusters: int, spread: float, seed: int, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around ``clusters`` random unit centres; returns (data, cluster labels)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    centres = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    labels = rng.integers(0, clusters, size=rows)
    x = np.empty((rows, dim), dtype=np.float32)
    scale = np.float32(spread / np.sqrt(dim))
    for a in range(0, rows, chunk):
        b = min(a + chunk, rows)
        block = rng.standard_normal((b - a, dim), dtype=np.float32)
        block *= scale
        block += centres[labels[a:b]]
        x[a:b] = _unit(block)
    return x, labels


def queries_near(x: np.ndarray, m: int, spread: float, seed: int) -> np.ndarray:
    """``m`` queries: random data rows plus a tenth of the cluster noise, normalised."""
    rng = np.random.Generator(np.random.PCG64(seed))
    rows = rng.choice(len(x), size=m, replace=False)
    noise = rng.standard_normal((m, x.shape[1]), dtype=np.float32)
    noise *= np.float32(0.1 * spread / np.sqrt(x.shape[1]))
    return _unit(x[rows] + noise)


def best_of(calls: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict]:
    """Run every call ``repeats`` times, interleaved; best seconds and the last result of each."""
    best = {name: float("inf") for name in calls}
    out: dict[str, Any] = {}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            out[name] = call()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


# --------------------------------------------------------------------------- (a) exact


def part_exact(x: np.ndarray, q: np.ndarray, sizes: list[int], k: int, repeats: int) -> tuple:
    import faiss

    lines = [
        "| n | method | build (s) | search (s) | queries/s | × raw IndexFlatIP | same ids as raw |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios: dict[int, dict[str, float]] = {}
    reference: dict[int, tuple[float, np.ndarray]] = {}
    for n in sizes:
        xs = x[:n]
        builds: dict[str, float] = {}
        t0 = time.perf_counter()
        raw_ip = faiss.IndexFlatIP(xs.shape[1])
        raw_ip.add(xs)
        builds["raw FAISS IndexFlatIP"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        raw_l2 = faiss.IndexFlatL2(xs.shape[1])
        raw_l2.add(xs)
        builds["raw FAISS IndexFlatL2"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours_flat = build_index(xs, {"type": "flat", "backend": "faiss"})
        builds["ours: flat (FAISS)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours_np = build_index(xs, {"type": "flat", "backend": "numpy"})
        builds["ours: numpy"] = time.perf_counter() - t0
        indexes = {
            "raw FAISS IndexFlatIP": raw_ip,
            "raw FAISS IndexFlatL2": raw_l2,
            "ours: flat (FAISS)": ours_flat,
            "ours: numpy": ours_np,
        }
        calls = {name: (lambda ix=ix: ix.search(q, k)) for name, ix in indexes.items()}
        best, out = best_of(calls, repeats)
        base = best["raw FAISS IndexFlatIP"]
        raw_ids = out["raw FAISS IndexFlatIP"][1]
        ratios[n] = {name: best[name] / base for name in calls}
        reference[n] = (
            best["ours: flat (FAISS)"],
            out["ours: flat (FAISS)"][1],
            best["ours: numpy"],
        )
        for name in calls:
            same = float(np.mean(out[name][1] == raw_ids))
            lines.append(
                f"| {n:,} | {name} | {builds[name]:.2f} | {best[name]:.3f} | "
                f"{len(q) / best[name]:,.0f} | {best[name] / base:.2f}x | {same:.4f} |"
            )
        del raw_ip, raw_l2, ours_flat, ours_np, indexes, calls
    return lines, ratios, reference


# --------------------------------------------------------------------------- (b) approximate


def part_approx(
    x: np.ndarray,
    q: np.ndarray,
    k: int,
    repeats: int,
    exact: tuple[float, np.ndarray, float | None],
    nprobes: list[int],
    efs: list[int],
    seed: int,
) -> tuple[list[str], list[tuple[str, float, float, float]]]:
    exact_s, truth, numpy_s = exact
    lines = [
        "| method | search setting | build (s) | search (s) | recall@10 "
        "| speed-up over exact (FAISS flat) | speed-up over exact (numpy) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        f"| exact: ours flat (FAISS) | | | {exact_s:.3f} | 1.0000 | 1.0x | "
        + (f"{numpy_s / exact_s:.1f}x |" if numpy_s else "|"),
    ]
    if numpy_s:
        lines.append(
            f"| exact: ours numpy | | | {numpy_s:.3f} | 1.0000 | {exact_s / numpy_s:.1f}x | 1.0x |"
        )
    results: list[tuple[str, float, float, float]] = []

    def run(label: str, index: Any, build_s: float, key: str, values: list[int], default: int):
        calls = {}
        for v in values:
            # search settings are read from index.config at search time; no rebuild needed
            cfg = dataclasses.replace(index.config, **{key: v})
            calls[str(v)] = lambda cfg=cfg: _search_with(index, cfg, q, k)
        best, out = best_of(calls, repeats)
        for v in values:
            r = recall(out[str(v)][1], truth)
            speed = exact_s / best[str(v)]
            tag = f"{key} = {v}" + (" (default)" if v == default else "")
            if key == "nprobe":
                tag += f"; {scanned(index, v):,.0f} rows scanned/query"
            results.append((f"{label} {tag}", r, speed, numpy_s / best[str(v)] if numpy_s else 0))
            vs_numpy = f"{numpy_s / best[str(v)]:.1f}x" if numpy_s else ""
            lines.append(
                f"| {label} | {tag} | {build_s:.1f} | {best[str(v)]:.3f} | {r:.4f} | "
                f"{speed:.1f}x | {vs_numpy} |"
            )

    def scanned(index: Any, nprobe: int) -> float:
        invlists = index.faiss_index.invlists
        sizes = np.array([invlists.list_size(j) for j in range(index.nlist)])
        _, lists = index.faiss_index.quantizer.search(q, min(nprobe, index.nlist))
        return float(sizes[lists].sum(axis=1).mean())

    t0 = time.perf_counter()
    ivf = build_index(x, {"type": "ivf_flat"}, seed=seed)
    ivf_build = time.perf_counter() - t0
    run(f"ivf_flat (nlist = {ivf.nlist})", ivf, ivf_build, "nprobe", nprobes, 10)
    del ivf
    t0 = time.perf_counter()
    hnsw = build_index(x, {"type": "hnsw"}, seed=seed)
    hnsw_build = time.perf_counter() - t0
    run("hnsw (M = 32, efConstruction = 40)", hnsw, hnsw_build, "ef_search", efs, 128)
    del hnsw
    return lines, results


def _search_with(index: Any, cfg: Any, q: np.ndarray, k: int) -> Any:
    index.config = cfg
    return index.search(q, k)


# --------------------------------------------------------------------------- (c) streaming


def write_store(path: Path, rows: int, dim: int, seed: int, chunk: int = 262_144) -> float:
    """Write ``[rows, dim]`` float16 to ``path`` in chunks; returns seconds."""
    rng = np.random.Generator(np.random.PCG64(seed))
    base = rng.standard_normal((min(chunk, rows), dim), dtype=np.float32)
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for c, a in enumerate(range(0, rows, chunk)):
            b = min(a + chunk, rows)
            shift = rng.standard_normal(dim, dtype=np.float32)
            block = base[: b - a] * np.float32(1.0 + 0.01 * (c % 7)) + shift
            fh.write(block.astype(np.float16).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - t0


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def stream_child(args: argparse.Namespace) -> None:
    """Child process of part (c): search the file and print JSON with timings and peak RSS."""
    import dataflex_select.index as ix

    if args.child_naive:
        ix._drop_pages = lambda view: None  # plain memmap slicing: mapped pages stay resident
    rows, dim = args.stream_rows, args.dim
    mm = np.memmap(args.child_path, dtype=np.float16, mode="r", shape=(rows, dim))
    rng = np.random.Generator(np.random.PCG64(args.seed + 1))
    src = np.sort(rng.choice(rows, size=args.stream_queries, replace=False))
    q = np.stack(
        [np.fromfile(args.child_path, np.float16, dim, offset=int(r) * dim * 2) for r in src]
    ).astype(np.float32)
    rss_before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    d, i = streaming_topk(mm, q, args.k, block_rows=args.block_rows)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_kib": rss_before,
                "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "vmhwm_kib": _status_kib("VmHWM"),
                "top1_is_source": float(np.mean(i[:, 0] == src)),
                "top1_distance_max": float(d[:, 0].max()),
            }
        )
    )


def part_stream(args: argparse.Namespace, info: dict[str, Any] | None = None) -> list[str]:
    """Part (c); fills ``info`` (if given) with the measured runs for the JSON result."""
    info = {} if info is None else info
    rows, dim = args.stream_rows, args.dim
    size = rows * dim * 2
    folder = Path(args.stream_dir)
    free = shutil.disk_usage(folder).free
    if free < size + 2 * 2**30:
        return [
            f"Skipped: {size / 2**30:.1f} GiB file needs more than the {free / 2**30:.1f} GiB free."
        ]
    fd, name = tempfile.mkstemp(prefix="dataflex-knn-", suffix=".f16", dir=folder)
    os.close(fd)
    path = Path(name)
    lines = [
        "| variant | file (GiB) | rows | block rows | queries | k | search (s) | GB/s "
        "| RSS before search (MiB) | peak RSS, ru_maxrss (MiB) | VmHWM (MiB) "
        "| top-1 = source row |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    try:
        write_s = write_store(path, rows, dim, args.seed)
        print(f"(c) wrote {size / 2**30:.2f} GiB in {write_s:.1f} s", flush=True)
        goal = ""
        variants = [("streaming_topk (pages released)", False)]
        if args.naive:
            variants.append(("plain memmap slices (no release)", True))
        for label, naive in variants:
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child-path",
                str(path),
                "--stream-rows",
                str(rows),
                "--dim",
                str(dim),
                "--stream-queries",
                str(args.stream_queries),
                "--k",
                str(args.k),
                "--block-rows",
                str(args.block_rows),
                "--seed",
                str(args.seed),
            ] + (["--child-naive"] if naive else [])
            # Launch through a small intermediate process: Linux folds the peak RSS of the
            # process that spawns a child into the child's ru_maxrss at exec, so spawning the
            # measured child straight from this (large) process would report our own peak.
            launcher = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
            cmd = [sys.executable, "-c", launcher, *cmd]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"(c) {label}: {res}", flush=True)
            lines.append(
                f"| {label} | {size / 2**30:.2f} | {rows:,} | {args.block_rows:,} | "
                f"{args.stream_queries} | {args.k} | {res['seconds']:.1f} | "
                f"{size / res['seconds'] / 1e9:.2f} | {res['rss_before_kib'] / 1024:,.0f} | "
                f"{res['ru_maxrss_kib'] / 1024:,.0f} | {res['vmhwm_kib'] / 1024:,.0f} | "
                f"{res['top1_is_source']:.2f} |"
            )
            peak = res["ru_maxrss_kib"] * 1024
            info[label] = {**res, "file_bytes": size, "peak_rss_bytes": peak, "naive": naive}
            if not naive:
                goal = (
                    f"Goal: peak RSS <= 2 GB over a {size / 2**30:.2f} GiB "
                    f"({size / 1e9:.1f} GB) float16 store — "
                    f"{'met' if peak <= 2e9 else 'NOT met'} ({peak / 1e9:.2f} GB)."
                )
        lines += ["", f"File written in {write_s:.0f} s (chunks of 262,144 rows). " + goal]
    finally:
        path.unlink(missing_ok=True)
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm per cluster")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--exact-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-rows", type=int, default=16 * 2**20)
    parser.add_argument("--stream-queries", type=int, default=100)
    parser.add_argument("--block-rows", type=int, default=65536)
    parser.add_argument("--stream-dir", default=tempfile.gettempdir())
    parser.add_argument(
        "--naive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(c): also scan with plain memmap slices (no page release)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write into docs/benchmarks.md")
    parser.add_argument("--child-path", help=argparse.SUPPRESS)
    parser.add_argument("--child-naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_path:
        stream_child(args)
        return

    t_start = time.perf_counter()
    load = load_average()
    sections: list[str] = ["## Nearest-neighbour search", ""]
    # Part (c) runs first, while this process is small: Linux carries the parent's peak RSS
    # at fork into the child's ru_maxrss, which would otherwise report our 1M x 256 data.
    stream_info: dict[str, Any] = {}
    stream_lines = part_stream(args, stream_info) if "c" in args.parts else []
    summary: dict[str, Any] = {"stream": stream_info}
    need_data = "a" in args.parts or "b" in args.parts
    if need_data:
        sizes = sorted({min(n, args.rows) for n in args.exact_sizes} | {args.rows})
        t0 = time.perf_counter()
        x, _ = clustered(args.rows, args.dim, args.clusters, args.spread, args.seed)
        q = queries_near(x, args.queries, args.spread, args.seed + 1)
        print(f"data: {x.shape} in {time.perf_counter() - t0:.1f} s", flush=True)
        data_line = (
            f"Data: {args.rows:,} x {args.dim} float32, {args.clusters} Gaussian clusters around "
            f"random unit centres (noise per dimension {args.spread}/√{args.dim}), rows "
            f"normalised; {args.queries} queries = random data rows + noise "
            f"{0.1 * args.spread}/√{args.dim}, normalised; k = {args.k}."
        )
    reference: dict[int, tuple[float, np.ndarray]] = {}
    if "a" in args.parts:
        lines, ratios, reference = part_exact(x, q, sizes, args.k, args.repeats)
        r = ratios[args.rows]["ours: flat (FAISS)"]
        rn = ratios[args.rows]["ours: numpy"]
        summary["exact_ratio_to_raw_ip"] = {str(n): v for n, v in ratios.items()}
        sections += [
            "### (a) Exact top-k: ours against raw FAISS",
            "",
            data_line + f" Best of {args.repeats} interleaved runs; the index is built "
            'beforehand (build column). Ours: `build_index(x, {"type": "flat", "backend": '
            "...})`; FAISS threads: all cores.",
            "",
            *lines,
            "",
            f"Goal: our exact path <= 1.1x raw FAISS flat at n = {args.rows:,} — "
            f"{'met' if r <= 1.1 else 'NOT met'} ({r:.2f}x for the FAISS-backed `flat`; the numpy "
            f"backend, used when FAISS is not installed, is {rn:.2f}x).",
            "",
        ]
        print("\n".join(lines), flush=True)
    if "b" in args.parts:
        if args.rows not in reference:
            t0 = time.perf_counter()
            flat = build_index(x, {"type": "flat", "backend": "faiss"})
            best, out = best_of({"flat": lambda: flat.search(q, args.k)}, args.repeats)
            reference[args.rows] = (best["flat"], out["flat"][1], None)
            del flat
        lines, results = part_approx(
            x, q, args.k, args.repeats, reference[args.rows], args.nprobe, args.ef_search, args.seed
        )
        summary["approx"] = [
            {"setting": name, "recall": r, "speedup_vs_faiss_flat": s, "speedup_vs_numpy": sn}
            for name, r, s, sn in results
        ]
        met = [name for name, r, s, _ in results if r >= 0.95 and s >= 5]
        met_np = [name for name, r, _, s in results if r >= 0.95 and s >= 5]
        sections += [
            "### (b) Approximate search: recall@10 and speed-up",
            "",
            data_line + " Recall against the exact top-10; speed-up = exact search time / "
            f"approximate search time (search only, best of {args.repeats}), against both exact "
            "paths of part (a). Rows scanned/query = mean total size of the probed IVF lists.",
            "",
            *lines,
            "",
            "Goal: recall@10 >= 0.95 at >= 5x exact speed — against FAISS flat: "
            + (f"met by {'; '.join(met)}." if met else "NOT met by any setting.")
            + " Against our numpy exact search: "
            + (f"met by {'; '.join(met_np)}." if met_np else "NOT met by any setting."),
            "",
        ]
        print("\n".join(lines), flush=True)
    if need_data:
        del x, q
    if "c" in args.parts:
        lines = stream_lines
        sections += [
            "### (c) Streaming exact top-k over a memory-mapped float16 store",
            "",
            f"`streaming_topk(np.memmap(path, float16, 'r'), queries, k={args.k}, "
            f"block_rows={args.block_rows})` in a fresh process; the queries are rows of the "
            "file. Each block is copied out of the map (float16 → float32), normalised, searched, "
            "and its mapped pages are released with `MADV_DONTNEED` (the file stays in the OS "
            "page cache, which is not process memory). Peak RSS is the child's `ru_maxrss` "
            "(and `VmHWM`), including the Python interpreter and numpy.",
            "",
            *lines,
            "",
        ]
        print("\n".join(lines), flush=True)
    wall = time.perf_counter() - t_start
    sections.append(
        f"Wall time of the whole benchmark: {wall:.0f} s; load average at start: {load}."
    )
    body = "\n".join(sections)
    print(body)
    if args.write:
        sys.path.insert(0, str(HERE))
        from _common import write_result, write_section  # the shared docs/benchmarks.md writer

        write_section("knn", body)
        write_result("knn", knn_headlines(args, summary), summary, title="Nearest-neighbour search")


def knn_headlines(args: argparse.Namespace, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The three goals of the module docstring, as ``_common.headline`` records."""
    from _common import headline

    out = []
    if "a" in args.parts:
        ratio = summary["exact_ratio_to_raw_ip"][str(args.rows)]["ours: flat (FAISS)"]
        out.append(
            headline(
                f"(a) exact top-k, ours (FAISS flat) / raw FAISS IndexFlatIP at n = {args.rows:,}",
                ratio, goal=1.1, op="<=", source="tools/bench/knn.py",
            )
        )
    if "b" in args.parts:
        ok = [a for a in summary["approx"] if a["recall"] >= 0.95]
        best = max(ok, key=lambda a: a["speedup_vs_faiss_flat"]) if ok else None
        out.append(
            headline(
                "(b) approximate search: best speed-up over exact (FAISS flat) at recall@10 >= 0.95"
                + (f" ({best['setting']})" if best else " (no setting reaches that recall)"),
                best["speedup_vs_faiss_flat"] if best else None,
                goal=5.0, op=">=", source="tools/bench/knn.py",
            )
        )
    released = [v for v in summary["stream"].values() if not v["naive"]]
    if "c" in args.parts:
        out.append(
            headline(
                "(c) streaming top-k over a memory-mapped float16 store: peak RSS",
                released[0]["peak_rss_bytes"] / 1e9 if released else None,
                "GB", goal=2.0, op="<=", source="tools/bench/knn.py",
            )
        )
    return out


if __name__ == "__main__":
    main()
