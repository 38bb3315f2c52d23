"""The predecessor's flat YAML keys run unchanged and decide what the ``dataflex:`` block does.

DataFlex 1.0 configured a run with flat top-level keys (``train_type: dynamic_mix``,
``component_name: odm``, ...); they are still accepted (``FLAT_KEYS`` of
``dataflex_llamafactory.config``, docs/mixers/migration.md). For one bundled example of each
paradigm, this script writes the example twice, in the ``dataflex:`` block form and in the
predecessor's flat form, trains both through ``dataflex-cli train`` and compares what they decided:

* **mix**: ``examples/quickstart.yaml`` (ODM, one bandit round per step);
* **select**: ``examples/select/online_less.yaml`` (online LESS); the flat form names the target
  set the predecessor's way, ``eval_dataset: code_eval``, instead of ``dataflex.target_dataset``
  (DataFlex then uses it as the target, with a leakage warning);
* **weight**: ``examples/weight/loss.yaml`` (the ``loss`` weighter, ``linupper``, a burn-in).

Compared, exactly (no tolerance): every record of ``dataflex/decisions.jsonl`` (and of
``dataflex/selections.jsonl`` for selection) and the training losses of every step; the
effective DataFlex settings written to ``dataflex/effective_config.json`` are compared too, and
any setting that differs is listed (the select example's flat form has no ``target_dataset``: its
target comes from ``eval_dataset``). The check is an
equality, not a statistic, so it runs once, with the first of ``--seeds``.

    uv run --frozen python tools/bench/quality/flat_keys.py \\
        [--seeds 0 1 2] [--tiny] [--out DIR] [--no-docs]
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality as q  # noqa: E402

NAME = "quality-flat-keys"
EXAMPLES = {
    "mix": "examples/quickstart.yaml",
    "select": "examples/select/online_less.yaml",
    "weight": "examples/weight/loss.yaml",
}

# Sizes: the examples' own lengths at default size (quickstart: 160 steps; online LESS: 70 steps,
# 4 selections; weighting: 160 steps at G = 16). Measured with this script on this 2-core VM (one
# process, OMP_NUM_THREADS=1, load average ~3.7 from other engineers' jobs): 199 s for the 6
# trainings (mix 37 + 22 s, select 42 + 37 s, weight 33 + 28 s; the first includes the imports).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "mix": {},
        "select": {},
        "weight": {},
    },
    "tiny": {
        "mix": {"warmup_step": 2, "update_times": 3},
        "select": {
            "warmup_step": 2,
            "update_step": 2,
            "update_times": 1,
            "train_step": 4,
            "component_params": {"proj_dim": 64, "candidate_subsample": 16},
        },
        "weight": {"warmup_step": 1, "train_step": 3},
    },
}


def block_form(paradigm: str, out: Path, seed: int, changes: dict[str, Any]) -> dict[str, Any]:
    """The example in the ``dataflex:`` block form, resized by ``changes`` (block keys)."""
    cfg = yaml.safe_load((q.REPO / EXAMPLES[paradigm]).read_text())
    block = cfg["dataflex"]
    for k, v in changes.items():
        block[k] = {**block.get(k, {}), **v} if isinstance(v, dict) else v
    cfg.update(
        dataset_dir=str(q.REPO / "examples" / "data"),
        output_dir=str(out),
        seed=seed,
        logging_steps=1,
        save_strategy="no",
        plot_loss=False,
        overwrite_cache=False,
    )
    cfg.pop("save_steps", None)
    return cfg


def flat_form(cfg: dict[str, Any]) -> dict[str, Any]:
    """The predecessor's spelling: the flat keys at the top level, ``target_dataset`` as
    ``eval_dataset``, no ``dataflex:`` block left."""
    from dataflex_llamafactory.config import FLAT_KEYS

    flat = copy.deepcopy(cfg)
    block = flat.pop("dataflex")
    for key in FLAT_KEYS:
        if key in block:
            flat[key] = block.pop(key)
    if "target_dataset" in block:
        flat["eval_dataset"] = block.pop("target_dataset")
    if block:
        raise ValueError(f"keys with no flat spelling left in the block: {sorted(block)}")
    return flat


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    )


def outcome(out: Path) -> dict[str, Any]:
    """What a run decided and how it trained."""
    state = json.loads((out / "trainer_state.json").read_text())
    eff = json.loads((out / "dataflex" / "effective_config.json").read_text())
    return {
        "decisions": _jsonl(out / "dataflex" / "decisions.jsonl"),
        "selections": _jsonl(out / "dataflex" / "selections.jsonl"),
        "losses": [[h["step"], h["loss"]] for h in state["log_history"] if "loss" in h],
        "effective": eff,
    }


def differences(a: Any, b: Any, prefix: str = "") -> dict[str, list[Any]]:
    """Dotted keys whose values differ between two JSON trees: ``{key: [a, b]}``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, list[Any]] = {}
        for k in sorted(set(a) | set(b)):
            out.update(differences(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return {} if a == b else {prefix.rstrip("."): [a, b]}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    diff = differences(a["effective"], b["effective"])
    diff.pop("hash", None)  # the hash of the settings: differs exactly when a setting does
    return {
        "decisions": len(a["decisions"]),
        "selections": len(a["selections"]),
        "steps": len(a["losses"]),
        "same_decisions": a["decisions"] == b["decisions"] and a["selections"] == b["selections"],
        "same_losses": a["losses"] == b["losses"],
        "effective_config_differences": diff,
    }


def report(results: dict[str, Any]) -> str:
    yes = {True: "yes", False: "**no**"}
    lines = [
        "### Flat keys: the predecessor's spelling against the `dataflex:` block",
        "",
        f"Each example trained twice (seed {results['seed']}), once per spelling; "
        '"same" means equal records, compared exactly.',
        "",
        "| paradigm | example | decision records | selection records | logged steps "
        "| same decisions | same losses | effective settings that differ (block / flat) |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for p, c in results["paradigms"].items():
        diff = (
            "; ".join(
                f"`{k}`: {json.dumps(a)} / {json.dumps(b)}"
                for k, (a, b) in c["effective_config_differences"].items()
            )
            or "none"
        )
        lines.append(
            f"| {p} | {EXAMPLES[p]} | {c['decisions']} | {c['selections']} | {c['steps']} | "
            f"{yes[c['same_decisions']]} | {yes[c['same_losses']]} | {diff} |"
        )
    ok = all(c["same_decisions"] and c["same_losses"] for c in results["paradigms"].values())
    n = len(results["paradigms"])
    lines += [
        "",
        (
            f"All {n} flat-key runs decided and trained exactly as their block-form twins."
            if ok
            else "Some flat-key runs differ from their block-form twins (rows marked **no**)."
        ),
        "",
        f"Wall time: {results['wall_s']:.0f} s ({results['trainings']} trainings).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = q.parse_args(__doc__.split("\n\n")[0], argv)
    sizes = SIZES["tiny" if args.tiny else "default"]
    root = q.out_dir(args, "flat_keys")
    train = q.Trainer(root)
    seed = args.seeds[0]
    t0 = time.perf_counter()
    paradigms: dict[str, Any] = {}
    for p in EXAMPLES:
        block = block_form(p, root / p / "block", seed, sizes[p])
        flat = flat_form(block_form(p, root / p / "flat", seed, sizes[p]))
        a = outcome(train(f"{p}-block", block))
        b = outcome(train(f"{p}-flat", flat))
        paradigms[p] = compare(a, b)
        print(f"  {p}: {paradigms[p]}", flush=True)
    results = {
        "name": NAME,
        "seed": seed,
        "paradigms": paradigms,
        "wall_s": time.perf_counter() - t0,
        "trainings": len(train.wall),
        "train_wall_s": train.wall,
    }
    body = report(results)
    return q.publish(NAME, body, results, root, args.no_docs)


if __name__ == "__main__":
    main()
