"""Every example config runs: one per registered algorithm, each shrunk to a few steps.

The examples are discovered (``examples/**/*.yaml``), so a new one is tested without touching this
file. Each file's header names its own command (``dataflex-cli train|select <file> ...``); the test
runs that command in-process (one import of LLaMA-Factory for all of them) with command-line
overrides that shrink the run to a few steps and bound the cost of one update, and checks what
the run wrote: the decisions log of the right component with plausible decisions and finite
training losses, or, for offline selection, the report and the selected dataset.

Examples that are already run end to end by another test file are not run again here; a test
checks that the file named for each of them really runs it (``RUN_ELSEWHERE``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

#: Every registered algorithm -> its example. A registered mixer, selector or weighter that is
#: missing here fails ``test_every_registered_algorithm_has_an_example``.
ALGORITHMS: dict[tuple[str, str], str] = {
    ("mixer", "static"): "examples/mix/static.yaml",
    ("mixer", "random"): "examples/mix/random.yaml",
    ("mixer", "odm"): "examples/quickstart.yaml",
    ("mixer", "doremi"): "examples/doremi/2_proxy.yaml",
    ("mixer", "aioli"): "examples/aioli.yaml",
    ("mixer", "dynamic_moe"): "examples/dynamic_moe.yaml",
    ("selector", "static"): "examples/select/static.yaml",
    ("selector", "random"): "examples/select/random.yaml",
    ("selector", "loss"): "examples/select/loss.yaml",
    ("selector", "delta_loss"): "examples/select/delta_loss.yaml",
    ("selector", "less"): "examples/select/online_less.yaml",
    ("selector", "cluster_less"): "examples/select/cluster_less.yaml",
    ("selector", "nice"): "examples/select/online_nice.yaml",
    ("selector", "near"): "examples/select/near.yaml",
    ("selector", "tsds"): "examples/select/tsds.yaml",
    ("selector", "dsir"): "examples/select/dsir.yaml",
    ("weighter", "uniform"): "examples/weight/uniform.yaml",
    ("weighter", "loss"): "examples/weight/loss.yaml",
    ("weighter", "adapt"): "examples/weight/adapt.yaml",
    ("weighter", "custom"): "examples/weight/custom.yaml",
}

#: Examples run end to end by another test file (relative path or folder -> that file).
RUN_ELSEWHERE: dict[str, str] = {
    "examples/quickstart.yaml": "tests/test_mixers_e2e.py",
    "examples/aioli.yaml": "tests/test_mixers_e2e.py",
    "examples/dynamic_moe.yaml": "tests/test_mixers_e2e.py",
    "examples/doremi/": "tests/test_doremi_pipeline.py",
    "examples/select/less_pipeline/": "tests/test_examples_select.py",
    "examples/sft_zero3.yaml": "tests/test_distributed.py",
}

#: The schedule of every shrunk run, per train_type (dataflex.* overrides).
SHRINK: dict[str, dict[str, int]] = {
    # 3 steps: decisions after steps 1 and 2
    "dynamic_mix": {"warmup_step": 1, "update_step": 1, "update_times": 2},
    # one Flex epoch of 3 steps: the warmup draw at 0, one update after step 1
    "dynamic_select": {"warmup_step": 1, "update_step": 2, "update_times": 1, "train_step": 3},
    # 3 steps, weighted from step 1
    "dynamic_weight": {"warmup_step": 1, "train_step": 3},
}

#: Component parameters that bound the cost of one update (dataflex.component_params.*).
CHEAP: dict[tuple[str, str], dict[str, Any]] = {
    ("selector", "loss"): {"candidate_subsample": 64},
    ("selector", "delta_loss"): {"candidate_subsample": 64},
    ("selector", "cluster_less"): {"num_clusters": 8, "samples_per_cluster": 2, "proj_dim": 64},
    ("selector", "less"): {"candidate_subsample": 32, "proj_dim": 64},
    ("selector", "nice"): {
        "candidate_subsample": 16,
        "mc_samples": 2,
        "max_new_tokens": 8,
        "proj_dim": 64,
    },
    ("selector", "near"): {"candidate_subsample": 48, "recompute": "every_update"},
    ("selector", "tsds"): {"candidate_subsample": 48, "recompute": "every_update"},
}

#: Rows read from each dataset (LLaMA-Factory's ``max_samples``): a small pool for every run, so
#: that whole-pool passes (reference losses, clustering, embeddings) stay short.
MAX_SAMPLES = 96
OFFLINE_BUDGET = 16

_COMMAND = re.compile(
    r"^#\s+(?P<env>(?:[A-Z_]+=\S+\s+)*)(?:uv run (?:--frozen )?)?dataflex-cli\s+"
    r"(?P<sub>train|select)\s+(?P<path>\S+\.yaml)(?P<rest>.*)$"
)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _run_elsewhere(rel: str) -> str | None:
    for key, test_file in RUN_ELSEWHERE.items():
        if rel == key or (key.endswith("/") and rel.startswith(key)):
            return test_file
    return None


def _header(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _command(path: Path) -> tuple[dict[str, str], str, list[str]]:
    """(environment, sub-command, arguments) of the command in ``path``'s header comment."""
    rel = _rel(path)
    for line in _header(path):
        m = _COMMAND.match(line.rstrip("\\").rstrip())
        if m and m["path"] == rel:
            env = dict(item.split("=", 1) for item in m["env"].split())
            return env, m["sub"], shlex.split(m["rest"])
    raise AssertionError(f"{rel}: the header comment does not give its command")


EXAMPLE_FILES = sorted(
    p for p in EXAMPLES.rglob("*.yaml") if "data" not in p.relative_to(EXAMPLES).parts
)
TO_RUN = [p for p in EXAMPLE_FILES if _run_elsewhere(_rel(p)) is None]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def _loggers() -> None:
    # Libraries that bind a StreamHandler to sys.stderr on first use must do so now, outside
    # capsys: a handler bound to one test's captured stderr writes to a closed stream later.
    import datasets
    import transformers
    from llamafactory.extras import logging as lf_logging

    transformers.logging.get_logger("transformers")
    datasets.logging.get_logger("datasets")
    lf_logging.get_logger("llamafactory")


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, dataflex_cache: Path, _loggers: None, capsys):
    """Run ``dataflex-cli ARGV`` in this process from the repo root; returns (rc, stderr)."""
    from dataflex_core import reset_plugin_manager
    from dataflex_llamafactory.cli import main

    monkeypatch.setattr(logging, "raiseExceptions", False)
    monkeypatch.chdir(REPO)
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DATAFLEX_STRICT_PLUGINS": "1",
        "DATAFLEX_CACHE_DIR": str(dataflex_cache),
    }.items():
        monkeypatch.setenv(key, value)
    for key in (
        "FORCE_TORCHRUN",
        "NPROC_PER_NODE",
        "LOCAL_RANK",
        "RANK",
        "WORLD_SIZE",
        "MASTER_PORT",
    ):
        monkeypatch.delenv(key, raising=False)

    def run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
        for key, value in env.items():
            if key == "PYTHONPATH":  # e.g. the folder of a custom weight function
                for entry in reversed(value.split(":")):
                    monkeypatch.syspath_prepend(str(REPO / entry))
            else:
                monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        return rc, capsys.readouterr().err

    yield run
    reset_plugin_manager()


# --------------------------------------------------------------------------- helpers
def _offline_fill(path: Path) -> list[str]:
    """What `dataflex-cli select` fills in for an offline config without a schedule."""
    block = yaml.safe_load(path.read_text()).get("dataflex", {})
    if "train_type" in block:
        return []
    return ["dataflex.train_type=dynamic_select", "dataflex.update_step=1"]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def _overrides(component: Any, block: dict[str, Any], out: Path) -> list[str]:
    args = [
        f"output_dir={out}",
        f"dataset_dir={EXAMPLES / 'data'}",
        "logging_steps=1",
        "save_steps=1000",
    ]
    args.append(f"max_samples={MAX_SAMPLES}")
    args += [f"dataflex.{k}={v}" for k, v in SHRINK.get(block.get("train_type", ""), {}).items()]
    for key, value in CHEAP.get((component.kind, component.type), {}).items():
        args.append(f"dataflex.component_params.{key}={value}")
    return args


def _check_training(out: Path, kind: str, entry: str, ctype: str, block: dict[str, Any]) -> None:
    losses = _losses(out)
    steps = SHRINK[block["train_type"]].get("train_step") or 3
    assert sorted(losses) == list(range(1, steps + 1)), losses
    assert all(math.isfinite(x) and 0 < x < 20 for x in losses.values()), losses
    recs = _jsonl(out / "dataflex" / "decisions.jsonl")
    mine = [r for r in recs if r["kind"] == kind]
    assert mine and all(r["component"] == entry for r in mine), recs[:3]
    effective = json.loads((out / "dataflex" / "effective_config.json").read_text())
    assert effective["component"]["type"] == ctype, effective["component"]
    if kind == "mixer":
        assert [r["step"] for r in mine] == [1, 2]
        for r in mine:
            p = r["decision"]["proportions"]
            assert len(p) == len(r["decision"]["domains"]) and min(p) >= 0
            assert sum(p) == pytest.approx(1.0, abs=1e-9)
            assert any(x is not None and math.isfinite(x) for x in r["feedback"]["domain_loss"])
    elif kind == "selector":
        assert [r["step"] for r in mine] == [0, 1]
        assert [r["decision"]["warmup"] for r in mine] == [True, False]
        for r in mine:
            d = r["decision"]
            assert d["num_selected"] > 0 and sum(d["by_domain"].values()) == d["num_selected"]
        sels = _jsonl(out / "dataflex" / "selections.jsonl")
        assert [s["step"] for s in sels] == [0, 1] and len(sels[1]["indices"]) > 0
    else:
        # weighted from step index warmup_step = 1 on: logged after steps 2 and 3
        weighted = [r for r in mine if r["step"] >= 1]
        assert [r["step"] for r in weighted] == [2, 3], [r["step"] for r in mine]
        for r in weighted:
            stats = r["decision"]
            assert stats["samples"] > 0 and 0 <= stats["min"] <= stats["mean"] <= stats["max"], (
                stats
            )
            assert all(math.isfinite(stats[k]) for k in ("min", "mean", "max", "entropy")), stats


def _check_offline(out: Path, ctype: str) -> None:
    from datasets import load_from_disk

    report = json.loads((out / "selection_report.json").read_text())
    assert report["component"]["type"] == ctype
    assert report["budget"] == OFFLINE_BUDGET and len(report["selected"]) == OFFLINE_BUDGET
    assert sum(report["by_domain"].values()) == OFFLINE_BUDGET
    assert all(0 <= i < report["num_samples"] for i in report["selected"])
    assert [int(x) for x in (out / "selected_ids.txt").read_text().split()] == report["selected"]
    assert len(load_from_disk(str(out / "selected_tokenized"))["train"]) == OFFLINE_BUDGET


# --------------------------------------------------------------------------- tests
def test_every_registered_algorithm_has_an_example() -> None:
    from dataflex_core import get_registry
    from dataflex_llamafactory.config import load_run_config

    registry = get_registry()
    registered = {
        (kind, n) for kind in ("mixer", "selector", "weighter") for n in registry.names(kind)
    }
    assert registered == set(ALGORITHMS), (
        f"without an example: {sorted(registered - set(ALGORITHMS))}; "
        f"not registered: {sorted(set(ALGORITHMS) - registered)}"
    )
    readme = (EXAMPLES / "README.md").read_text()
    for (kind, name), rel in ALGORITHMS.items():
        path = REPO / rel
        run = load_run_config(path, _offline_fill(path))
        assert run.component is not None, rel
        assert (run.component.kind, run.component.type) == (kind, name), rel
        assert f"`{rel}`" in readme or f"({rel.removeprefix('examples/')})" in readme, (
            rel,
            "README",
        )


def test_examples_run_elsewhere_are_run_there() -> None:
    """The examples not run here are read by the test file that RUN_ELSEWHERE names."""
    covered = [p for p in EXAMPLE_FILES if p not in TO_RUN]
    assert covered
    for path in covered:
        test_file = REPO / _run_elsewhere(_rel(path))
        text = test_file.read_text()
        # the example's name (or its pipeline folder's) as a string literal of that file
        name = path.stem if path.parent == EXAMPLES else path.parent.name
        assert f'"{name}' in text, (_rel(path), _rel(test_file))


@pytest.mark.parametrize("path", TO_RUN, ids=lambda p: _rel(p).removeprefix("examples/"))
def test_example_runs(path: Path, tmp_path: Path, in_process) -> None:
    from dataflex_llamafactory.config import load_run_config

    env, sub, args = _command(path)
    block = yaml.safe_load(path.read_text())["dataflex"]
    out = tmp_path / "out"
    rel = _rel(path)
    run = load_run_config(path, _offline_fill(path))
    assert run.component is not None
    argv = [sub, rel, *(a for a in args if "=" in a and not a.startswith("-"))]
    argv += _overrides(run.component, block, out)
    if sub == "select":
        assert "--budget" in args, f"{rel}: the command should give --budget"
        argv += ["--budget", str(OFFLINE_BUDGET)]
    else:
        assert block.get("train_type") in SHRINK, f"{rel}: add a shrunk schedule for its train_type"
    rc, err = in_process(argv, env)
    assert rc == 0, f"{' '.join(argv)}\n{err[-4000:]}"
    if sub == "select":
        _check_offline(out, run.component.type)
    else:
        _check_training(out, run.component.kind, run.component.entry, run.component.type, block)
