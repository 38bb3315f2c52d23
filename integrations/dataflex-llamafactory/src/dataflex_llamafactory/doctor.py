"""``dataflex-cli doctor``: check the environment a DataFlex run needs, and say how to fix it.

Every check is isolated: a missing optional package, a broken install or a crashing plugin turns
into a ``FAIL`` or ``warn`` row with the error and a fix line, never into a traceback. The
command exits with 0 when no check failed and 1 otherwise; ``--json`` prints the results as one
JSON object (``{"ok", "summary", "checks": [{"name", "status", "detail", "fix"}], ...}``).

Heavy imports are limited to what must be proven importable (torch, transformers, datasets,
peft, accelerate, DeepSpeed, FAISS); LLaMA-Factory itself is only located and its version read,
since importing it takes 10-30 s. Nothing is compiled, downloaded or written (the cache checks
create and delete one temporary file or folder each).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Check", "Probe", "CHECKS", "run_checks", "render_table", "run_doctor"]

OK, WARN, FAIL = "ok", "warn", "FAIL"

#: Minimum Python (LLaMA-Factory 0.9.5 requires 3.11).
MIN_PYTHON = (3, 11)
#: Free space below which the cache check warns / fails (GiB).
DISK_WARN_GIB = 10.0
DISK_FAIL_GIB = 1.0

_INSTALL_LF = "pip install 'dataflex-llamafactory'"
_DS_EXTRA = "pip install 'dataflex-llamafactory[deepspeed]'"
_FAISS_EXTRA = "pip install 'dataflex-select[faiss]'"


@dataclass(frozen=True)
class Check:
    """One row of the report."""

    name: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str
    fix: str = ""


@dataclass
class Probe:
    """How checks look at the environment; tests replace the parts they need to simulate.

    Attributes:
        importer: Imports a module by name (``importlib.import_module``); raise ImportError to
            simulate a missing package.
        version_of: Version of an installed distribution (``importlib.metadata.version``);
            raise ``PackageNotFoundError`` to simulate one that is not installed.
        environ: The environment variables to read.
        plugin_manager: Returns the plugin manager to inspect (default: the process-wide one).
        python: ``sys.version_info``-like tuple.
    """

    importer: Callable[[str], Any] = importlib.import_module
    version_of: Callable[[str], str] = md.version
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    plugin_manager: Callable[[], Any] | None = None
    python: tuple[int, ...] = field(default_factory=lambda: tuple(sys.version_info[:3]))


# --------------------------------------------------------------------------- helpers


def _err(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def _version(probe: Probe, dist: str) -> str | None:
    try:
        return probe.version_of(dist)
    except md.PackageNotFoundError:
        return None


def _load(probe: Probe, module: str, dist: str) -> tuple[Any, str | None, str | None]:
    """``(module or None, installed version or None, import error or None)``."""
    version = _version(probe, dist)
    try:
        mod = probe.importer(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is what we report
        return None, version, _err(exc)
    if mod is None:  # a ``sys.modules[name] = None`` block seen through a custom importer
        return None, version, f"ImportError: import of {module} halted"
    return mod, version or getattr(mod, "__version__", None), None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "y", "yes", "on"}


def _missing(
    name: str, dist: str, version: str | None, error: str | None, fix: str, status: str = FAIL
) -> Check:
    """The row of a package that is not installed, or installed but not importable."""
    if version is None:
        return Check(name, status, f"not installed ({error})" if error else "not installed", fix)
    return Check(
        name,
        FAIL,
        f"{version} is installed but does not import: {error}",
        f"pip install --force-reinstall '{dist}=={version}' (or: {fix}); if the error names "
        "another package, repair that one (torch, torchvision and torchaudio must come from "
        "one source)",
    )


def _in_range(version: str, lo: str, hi_incl: str | None, hi_excl: str | None) -> bool:
    from packaging.version import Version

    v = Version(version)
    return (
        v >= Version(lo)
        and (hi_incl is None or v <= Version(hi_incl))
        and (hi_excl is None or v < Version(hi_excl))
    )


def _supported(dist: str) -> tuple[str, tuple[str, str | None, str | None]] | None:
    from dataflex_llamafactory.versions import SUPPORTED, _describe

    rng = SUPPORTED.get(dist)
    return (_describe(*rng), rng) if rng else None


# --------------------------------------------------------------------------- checks


def check_python(probe: Probe) -> Check:
    """Python >= 3.11."""
    v = ".".join(str(x) for x in probe.python)
    if tuple(probe.python[:2]) >= MIN_PYTHON:
        return Check("python", OK, f"{v} ({sys.executable})")
    need = ".".join(map(str, MIN_PYTHON))
    return Check(
        "python",
        FAIL,
        f"{v} is too old; DataFlex and LLaMA-Factory 0.9.5 need >= {need}",
        f"create the environment with Python {need} or newer (e.g. `uv venv -p {need}`)",
    )


def check_torch(probe: Probe) -> Check:
    """torch imports; CUDA devices or CPU only."""
    torch, version, error = _load(probe, "torch", "torch")
    if torch is None:
        return _missing("torch", "torch", version, error, "pip install torch")
    built = getattr(torch.version, "cuda", None)
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names = []
        for i in range(n):
            try:
                names.append(torch.cuda.get_device_name(i))
            except Exception:  # noqa: BLE001 - a name is nice to have
                names.append("?")
        bf16 = ""
        with contextlib.suppress(Exception):
            bf16 = ", bf16 supported" if torch.cuda.is_bf16_supported() else ", no bf16 (use fp16)"
        kinds = ", ".join(sorted(set(names)))
        return Check("torch", OK, f"{version}; CUDA {built}: {n} device(s) ({kinds}){bf16}")
    if built:
        return Check(
            "torch",
            OK,
            f"{version}; CPU only (a CUDA {built} build, but no GPU is visible; "
            f"CUDA_VISIBLE_DEVICES={probe.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})",
        )
    return Check("torch", OK, f"{version}; CPU only (a CPU build of torch)")


def check_transformers(probe: Probe) -> Check:
    """transformers imports and is in the supported range."""
    mod, version, error = _load(probe, "transformers", "transformers")
    if mod is None:
        return _missing("transformers", "transformers", version, error, _INSTALL_LF)
    return _range_check(probe, "transformers", version or "?", "'transformers<=5.6.0'")


def _range_check(probe: Probe, dist: str, version: str, pin: str, prefix: str = "") -> Check:
    sup = _supported(dist)
    if sup is None or version == "?":
        return Check(dist, OK, prefix + version)
    text, rng = sup
    if _in_range(version, *rng):
        return Check(dist, OK, f"{prefix}{version} (supported: {text})")
    bypass = _truthy(probe.environ.get("DATAFLEX_DISABLE_VERSION_CHECK"))
    return Check(
        dist,
        WARN if bypass else FAIL,
        f"{prefix}{version} is outside the supported range {text}"
        + (" (DATAFLEX_DISABLE_VERSION_CHECK is set: train will try anyway)" if bypass else ""),
        f"pip install {pin}",
    )


def check_llamafactory(probe: Probe) -> Check:
    """LLaMA-Factory is installed, locatable, and the supported version (not imported: slow)."""
    version = _version(probe, "llamafactory")
    if version is None:
        return Check("llamafactory", FAIL, "not installed", "pip install 'llamafactory==0.9.5'")
    try:
        spec = importlib.util.find_spec("llamafactory")
    except Exception as exc:  # noqa: BLE001
        spec, version = None, f"{version} ({_err(exc)})"
    if spec is None:
        return Check(
            "llamafactory",
            FAIL,
            f"{version} is recorded as installed but the `llamafactory` package is not importable",
            "pip install --force-reinstall 'llamafactory==0.9.5'",
        )
    return _range_check(probe, "llamafactory", version, "'llamafactory==0.9.5'")


def _simple(
    name: str, module: str, dist: str, fix: str, status: str = FAIL
) -> Callable[[Probe], Check]:
    def check(probe: Probe) -> Check:
        mod, version, error = _load(probe, module, dist)
        if mod is None:
            return _missing(name, dist, version, error, fix, status)
        return Check(name, OK, version or "?")

    check.__name__ = f"check_{name}"
    check.__doc__ = f"{dist} imports."
    return check


def check_deepspeed(probe: Probe) -> Check:
    """DeepSpeed imports (the main point); its accelerator; CPUAdam usable (nothing compiled)."""
    version = _version(probe, "deepspeed")
    if version is None:
        return Check(
            "deepspeed",
            WARN,
            "not installed (optional: needed only for `deepspeed:` configs such as ZeRO-3)",
            _DS_EXTRA,
        )
    ds, version, error = _load(probe, "deepspeed", "deepspeed")
    if ds is None:
        return Check(
            "deepspeed",
            FAIL,
            f"{version} is installed but `import deepspeed` fails: {error}. transformers and "
            "accelerate import it when present, so a broken DeepSpeed can break every run",
            "pip install --force-reinstall 'deepspeed>=0.15' (or pip uninstall deepspeed if "
            "you do not use it)",
        )
    parts = [str(version)]
    status, fix = OK, ""
    try:
        from deepspeed.accelerator import get_accelerator

        acc = get_accelerator()
        parts.append(
            f"accelerator {acc.device_name()}, comm backend {acc.communication_backend_name()}"
        )
        builder = acc.create_op_builder("CPUAdamBuilder")
        prebuilt = {}
        with contextlib.suppress(Exception):
            from deepspeed.git_version_info import installed_ops

            prebuilt = dict(installed_ops)
        if builder is None:
            parts.append("CPUAdam: not offered by this accelerator")
        elif builder.is_compatible(verbose=False):
            if prebuilt.get("cpu_adam"):
                parts.append("CPUAdam: prebuilt")
            else:
                tools = []
                if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
                    tools.append("ninja")
                if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
                    tools.append("a C++ compiler")
                if tools:
                    status = WARN
                    parts.append(
                        f"CPUAdam: JIT-built on first use, but {' and '.join(tools)} not found"
                    )
                    fix = "install g++ and `pip install ninja` to use ZeRO offload's CPU Adam"
                else:
                    parts.append("CPUAdam: compatible (JIT-built on first use)")
        else:
            status = WARN
            parts.append("CPUAdam: not compatible with this machine (ZeRO CPU offload unavailable)")
            fix = "run `ds_report` for the reason; ZeRO-3 without offload still works"
    except Exception as exc:  # noqa: BLE001 - the import worked; op details are secondary
        status = WARN
        parts.append(f"op check failed: {_err(exc)}")
        fix = "run `ds_report` to see DeepSpeed's own diagnosis"
    return Check("deepspeed", status, "; ".join(parts), fix)


def check_faiss(probe: Probe) -> Check:
    """FAISS imports; its version and OpenMP threads."""
    mod, version, error = _load(probe, "faiss", "faiss-cpu")
    if mod is None:
        version = version or _version(probe, "faiss-gpu") or _version(probe, "faiss")
        if version is None:
            return Check(
                "faiss",
                WARN,
                "not installed (optional: the numpy exact index is used; needed for "
                "`index: faiss` and large pools)",
                _FAISS_EXTRA,
            )
        return _missing("faiss", "faiss-cpu", version, error, _FAISS_EXTRA)
    threads = "?"
    with contextlib.suppress(Exception):
        threads = str(mod.omp_get_max_threads())
    omp = probe.environ.get("OMP_NUM_THREADS")
    return Check(
        "faiss",
        OK,
        f"{getattr(mod, '__version__', version)}; {threads} thread(s)"
        + (f" (OMP_NUM_THREADS={omp})" if omp else ""),
    )


def check_distributed(probe: Probe) -> Check:
    """torch.distributed and its backends (gloo, nccl); torchrun next to this Python."""
    try:
        torch = probe.importer("torch")
        dist = probe.importer("torch.distributed")
    except Exception as exc:  # noqa: BLE001
        return Check(
            "torch.distributed", FAIL, f"torch does not import: {_err(exc)}", "pip install torch"
        )
    if not dist.is_available():
        return Check(
            "torch.distributed",
            WARN,
            "this torch build has no torch.distributed: single-process runs only",
            "install a standard torch wheel from PyPI for multi-GPU / DeepSpeed runs",
        )
    backends = {
        "gloo": dist.is_gloo_available(),
        "nccl": dist.is_nccl_available(),
        "mpi": dist.is_mpi_available(),
    }
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    have_run = Path(torchrun).exists()
    detail = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in backends.items())
    detail += f"; torchrun {'at ' + torchrun if have_run else 'not found'}"
    if not backends["gloo"]:
        return Check(
            "torch.distributed",
            WARN,
            detail,
            "CPU multi-process runs need gloo: install a standard torch wheel",
        )
    if torch.cuda.is_available() and not backends["nccl"]:
        return Check(
            "torch.distributed",
            WARN,
            detail,
            "multi-GPU runs need NCCL: install a CUDA build of torch from PyPI",
        )
    if not have_run:
        return Check(
            "torch.distributed",
            WARN,
            detail,
            "FORCE_TORCHRUN=1 and multi-GPU `train` need torchrun: put the venv's bin on PATH",
        )
    return Check("torch.distributed", OK, detail)


_DATAFLEX = (
    ("dataflex-core", "dataflex_core", True),
    ("dataflex-mix", "dataflex_mix", True),
    ("dataflex-select", "dataflex_select", True),
    ("dataflex-weight", "dataflex_weight", True),
    ("dataflex-ops", "dataflex_ops", True),
    ("dataflex-llamafactory", "dataflex_llamafactory", True),
    ("dataflex-testing", "dataflex_testing", False),
)


def check_dataflex(probe: Probe) -> Check:
    """Every DataFlex distribution is installed and imports."""
    found, failed, optional = [], [], []
    for dist, module, required in _DATAFLEX:
        version = _version(probe, dist)
        if version is None:
            (failed if required else optional).append(f"{dist} not installed")
            continue
        try:
            probe.importer(module)
        except Exception as exc:  # noqa: BLE001
            failed.append(f"{dist} {version}: import fails ({_err(exc)})")
            continue
        found.append(f"{dist.removeprefix('dataflex-')} {version}")
    detail = ", ".join(found) or "none"
    if failed:
        return Check(
            "dataflex packages",
            FAIL,
            "; ".join(failed) + f" (ok: {detail})",
            "pip install 'dataflex-llamafactory' (it pulls every DataFlex package)",
        )
    if optional:
        detail += "; " + ", ".join(optional) + " (only for plugin tests)"
    return Check("dataflex packages", OK, detail)


def _lenient_plugin_manager() -> Any:
    """A plugin manager that records every load error instead of raising on the first."""
    from dataflex_core import DataflexPluginManager

    class Lenient(DataflexPluginManager):
        def _skip(self, info: Any, exc: BaseException) -> None:  # record, never raise
            self.infos[info.name] = info

    pm = Lenient()
    pm.load_entrypoints()
    return pm


def _plugin_manager(probe: Probe) -> tuple[Any, str]:
    """``(manager or None, error of the process-wide manager or "")``."""
    from dataflex_core import PluginError, get_plugin_manager

    factory = probe.plugin_manager or get_plugin_manager
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the load errors are reported as rows instead
        try:
            return factory(), ""
        except PluginError as exc:
            error = str(exc)
        try:  # strict mode stopped at the first problem: collect them all
            return _lenient_plugin_manager(), error
        except Exception:  # noqa: BLE001 - e.g. a name registered by two distributions
            return None, error


def check_plugins(probe: Probe) -> list[Check]:
    """The ``dataflex`` entry points load; one FAIL row per broken plugin."""
    pm, error = _plugin_manager(probe)
    rows: list[Check] = []
    if pm is None:
        return [
            Check(
                "plugins",
                FAIL,
                error,
                "uninstall one of the two distributions, or block one with "
                "DATAFLEX_DISABLE_PLUGINS=<name>",
            )
        ]
    infos = getattr(pm, "infos", {})
    loaded = sorted(i.name for i in infos.values() if i.loaded)
    broken = list(getattr(pm, "load_errors", []))
    blocked = ""
    with contextlib.suppress(Exception):
        from dataflex_core.plugins import disabled_plugins

        names = disabled_plugins()
        blocked = (
            f"; blocked by DATAFLEX_DISABLE_PLUGINS: {', '.join(sorted(names))}" if names else ""
        )
    status = OK if loaded else WARN
    rows.append(
        Check(
            "plugins",
            status,
            f"{len(loaded)} loaded ({', '.join(loaded) or 'none'}){blocked}",
            "" if loaded else _INSTALL_LF,
        )
    )
    for info in broken:
        rows.append(
            Check(
                f"plugin {info.name}",
                FAIL,
                info.error or f"{info.name} from {info.distribution} {info.version} failed to load",
                f"fix or uninstall {info.distribution} (pip uninstall {info.distribution}), or set "
                f"DATAFLEX_DISABLE_PLUGINS={info.name}",
            )
        )
    if error and broken:
        rows.append(
            Check(
                "plugins (strict)",
                FAIL,
                "DATAFLEX_STRICT_PLUGINS=1: every command stops at the broken plugin above",
                "fix the plugin, or unset DATAFLEX_STRICT_PLUGINS to skip it with a warning",
            )
        )
    elif error:
        rows.append(
            Check(
                "plugins (strict)",
                FAIL,
                error,
                "fix or uninstall the plugin it names, or block it with DATAFLEX_DISABLE_PLUGINS",
            )
        )
    return rows


def check_registry(probe: Probe) -> Check:
    """The component registry builds (no duplicate names, no failing registration hook)."""
    from dataflex_core import PluginError, Registry
    from dataflex_core.specs import KINDS

    pm, _ = _plugin_manager(probe)
    if pm is None:
        return Check(
            "components",
            FAIL,
            "skipped: the plugins did not load (see above)",
            "fix the plugin problem above first",
        )
    try:
        reg = Registry(pm)
    except PluginError as exc:
        return Check(
            "components",
            FAIL,
            str(exc),
            "uninstall or fix the plugin it names, or block it with "
            "DATAFLEX_DISABLE_PLUGINS=<plugin>",
        )
    specs = reg.specs()
    counts = {k: sum(1 for s in specs if s.kind == k) for k in KINDS}
    detail = ", ".join(f"{k} {n}" for k, n in counts.items())
    unresolved = []
    for s in specs:
        if not isinstance(s.factory, str):
            continue
        module = s.factory.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except Exception:  # noqa: BLE001 - a parent package failing to import
            found = False
        if not found:
            unresolved.append(f"{s.kind} {s.name!r} -> {module} ({s.source})")
    if unresolved:
        return Check(
            "components",
            FAIL,
            f"{detail}; factory module not found for " + "; ".join(unresolved[:5]),
            "reinstall the distribution named in parentheses, or uninstall it",
        )
    missing = [k for k in ("selector", "mixer", "weighter") if counts.get(k, 0) == 0]
    if missing:
        return Check(
            "components",
            WARN,
            detail + f"; no {', '.join(missing)}s registered",
            "pip install 'dataflex-select' 'dataflex-mix' 'dataflex-weight'",
        )
    return Check("components", OK, detail)


_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def check_hf_offline(probe: Probe) -> Check:
    """The Hugging Face offline switches, consistently set or not."""
    env = probe.environ
    values = {k: env.get(k) for k in _OFFLINE}
    detail = ", ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in values.items())
    on = {k for k, v in values.items() if _truthy(v)}
    if on and "HF_HUB_OFFLINE" not in on:
        return Check(
            "hf offline",
            WARN,
            detail + "; the hub client still tries the network",
            "export HF_HUB_OFFLINE=1 as well (it is what huggingface_hub reads)",
        )
    return Check(
        "hf offline", OK, detail + ("; offline" if on else "; online (hub downloads allowed)")
    )


def _hf_home(env: Mapping[str, str]) -> Path:
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface"


def _dataflex_cache(env: Mapping[str, str]) -> Path:
    if env.get("DATAFLEX_CACHE_DIR"):
        return Path(env["DATAFLEX_CACHE_DIR"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dataflex"


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(path: Path) -> tuple[bool, str]:
    if path.exists():
        if not path.is_dir():
            return False, f"{path} exists and is not a folder"
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            return False, f"{path} is not writable ({_err(exc)})"
        return True, f"{path} (writable)"
    base = _existing_ancestor(path)
    if not base.is_dir():
        return False, f"{path} cannot be created: {base} is not a folder"
    try:  # a real write test: os.access says yes to root even on read-only mounts
        with tempfile.TemporaryDirectory(dir=base):
            pass
    except OSError as exc:
        return False, f"{path} does not exist and cannot be created in {base} ({_err(exc)})"
    return True, f"{path} (does not exist yet; it will be created in {base})"


def _cache_check(name: str, var: str, path: Path) -> Check:
    ok, detail = _writable(path)
    if ok:
        return Check(name, OK, detail)
    return Check(name, FAIL, detail, f"export {var}=/a/writable/folder")


def check_hf_cache(probe: Probe) -> Check:
    """HF_HOME is (or can be made) writable."""
    return _cache_check("HF_HOME", "HF_HOME", _hf_home(probe.environ))


def check_dataflex_cache(probe: Probe) -> Check:
    """DATAFLEX_CACHE_DIR is (or can be made) writable."""
    return _cache_check("DATAFLEX_CACHE_DIR", "DATAFLEX_CACHE_DIR", _dataflex_cache(probe.environ))


def check_disk(probe: Probe) -> list[Check]:
    """Free disk space where the caches live (one row per file system)."""
    rows, seen = [], set()
    for var, path in (
        ("DATAFLEX_CACHE_DIR", _dataflex_cache(probe.environ)),
        ("HF_HOME", _hf_home(probe.environ)),
    ):
        base = _existing_ancestor(path)
        dev = base.stat().st_dev
        if dev in seen:
            continue
        seen.add(dev)
        free = shutil.disk_usage(base).free / 2**30
        detail = f"{free:.1f} GiB free at {base} ({var})"
        if free < DISK_FAIL_GIB:
            rows.append(
                Check(
                    f"disk ({var})",
                    FAIL,
                    detail,
                    f"free space, or export {var}=<a folder on a larger disk>",
                )
            )
        elif free < DISK_WARN_GIB:
            rows.append(
                Check(
                    f"disk ({var})",
                    WARN,
                    detail + f"; models and feature stores need more than {DISK_WARN_GIB:.0f} GiB",
                    f"free space, or export {var}=<a folder on a larger disk>",
                )
            )
        else:
            rows.append(Check(f"disk ({var})", OK, detail))
    return rows


#: ``(title, check)`` in report order; a check returns one row or a list of rows.
CHECKS: list[tuple[str, Callable[[Probe], Check | list[Check]]]] = [
    ("python", check_python),
    ("torch", check_torch),
    ("transformers", check_transformers),
    ("llamafactory", check_llamafactory),
    ("datasets", _simple("datasets", "datasets", "datasets", _INSTALL_LF)),
    ("peft", _simple("peft", "peft", "peft", _INSTALL_LF)),
    ("accelerate", _simple("accelerate", "accelerate", "accelerate", _INSTALL_LF)),
    ("deepspeed", check_deepspeed),
    ("faiss", check_faiss),
    ("numpy", _simple("numpy", "numpy", "numpy", "pip install numpy")),
    ("pluggy", _simple("pluggy", "pluggy", "pluggy", "pip install 'pluggy>=1.5'")),
    ("torch.distributed", check_distributed),
    ("dataflex packages", check_dataflex),
    ("plugins", check_plugins),
    ("components", check_registry),
    ("hf offline", check_hf_offline),
    ("HF_HOME", check_hf_cache),
    ("DATAFLEX_CACHE_DIR", check_dataflex_cache),
    ("disk", check_disk),
]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what imported libraries print (DeepSpeed logs to stdout) to stderr meanwhile.

    Both the Python-level ``sys.stdout`` and file descriptor 1 are redirected, so ``--json``
    output stays parseable. DeepSpeed binds its log handler to the ``sys.stdout`` it sees at
    import time, so its later messages keep going to stderr, where diagnostics belong.
    """
    saved = None
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        err = sys.stderr.fileno()
        saved = os.dup(fd)
        os.dup2(err, fd)
    except (AttributeError, OSError, ValueError):  # no real descriptors (e.g. StringIO)
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence INFO chatter of imported libraries (FAISS's loader) while the checks run."""
    import logging

    before = logging.root.manager.disable
    logging.disable(max(before, logging.INFO))
    try:
        yield
    finally:
        logging.disable(before)


def run_checks(
    probe: Probe | None = None,
    checks: Sequence[tuple[str, Callable[[Probe], Check | list[Check]]]] | None = None,
) -> list[Check]:
    """Run every check, each isolated: a crash becomes a FAIL row naming the error."""
    probe = probe or Probe()
    rows: list[Check] = []
    for title, fn in checks if checks is not None else CHECKS:
        try:
            out = fn(probe)
        except Exception as exc:  # noqa: BLE001 - the doctor never crashes
            out = Check(
                title,
                FAIL,
                f"the check itself failed: {_err(exc)}",
                "report this with the output of `dataflex-cli version`",
            )
        rows.extend(out if isinstance(out, list) else [out])
    return rows


def render_table(rows: Sequence[Check]) -> str:
    """The report as aligned text, with a ``fix:`` line under each row that has one."""
    hdr = ("check", "status", "detail")
    w0 = max(len(hdr[0]), *(len(r.name) for r in rows)) if rows else len(hdr[0])
    w1 = max(len(hdr[1]), 4)
    lines = [f"{hdr[0]:{w0}}  {hdr[1]:{w1}}  {hdr[2]}", f"{'-' * w0}  {'-' * w1}  {'-' * 6}"]
    for r in rows:
        lines.append(f"{r.name:{w0}}  {r.status:{w1}}  {r.detail}")
        if r.fix and r.status != OK:
            lines.append(f"{'':{w0}}  {'':{w1}}  fix: {r.fix}")
    return "\n".join(lines)


def _summary(rows: Sequence[Check]) -> dict[str, int]:
    return {s: sum(1 for r in rows if r.status == s) for s in (OK, WARN, FAIL)}


def run_doctor(
    json_output: bool = False, probe: Probe | None = None, stream: TextIO | None = None
) -> int:
    """Run the checks and print the report; 0 when nothing failed, else 1."""
    start = time.perf_counter()
    with _stdout_to_stderr(), _quiet_logging():
        rows = run_checks(probe)
    elapsed = time.perf_counter() - start
    summary = _summary(rows)
    ok = summary[FAIL] == 0
    out = stream or sys.stdout
    if json_output:
        payload = {
            "ok": ok,
            "summary": summary,
            "seconds": round(elapsed, 2),
            "checks": [asdict(r) for r in rows],
        }
        out.write(json.dumps(payload, indent=2) + "\n")
    else:
        out.write(render_table(rows) + "\n\n")
        out.write(
            f"{summary[OK]} ok, {summary[WARN]} warn, {summary[FAIL]} FAIL in {elapsed:.1f} s"
            + ("" if ok else "; fix the FAIL rows above (each has a fix: line)")
            + "\n"
        )
    out.flush()
    return 0 if ok else 1
