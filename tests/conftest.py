"""Shared helpers for the cross-package tests: run ``dataflex-cli`` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dataflex_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private model cache for the session (the tiny model is built once into it)."""
    return tmp_path_factory.mktemp("dataflex-cache")


@pytest.fixture
def cli_env(dataflex_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DATAFLEX_CACHE_DIR=str(dataflex_cache),
        DATAFLEX_STRICT_PLUGINS="1",
        PYTHONUNBUFFERED="1",
        # torchrun must be found next to this interpreter
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    for var in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(var, None)
    return env


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``dataflex-cli ARGS`` in the repo root; returns the completed process."""

    def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        full_env = dict(cli_env)
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "dataflex_llamafactory.cli", *args],
            cwd=REPO,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return _run


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a run config (a dict) as YAML into tmp_path; returns its path."""

    def _write(cfg: dict[str, Any], name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return _write


def _quickstart(**changes: Any) -> dict[str, Any]:
    """The bundled quickstart config, with top-level changes (``dataflex`` merged)."""
    cfg = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    cfg["dataset_dir"] = str(REPO / "examples" / "data")
    df = changes.pop("dataflex", None)
    cfg.update(changes)
    if df:
        cfg["dataflex"].update(df)
    return cfg


@pytest.fixture
def quickstart() -> Callable[..., dict[str, Any]]:
    """Factory of the bundled quickstart config with changes (see ``_quickstart``)."""
    return _quickstart
