"""Reading a run config: a LLaMA-Factory YAML plus a ``dataflex:`` block (spec §5.1, §5.2).

The ``dataflex:`` block (or the predecessor's flat top-level keys, accepted for migration) is
removed and validated strictly here; everything else goes to LLaMA-Factory's own parser
unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from dataflex_core import ConfigError, Schedule, config_to_dict, parse_config

__all__ = [
    "FLAT_KEYS",
    "DataflexConfig",
    "RunConfig",
    "ComponentEntry",
    "load_run_config",
    "apply_overrides",
    "resolve_component",
]

log = logging.getLogger(__name__)

#: The predecessor's flat top-level keys that belong to the dataflex block.
FLAT_KEYS: tuple[str, ...] = (
    "train_type",
    "component_name",
    "components_cfg_file",
    "component_params",
    "warmup_step",
    "update_step",
    "update_times",
    "train_step",
    "static_mix",
    "init_mixture_proportions",
    "mixture_sample_rule",
)

_KIND_OF_TYPE = {"dynamic_mix": "mixer", "dynamic_select": "selector", "dynamic_weight": "weighter"}
_SECTION_OF_KIND = {"mixer": "mixers", "selector": "selectors", "weighter": "weighters"}


@dataclass(frozen=True)
class DataflexConfig:
    """The ``dataflex:`` block.

    Attributes:
        train_type: ``static`` (plain training), ``dynamic_mix``, ``dynamic_select`` or
            ``dynamic_weight``.
        component_name: Entry under ``mixers``/``selectors``/``weighters`` of the components
            file; required for dynamic types (except ``dynamic_mix`` with ``static_mix``).
        components_cfg_file: Components file; default the packaged ``components.yaml``.
            Relative paths resolve against the run config's folder.
        component_params: Inline parameter overrides for the component.
        warmup_step: Steps before the first update (0: update before the first step).
        update_step: Steps between updates (>= 1 for dynamic_mix and dynamic_select).
        update_times: Mix: total updates (<= 0: until the step budget). Select: per Flex epoch.
        train_step: Total optimizer steps (0: derived); must equal ``max_steps`` if both are set.
        static_mix: Mix with fixed ``init_mixture_proportions`` for the whole run (no mixer).
        init_mixture_proportions: Proportions of the warmup window (one per dataset, normalised);
            null: uniform (or ``mixture_sample_rule``); or ``{from_file: path}`` naming a JSON
            file with ``domains`` and ``average`` (DoReMi's ``doremi_average_weights.json``),
            matched by domain name. Relative paths resolve against the run config's folder.
        mixture_sample_rule: ``mixture`` (use init_mixture_proportions), ``stratified``
            (proportional to domain sizes) or ``uniform``; the last two only with static_mix.
        mixture_order: Order within a window: seeded ``shuffle`` or Megatron-style ``blend``.
        within_domain: ``permutation`` (without replacement) or ``with_replacement``.
        plot: Write ``dataflex/proportions.png`` at the end of training (rank 0).
        target_dataset: Dataset(s) of the target task (names in dataset_info.json), kept apart
            from ``eval_dataset``; used by target-aware components (ADAPT anchors).
        subtask_by: How the target set splits into subtasks (LESS/NICE ``max_of_means``):
            ``dataset`` (each target dataset is one subtask) or ``none`` (one subtask).
        mixer_eval_dataset: One fixed eval dataset per training domain, in ``dataset:`` order
            (names in dataset_info.json), or ``auto`` for ``<domain>_eval``; mixers that read
            per-domain eval signals (aioli: eval losses; dynamic_moe: expert gate loads) need it.
        check_state_consistency: After every update, compare the component state hash across
            ranks (fails fast on divergence) and write each rank's final state.
    """

    train_type: Literal["static", "dynamic_mix", "dynamic_select", "dynamic_weight"] = "static"
    component_name: str | None = None
    components_cfg_file: str | None = None
    component_params: dict[str, Any] = field(default_factory=dict)
    warmup_step: int = 0
    update_step: int = 0
    update_times: int = 1
    train_step: int = 0
    static_mix: bool = False
    init_mixture_proportions: list[float] | dict[str, str] | None = None
    mixture_sample_rule: Literal["mixture", "stratified", "uniform"] = "mixture"
    mixture_order: Literal["shuffle", "blend"] = "shuffle"
    within_domain: Literal["permutation", "with_replacement"] = "permutation"
    batch_composition: Literal["mixed", "pure_micro_batch", "pure_global_batch"] = "mixed"
    target_dataset: str | list[str] | None = None
    subtask_by: str = "dataset"
    mixer_eval_dataset: str | list[str] | None = None
    plot: bool = True
    check_state_consistency: bool = False

    def __post_init__(self) -> None:
        if self.warmup_step < 0:
            raise ConfigError(f"warmup_step must be >= 0, got {self.warmup_step}.")
        if self.train_step < 0:
            raise ConfigError(f"train_step must be >= 0, got {self.train_step}.")
        if self.train_type in ("dynamic_mix", "dynamic_select") and self.update_step < 1:
            raise ConfigError(
                f"update_step is required and must be >= 1 for train_type {self.train_type!r} "
                f"(got {self.update_step}); set e.g. `dataflex.update_step: 10`."
            )
        dynamic_mixer = self.train_type == "dynamic_mix" and not self.static_mix
        if self.kind is not None and self.component_name is None:
            hint = " (or set `static_mix: true` to mix with fixed proportions)" if dynamic_mixer else ""
            raise ConfigError(
                f"component_name is required for train_type {self.train_type!r}{hint}; name an "
                "entry of the components file, e.g. `dataflex.component_name: random`."
            )
        if self.mixture_sample_rule != "mixture" and dynamic_mixer:
            raise ConfigError(
                f"mixture_sample_rule {self.mixture_sample_rule!r} sets fixed proportions and "
                "cannot be combined with a dynamic mixer; use it with `static_mix: true`, or set "
                "init_mixture_proportions for the warmup window."
            )
        if self.subtask_by not in ("dataset", "none"):
            hint = (
                " Subtasks from a column are not supported yet: give one target dataset per "
                "subtask instead." if self.subtask_by.startswith("column:") else ""
            )
            raise ConfigError(
                f"subtask_by: {self.subtask_by!r} is not valid; use 'dataset' or 'none'.{hint}"
            )
        if self.static_mix and self.train_type != "dynamic_mix":
            raise ConfigError(
                f"static_mix needs train_type 'dynamic_mix' (got {self.train_type!r})."
            )
        if isinstance(self.init_mixture_proportions, dict) and set(self.init_mixture_proportions) != {"from_file"}:
            raise ConfigError(
                f"init_mixture_proportions as a mapping takes exactly one key, from_file; got "
                f"{sorted(self.init_mixture_proportions)}."
            )
        if self.init_mixture_proportions is not None and self.train_type != "dynamic_mix":
            raise ConfigError(
                "init_mixture_proportions only applies to train_type 'dynamic_mix' "
                f"(got {self.train_type!r}); remove it."
            )

    @property
    def kind(self) -> str | None:
        """Component kind driven by this train type (None for static runs and static_mix)."""
        if self.train_type == "dynamic_mix" and self.static_mix:
            return None
        return _KIND_OF_TYPE.get(self.train_type)

    def schedule(self) -> Schedule:
        """The update schedule (spec §5.1)."""
        return Schedule(
            train_type=self.train_type,
            warmup_step=self.warmup_step,
            update_step=max(self.update_step, 1),
            update_times=self.update_times,
        )


@dataclass(frozen=True)
class ComponentEntry:
    """A resolved component: entry name, registered type, kind and merged params."""

    entry: str
    type: str
    kind: str
    params: dict[str, Any]
    source_file: str


@dataclass
class RunConfig:
    """A split run config: our block and LLaMA-Factory's arguments."""

    dataflex: DataflexConfig
    lf_args: dict[str, Any]
    config_path: Path | None
    component: ComponentEntry | None = None

    def effective(self) -> dict[str, Any]:
        """The resolved config written to ``dataflex/effective_config.json``."""
        out: dict[str, Any] = {"dataflex": config_to_dict(self.dataflex)}
        if self.component is not None:
            out["component"] = {
                "entry": self.component.entry,
                "type": self.component.type,
                "kind": self.component.kind,
                "params": self.component.params,
                "source_file": self.component.source_file,
            }
        return out

    def effective_hash(self) -> str:
        """SHA-256 of the effective config (spec §5.6)."""
        blob = json.dumps(self.effective(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # YAML 1.1 reads "2e-4" as a string; LLaMA-Factory's own CLI (OmegaConf) reads a float.
        try:
            return float(value) if value.strip().lower() not in {"nan", "inf", "-inf", "infinity"} else value
        except ValueError:
            return value
    return value


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides; dotted keys reach into nested mappings.

    Values are parsed as YAML scalars (``1e-3`` -> float, ``true`` -> bool, ``[a, b]`` -> list).

    Raises:
        ConfigError: for an override without ``=`` or with an empty key, or a dotted path through
            a non-mapping value.
    """
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"bad override {item!r}: write overrides as key=value, e.g. "
                "`learning_rate=1e-4` or `dataflex.update_step=5`."
            )
        parts = key.split(".")
        if any(not p for p in parts):
            raise ConfigError(f"bad override {item!r}: empty part in the dotted key {key!r}.")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"bad override {item!r}: {part!r} holds {child!r}, not a mapping, so "
                    f"{key!r} cannot be set."
                )
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return out


def _load_yaml(path: Path) -> Any:
    """Read YAML the way LLaMA-Factory does (OmegaConf: ``1e-3`` is a float, not a string)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    except Exception as exc:  # yaml.YAMLError and friends from OmegaConf's loader
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None


def load_run_config(path: str | Path | None, overrides: Sequence[str] = (), raw: Mapping[str, Any] | None = None) -> RunConfig:
    """Load a run YAML, apply overrides, split off and validate the dataflex block.

    Args:
        path: The YAML file (None when ``raw`` is given).
        overrides: ``key=value`` strings.
        raw: A config mapping instead of a file.
    """

    cfg_path = Path(path).resolve() if path is not None else None
    if raw is None:
        if cfg_path is None:
            raise ConfigError("no config given: pass a YAML file.")
        if not cfg_path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; check the path.")
        data = _load_yaml(cfg_path)
    else:
        data = copy.deepcopy(dict(raw))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {str(path)!r} must be a mapping of keys, got {type(data).__name__}.")
    data = apply_overrides(data, overrides)
    block = data.pop("dataflex", None)
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise ConfigError(f"the `dataflex:` block must be a mapping, got {block!r}.")
    flat = {k: data.pop(k) for k in FLAT_KEYS if k in data}
    for key, value in flat.items():
        if key in block and block[key] != value:
            raise ConfigError(
                f"{key!r} is set both as a flat top-level key ({value!r}) and in the dataflex "
                f"block ({block[key]!r}); keep one (prefer `dataflex.{key}`)."
            )
        block.setdefault(key, value)
    if flat:
        log.info("accepted the predecessor's flat keys %s as dataflex settings", sorted(flat))
    imp = block.get("init_mixture_proportions")
    if isinstance(imp, dict) and isinstance(imp.get("from_file"), str) and cfg_path is not None:
        f = Path(imp["from_file"])
        block["init_mixture_proportions"] = {"from_file": str(f if f.is_absolute() else cfg_path.parent / f)}
    df = parse_config(DataflexConfig, block, where="the dataflex block")
    if df.train_type == "dynamic_weight" and "update_step" in block:
        log.warning("update_step is ignored for train_type 'dynamic_weight': weighting applies every step.")
    run = RunConfig(dataflex=df, lf_args=data, config_path=cfg_path)
    if df.kind is not None:
        run.component = resolve_component(df, cfg_path.parent if cfg_path else Path.cwd())
    return run


def _load_components_file(df: DataflexConfig, base: Path) -> tuple[dict[str, Any], str]:
    import yaml

    if df.components_cfg_file is None:
        text = resources.files("dataflex_llamafactory").joinpath("components.yaml").read_text()
        return yaml.safe_load(text) or {}, "(packaged components.yaml)"
    p = Path(df.components_cfg_file)
    if not p.is_absolute():
        p = base / p
    if not p.is_file():
        raise ConfigError(
            f"components_cfg_file {df.components_cfg_file!r} not found (looked at {str(p)!r}); "
            "relative paths resolve against the run config's folder."
        )
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"components file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"components file {str(p)!r} must be a mapping.")
    return data, str(p)


def resolve_component(df: DataflexConfig, base: Path) -> ComponentEntry:
    """Find the component entry and merge its params (file < component_params)."""
    from dataflex_core.config import unknown_key_error

    kind = df.kind
    assert kind is not None and df.component_name is not None
    data, source = _load_components_file(df, base)
    unknown_sections = set(data) - {"mixers", "selectors", "weighters"}
    if unknown_sections:
        raise unknown_key_error(sorted(unknown_sections)[0], ["mixers", "selectors", "weighters"], f"components file {source}")
    section = _SECTION_OF_KIND[kind]
    entries = data.get(section) or {}
    entry_name = df.component_name
    if entry_name in entries:
        entry = entries[entry_name] or {}
        if not isinstance(entry, dict):
            raise ConfigError(f"{section}.{entry_name} in {source} must be a mapping.")
        bad = set(entry) - {"type", "params", "name"}
        if bad:
            raise unknown_key_error(sorted(bad)[0], ["type", "params", "name"], f"{section}.{entry_name} in {source}")
        ctype = entry.get("type", entry_name)
        legacy_name = entry.get("name")
        if legacy_name is not None and legacy_name not in (entry_name, ctype):
            raise ConfigError(
                f"{section}.{entry_name} in {source} has name {legacy_name!r}, which is neither "
                f"the entry key nor its type {ctype!r}; remove `name:`."
            )
        params = dict(entry.get("params") or {})
    else:
        # Not in the file: the entry name is taken as a registered component type.
        ctype, params = entry_name, {}
    params.update(df.component_params)
    return ComponentEntry(entry=entry_name, type=ctype, kind=kind, params=params, source_file=source)
