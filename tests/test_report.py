"""``dataflex-cli report`` and the phase timing behind it.

Synthetic output folders (written like a run writes them) check each section of the page, the
figures and the numbers computed from the logs; the mixing and weighting controllers run
in-process on hand-made losses to check their timing and per-domain loss records (and that the
timing log resumes like the decisions log); one real tiny-model selection run checks that
``train`` writes the report and that real records carry the timing.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
from dataflex_llamafactory.cli import _report_after_train, main

DOMAINS = ["news", "wiki", "code", "math"]
SECTIONS = (
    "1. Loss",
    "2. Domain proportions",
    "3. Selection by domain",
    "4. Sample weights",
    "5. Time in DataFlex phases",
)
NOT_RECORDED = "not recorded for this run"


# --------------------------------------------------------------------------- helpers


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (fails on anything that is not a PNG)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return width, height


def _section(page: str, number: int) -> str:
    """The HTML of section ``number`` (up to the next heading)."""
    start = page.index(f'<h2 id="s{number}">')
    nxt = page.find("<h2", start + 4)
    return page[start : nxt if nxt > 0 else len(page)]


def _check_page(html_path: Path, figures: list[str]) -> str:
    """Every section is there, the page is offline-safe, and each figure is a PNG on disk that
    is also embedded byte for byte."""
    page = html_path.read_text()
    for title in SECTIONS:
        assert title in page, title
    assert "<script" not in page.lower()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from the network
    embedded = [
        base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]
    assert len(embedded) == len(figures)
    for name in figures:
        data = (html_path.parent / name).read_bytes()
        w, h = _png_size(data)
        assert w >= 200 and h >= 150, name
        assert data in embedded, name
        assert f'href="{name}"' in page
    return page


def _trainer_log(out: Path, steps: int, *, elapsed: str = "0:00:09") -> list[float]:
    losses = [7.5 - 0.1 * s for s in range(1, steps + 1)]
    _jsonl(
        out / "trainer_log.jsonl",
        [
            {
                "current_steps": s,
                "total_steps": steps,
                "loss": loss,
                "lr": 1e-3,
                "epoch": s / steps,
                "percentage": 100 * s / steps,
                "elapsed_time": elapsed,
                "remaining_time": "0:00:00",
            }
            for s, loss in zip(range(1, steps + 1), losses, strict=True)
        ],
    )
    return losses


def _effective(out: Path, train_type: str, entry: str, **extra) -> None:
    out.joinpath("dataflex").mkdir(parents=True, exist_ok=True)
    cfg = {
        "dataflex": {
            "train_type": train_type,
            "component_name": entry,
            "init_mixture_proportions": None,
        },
        "component": {"entry": entry, "type": entry, "kind": "x", "params": {}},
        "domains": DOMAINS,
        "hash": "f00d" * 16,
        **extra,
    }
    (out / "dataflex" / "effective_config.json").write_text(json.dumps(cfg))


# --------------------------------------------------------------------------- synthetic runs


def test_mix_report_sections_figures_and_timing_share(tmp_path, capsys):
    out = tmp_path / "mix"
    _trainer_log(out, 12)
    _effective(
        out, "dynamic_mix", "odm", domain_sizes=[10, 20, 30, 40], total_steps=12, samples_per_step=8
    )
    (out / "train_results.json").write_text(json.dumps({"train_runtime": 10.0, "train_loss": 6.9}))
    (out / "checkpoint-8").mkdir()
    (out / "checkpoint-8" / "dataflex_state.json").write_text(json.dumps({"seeds": {"run": 7}}))
    props = {2: [0.7, 0.1, 0.1, 0.1], 5: [0.1, 0.7, 0.1, 0.1], 8: [0.1, 0.1, 0.1, 0.7]}
    _jsonl(
        out / "dataflex" / "decisions.jsonl",
        [
            {
                "step": s,
                "kind": "mixer",
                "component": "odm",
                "decision": {"proportions": p, "domains": DOMAINS, "applies_from_step": s + 1},
                "feedback": {
                    "domain_loss": [7.0 - s / 10, 7.1, None, 6.5],
                    "domain_samples": [2, 2, 0, 4],
                    "eval_domain_loss": [7.2, 7.2, 7.2, 7.2],
                },
            }
            for s, p in props.items()
        ],
    )
    _jsonl(
        out / "dataflex" / "timing.jsonl",
        [
            {
                "step": s,
                "kind": "mixer",
                "component": "odm",
                "timing": {"feedback_s": 0.1, "update_s": 0.4},
            }
            for s in props
        ],
    )

    assert main(["report", str(out)]) == 0
    html_path = out / "dataflex" / "report.html"
    assert str(html_path) in capsys.readouterr().out
    page = _check_page(
        html_path, ["report_loss.png", "report_proportions.png", "report_timing.png"]
    )
    assert "seed</th><td>7</td>" in page and "f00d" * 16 in page
    assert "news (10 rows)" in page and "12 of 12" in page
    # per-domain losses come from the mixer feedback, eval-set losses drawn as well
    assert "training loss between mixer updates; dashed: eval-set loss" in _section(page, 1)
    props_html = _section(page, 2)
    assert NOT_RECORDED not in props_html
    assert "<td>2</td><td>3</td><td>0.7000</td><td>0.1000</td>" in props_html  # step, applies, news
    assert "final proportions</th><td>news 0.100, wiki 0.100, code 0.100, math 0.700" in page
    assert NOT_RECORDED in _section(page, 3) and NOT_RECORDED in _section(page, 4)
    # 3 updates x (0.1 + 0.4) s = 1.5 s of the 10 s train_runtime
    timing = _section(page, 5)
    assert "1.5 s of 10 s training (15.00%)" in timing
    assert "<td>mixer</td><td>mixer update</td><td>3</td><td>1.2000</td>" in timing
    assert "<td>all</td><td>DataFlex phases</td><td></td><td>1.5000</td>" in timing


def test_select_report_composition_overlap_and_coverage(tmp_path):
    out = tmp_path / "sel"
    _trainer_log(out, 9)
    _effective(out, "dynamic_select", "loss", num_samples=100, total_steps=9)
    chosen = {0: list(range(0, 8)), 2: list(range(4, 12)), 5: list(range(8, 16))}
    decisions, selections = [], []
    for s, rows in chosen.items():
        by = {d: sum(1 for i in rows if i % 4 == k) for k, d in enumerate(DOMAINS)}
        decisions.append(
            {
                "step": s,
                "kind": "selector",
                "component": "loss",
                "decision": {
                    "num_selected": 8,
                    "by_domain": by,
                    "unique": 8,
                    "epoch": 0,
                    "update": -1 if s == 0 else s,
                    "warmup": s == 0,
                    "applies_from_step": 0 if s == 0 else s + 1,
                },
            }
        )
        selections.append({"step": s, "indices": rows, **({"scores": [0.5] * 8} if s else {})})
    _jsonl(out / "dataflex" / "decisions.jsonl", decisions)
    _jsonl(out / "dataflex" / "selections.jsonl", selections)

    out_dir = tmp_path / "elsewhere"
    assert main(["report", str(out), "--out", str(out_dir)]) == 0
    assert not (out / "dataflex" / "report.html").exists()
    page = _check_page(out_dir / "report.html", ["report_loss.png", "report_selection.png"])
    sel = _section(page, 3)
    # step 2 keeps 4 of step 0's 8 rows; 16 distinct rows of 100
    assert (
        "<td>2</td><td>3</td><td>no</td><td>8</td><td>8</td><td>2</td><td>2</td><td>2</td><td>2</td>"
        "<td>0.50</td><td>0.5</td>" in sel
    )
    assert "16 distinct rows of the pool's 100 were selected at least once (16.0%)" in sel
    assert NOT_RECORDED in _section(page, 2) and NOT_RECORDED in _section(page, 4)
    assert "per-domain loss: " + NOT_RECORDED in _section(page, 1)
    assert "timing.jsonl is missing" in _section(page, 5)


def test_weight_report_statistics(tmp_path):
    out = tmp_path / "w"
    _trainer_log(out, 4)
    _effective(out, "dynamic_weight", "loss")
    stats = [(1, 0.5, 1.5, 0.9), (2, 0.2, 2.0, 0.8), (3, 0.4, 1.2, 0.95), (4, 0.6, 1.1, 0.99)]
    recs = [
        {
            "step": s,
            "kind": "weighter",
            "component": "loss",
            "decision": {
                "min": lo,
                "max": hi,
                "mean": 1.0,
                "entropy": 1.0,
                "normalized_entropy": ent,
                "by_domain": {d: 1.0 for d in DOMAINS},
                "samples": 8,
            },
            "feedback": {"domain_loss": [7.0, 7.1, 7.2, 7.3]},
        }
        for s, lo, hi, ent in stats
    ]
    recs.append({**recs[-1], "step": -1, "note": "steps after the last logging step"})
    _jsonl(out / "dataflex" / "decisions.jsonl", recs)
    _jsonl(
        out / "dataflex" / "timing.jsonl",
        [
            {
                "step": s,
                "kind": "weighter",
                "component": "loss",
                "timing": {"weigh_s": 0.25, "calls": 2.0},
            }
            for s in (1, 2, 3, 4)
        ],
    )
    (out / "all_results.json").write_text(json.dumps({"train_runtime": 4.0}))

    assert main(["report", str(out)]) == 0
    page = _check_page(
        out / "dataflex" / "report.html",
        ["report_loss.png", "report_weights.png", "report_timing.png"],
    )
    w = _section(page, 4)
    assert "smallest weight</th><td>0.2</td>" in w and "largest weight</th><td>2</td>" in w
    assert "logging intervals</th><td>4</td>" in w and "weighted samples</th><td>32</td>" in w
    assert f"0.8 / {(0.9 + 0.8 + 0.95 + 0.99) / 4:.4g}" in w
    assert "mean sample loss per logging interval" in _section(page, 1)
    # 4 intervals x 0.25 s over 8 calls, of a 4 s run
    assert "<td>weighter</td><td>weighting</td><td>8</td><td>1.0000</td><td>0.125</td>" in _section(
        page, 5
    )
    assert "(25.00%)" in _section(page, 5)


def test_static_partial_run_renders_the_loss_curve(tmp_path):
    """No dataflex/ folder and no final files: the latest checkpoint's trainer_state.json."""
    out = tmp_path / "static"
    ckpt = out / "checkpoint-3"
    ckpt.mkdir(parents=True)
    hist = [{"step": s, "loss": 7.0 - s / 10, "learning_rate": 1e-3} for s in (1, 2, 3)]
    (ckpt / "trainer_state.json").write_text(
        json.dumps({"global_step": 3, "max_steps": 10, "log_history": hist})
    )
    _jsonl(
        out / "trainer_log.jsonl",
        [{"current_steps": 4, "total_steps": 10, "elapsed_time": "0:01:05"}],
    )

    assert main(["report", str(out)]) == 0
    assert not (out / "dataflex").exists()
    page = _check_page(out / "report.html", ["report_loss.png"])
    assert "train_type</th><td>static</td>" in page and "4 of 10" in page
    assert "last logged training loss</th><td>6.7000 (step 3)" in page
    for n in (2, 3, 4, 5):
        assert NOT_RECORDED in _section(page, n), n
    assert "Training time: 65.00 s" in _section(page, 5)
    assert "read from checkpoint-3 (the run did not finish)" in page


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["missing", "file", "empty"])
def test_bad_input_exits_2_naming_the_path(tmp_path, capsys, case):
    target = tmp_path / "run"
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        (target / "dataflex").mkdir(parents=True)
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dataflex-cli: error: ") and "Traceback" not in err
    assert repr(str(target)) in err
    expected = {
        "missing": "does not exist",
        "file": "is not a folder",
        "empty": "holds no run logs",
    }[case]
    assert expected in err and "trainer_log.jsonl" in err
    assert not list(tmp_path.rglob("report*"))


def test_a_failing_report_warns_and_never_fails_training(tmp_path, caplog):
    empty = tmp_path / "out"
    empty.mkdir()
    trainer = SimpleNamespace(
        args=SimpleNamespace(output_dir=str(empty), seed=1), is_world_process_zero=lambda: True
    )
    with caplog.at_level(logging.WARNING, logger="dataflex_llamafactory"):
        _report_after_train(trainer)  # must not raise
    assert any(
        "could not write the run report" in r.getMessage() and "holds no run logs" in r.getMessage()
        for r in caplog.records
    )
    not_zero = SimpleNamespace(args=trainer.args, is_world_process_zero=lambda: False)
    caplog.clear()
    _report_after_train(not_zero)  # other ranks do nothing
    assert not caplog.records


# --------------------------------------------------------------------------- controllers in-process


def _run(dataflex: dict):
    from dataflex_llamafactory.config import load_run_config

    return load_run_config(None, raw={"dataflex": dataflex})


def test_mix_controller_times_its_phases_and_the_timing_log_resumes(tmp_path):
    import torch
    from dataflex_llamafactory.controller import MixController

    run = _run(
        {
            "train_type": "dynamic_mix",
            "component_name": "random",
            "warmup_step": 1,
            "update_step": 2,
            "update_times": 2,
        }
    )

    def make():
        return MixController(
            run,
            domains=DOMAINS,
            domain_sizes=[10] * 4,
            samples_per_step=4,
            total_steps=6,
            seed=0,
            output_dir=str(tmp_path),
        )

    timing_log = tmp_path / "dataflex" / "timing.jsonl"
    _jsonl(timing_log, [{"step": 99, "kind": "mixer", "timing": {}}])  # a previous run's
    c = make()
    c.on_train_begin(0)
    assert not timing_log.exists()  # a fresh run starts a fresh timing log
    states = {}
    rows = iter(c.sampler)
    for step in range(1, 6):
        drawn = [next(rows) for _ in range(4)]  # the loader draws the step's rows first
        assert all(0 <= r < 40 for r in drawn)
        losses = torch.tensor([1.0, 2.0, 3.0, 4.0]) * step
        c.record(torch.tensor([0, 1, 2, 2]), losses, torch.tensor([10, 10, 10, 30]))
        c.on_step_end(step)
        states[step] = json.loads(json.dumps(c.state_dict(step)))
    decisions = _read_jsonl(tmp_path / "dataflex" / "decisions.jsonl")
    timing = _read_jsonl(timing_log)
    assert [r["step"] for r in decisions] == [r["step"] for r in timing] == c.update_steps == [1, 3]
    for t in timing:
        assert t["kind"] == "mixer" and t["component"] == "random"
        assert set(t["timing"]) == {"feedback_s", "update_s"}
        assert all(0 <= v < 5 for v in t["timing"].values())
    # the update at 3 sees steps 2 and 3 (x2, x3); code mixes two rows by their token counts
    fb = decisions[1]["feedback"]["domain_loss"]
    assert fb[0] == pytest.approx(2.5) and fb[1] == pytest.approx(5.0)
    assert fb[2] == pytest.approx(((6 + 9) * 10 + (8 + 12) * 30) / 80) and fb[3] is None
    assert "timing" not in decisions[0] and "eval_domain_loss" not in decisions[0]["feedback"]

    resumed = make()
    resumed.load_state_dict(states[2], 2)  # resuming at step 2 drops what came after it
    assert [r["step"] for r in _read_jsonl(timing_log)] == [1]


def test_weight_controller_times_weighting_and_logs_domain_losses(tmp_path):
    import torch
    from dataflex_llamafactory.weighting import WeightController

    run = _run({"train_type": "dynamic_weight", "component_name": "loss", "warmup_step": 0})
    c = WeightController(run, domains=DOMAINS, seed=0, output_dir=str(tmp_path), logging_steps=2)
    c.on_train_begin(0)
    ids = torch.tensor([0, 0, 1, 3])
    for step, scale in ((0, 1.0), (1, 2.0), (1, 3.0), (2, 1.0)):
        losses = (torch.tensor([1.0, 3.0, 2.0, 4.0]) * scale).requires_grad_()
        out = c.weighted_loss(
            step=step,
            losses=losses,
            valid=torch.tensor([True, True, True, False]),
            tokens=torch.full((4,), 10),
            domain_ids=ids,
            trainer_divides_by_ga=True,
            grad_accum=1,
        )
        assert out.requires_grad
        if step == 1 and scale == 3.0:
            c.on_step_end(2)  # the first logging step: the three calls so far
    c.finish(tmp_path)
    decisions = _read_jsonl(tmp_path / "dataflex" / "decisions.jsonl")
    timing = _read_jsonl(tmp_path / "dataflex" / "timing.jsonl")
    assert [r["step"] for r in decisions] == [r["step"] for r in timing] == [2, -1]
    assert [t["timing"]["calls"] for t in timing] == [3.0, 1.0]
    assert all(t["timing"]["weigh_s"] > 0 for t in timing)
    # mean per-sample loss by domain of the valid rows (the math row is invalid, code has none):
    # news (1 + 3) x (1 + 2 + 3) / 6, wiki 2 x (1 + 2 + 3) / 3; then the last call alone
    assert decisions[0]["feedback"]["domain_loss"] == pytest.approx([4.0, 4.0, None, None])
    assert decisions[1]["feedback"]["domain_loss"] == pytest.approx([2.0, 2.0, None, None])
    assert decisions[0]["decision"]["samples"] == 9 and "timing" not in decisions[0]


# --------------------------------------------------------------------------- one real run


@pytest.mark.slow
def test_train_writes_the_report_and_real_records_carry_timing(
    tmp_path, run_cli, write_config, quickstart
):
    out = tmp_path / "sel"
    cfg = quickstart(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        save_steps=100,
        logging_steps=1,
        plot_loss=False,
    )
    cfg["dataflex"] = {
        "train_type": "dynamic_select",
        "component_name": "loss",
        "component_params": {"candidate_subsample": 32},
        "warmup_step": 2,
        "update_step": 3,
        "update_times": 2,
        "train_step": 8,
    }
    res = run_cli("train", str(write_config(cfg)))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "could not write the run report" not in res.stderr

    decisions = _read_jsonl(out / "dataflex" / "decisions.jsonl")
    timing = _read_jsonl(out / "dataflex" / "timing.jsonl")
    assert [r["step"] for r in timing] == [r["step"] for r in decisions] == [0, 2, 5]
    for d, t in zip(decisions, timing, strict=True):
        assert set(d) <= {"step", "kind", "component", "decision", "feedback"}  # timing lives apart
        assert t["kind"] == "selector" and set(t["timing"]) == {"signals_s", "choose_s"}
        assert all(v >= 0 for v in t["timing"].values())
        if d["decision"]["warmup"]:
            assert "feedback" not in d
        else:  # the loss selector's own pool losses, by domain: about ln(vocab) for the tiny model
            assert all(x is None or 4.0 < x < 9.0 for x in d["feedback"]["domain_loss"])
            assert any(x is not None for x in d["feedback"]["domain_loss"])
    # the updates run the model over 32 candidates; the warmup draw computes no signal
    warm, *updates = [t["timing"]["signals_s"] for t in timing]
    assert all(u > warm for u in updates)

    page = _check_page(
        out / "dataflex" / "report.html", ["report_loss.png", "selection.png", "report_timing.png"]
    )
    assert "8 of 8" in page and "mean pool loss at each selection" in page
    share = re.search(r"DataFlex phases took ([0-9.e-]+) s of ([0-9.e-]+) s training", page)
    assert share and math.isclose(
        float(share.group(1)),
        sum(sum(t["timing"].values()) for t in timing),
        rel_tol=1e-3,
        abs_tol=1e-3,
    )
