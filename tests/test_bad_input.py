"""Table-driven bad input: every case fails with exit status 2 and one clear line.

Each case builds a bad input (a config change, a data folder with its own dataset_info.json, a
components file, an override list, a damaged checkpoint, a broken plugin) and runs
``dataflex-cli`` in-process. Every case checks: exit status 2, ``dataflex-cli: error:`` plus two
distinctive fragments of the message (what is wrong and how to fix it), no traceback on stderr,
no fresh ``output_dir`` left behind, and for resume cases that the checkpoint is byte-identical
afterwards. Most cases fail in validation or preflight, before a model is loaded; the resume
cases share one tiny 2-step checkpoint built once per module.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dataflex_llamafactory.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DATAFLEX_STRICT_PLUGINS": "1",
}
_DROP = (
    "FORCE_TORCHRUN",
    "NPROC_PER_NODE",
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "MASTER_PORT",
    "DATAFLEX_DISABLE_PLUGINS",
)


def _rows(prefix: str, n: int) -> str:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return "".join(
        json.dumps(
            {"text": f"{prefix} {i} " + " ".join(words[(i + j) % len(words)] for j in range(12))}
        )
        + "\n"
        for i in range(n)
    )


def _write_data(folder: Path, files: dict[str, str], info: dict[str, Any] | None = None) -> Path:
    """A data folder: ``files`` (name -> text) and a dataset_info.json naming each ``*.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    entries = {
        Path(n).stem: {"file_name": n, "columns": {"prompt": "text"}}
        for n in files
        if n.endswith(".jsonl")
    }
    entries.update(info or {})
    (folder / "dataset_info.json").write_text(json.dumps(entries))
    return folder


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _base_cfg(data: Path, out: Path) -> dict[str, Any]:
    """A small dynamic_mix run: 2 domains, G = 2, 2 steps (warmup 0 + 1 x 2)."""
    return {
        "model_name_or_path": "builtin:tiny-llama",
        "stage": "pt",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "a,b",
        "dataset_dir": str(data),
        "template": "default",
        "cutoff_len": 32,
        "overwrite_cache": False,
        "preprocessing_num_workers": 1,
        "output_dir": str(out),
        "logging_steps": 1,
        "save_steps": 2,
        "plot_loss": False,
        "overwrite_output_dir": True,
        "report_to": "none",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-3,
        "seed": 42,
        "dataloader_num_workers": 0,
        "dataflex": {
            "train_type": "dynamic_mix",
            "component_name": "random",
            "warmup_step": 0,
            "update_step": 1,
            "update_times": 2,
            "plot": False,
        },
    }


@dataclass
class Ctx:
    """What a case builder gets: folders, the base config, writers, and the shared checkpoint."""

    tmp: Path
    data: Path
    _ckpt: Callable[[], Path]
    out: Path = field(init=False)
    guard: list[Path] = field(default_factory=list)  # folders that must stay byte-identical

    def __post_init__(self) -> None:
        self.out = self.tmp / "out"

    def cfg(
        self, df: dict[str, Any] | None = None, drop: tuple[str, ...] = (), **top: Any
    ) -> dict[str, Any]:
        c = _base_cfg(self.data, self.out)
        c.update(top)
        c["dataflex"].update(df or {})
        for key in drop:
            c["dataflex"].pop(key, None)
        return c

    def write(self, cfg: Any, name: str = "run.yaml") -> str:
        path = self.tmp / name
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
        return str(path)

    def train(self, cfg: Any, *overrides: str) -> list[str]:
        return ["train", self.write(cfg), *overrides]

    def datadir(self, files: dict[str, str], info: dict[str, Any] | None = None) -> Path:
        return _write_data(self.tmp / "data", files, info)

    def resume_from(self, mutate: Callable[[Path], None] | None = None) -> Path:
        """A copy of the shared run in tmp (output_dir and checkpoint-2), guarded by hash."""
        run = self.tmp / "run"
        shutil.copytree(self._ckpt(), run)
        if mutate is not None:
            mutate(run / "checkpoint-2")
        self.out = run
        self.guard.append(run / "checkpoint-2")
        return run

    def resume_cfg(self, **top: Any) -> dict[str, Any]:
        run = self.out
        df = top.pop("df", None)
        c = self.cfg(df, **top)
        c.update(
            output_dir=str(run),
            resume_from_checkpoint=str(run / "checkpoint-2"),
            overwrite_output_dir=False,
        )
        return c


# --------------------------------------------------------------------------- case builders
def _components_file(text: str) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        (c.tmp / "comp.yaml").write_text(text)
        return c.train(c.cfg({"components_cfg_file": "comp.yaml"}))

    return build


def _data_case(
    files: dict[str, str], info: dict[str, Any] | None = None, **top: Any
) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        d = c.datadir(files, info)
        rest = {k: v for k, v in top.items() if k != "df"}
        return c.train(c.cfg(top.get("df"), dataset_dir=str(d), **rest))

    return build


def _select(c: Ctx, *args: str, df: dict[str, Any] | None = None) -> list[str]:
    d = {"train_type": "dynamic_select", "component_name": "random", "update_step": 1}
    d.update(df or {})
    cfg = c.cfg(d, drop=("update_times",))
    return ["select", c.write(cfg), *args]


def _no_state(ck: Path) -> None:
    (ck / "dataflex_state.json").unlink()


def _damage_state(ck: Path) -> None:
    (ck / "dataflex_state.json").write_text('{"schema_version": 1, "train_typ')


def _plugin(monkeypatch: pytest.MonkeyPatch, tmp: Path, dist: str, ep: str, module: str) -> None:
    """Make the fixture plugin ``dist`` discoverable in this process (a dist-info on sys.path)."""
    site = tmp / "site"
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[dataflex]\n{ep} = {module}\n")
    monkeypatch.syspath_prepend(str(FIXTURES / dist / "src"))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


def _plugin_case(dist: str, ep: str, module: str, argv: Callable[[Ctx], list[str]] | None = None):
    def build(c: Ctx, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        _plugin(monkeypatch, c.tmp, dist, ep, module)
        return argv(c) if argv else ["components"]

    build.wants_monkeypatch = True  # type: ignore[attr-defined]
    return build


def _disabled_mix(c: Ctx, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("DATAFLEX_DISABLE_PLUGINS", "dataflex_mix")
    return c.train(c.cfg())


_disabled_mix.wants_monkeypatch = True  # type: ignore[attr-defined]


def _resume_into_fresh_dir(c: Ctx) -> list[str]:
    """Resume from a damaged checkpoint into a new output_dir (which must not be left behind)."""
    run = c.resume_from(_damage_state)
    c.out = c.tmp / "fresh_out"
    cfg = c.cfg(resume_from_checkpoint=str(run / "checkpoint-2"))
    return c.train(cfg)


A_B = {"a.jsonl": _rows("a", 40), "b.jsonl": _rows("b", 40)}

CASES = [
    # ------------------------------------------------------------------ config: keys and types
    pytest.param(
        lambda c: c.train(c.cfg({"update_stp": 3})),
        ["unknown key 'update_stp' in the dataflex block", "did you mean 'update_step'?"],
        id="dataflex-unknown-key",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"warmup_steps": 3})),
        ["unknown key 'warmup_steps' in the dataflex block", "did you mean 'warmup_step'?"],
        id="dataflex-unknown-key-warmup_steps",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"component_params": {"concentraton": 2.0}})),
        ["unknown key 'concentraton' in mixer", "did you mean 'concentration'?"],
        id="component-param-unknown",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(), "dataflex.component_params.concentraton=2"),
        ["unknown key 'concentraton'", "did you mean 'concentration'?"],
        id="component-param-unknown-via-override",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"update_step": "ten"})),
        ["key 'update_step' must be int", "got str 'ten'"],
        id="type-update_step-str",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"static_mix": "yes"})),
        ["key 'static_mix' must be bool", "got str 'yes'"],
        id="type-static_mix-str",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"init_mixture_proportions": "0.5,0.5"})),
        ["key 'init_mixture_proportions' must be", "got str '0.5,0.5'"],
        id="type-init_mixture_proportions-str",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"component_params": [1, 2]})),
        ["key 'component_params' must be dict", "got list"],
        id="type-component_params-list",
    ),
    pytest.param(
        lambda c: c.train({**c.cfg(), "dataflex": "dynamic_mix"}),
        ["the `dataflex:` block must be a mapping", "'dynamic_mix'"],
        id="dataflex-block-not-mapping",
    ),
    # ------------------------------------------------------------------ config: ranges
    pytest.param(
        lambda c: c.train(c.cfg({"warmup_step": -1})),
        ["warmup_step must be >= 0", "got -1"],
        id="warmup_step-negative",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"train_step": -5})),
        ["train_step must be >= 0", "got -5"],
        id="train_step-negative",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"update_step": 0})),
        [
            "update_step is required and must be >= 1 for train_type 'dynamic_mix' (got 0)",
            "set e.g. `dataflex.update_step: 10`",
        ],
        id="update_step-0-dynamic_mix",
    ),
    pytest.param(
        lambda c: c.train(
            c.cfg({"train_type": "dynamic_select", "update_step": 0}, drop=("update_times",))
        ),
        ["must be >= 1 for train_type 'dynamic_select' (got 0)", "`dataflex.update_step: 10`"],
        id="update_step-0-dynamic_select",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"update_times": 0}, num_train_epochs=0.0)),
        ["the schedule gives 0 training steps", "set update_times >= 1 or train_step > 0"],
        id="update_times-0",
    ),
    # ------------------------------------------------------------ config: train_type & components
    pytest.param(
        lambda c: c.train(c.cfg({"train_type": "dynamic_weighting"})),
        ["key 'train_type' must be 'static' | 'dynamic_mix'", "got str 'dynamic_weighting'"],
        id="train_type-dynamic_weighting",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"train_type": "static_full"})),
        ["'dynamic_weight', got str 'static_full'", "key 'train_type' must be"],
        id="train_type-static_full",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(drop=("component_name",))),
        ["component_name is required for train_type 'dynamic_mix'", "set `static_mix: true`"],
        id="component_name-missing-mix",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"train_type": "dynamic_weight"}, drop=("component_name",))),
        [
            "component_name is required for train_type 'dynamic_weight'",
            "`dataflex.component_name: random`",
        ],
        id="component_name-missing-weight",
    ),
    pytest.param(
        lambda c: c.train({**c.cfg(), "update_step": 5}),
        [
            "'update_step' is set both as a flat top-level key (5) and in the dataflex block (1)",
            "prefer `dataflex.update_step`",
        ],
        id="flat-and-block-conflict",
    ),
    pytest.param(
        lambda c: c.train({**c.cfg(), "train_type": "dynamic_select"}),
        ["'train_type' is set both as a flat top-level key ('dynamic_select')", "keep one"],
        id="flat-and-block-conflict-train_type",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(max_steps=7)),
        [
            "max_steps: 7 conflicts with the DataFlex schedule, which gives 2 steps",
            "set only one of them",
        ],
        id="max_steps-vs-schedule",
    ),
    pytest.param(
        lambda c: c.train(
            c.cfg(
                {"train_type": "dynamic_weight", "component_name": "uniform", "train_step": 3},
                drop=("update_step", "update_times"),
                max_steps=7,
            )
        ),
        ["max_steps: 7 conflicts with train_step: 3", "set only one of them"],
        id="max_steps-vs-train_step",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"init_mixture_proportions": [1, 1, 1]})),
        [
            "init_mixture_proportions has 3 entries but there are 2 datasets",
            "give one proportion per dataset, in order",
        ],
        id="init_props-wrong-length",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"init_mixture_proportions": [-1, 2]})),
        ["init_mixture_proportions [-1.0, 2.0]", "must be finite, >= 0 and sum to > 0"],
        id="init_props-negative",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"init_mixture_proportions": [0, 0]})),
        ["error: init_mixture_proportions [", "must be finite, >= 0 and sum to > 0"],
        id="init_props-all-zero",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"init_mixture_proportions": {"file": "w.json"}})),
        ["init_mixture_proportions as a mapping takes exactly one key, from_file", "['file']"],
        id="init_props-mapping-bad-key",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"init_mixture_proportions": {"from_file": "nope/w.json"}})),
        ["init_mixture_proportions.from_file", "run the DoReMi proxy step first"],
        id="init_props-from_file-missing",
    ),
    pytest.param(
        lambda c: c.train(
            c.cfg({"train_type": "dynamic_select", "init_mixture_proportions": [1, 1]})
        ),
        ["init_mixture_proportions only applies to train_type 'dynamic_mix'", "remove it"],
        id="init_props-with-select",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"mixture_sample_rule": "stratified"})),
        [
            "mixture_sample_rule 'stratified' sets fixed proportions",
            "use it with `static_mix: true`",
        ],
        id="mixture_sample_rule-with-dynamic-mixer",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"mixture_sample_rule": "proportional"})),
        [
            "key 'mixture_sample_rule' must be 'mixture' | 'stratified' | 'uniform'",
            "got str 'proportional'",
        ],
        id="mixture_sample_rule-invalid",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"train_type": "dynamic_select", "static_mix": True})),
        ["static_mix needs train_type 'dynamic_mix'", "'dynamic_select'"],
        id="static_mix-with-select",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"subtask_by": "task"})),
        ["subtask_by: 'task' is not valid", "use 'dataset' or 'none'"],
        id="subtask_by-invalid",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"subtask_by": "column:task"})),
        ["Subtasks from a column are not supported yet", "give one target dataset per subtask"],
        id="subtask_by-column",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"component_name": "no_such_mixer"})),
        ["no mixer named 'no_such_mixer'", "Run `dataflex-cli components` to list them"],
        id="component-unknown",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"component_name": "randm"})),
        ["no mixer named 'randm'", "did you mean 'random'?"],
        id="component-misspelt",
    ),
    pytest.param(
        lambda c: c.train(
            c.cfg(
                {"train_type": "dynamic_select", "component_name": "lesss"}, drop=("update_times",)
            )
        ),
        ["no selector named 'lesss'", "did you mean 'less'?"],
        id="selector-misspelt",
    ),
    pytest.param(
        lambda c: c.train(
            c.cfg({"component_name": "aioli", "update_step": 2, "mixer_eval_dataset": "auto"})
        ),
        ["mixer 'aioli' decides every step", "set `update_step: 1` (got 2)"],
        id="aioli-update_step-2",
    ),
    # ------------------------------------------------------------------ config: components file
    pytest.param(
        lambda c: c.train(c.cfg({"components_cfg_file": "nope.yaml"})),
        [
            "components_cfg_file 'nope.yaml' not found",
            "relative paths resolve against the run config's folder",
        ],
        id="components-file-missing",
    ),
    pytest.param(
        _components_file("mixerz:\n  random: {type: random}\n"),
        ["unknown key 'mixerz' in components file", "did you mean 'mixers'?"],
        id="components-file-unknown-section",
    ),
    pytest.param(
        _components_file("mixers:\n  random:\n    type: random\n    parms: {concentration: 1.0}\n"),
        ["unknown key 'parms' in mixers.random", "did you mean 'params'?"],
        id="components-file-unknown-entry-key",
    ),
    pytest.param(
        _components_file("mixers:\n  random: [unclosed\n"),
        ["components file", "is not valid YAML"],
        id="components-file-bad-yaml",
    ),
    pytest.param(
        _components_file("mixers:\n  random:\n    type: random\n    params: {concentraton: 1.0}\n"),
        ["unknown key 'concentraton'", "did you mean 'concentration'?"],
        id="components-file-unknown-param",
    ),
    # ------------------------------------------------------------------ config: file, overrides, LF
    pytest.param(
        lambda c: c.train(c.cfg(), "learning_rate"),
        ["bad override 'learning_rate'", "write overrides as key=value"],
        id="override-no-equals",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(), "=5"),
        ["bad override '=5'", "write overrides as key=value"],
        id="override-empty-key",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(), "dataflex..update_step=1"),
        ["bad override 'dataflex..update_step=1'", "empty part in the dotted key"],
        id="override-empty-dotted-part",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(), "learning_rate.x=1"),
        ["bad override 'learning_rate.x=1'", "not a mapping"],
        id="override-through-scalar",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(), "dataflex.update_stp=3"),
        ["unknown key 'update_stp'", "did you mean 'update_step'?"],
        id="override-unknown-key",
    ),
    pytest.param(
        lambda c: ["train", str(c.tmp / "no" / "such.yaml")],
        ["config file", "does not exist; check the path"],
        id="config-file-missing",
    ),
    pytest.param(
        lambda c: c.train("dataset: [a, b\nstage: pt\n"),
        ["config file", "is not valid YAML"],
        id="config-file-bad-yaml",
    ),
    pytest.param(
        lambda c: c.train("- a\n- b\n"),
        ["must be a mapping of keys", "got list"],
        id="config-not-a-mapping",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(not_a_llamafactory_key=1)),
        ["LLaMA-Factory rejected the config", "not_a_llamafactory_key"],
        id="lf-unknown-key",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(stage="dpo")),
        ["stage 'dpo' is not supported by dataflex-cli", "use one of"],
        id="stage-dpo",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(do_train=False)),
        ["do_train is false", "set do_train: true"],
        id="do_train-false",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(dataloader_num_workers=2)),
        ["dataloader_num_workers: 2", "use 0 with dynamic training"],
        id="num_workers-2",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(val_size=0.1)),
        ["val_size splits the mixed training pool", "give a separate `eval_dataset:`"],
        id="val_size",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(ignore_data_skip=False)),
        ["ignore_data_skip: false conflicts with dynamic training", "Remove the key"],
        id="ignore_data_skip-false",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(streaming=True)),
        ["streaming datasets are not supported", "set streaming: false"],
        id="streaming",
    ),
    # ------------------------------------------------------------------ select: budget
    pytest.param(
        lambda c: _select(c, "--budget", "0"),
        ["--budget = 0 selects nothing", "it must be >= 1 (or a fraction)"],
        id="select-budget-0",
    ),
    pytest.param(
        lambda c: _select(c, "--budget", "100000"),
        ["--budget = 100000 is larger than the pool of N =", "give a fraction such as 0.05"],
        id="select-budget-over-pool",
    ),
    pytest.param(
        lambda c: _select(c, "--budget", "1.5"),
        ["a fractional --budget must be in (0, 1]", "give a row count"],
        id="select-budget-fraction-1.5",
    ),
    pytest.param(
        lambda c: _select(c, "--budget", "lots"),
        ["--budget 'lots' is neither a row count", "a fraction (e.g. 0.05)"],
        id="select-budget-not-a-number",
    ),
    pytest.param(
        lambda c: _select(c, df={"component_name": "loss", "component_params": {"budget": 100000}}),
        ["budget = 100000 is larger than the pool of N =", "lower it"],
        id="select-param-budget-over-pool",
    ),
    pytest.param(
        lambda c: _select(c, df={"train_type": "dynamic_mix"}),
        ["`dataflex-cli select` needs a selector", "`dataflex.train_type: dynamic_select`"],
        id="select-with-a-mixer",
    ),
    # ------------------------------------------------------------------ data
    pytest.param(
        lambda c: c.train(c.cfg(dataset="a,nonexistent")),
        ["dataset 'nonexistent' is not defined in", "defined: "],
        id="dataset-name-missing",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(dataset_dir=str(c.tmp / "nodir"))),
        ["dataset_info.json does not exist", "set `dataset_dir:` to the folder"],
        id="dataset_dir-missing",
    ),
    pytest.param(
        _data_case({"a.jsonl": _rows("a", 40), "b.jsonl": ""}),
        ["dataset 'b': file", "is empty; a domain needs at least one row"],
        id="domain-file-empty",
    ),
    pytest.param(
        _data_case(
            {"a.jsonl": _rows("a", 40)},
            {"b": {"file_name": "gone.jsonl", "columns": {"prompt": "text"}}},
        ),
        ["dataset 'b': file", "gone.jsonl does not exist; check `file_name`"],
        id="domain-file-missing",
    ),
    pytest.param(
        _data_case({"a.jsonl": _rows("a", 40), "b.jsonl": '{"text": "ok"}\n{"text": "broken\n'}),
        ["domain 'b' could not be read", "check that its file is valid"],
        id="domain-file-corrupt-jsonl",
    ),
    pytest.param(
        _data_case({"a.jsonl": _rows("a", 40), "b.jsonl": '{"text": ""}\n' * 4}),
        ["domain 'b' has no rows after preprocessing", "fix its file or remove it from `dataset:`"],
        id="domain-no-rows",
    ),
    pytest.param(
        lambda c: (
            shutil.copytree(c.data, c.tmp / "d2"),
            (c.tmp / "d2" / "dataset_info.json").write_text("{oops"),
            c.train(c.cfg(dataset_dir=str(c.tmp / "d2"))),
        )[-1],
        ["dataset_info.json is not valid JSON", "d2"],
        id="dataset_info-not-json",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(dataset="a,b,a")),
        ["names a dataset twice", "each domain once"],
        id="dataset-twice",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(eval_dataset="nope_eval")),
        ["eval_dataset 'nope_eval' is not defined in", "defined: "],
        id="eval_dataset-missing",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"target_dataset": "nope"})),
        ["target_dataset 'nope' is not defined in", "defined: "],
        id="target_dataset-missing",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"target_dataset": "gone"})),
        ["target_dataset 'gone': file", "does not exist; check `file_name`"],
        id="target_dataset-file-missing",
    ),
    pytest.param(
        lambda c: c.train(
            c.cfg(
                {"train_type": "dynamic_select", "target_dataset": "tgt_empty"},
                drop=("update_times",),
            )
        ),
        [
            "target_dataset 'tgt_empty' has no rows after preprocessing",
            "remove it from `target_dataset:`",
        ],
        id="target_dataset-no-rows",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"mixer_eval_dataset": ["a_eval", "nope_eval"]})),
        ["mixer_eval_dataset 'nope_eval' is not defined in", "defined: "],
        id="mixer_eval_dataset-missing",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"component_name": "aioli", "mixer_eval_dataset": ["a_eval"]})),
        ["mixer_eval_dataset names 1 dataset(s)", "give one eval set per domain, in order"],
        id="mixer_eval_dataset-count-mismatch",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"component_name": "aioli"})),
        ["reads per-domain eval signals", "`auto` for `<domain>_eval`"],
        id="mixer_eval_dataset-absent-aioli",
    ),
    # ------------------------------------------------------------------ models
    pytest.param(
        lambda c: c.train(
            c.cfg(
                {
                    "component_name": "doremi",
                    "component_params": {"reference_model_path": str(c.tmp / "no_ref")},
                }
            )
        ),
        ["no_ref' does not exist", "point it at the output_dir of the DoReMi reference run"],
        id="doremi-reference-missing",
    ),
    pytest.param(
        lambda c: c.train(c.cfg({"component_name": "doremi"})),
        [
            "the doremi mixer trains a proxy model against a reference model",
            "set `reference_model_path`",
        ],
        id="doremi-reference-unset",
    ),
    pytest.param(
        lambda c: c.train(c.cfg(model_name_or_path="builtin:tiny")),
        ["unknown builtin model 'builtin:tiny'", "builtin:tiny-llama"],
        id="builtin-model-unknown",
    ),
    # ------------------------------------------------------------------ resume and state
    pytest.param(
        lambda c: (c.resume_from(_no_state), c.train(c.resume_cfg()))[-1],
        ["it has no dataflex_state.json", "start a fresh run or pick another checkpoint"],
        id="resume-no-state-file",
    ),
    pytest.param(
        lambda c: (c.resume_from(_damage_state), c.train(c.resume_cfg()))[-1],
        ["dataflex_state.json is not valid JSON", "the checkpoint is damaged"],
        id="resume-damaged-state",
    ),
    pytest.param(
        _resume_into_fresh_dir,
        ["dataflex_state.json is not valid JSON", "the checkpoint is damaged"],
        id="resume-damaged-state-fresh-output_dir",
    ),
    pytest.param(
        lambda c: (c.resume_from(), c.train(c.resume_cfg(per_device_train_batch_size=1)))[-1],
        [
            "samples_per_step=2 but this run has 1",
            "resume with the same config, datasets and batch sizes",
        ],
        id="resume-other-batch-size",
    ),
    pytest.param(
        lambda c: (c.resume_from(), c.train(c.resume_cfg(seed=7)))[-1],
        [
            "sampler state has seed=42 but this run has 7",
            "resume with the same datasets, batch sizes, schedule and seed",
        ],
        id="resume-other-seed",
    ),
    pytest.param(
        lambda c: (c.resume_from(), c.train(c.resume_cfg(dataset="b,a")))[-1],
        ["domain_names=['a', 'b'] but this run has ['b', 'a']", "resume with the same config"],
        id="resume-reordered-domains",
    ),
    pytest.param(
        lambda c: (c.resume_from(), c.train(c.resume_cfg(df={"update_times": 3})))[-1],
        ["total_steps=2 but this run has 3", "resume with the same config"],
        id="resume-other-schedule",
    ),
    # ------------------------------------------------------------------ plugins
    pytest.param(
        _plugin_case("broken-dataflex-plugin", "broken", "broken_dataflex_plugin"),
        ["DataFlex plugin 'broken'", "DATAFLEX_DISABLE_PLUGINS=broken"],
        id="plugin-import-error",
    ),
    pytest.param(
        _plugin_case("dup-dataflex-plugin", "dup", "dup_dataflex_plugin"),
        ["mixer name 'static' is registered twice", "DATAFLEX_DISABLE_PLUGINS"],
        id="plugin-duplicate-name",
    ),
    pytest.param(
        _plugin_case("badkind-dataflex-plugin", "badkind", "badkind_dataflex_plugin"),
        [
            "registers 'acme_reranker' with unknown kind 'reranker'",
            "Fix the plugin's ComponentSpec(kind=...)",
        ],
        id="plugin-bad-kind",
    ),
    pytest.param(
        _plugin_case(
            "broken-dataflex-plugin",
            "broken",
            "broken_dataflex_plugin",
            argv=lambda c: c.train(c.cfg()),
        ),
        ["failed to import", "DATAFLEX_DISABLE_PLUGINS=broken"],
        id="plugin-import-error-on-train",
    ),
    pytest.param(
        _disabled_mix,
        ["no mixer named 'random'", "dataflex-cli components"],
        id="plugins-disabled-mix",
    ),
]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, dataflex_cache: Path) -> dict[str, Any]:
    """The module's data folder, and a lazily built 2-step dynamic_mix checkpoint."""
    # Libraries that bind a StreamHandler to sys.stderr on first use must do so now, outside
    # capsys: a handler bound to one test's captured stderr writes to a closed stream later.
    import datasets
    import transformers
    from llamafactory.extras import logging as lf_logging

    transformers.logging.get_logger("transformers")
    datasets.logging.get_logger("datasets")
    lf_logging.get_logger("llamafactory")
    root = tmp_path_factory.mktemp("bad-input")
    data = _write_data(
        root / "data",
        {
            **A_B,
            "a_eval.jsonl": _rows("ae", 8),
            "b_eval.jsonl": _rows("be", 8),
            "tgt_empty.jsonl": '{"text": ""}\n' * 4,
        },
        {"gone": {"file_name": "gone.jsonl", "columns": {"prompt": "text"}}},
    )
    return {"root": root, "data": data, "ckpt": None, "cache": dataflex_cache}


def _build_checkpoint(shared: dict[str, Any]) -> Path:
    if shared["ckpt"] is None:
        out = shared["root"] / "ckpt"
        cfg = _base_cfg(shared["data"], out)
        path = shared["root"] / "ckpt.yaml"
        path.write_text(yaml.safe_dump(cfg))
        rc = main(["train", str(path)])
        assert rc == 0 and (out / "checkpoint-2" / "dataflex_state.json").is_file()
        shared["ckpt"] = out
        shared["ckpt_hash"] = _tree_hash(out / "checkpoint-2")
    return shared["ckpt"]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, shared: dict[str, Any]):
    from dataflex_core import reset_plugin_manager

    monkeypatch.setattr(logging, "raiseExceptions", False)  # see `shared`
    for k, v in _ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DATAFLEX_CACHE_DIR", str(shared["cache"]))
    for k in _DROP:
        monkeypatch.delenv(k, raising=False)
    yield
    reset_plugin_manager()
    for mod in [m for m in sys.modules if m.endswith("_dataflex_plugin")]:
        sys.modules.pop(mod, None)


# --------------------------------------------------------------------------- the test
@pytest.mark.parametrize(("build", "expect"), CASES)
def test_bad_input_fails_with_a_clear_message(build, expect, tmp_path, shared, capsys, monkeypatch):
    from dataflex_core import reset_plugin_manager

    ctx = Ctx(tmp=tmp_path, data=shared["data"], _ckpt=lambda: _build_checkpoint(shared))
    if getattr(build, "wants_monkeypatch", False):
        reset_plugin_manager()
        argv = build(ctx, monkeypatch)
    else:
        argv = build(ctx)
    capsys.readouterr()
    before = {g: _tree_hash(g) for g in ctx.guard}
    fresh_out = not ctx.out.exists()

    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    except BaseException:  # noqa: BLE001 - an escaping exception is the bug this test looks for
        rc = "raised:\n" + traceback.format_exc()
    err = capsys.readouterr().err
    print(err[-2000:])  # shown by `pytest -rP`

    assert rc == 2, f"exit {rc!r}; stderr tail:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "error:" in err
    for fragment in expect:
        assert fragment in err, f"{fragment!r} not in:\n{err[-3000:]}"
    for g, h in before.items():
        assert _tree_hash(g) == h, f"{g} changed"
    if shared.get("ckpt") is not None:
        assert _tree_hash(shared["ckpt"] / "checkpoint-2") == shared["ckpt_hash"]
    if fresh_out:
        assert not ctx.out.exists(), (
            f"output_dir {ctx.out} left behind: {sorted(_tree_hash(ctx.out))}"
        )


def test_case_table_is_large_and_names_are_unique():
    ids = [p.id for p in CASES]
    assert len(ids) >= 50 and len(set(ids)) == len(ids)
