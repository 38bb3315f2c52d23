"""``dataflex-cli``: train, select, report, version, plugins, components, doctor."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataflex_core import DataflexError, get_plugin_manager, get_registry

__all__ = ["main"]

log = logging.getLogger("dataflex_llamafactory")

_DISTS = (
    "dataflex-core",
    "dataflex-mix",
    "dataflex-select",
    "dataflex-weight",
    "dataflex-ops",
    "dataflex-testing",
    "dataflex-llamafactory",
)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "y", "yes"}


def _device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch: a single process
        return 0


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _torchrun(argv: Sequence[str]) -> int:
    """Re-execute ``dataflex-cli`` under torchrun, like ``llamafactory-cli`` does."""
    import random

    nnodes = os.environ.get("NNODES", "1")
    node_rank = os.environ.get("NODE_RANK", "0")
    nproc = os.environ.get("NPROC_PER_NODE", str(max(_device_count(), 1)))
    master_addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    master_port = os.environ.get("MASTER_PORT", str(random.Random().randint(20001, 29999)))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        print("error: torchrun was not found next to this Python; install torch.", file=sys.stderr)
        return 2
    launcher = str(Path(__file__).with_name("launcher.py"))
    cmd = [
        torchrun,
        "--nnodes", nnodes,
        "--node_rank", node_rank,
        "--nproc_per_node", nproc,
        "--master_addr", master_addr,
        "--master_port", master_port,
        launcher,
        *argv,
    ]
    log.info("launching: %s", " ".join(cmd))
    env = dict(os.environ)
    env.pop("FORCE_TORCHRUN", None)
    return subprocess.run(cmd, env=env, check=False).returncode


def _cmd_train(ns: argparse.Namespace, argv: Sequence[str]) -> int:
    from dataflex_llamafactory.config import load_run_config
    from dataflex_llamafactory.versions import check_versions

    check_versions()
    run = load_run_config(ns.config, ns.overrides)  # validate before launching anything
    from dataflex_llamafactory.workflow import preflight

    preflight(run)
    if not _under_torchrun() and (_truthy("FORCE_TORCHRUN") or _device_count() > 1):
        return _torchrun(argv)

    from dataflex_llamafactory.workflow import destroy_process_group, run_train

    out = run.lf_args.get("output_dir")
    out_path = Path(out).resolve() if isinstance(out, str) else None
    existed = out_path is not None and out_path.exists()
    started = {"flag": False}
    try:
        trainer = run_train(run, on_started=lambda: started.update(flag=True))
    except BaseException:
        rank0 = os.environ.get("RANK", "0") == "0"
        if not started["flag"] and out_path is not None and not existed and out_path.exists() and rank0:
            shutil.rmtree(out_path, ignore_errors=True)  # nothing half-written on bad input
        raise
    finally:
        destroy_process_group()
    _report_after_train(trainer)
    return 0


def _report_after_train(trainer: Any) -> None:
    """Write the run report on rank 0; a failure is a warning, never a failed run."""
    args = getattr(trainer, "args", None)
    try:
        if args is None or os.environ.get("RANK", "0") != "0":
            return
        is_zero = getattr(trainer, "is_world_process_zero", None)
        if callable(is_zero) and not is_zero():
            return
        from dataflex_llamafactory.report import write_report

        path = write_report(args.output_dir, extra={"seed": getattr(args, "seed", None)})
        log.info("run report: %s", path)
    except Exception as exc:  # noqa: BLE001 - the training itself succeeded
        log.warning(
            "could not write the run report for %s: %s: %s",
            getattr(args, "output_dir", "?"), type(exc).__name__, exc,
        )


def _cmd_report(ns: argparse.Namespace) -> int:
    from dataflex_llamafactory.report import write_report

    path = write_report(ns.output_dir, ns.out)
    print(f"wrote {path}")
    return 0


def _budget_arg(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--budget {text!r} is neither a row count (integer) nor a fraction (e.g. 0.05)"
        ) from None


def _cmd_select(ns: argparse.Namespace) -> int:
    from dataflex_llamafactory.config import load_run_config
    from dataflex_llamafactory.versions import check_versions

    check_versions()
    overrides = list(ns.overrides)
    # The schedule keys do not matter offline: accept train configs without update_step.
    import yaml

    raw = yaml.safe_load(Path(ns.config).read_text()) if Path(ns.config).is_file() else None
    block = (raw or {}).get("dataflex") or {}
    if isinstance(block, dict):
        if not block.get("update_step") and not (raw or {}).get("update_step"):
            overrides.append("dataflex.update_step=1")
        if "train_type" not in block and "train_type" not in (raw or {}):
            overrides.append("dataflex.train_type=dynamic_select")
    run = load_run_config(ns.config, overrides)
    from dataflex_llamafactory.offline import run_select

    report = run_select(run, budget=ns.budget)
    print(f"selected {report['budget']} of {report['num_samples']} rows: {report['by_domain']}")
    print(f"train on them with `tokenized_path: {report['tokenized_path']}`")
    return 0


def _version_of(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "(not installed)"


def _cmd_version(ns: argparse.Namespace) -> int:
    for dist in (*_DISTS, "llamafactory", "transformers", "torch", "deepspeed", "pluggy"):
        print(f"{dist:24s} {_version_of(dist)}")
    print(f"{'python':24s} {sys.version.split()[0]}")
    return 0


def _cmd_plugins(ns: argparse.Namespace) -> int:
    pm = get_plugin_manager()
    rows = []
    for name, info in sorted(pm.infos.items()):
        plugin = pm.get_plugin(name)
        hooks = sorted(h.name for h in (pm.get_hookcallers(plugin) or [])) if plugin is not None else []
        status = "loaded" if info.loaded else "FAILED"
        rows.append((name, f"{info.distribution} {info.version}", status, ", ".join(hooks) or "-"))
    if not rows:
        print("no DataFlex plugins found (entry-point group 'dataflex')")
        return 0
    w = [max(len(r[i]) for r in rows + [("plugin", "distribution", "status", "hooks")]) for i in range(3)]
    print(f"{'plugin':{w[0]}}  {'distribution':{w[1]}}  {'status':{w[2]}}  hooks")
    for r in rows:
        print(f"{r[0]:{w[0]}}  {r[1]:{w[1]}}  {r[2]:{w[2]}}  {r[3]}")
    for info in pm.load_errors:
        print(f"\n{info.error}")
    return 0


def _cmd_components(ns: argparse.Namespace) -> int:
    reg = get_registry()
    specs = reg.specs(ns.kind) if ns.kind else reg.specs()
    rows = [(s.kind, s.name, s.source, s.summary) for s in specs]
    hdr = ("kind", "name", "source", "summary")
    w = [max(len(r[i]) for r in [*rows, hdr]) for i in range(3)]
    print(f"{hdr[0]:{w[0]}}  {hdr[1]:{w[1]}}  {hdr[2]:{w[2]}}  {hdr[3]}")
    for r in rows:
        print(f"{r[0]:{w[0]}}  {r[1]:{w[1]}}  {r[2]:{w[2]}}  {r[3]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dataflex-cli``."""
    p = argparse.ArgumentParser(
        prog="dataflex-cli",
        description="Data-centric dynamic training (selection, mixing, reweighting) on LLaMA-Factory.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train with a LLaMA-Factory YAML plus a `dataflex:` block")
    t.add_argument("config", help="run config (YAML)")
    t.add_argument("overrides", nargs="*", help="key=value overrides; dotted keys reach into blocks")
    sel = sub.add_parser(
        "select", help="select a subset offline and write it as a dataset LLaMA-Factory trains on"
    )
    sel.add_argument("config", help="run config (YAML) with a selector in its `dataflex:` block")
    sel.add_argument("overrides", nargs="*", help="key=value overrides; dotted keys reach into blocks")
    sel.add_argument("--budget", type=_budget_arg, default=None,
                     help="rows to keep: a count, or a fraction of the pool (default: the selector's budget)")
    rep = sub.add_parser(
        "report",
        help="render an HTML report of a run (loss, proportions, selection, weights, timing)",
    )
    rep.add_argument("output_dir", help="the output_dir of a finished or partial `train` run")
    rep.add_argument("--out", default=None,
                     help="folder for report.html and its PNGs (default: OUTPUT_DIR/dataflex, or "
                          "OUTPUT_DIR for runs without one)")
    sub.add_parser("version", help="print the versions of DataFlex and its main dependencies")
    sub.add_parser("plugins", help="list DataFlex plugins, their distributions and hooks")
    c = sub.add_parser("components", help="list every registered component with its source")
    c.add_argument("--kind", choices=["selector", "mixer", "weighter", "featurizer", "index", "reward"], default=None)
    doc = sub.add_parser(
        "doctor", help="check the environment (packages, GPUs, plugins, caches) and how to fix it"
    )
    doc.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dataflex-cli``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[dataflex] %(levelname)s %(name)s: %(message)s")
    try:
        if ns.command == "train":
            return _cmd_train(ns, argv)
        if ns.command == "select":
            return _cmd_select(ns)
        if ns.command == "report":
            return _cmd_report(ns)
        if ns.command == "version":
            return _cmd_version(ns)
        if ns.command == "plugins":
            return _cmd_plugins(ns)
        if ns.command == "components":
            return _cmd_components(ns)
        if ns.command == "doctor":
            from dataflex_llamafactory.doctor import run_doctor

            return run_doctor(json_output=ns.json)
    except DataflexError as exc:
        print(f"dataflex-cli: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
