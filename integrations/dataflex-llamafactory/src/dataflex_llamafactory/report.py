"""``dataflex-cli report``: one self-contained HTML page about a finished or partial run.

It reads only what a run leaves in its ``output_dir``:

* ``trainer_log.jsonl`` (LLaMA-Factory's log lines: loss, lr, elapsed time), else
  ``trainer_state.json``'s ``log_history`` (of the run, or of its latest checkpoint);
* ``all_results.json`` / ``train_results.json`` (train_runtime, train_loss, eval_loss);
* ``dataflex/effective_config.json``, ``dataflex/decisions.jsonl`` (mixer, selector and weighter
  records), ``dataflex/selections.jsonl`` and ``dataflex/timing.jsonl``;
* the latest ``checkpoint-*/dataflex_state.json`` (the run seed).

and writes ``report.html`` with its figures as ``report_*.png`` beside it (also embedded in the
page as base64, so the page alone opens offline: no scripts, no external links). Sections
without data say so. Figures already drawn by the run (``proportions.png``, ``selection.png``,
``weights.png``, when newer than the decisions log) are reused instead of drawn again.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflex_core import DataError, atomic_write_text, read_jsonl

__all__ = ["RunData", "load_run", "write_report", "default_report_dir", "REPORT_HTML"]

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
_NOT_RECORDED = "not recorded for this run"
_MAX_ROWS = 24


# --------------------------------------------------------------------------- reading


@dataclass
class RunData:
    """What a run left in its output folder (empty where a file is missing)."""

    output_dir: Path
    effective: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    selections: list[dict[str, Any]] = field(default_factory=list)
    timing: list[dict[str, Any]] = field(default_factory=list)
    train_log: list[dict[str, Any]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    trainer_state: dict[str, Any] | None = None
    results: dict[str, Any] = field(default_factory=dict)
    dataflex_state: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def dataflex_dir(self) -> Path:
        return self.output_dir / "dataflex"

    def records(self, kind: str, *, logged_steps_only: bool = True) -> list[dict[str, Any]]:
        """Decision records of one kind (``mixer``, ``selector``, ``weighter``), step order."""
        out = [
            r for r in self.decisions if r.get("kind") == kind and isinstance(r.get("step"), int)
        ]
        if logged_steps_only:
            out = [r for r in out if r["step"] >= 0]
        return out


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); ignored.")
        return None
    return data if isinstance(data, dict) else None


def _read_log(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return [r for r in read_jsonl(path) if isinstance(r, dict)]
    except (UnicodeDecodeError, OSError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); ignored.")
        return []


def _latest_checkpoint(output_dir: Path) -> Path | None:
    best: tuple[int, Path] | None = None
    for d in output_dir.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and d.is_dir() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), d)
    return None if best is None else best[1]


def load_run(output_dir: str | Path) -> RunData:
    """Read a run's output folder.

    Raises:
        DataError: The folder does not exist, or holds neither LLaMA-Factory's logs nor DataFlex
            decision records.
    """
    out = Path(output_dir)
    if not out.is_dir():
        what = "is not a folder" if out.exists() else "does not exist"
        raise DataError(
            f"run folder {str(out)!r} {what}; give the output_dir of a `dataflex-cli train` run "
            "(it holds trainer_log.jsonl and, for dynamic runs, dataflex/decisions.jsonl)."
        )
    run = RunData(output_dir=out)
    notes = run.notes
    df = out / "dataflex"
    run.effective = _read_json(df / "effective_config.json", notes)
    run.decisions = _read_log(df / "decisions.jsonl", notes)
    run.selections = _read_log(df / "selections.jsonl", notes)
    run.timing = _read_log(df / "timing.jsonl", notes)
    run.train_log = _read_log(out / "trainer_log.jsonl", notes)
    state = _read_json(out / "trainer_state.json", notes)
    ckpt = _latest_checkpoint(out)
    if state is None and ckpt is not None:
        state = _read_json(ckpt / "trainer_state.json", notes)
        if state is not None:
            notes.append(f"trainer_state.json read from {ckpt.name} (the run did not finish).")
    run.trainer_state = state
    run.log_history = [h for h in (state or {}).get("log_history", []) if isinstance(h, dict)]
    for name in ("train_results.json", "all_results.json"):
        run.results.update(_read_json(out / name, notes) or {})
    if ckpt is not None:
        run.dataflex_state = _read_json(ckpt / "dataflex_state.json", notes)
    if not (run.train_log or run.log_history or run.decisions or run.results):
        raise DataError(
            f"run folder {str(out)!r} holds no run logs: expected trainer_log.jsonl or "
            "trainer_state.json (written by LLaMA-Factory once training logs its first step) "
            "and, for dynamic runs, dataflex/decisions.jsonl. Is it the output_dir of a "
            "`dataflex-cli train` run, and did that run log at least one step?"
        )
    return run


# --------------------------------------------------------------------------- facts


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(float(x)) else None


def _fmt(x: Any, digits: int = 4) -> str:
    v = _num(x)
    if v is None:
        return "–" if x is None else str(x)
    if v == int(v) and abs(v) < 1e12 and isinstance(x, int):
        return str(int(v))
    return f"{v:.{digits}g}"


def _seconds(text: Any) -> float | None:
    """``"H:MM:SS"`` (LLaMA-Factory's elapsed_time, also ``"1 day, H:MM:SS"``) in seconds."""
    if not isinstance(text, str):
        return None
    m = re.fullmatch(r"(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)", text.strip())
    if not m:
        return None
    days, h, mi, s = m.groups()
    return int(days or 0) * 86400 + int(h) * 3600 + int(mi) * 60 + float(s)


def _domains(run: RunData) -> list[str]:
    eff = run.effective or {}
    if isinstance(eff.get("domains"), list):
        return [str(d) for d in eff["domains"]]
    if run.dataflex_state and isinstance(run.dataflex_state.get("domain_names"), list):
        return [str(d) for d in run.dataflex_state["domain_names"]]
    for r in run.decisions:
        dec = r.get("decision") or {}
        if isinstance(dec.get("domains"), list):
            return [str(d) for d in dec["domains"]]
        if isinstance(dec.get("by_domain"), dict):
            return [str(d) for d in dec["by_domain"]]
    return []


def _train_type(run: RunData) -> str:
    eff = (run.effective or {}).get("dataflex") or {}
    if eff.get("train_type"):
        return str(eff["train_type"])
    kinds = {r.get("kind") for r in run.decisions}
    for kind, tt in (
        ("mixer", "dynamic_mix"),
        ("selector", "dynamic_select"),
        ("weighter", "dynamic_weight"),
    ):
        if kind in kinds:
            return tt
    return "static" if not run.dataflex_dir.exists() else "unknown"


def _component(run: RunData) -> str | None:
    comp = (run.effective or {}).get("component")
    if isinstance(comp, dict) and comp.get("entry"):
        entry, typ = str(comp["entry"]), str(comp.get("type", ""))
        return entry if not typ or typ == entry else f"{entry} ({typ})"
    if ((run.effective or {}).get("dataflex") or {}).get("static_mix"):
        return "static_mix (fixed proportions, no mixer)"
    for r in run.decisions:
        if r.get("component"):
            return str(r["component"])
    return None


def _train_runtime(run: RunData) -> tuple[float | None, str]:
    """Seconds of training and where the number comes from."""
    rt = _num(run.results.get("train_runtime"))
    if rt is not None:
        return rt, "train_runtime (train_results.json)"
    for h in reversed(run.log_history):
        rt = _num(h.get("train_runtime"))
        if rt is not None:
            return rt, "train_runtime (trainer_state.json)"
    for r in reversed(run.train_log):
        rt = _seconds(r.get("elapsed_time"))
        if rt is not None:
            return (
                rt,
                "elapsed_time of the last trainer_log.jsonl line (1 s resolution; partial run)",
            )
    return None, ""


def _steps(run: RunData) -> tuple[int | None, int | None]:
    """(completed, total) optimizer steps."""
    done = total = None
    if run.trainer_state is not None:
        done = run.trainer_state.get("global_step")
        total = run.trainer_state.get("max_steps")
    if run.train_log:
        last = run.train_log[-1]
        if isinstance(last.get("current_steps"), int) and (
            done is None or last["current_steps"] > done
        ):
            done = last["current_steps"]
        total = last.get("total_steps", total)
    eff_total = (run.effective or {}).get("total_steps")
    if isinstance(eff_total, int):
        total = eff_total
    return (done if isinstance(done, int) else None), (total if isinstance(total, int) else None)


def _loss_series(run: RunData) -> dict[str, tuple[list[float], list[float]]]:
    """``train``, ``lr``, ``eval`` as (steps, values), one value per step (the last logged)."""
    series: dict[str, dict[int, float]] = {"train": {}, "lr": {}, "eval": {}}
    if any("loss" in r for r in run.train_log):
        for r in run.train_log:
            step = r.get("current_steps")
            if not isinstance(step, int):
                continue
            for key, name in (("loss", "train"), ("lr", "lr"), ("eval_loss", "eval")):
                v = _num(r.get(key))
                if v is not None:
                    series[name][step] = v
    else:
        for h in run.log_history:
            step = h.get("step")
            if not isinstance(step, int):
                continue
            for key, name in (("loss", "train"), ("learning_rate", "lr"), ("eval_loss", "eval")):
                v = _num(h.get(key))
                if v is not None:
                    series[name][step] = v
    return {
        k: ([float(s) for s in sorted(v)], [v[s] for s in sorted(v)]) for k, v in series.items()
    }


# --------------------------------------------------------------------------- html helpers


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _subsample(items: Sequence[Any], limit: int = _MAX_ROWS) -> tuple[list[Any], bool]:
    """At most ``limit`` items, evenly spaced, always keeping the first and the last."""
    n = len(items)
    if n <= limit:
        return list(items), False
    idx = sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})
    return [items[i] for i in idx], True


def _missing(what: str) -> str:
    return f'<p class="missing">{_e(what)}: {_NOT_RECORDED}.</p>'


class _Figures:
    """Writes figures into the report folder and embeds them in the page."""

    def __init__(self, out_dir: Path, dpi: int) -> None:
        self.out_dir = out_dir
        self.dpi = dpi
        self.files: list[Path] = []

    def reuse(self, source: Path, newer_than: Path | None, name: str) -> Path | None:
        """A figure the run already drew, if it is newer than the log it was drawn from."""
        if not source.is_file():
            return None
        if (
            newer_than is not None
            and newer_than.exists()
            and source.stat().st_mtime < newer_than.stat().st_mtime
        ):
            return None
        if source.parent.resolve() == self.out_dir.resolve():
            self.files.append(source)
            return source
        dest = self.out_dir / name
        shutil.copyfile(source, dest)
        self.files.append(dest)
        return dest

    def add(self, path: Path | None) -> Path | None:
        if path is not None:
            self.files.append(path)
        return path

    @staticmethod
    def img(path: Path | None, alt: str) -> str:
        if path is None:
            return ""
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        link = f'<a href="{_e(path.name)}">{_e(path.name)}</a>'
        return (
            f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(alt)} ({link})</figcaption></figure>"
        )


# --------------------------------------------------------------------------- sections


def _section_header(run: RunData, extra: Mapping[str, Any]) -> tuple[str, list[tuple[str, Any]]]:
    eff = run.effective or {}
    domains = _domains(run)
    sizes = eff.get("domain_sizes") or []
    done, total = _steps(run)
    seed = ((run.dataflex_state or {}).get("seeds") or {}).get("run", extra.get("seed", eff.get("seed")))
    h = eff.get("hash")
    facts: list[tuple[str, Any]] = [
        ("output_dir", str(run.output_dir)),
        ("train_type", _train_type(run)),
        ("component", _component(run) or "– (none)"),
        (
            "domains",
            ", ".join(
                f"{d} ({n} rows)" if len(sizes) == len(domains) else d
                for d, n in zip(domains, sizes or [None] * len(domains), strict=False)
            )
            or _NOT_RECORDED,
        ),
        (
            "steps",
            f"{_fmt(done)} of {_fmt(total)}"
            if done is not None or total is not None
            else _NOT_RECORDED,
        ),
        ("seed", _NOT_RECORDED if seed is None else seed),
        ("effective_config hash", h if h else _NOT_RECORDED),
    ]
    for key in ("samples_per_step", "update_steps", "window", "num_samples"):
        v = eff.get(key)
        if v is not None:
            if isinstance(v, list):
                shown, cut = _subsample(v, 12)
                v = ", ".join(str(x) for x in shown) + (" … (subsampled)" if cut else "")
            facts.append((key.replace("_", " "), v))
    return _kv(facts), facts


def _section_final(run: RunData, timing_share: str | None) -> str:
    series = _loss_series(run)
    rows: list[tuple[str, Any]] = []
    steps, losses = series["train"]
    if steps:
        rows.append(("last logged training loss", f"{losses[-1]:.4f} (step {int(steps[-1])})"))
    for key, label in (
        ("train_loss", "mean training loss (train_loss)"),
        ("eval_loss", "eval loss"),
        ("eval_perplexity", "eval perplexity"),
        ("train_runtime", "train_runtime (s)"),
        ("train_samples_per_second", "samples / s"),
        ("train_steps_per_second", "steps / s"),
    ):
        if _num(run.results.get(key)) is not None:
            rows.append((label, _fmt(run.results[key], 6)))
    mix = run.records("mixer")
    if mix:
        p = mix[-1]["decision"].get("proportions") or []
        rows.append(
            (
                "final proportions",
                ", ".join(f"{d} {x:.3f}" for d, x in zip(_domains(run), p, strict=False)),
            )
        )
    sel = run.records("selector")
    if sel:
        rows.append(("selection decisions", len(sel)))
    w = run.records("weighter")
    if w:
        last = w[-1]["decision"]
        rows.append(
            (
                "last weight interval",
                f"min {_fmt(last.get('min'))}, mean {_fmt(last.get('mean'))}, "
                f"max {_fmt(last.get('max'))}",
            )
        )
    if timing_share:
        rows.append(("DataFlex time", timing_share))
    return _kv(rows) if rows else _missing("final numbers")


def _domain_loss_series(
    run: RunData,
) -> tuple[list[tuple[str, list[float], list[float], str, int]], str]:
    domains = _domains(run)
    out: list[tuple[str, list[float], list[float], str, int]] = []
    titles = []
    for kind, key, style, suffix, title in (
        ("mixer", "domain_loss", "-", "", "training loss between mixer updates"),
        ("mixer", "eval_domain_loss", "--", " (eval)", "dashed: eval-set loss"),
        ("weighter", "domain_loss", "-", "", "mean sample loss per logging interval"),
        ("selector", "domain_loss", "-", "", "mean pool loss at each selection"),
    ):
        recs = [
            r for r in run.records(kind) if isinstance((r.get("feedback") or {}).get(key), list)
        ]
        if not recs:
            continue
        titles.append(title)
        for j, d in enumerate(domains):
            pts = [
                (float(r["step"]), _num(r["feedback"][key][j]))
                for r in recs
                if j < len(r["feedback"][key])
            ]
            pts = [(s, v) for s, v in pts if v is not None]
            if pts:
                out.append((f"{d}{suffix}", [s for s, _ in pts], [v for _, v in pts], style, j))
    return out, "; ".join(titles)


def _section_loss(run: RunData, figs: _Figures) -> str:
    from dataflex_llamafactory.plotting import plot_losses

    series = _loss_series(run)
    dom, dom_title = _domain_loss_series(run)
    if not series["train"][0] and not dom:
        return _missing("training loss")
    png = plot_losses(
        figs.out_dir / "report_loss.png",
        train=series["train"],
        eval_points=series["eval"] if series["eval"][0] else None,
        lr=series["lr"] if series["lr"][0] else None,
        domain_series=dom,
        domain_title=f"per-domain: {dom_title}" if dom_title else "",
        dpi=figs.dpi,
    )
    figs.add(png)
    parts = [figs.img(png, "training loss and per-domain loss" if dom else "training loss")]
    if not series["train"][0]:
        parts.append(_missing("overall training loss (no logged step yet)"))
    if not dom:
        parts.append(_missing("per-domain loss"))
    else:
        parts.append(f"<p>Per-domain curves: {_e(dom_title)}.</p>")
    return "".join(parts)


def _initial_proportions(run: RunData, k: int) -> list[float]:
    df = (run.effective or {}).get("dataflex") or {}
    imp = df.get("init_mixture_proportions")
    if isinstance(imp, dict) and imp.get("from_file"):
        data = _read_json(Path(str(imp["from_file"])), run.notes) or {}
        by = dict(zip(data.get("domains") or [], data.get("average") or [], strict=False))
        imp = [by.get(d) for d in _domains(run)] if by else None
        if imp is None or any(_num(x) is None for x in imp):
            run.notes.append(
                "init_mixture_proportions.from_file could not be read; warmup drawn as uniform."
            )
            imp = None
    sizes = (run.effective or {}).get("domain_sizes")
    if isinstance(imp, list) and len(imp) == k and sum(imp) > 0:
        return [float(x) / float(sum(imp)) for x in imp]
    if (
        df.get("mixture_sample_rule") == "stratified"
        and isinstance(sizes, list)
        and len(sizes) == k
    ):
        return [float(x) / float(sum(sizes)) for x in sizes]
    return [1.0 / k] * k if k else []


def _section_proportions(run: RunData, figs: _Figures) -> str:
    from dataflex_llamafactory.plotting import plot_proportions

    domains = _domains(run)
    recs = run.records("mixer")
    df = (run.effective or {}).get("dataflex") or {}
    if not recs:
        if df.get("static_mix") and domains:
            p = _initial_proportions(run, len(domains))
            return (
                "<p>static_mix: fixed proportions for the whole run (no mixer decisions).</p>"
                + _table(domains, [[f"{x:.4f}" for x in p]])
            )
        return _missing("domain proportions (no mixer decisions)")
    log_path = run.dataflex_dir / "decisions.jsonl"
    png = figs.reuse(run.dataflex_dir / "proportions.png", log_path, "report_proportions.png")
    if png is None:
        _, total = _steps(run)
        last = max(int(r["decision"].get("applies_from_step", r["step"])) for r in recs)
        png = figs.add(
            plot_proportions(
                log_path,
                figs.out_dir / "report_proportions.png",
                total_steps=max(total or 0, last + 1),
                initial=_initial_proportions(run, len(domains)),
                domains=domains,
                dpi=figs.dpi,
            )
        )
    shown, cut = _subsample(recs)
    rows = [
        [r["step"], r["decision"].get("applies_from_step", "")]
        + [f"{x:.4f}" for x in r["decision"].get("proportions", [])]
        for r in shown
    ]
    note = f"<p>{len(recs)} decisions; {len(shown)} shown, evenly spaced.</p>" if cut else ""
    return (
        figs.img(png, "domain proportions in force at each step")
        + note
        + _table(["decision at step", "applies from step", *domains], rows)
    )


def _section_selection(run: RunData, figs: _Figures) -> str:
    from dataflex_llamafactory.plotting import plot_selection

    recs = run.records("selector")
    if not recs:
        return _missing("selection composition (no selector decisions)")
    domains = _domains(run)
    log_path = run.dataflex_dir / "decisions.jsonl"
    png = figs.reuse(run.dataflex_dir / "selection.png", log_path, "report_selection.png")
    if png is None:
        png = figs.add(
            plot_selection(
                log_path, figs.out_dir / "report_selection.png", domains=domains, dpi=figs.dpi
            )
        )
    sels = {s.get("step"): s for s in run.selections if isinstance(s.get("indices"), list)}
    rows = []
    prev: set[int] | None = None
    seen: set[int] = set()
    for r in recs:
        d = r["decision"]
        entry = sels.get(r["step"])
        overlap = mean_score = "–"
        if entry is not None:
            cur = {int(i) for i in entry["indices"]}
            if prev is not None and cur:
                overlap = f"{len(cur & prev) / len(cur):.2f}"
            scores = [x for x in entry.get("scores") or [] if _num(x) is not None]
            if scores:
                mean_score = f"{sum(scores) / len(scores):.4g}"
            prev = cur
            seen |= cur
        rows.append(
            [
                r["step"],
                d.get("applies_from_step", ""),
                "yes" if d.get("warmup") else "no",
                d.get("num_selected", ""),
                d.get("unique", ""),
            ]
            + [(d.get("by_domain") or {}).get(x, 0) for x in domains]
            + [overlap, mean_score]
        )
    shown, cut = _subsample(rows)
    parts = [figs.img(png, "composition by domain of each selection")]
    n_pool = (run.effective or {}).get("num_samples")
    if seen and isinstance(n_pool, int) and n_pool > 0:
        parts.append(
            f"<p>{len(seen)} distinct rows of the pool's {n_pool} were selected at least once "
            f"({len(seen) / n_pool:.1%}).</p>"
        )
    if cut:
        parts.append(f"<p>{len(rows)} decisions; {len(shown)} shown, evenly spaced.</p>")
    parts.append(
        _table(
            [
                "step",
                "applies from",
                "warmup",
                "selected",
                "unique",
                *domains,
                "overlap with previous",
                "mean score",
            ],
            shown,
        )
    )
    if not run.selections:
        parts.append(_missing("selected indices (selections.jsonl)"))
    return "".join(parts)


def _section_weights(run: RunData, figs: _Figures) -> str:
    from dataflex_llamafactory.plotting import plot_weight_stats

    recs = run.records("weighter")
    if not recs:
        return _missing("sample weights (no weighter records)")
    domains = _domains(run)
    log_path = run.dataflex_dir / "decisions.jsonl"
    png = figs.reuse(run.dataflex_dir / "weights.png", log_path, "report_weights.png")
    if png is None:
        png = figs.add(
            plot_weight_stats(log_path, figs.out_dir / "report_weights.png", dpi=figs.dpi)
        )

    def stat(key: str) -> list[float]:
        return [v for r in recs if (v := _num(r["decision"].get(key))) is not None]

    entropy = stat("normalized_entropy")

    summary = [
        ("logging intervals", len(recs)),
        ("weighted samples", sum(int(r["decision"].get("samples", 0)) for r in recs)),
        ("smallest weight", _fmt(min(stat("min"), default=None))),
        ("largest weight", _fmt(max(stat("max"), default=None))),
        (
            "mean weight (mean over intervals)",
            _fmt(sum(stat("mean")) / len(stat("mean")) if stat("mean") else None),
        ),
        (
            "normalised entropy (min / mean over intervals)",
            f"{_fmt(min(entropy, default=None))} / "
            f"{_fmt(sum(entropy) / len(entropy) if entropy else None)}",
        ),
    ]
    shown, cut = _subsample(recs)
    rows = [
        [
            r["step"],
            r["decision"].get("samples", ""),
            _fmt(r["decision"].get("min")),
            _fmt(r["decision"].get("mean")),
            _fmt(r["decision"].get("max")),
            _fmt(r["decision"].get("normalized_entropy")),
        ]
        + [_fmt((r["decision"].get("by_domain") or {}).get(d)) for d in domains]
        for r in shown
    ]
    parts = [
        figs.img(png, "weight statistics per logging interval and mean weight by domain"),
        _kv(summary),
    ]
    if cut:
        parts.append(f"<p>{len(recs)} intervals; {len(shown)} shown, evenly spaced.</p>")
    parts.append(
        _table(
            [
                "step",
                "samples",
                "min",
                "mean",
                "max",
                "entropy / log n",
                *[f"mean {d}" for d in domains],
            ],
            rows,
        )
    )
    parts.append(_missing("per-sample weights (only their statistics are logged), so no histogram"))
    return "".join(parts)


def _timing_summary(run: RunData) -> tuple[list[list[Any]], float, list[dict[str, Any]]]:
    totals: dict[tuple[str, str], list[float]] = {}
    calls: dict[tuple[str, str], float] = {}
    recs = [
        r
        for r in run.timing
        if isinstance(r.get("timing"), dict) and isinstance(r.get("step"), int)
    ]
    for r in recs:
        for key, v in r["timing"].items():
            x = _num(v)
            if not key.endswith("_s") or x is None:
                continue
            k = (str(r.get("kind", "")), key)
            totals.setdefault(k, []).append(x)
            n = _num(r["timing"].get("calls"))
            calls[k] = calls.get(k, 0.0) + (n if n is not None else 1.0)
    rows = []
    grand = 0.0
    for (kind, key), xs in totals.items():
        total = sum(xs)
        grand += total
        n = calls[(kind, key)]
        rows.append([kind, key, total, n, total / n if n else 0.0, max(xs)])
    return rows, grand, recs


def _section_timing(run: RunData, figs: _Figures) -> tuple[str, str | None]:
    from dataflex_llamafactory.plotting import PHASE_LABELS, plot_timing

    rows, grand, recs = _timing_summary(run)
    runtime, source = _train_runtime(run)
    if not rows:
        what = "DataFlex phase timing"
        if run.decisions:
            what += (
                " (dataflex/timing.jsonl is missing: the run predates it, or the file was removed)"
            )
        text = _missing(what)
        if runtime is not None:
            text += f"<p>Training time: {runtime:.2f} s ({_e(source)}).</p>"
        return text, None
    share = f"{grand:.4g} s" + (
        f" of {runtime:.4g} s training ({grand / runtime:.2%})" if runtime else ""
    )
    plotted = [r for r in recs if r["step"] >= 0]
    keys = [k for k in PHASE_LABELS if any(k in r["timing"] for r in plotted)]
    keys += sorted({k for r in plotted for k in r["timing"] if k.endswith("_s") and k not in keys})
    png = None
    if plotted and keys:
        png = figs.add(
            plot_timing(
                figs.out_dir / "report_timing.png",
                steps=[r["step"] for r in plotted],
                phases={k: [_num(r["timing"].get(k)) or 0.0 for r in plotted] for k in keys},
                dpi=figs.dpi,
            )
        )
    table_rows = [
        [
            kind,
            PHASE_LABELS.get(key, key),
            f"{int(n)}",
            f"{total:.4f}",
            f"{mean:.4g}",
            f"{mx:.4g}",
            f"{total / runtime:.2%}" if runtime else "–",
        ]
        for kind, key, total, n, mean, mx in rows
    ]
    table_rows.append(
        [
            "all",
            "DataFlex phases",
            "",
            f"{grand:.4f}",
            "",
            "",
            f"{grand / runtime:.2%}" if runtime else "–",
        ]
    )
    parts = [
        f"<p>DataFlex phases took {_e(share)}. Training time: "
        + (f"{runtime:.2f} s, from {_e(source)}." if runtime is not None else f"{_NOT_RECORDED}.")
        + " Times are host wall clock (<code>time.perf_counter</code>); on a GPU a phase that"
        " ends in an existing host sync also absorbs training kernels still queued.</p>",
        figs.img(png, "seconds of each DataFlex phase per update"),
        _table(
            [
                "kind",
                "phase",
                "calls",
                "total s",
                "mean s / call",
                "max s / update",
                "share of training",
            ],
            table_rows,
        ),
    ]
    return "".join(parts), share


# --------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em}
h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}table.kv th{background:#f7f7f7;font-weight:600}
figure{margin:.8em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#666}
.missing{color:#8a6d3b;background:#fcf8e3;padding:.35em .6em;border-radius:3px}
.meta{color:#777;font-size:.8em}code{background:#f5f5f5;padding:0 .2em}
"""


def default_report_dir(output_dir: str | Path) -> Path:
    """``output_dir/dataflex`` when the run has it (dynamic runs), else ``output_dir``."""
    out = Path(output_dir)
    return out / "dataflex" if (out / "dataflex").is_dir() else out


def write_report(
    output_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    dpi: int = 80,
) -> Path:
    """Write ``report.html`` (and its ``report_*.png`` figures) for the run in ``output_dir``.

    Args:
        output_dir: The run's output folder.
        out_dir: Where to write; default :func:`default_report_dir`.
        extra: Facts the files may lack (``seed`` when no checkpoint holds it).
        dpi: Resolution of the figures drawn for the report.

    Returns:
        The path of ``report.html``.

    Raises:
        DataError: ``output_dir`` is missing or holds no logs.
    """
    t0 = time.perf_counter()
    run = load_run(output_dir)
    target = Path(out_dir) if out_dir is not None else default_report_dir(run.output_dir)
    target.mkdir(parents=True, exist_ok=True)
    figs = _Figures(target, dpi)
    header, _ = _section_header(run, extra or {})
    timing_html, share = _section_timing(run, figs)
    sections = [
        ("Loss", _section_loss(run, figs)),
        ("Domain proportions (mixing)", _section_proportions(run, figs)),
        ("Selection by domain", _section_selection(run, figs)),
        ("Sample weights", _section_weights(run, figs)),
        ("Time in DataFlex phases", timing_html),
    ]
    title = f"DataFlex run report: {run.output_dir.name or run.output_dir}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">generated {_e(time.strftime("%Y-%m-%d %H:%M:%S"))} from the files in '
        f"<code>{_e(run.output_dir)}</code> by <code>dataflex-cli report</code></p>",
        "<h2>Run</h2>",
        header,
        "<h2>Final numbers</h2>",
        _section_final(run, share),
    ]
    for i, (name, content) in enumerate(sections, 1):
        body.append(f'<h2 id="s{i}">{i}. {_e(name)}</h2>{content}')
    if run.notes:
        body.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in run.notes) + "</ul>"
        )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path = atomic_write_text(target / REPORT_HTML, page)
    log.info("wrote %s (%d figures, %.2f s)", path, len(figs.files), time.perf_counter() - t0)
    return path
