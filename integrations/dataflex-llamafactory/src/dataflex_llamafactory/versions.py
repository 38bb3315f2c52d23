"""Supported versions of LLaMA-Factory and transformers, checked at start."""

from __future__ import annotations

import importlib.metadata as md
import os

from dataflex_core import ConfigError

__all__ = ["SUPPORTED", "check_versions"]

#: distribution -> (minimum inclusive, maximum inclusive, maximum exclusive)
SUPPORTED: dict[str, tuple[str, str | None, str | None]] = {
    "llamafactory": ("0.9.5", None, "0.9.6"),
    "transformers": ("4.55.0", "5.6.0", None),
}


def _describe(lo: str, hi_incl: str | None, hi_excl: str | None) -> str:
    parts = [f">={lo}"]
    if hi_incl:
        parts.append(f"<={hi_incl}")
    if hi_excl:
        parts.append(f"<{hi_excl}")
    return ",".join(parts)


def check_versions() -> None:
    """Raise :class:`ConfigError` naming the supported ranges when an installed version is outside.

    Set ``DATAFLEX_DISABLE_VERSION_CHECK=1`` to try an unsupported combination at your own risk.
    """
    if os.environ.get("DATAFLEX_DISABLE_VERSION_CHECK", "").lower() in {"1", "true", "yes"}:
        return
    from packaging.version import Version

    problems = []
    for dist, (lo, hi_incl, hi_excl) in SUPPORTED.items():
        try:
            v = Version(md.version(dist))
        except md.PackageNotFoundError:
            problems.append(f"{dist} is not installed (need {_describe(lo, hi_incl, hi_excl)})")
            continue
        ok = v >= Version(lo) and (hi_incl is None or v <= Version(hi_incl)) and (
            hi_excl is None or v < Version(hi_excl)
        )
        if not ok:
            problems.append(f"{dist} {v} is installed but dataflex-llamafactory supports {_describe(lo, hi_incl, hi_excl)}")
    if problems:
        raise ConfigError(
            "unsupported environment: " + "; ".join(problems) + ". Install the supported versions "
            "(`pip install 'llamafactory==0.9.5' 'transformers<=5.6.0'`), or set "
            "DATAFLEX_DISABLE_VERSION_CHECK=1 to try anyway."
        )
