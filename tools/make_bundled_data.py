"""Regenerate DataFlex's bundled multi-domain example data and the tiny tokenizer.

Writes, deterministically:

- ``examples/data/<domain>.jsonl`` for the domains ``news``, ``wiki``, ``code`` and ``math``, rows
  ``{"text": ..., "domain": ...}`` (pre-training style);
- ``examples/data/sft_<domain>.jsonl``, rows ``{"instruction", "input", "output", "domain"}``
  (alpaca style, for the sft stage);
- ``examples/data/dataset_info.json`` registering every file in LLaMA-Factory's format;
- ``examples/data/LICENSE.md``, the source and license of every domain;
- unless ``--skip-tokenizer``: the tiny byte-level BPE tokenizer trained on the four pre-training
  files, into ``integrations/dataflex-llamafactory/src/dataflex_llamafactory/data/tiny_tokenizer/``
  (needs the workspace venv: tokenizers and transformers).

Sources: gensim's test data (news: ``lee_background.cor``; wiki: ``head500.noblanks.cor``), the
CPython standard library of the running interpreter (code) and a seeded generator (math). gensim is
only read, never imported; get its files without installing it into the project, e.g.::

    pip install --no-deps --target /tmp/gensim_pkg gensim==4.4.0
    .venv/bin/python tools/make_bundled_data.py --gensim-data /tmp/gensim_pkg/gensim/test/test_data

The committed files were produced with gensim 4.4.0 and CPython 3.11.7; another Python version
gives other code chunks (the script warns).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import random
import sys
import sysconfig
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "examples" / "data"
TOKENIZER_DIR = (
    REPO_ROOT
    / "integrations"
    / "dataflex-llamafactory"
    / "src"
    / "dataflex_llamafactory"
    / "data"
    / "tiny_tokenizer"
)

DOMAINS = ("news", "wiki", "code", "math")
ROWS_PER_DOMAIN = 250
SFT_ROWS_PER_DOMAIN = 64
MAX_CHARS = 1500
SFT_MAX_CHARS = 800
MATH_SEED = 20240601
EXPECTED_PYTHON = (3, 11)

# A fixed, sorted list of pure-Python stdlib modules (paths relative to the stdlib directory).
CODE_MODULES = (
    "argparse.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "colorsys.py",
    "configparser.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "fnmatch.py",
    "fractions.py",
    "functools.py",
    "glob.py",
    "graphlib.py",
    "gzip.py",
    "heapq.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "sched.py",
    "shlex.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "tempfile.py",
    "textwrap.py",
    "tokenize.py",
    "uuid.py",
    "zipfile.py",
)
CODE_MIN_LINES = 6
CODE_MAX_LINES = 60
CODE_PER_MODULE = 10


# --------------------------------------------------------------------------- helpers


def truncate(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, at the last whitespace if there is one."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip()


def truncate_lines(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters at a line boundary."""
    if len(text) <= max_chars:
        return text
    lines = text.splitlines()
    out: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > max_chars:
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def split_words(text: str) -> tuple[str, str]:
    """Split prose near its middle at a word boundary."""
    words = text.split()
    half = len(words) // 2
    return " ".join(words[:half]), " ".join(words[half:])


def split_lines(text: str) -> tuple[str, str]:
    """Split code near its middle at a line boundary."""
    lines = text.splitlines()
    half = len(lines) // 2
    return "\n".join(lines[:half]), "\n".join(lines[half:])


def _unique(items: Iterable[T]) -> list[T]:
    """Drop repeated items, keeping the first occurrence and the order."""
    return list(dict.fromkeys(items))


def find_gensim_data() -> Path | None:
    """Locate ``gensim/test/test_data`` of an importable gensim without importing it."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    return path if path.is_dir() else None


# --------------------------------------------------------------------------- domains


def news_texts(gensim_data: Path) -> list[str]:
    """Lee news corpus: one Australian news article per line."""
    lines = (gensim_data / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    return _unique(truncate(line, MAX_CHARS) for line in lines if line.strip())[:ROWS_PER_DOMAIN]


def wiki_texts(gensim_data: Path) -> list[str]:
    """gensim's Wikipedia sample: one article per line, lower-cased and stemmed by gensim."""
    lines = (gensim_data / "head500.noblanks.cor").read_text(encoding="utf-8").splitlines()
    return _unique(truncate(line, MAX_CHARS) for line in lines if line.strip())[:ROWS_PER_DOMAIN]


def _code_chunks(source: str) -> Iterator[str]:
    """Yield function-sized chunks (top-level functions and methods) of a module, in order."""
    lines = source.splitlines()
    tree = ast.parse(source)
    nodes: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nodes.append(node)
        elif isinstance(node, ast.ClassDef):
            nodes.extend(
                child
                for child in node.body
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    for node in nodes:
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        end = node.end_lineno or node.lineno
        chunk = lines[start:end]
        if not CODE_MIN_LINES <= len(chunk) <= CODE_MAX_LINES:
            continue
        indent = min(len(x) - len(x.lstrip()) for x in chunk if x.strip())
        text = "\n".join(x[indent:] for x in chunk).strip("\n")
        yield truncate_lines(text, MAX_CHARS)


def code_texts(stdlib: Path) -> list[str]:
    """Function-sized chunks of a fixed list of CPython stdlib modules (PSF license)."""
    per_module = [
        list(_code_chunks((stdlib / name).read_text(encoding="utf-8")))[:CODE_PER_MODULE]
        for name in CODE_MODULES
    ]
    # Round-robin over modules so that the first rows (used for SFT) cover many modules.
    texts: list[str] = []
    for i in range(CODE_PER_MODULE):
        texts.extend(chunks[i] for chunks in per_module if i < len(chunks))
    return texts[:ROWS_PER_DOMAIN]


_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Iris", "Jonas", "Kemi")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells")


def _math_problem(rng: random.Random) -> tuple[str, str]:
    """One templated arithmetic word problem and its worked answer."""
    kind = rng.randrange(8)
    name = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    if kind == 0:
        a, b, c = rng.randint(5, 60), rng.randint(2, 40), rng.randint(1, 30)
        c = min(c, a + b)
        q = (
            f"{name} has {a} {item}. A friend gives {name} {b} more, and then {name} gives "
            f"away {c}. How many {item} does {name} have now?"
        )
        s = (
            f"{name} starts with {a} {item}. After receiving {b}, {name} has {a} + {b} = {a + b}. "
            f"After giving away {c}, {name} has {a + b} - {c} = {a + b - c}. "
            f"The answer is {a + b - c}."
        )
    elif kind == 1:
        rows, cols = rng.randint(2, 15), rng.randint(2, 15)
        q = (
            f"{name} arranges {item} in {rows} rows with {cols} {item} in each row. "
            f"How many {item} are there in total?"
        )
        s = f"There are {rows} rows of {cols}, so {rows} x {cols} = {rows * cols}. "
        s += f"The answer is {rows * cols}."
    elif kind == 2:
        people, each = rng.randint(2, 12), rng.randint(2, 20)
        total = people * each
        q = f"{name} shares {total} {item} equally among {people} friends. How many does each get?"
        s = f"Each friend gets {total} / {people} = {each}. The answer is {each}."
    elif kind == 3:
        price = rng.randint(2, 40) * 5
        pct = rng.choice((10, 15, 20, 25, 30, 40, 50))
        off = price * pct // 100
        q = (
            f"A jacket costs {price} dollars. The shop offers a {pct}% discount. "
            f"What is the price after the discount?"
        )
        s = (
            f"The discount is {pct}% of {price}, which is {price} x {pct} / 100 = {off} dollars. "
            f"The new price is {price} - {off} = {price - off} dollars. "
            f"The answer is {price - off}."
        )
    elif kind == 4:
        speed, hours = rng.randint(3, 90), rng.randint(2, 9)
        q = f"A train travels at {speed} km per hour for {hours} hours. How far does it go?"
        s = f"Distance is speed times time: {speed} x {hours} = {speed * hours} km. "
        s += f"The answer is {speed * hours}."
    elif kind == 5:
        w, h = rng.randint(2, 30), rng.randint(2, 30)
        q = f"A garden is {w} meters long and {h} meters wide. What are its area and perimeter?"
        s = (
            f"The area is {w} x {h} = {w * h} square meters. The perimeter is "
            f"2 x ({w} + {h}) = {2 * (w + h)} meters. "
            f"The answer is {w * h} square meters and {2 * (w + h)} meters."
        )
    elif kind == 6:
        packs, per_pack, cost = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 15)
        q = (
            f"{name} buys {packs} packs of {item}. Each pack holds {per_pack} {item} and costs "
            f"{cost} dollars. How many {item} does {name} get, and how much does it cost?"
        )
        s = (
            f"{name} gets {packs} x {per_pack} = {packs * per_pack} {item}. "
            f"The cost is {packs} x {cost} = {packs * cost} dollars. "
            f"The answer is {packs * per_pack} {item} for {packs * cost} dollars."
        )
    else:
        x = rng.randint(1, 25)
        a, b = rng.randint(2, 9), rng.randint(1, 50)
        q = f"{name} thinks of a number, multiplies it by {a} and adds {b}, getting {a * x + b}. "
        q += "What is the number?"
        s = (
            f"Undo the steps: {a * x + b} - {b} = {a * x}, then {a * x} / {a} = {x}. "
            f"The answer is {x}."
        )
    return q, s


def math_problems() -> list[tuple[str, str]]:
    """Seeded, templated arithmetic word problems with worked answers."""
    rng = random.Random(MATH_SEED)
    problems: dict[tuple[str, str], None] = {}
    while len(problems) < ROWS_PER_DOMAIN:
        problems[_math_problem(rng)] = None
    return list(problems)


# --------------------------------------------------------------------------- sft rows


def sft_rows(domain: str, texts: list[str], problems: list[tuple[str, str]]) -> list[dict]:
    """Alpaca-style rows derived from the first rows of a domain."""
    rows: list[dict] = []
    if domain == "math":
        for question, answer in problems[:SFT_ROWS_PER_DOMAIN]:
            rows.append({"instruction": question, "input": "", "output": answer})
    else:
        for text in texts[:SFT_ROWS_PER_DOMAIN]:
            if domain == "code":
                first, second = split_lines(truncate_lines(text, SFT_MAX_CHARS))
                instruction = "Continue this Python code:\n" + first
            else:
                first, second = split_words(truncate(text, SFT_MAX_CHARS))
                instruction = "Continue this text:\n" + first
            rows.append({"instruction": instruction, "input": "", "output": second})
    for row in rows:
        row["domain"] = domain
    return rows


# --------------------------------------------------------------------------- writing


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write rows as UTF-8 JSON lines with sorted-free, stable key order."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def dataset_info() -> dict:
    """LLaMA-Factory 0.9.5 ``dataset_info.json`` for every bundled file."""
    info: dict[str, dict] = {}
    for domain in DOMAINS:
        info[domain] = {"file_name": f"{domain}.jsonl", "columns": {"prompt": "text"}}
    for domain in DOMAINS:
        info[f"sft_{domain}"] = {
            "file_name": f"sft_{domain}.jsonl",
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    return info


def license_md(gensim_version: str, python_version: str) -> str:
    """The text of ``examples/data/LICENSE.md``."""
    modules = ", ".join(f"`{m.removesuffix('.py').replace('/', '.')}`" for m in CODE_MODULES)
    table = [
        (
            "news",
            f"`gensim/test/test_data/lee_background.cor` from gensim {gensim_version}: the Lee "
            "corpus of Australian Broadcasting Corporation news articles (Lee, Pincombe and "
            "Welsh, 2005), as shipped in gensim's test data",
            "distributed with gensim under the LGPL-2.1 license",
        ),
        (
            "wiki",
            f"`gensim/test/test_data/head500.noblanks.cor` from gensim {gensim_version}: English "
            "Wikipedia articles, lower-cased, stop-word-filtered and stemmed by gensim's "
            'preprocessing (so the text reads as stems, e.g. "anarch greek rule stem")',
            "Wikipedia text, CC BY-SA (https://creativecommons.org/licenses/by-sa/4.0/); "
            "distributed with gensim (LGPL-2.1)",
        ),
        (
            "code",
            "function-sized chunks (top-level functions and methods of "
            f"{CODE_MIN_LINES}-{CODE_MAX_LINES} lines) of {len(CODE_MODULES)} modules of the "
            f"CPython {python_version} standard library: {modules}",
            "Python Software Foundation License Version 2 (https://docs.python.org/3/license.html)",
        ),
        (
            "math",
            "arithmetic word problems with worked answers, generated by "
            f"`tools/make_bundled_data.py` from templates with `random.Random({MATH_SEED})`",
            "Apache-2.0, as the rest of this repository",
        ),
    ]
    lines = [
        "# Bundled example data: sources and licenses",
        "",
        *textwrap.wrap(
            "Regenerate everything here with `tools/make_bundled_data.py` (see its docstring). "
            "Every row has a `domain` field. `<domain>.jsonl` holds pre-training rows "
            '`{"text", "domain"}`; `sft_<domain>.jsonl` holds alpaca rows '
            '`{"instruction", "input", "output", "domain"}` derived from the first '
            f"{SFT_ROWS_PER_DOMAIN} rows of the same domain (the first half of a text as the "
            "instruction, its second half as the output; for math, the question and its worked "
            f"answer). Texts are cut to at most {MAX_CHARS} characters.",
            width=100,
        ),
        "",
        "| domain | rows | source | license |",
        "| --- | --- | --- | --- |",
        *(f"| {d} | {ROWS_PER_DOMAIN} | {src} | {lic} |" for d, src, lic in table),
    ]
    return "\n".join(lines) + "\n"


def train_tokenizer(pt_files: list[Path]) -> None:
    """Train the tiny tokenizer on the pre-training files and save it as package data."""
    sys.path.insert(0, str(TOKENIZER_DIR.parents[2]))
    from dataflex_llamafactory.assets import (
        TINY_TOKENIZER_VOCAB_SIZE,
        build_tokenizer,
        save_tokenizer,
    )

    tokenizer = build_tokenizer(pt_files, vocab_size=TINY_TOKENIZER_VOCAB_SIZE)
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    for old in TOKENIZER_DIR.iterdir():
        old.unlink()
    save_tokenizer(tokenizer, TOKENIZER_DIR)
    print(f"wrote tokenizer ({len(tokenizer)} tokens) to {TOKENIZER_DIR.relative_to(REPO_ROOT)}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--gensim-data",
        type=Path,
        default=None,
        help="gensim's test/test_data directory (default: that of an importable gensim)",
    )
    parser.add_argument(
        "--stdlib",
        type=Path,
        default=Path(sysconfig.get_paths()["stdlib"]),
        help="CPython standard library directory (default: the running interpreter's)",
    )
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output directory")
    parser.add_argument(
        "--skip-tokenizer", action="store_true", help="do not retrain the package tokenizer"
    )
    args = parser.parse_args(argv)

    gensim_data = args.gensim_data or find_gensim_data()
    if gensim_data is None or not (gensim_data / "lee_background.cor").is_file():
        parser.error(
            "gensim's test data not found: pass --gensim-data, e.g. after "
            "`pip install --no-deps --target /tmp/gensim_pkg gensim==4.4.0` use "
            "--gensim-data /tmp/gensim_pkg/gensim/test/test_data"
        )
    if sys.version_info[:2] != EXPECTED_PYTHON and args.stdlib == Path(
        sysconfig.get_paths()["stdlib"]
    ):
        print(
            f"warning: running Python {sys.version_info[0]}.{sys.version_info[1]}; the committed "
            f"code rows come from Python {EXPECTED_PYTHON[0]}.{EXPECTED_PYTHON[1]}, so they "
            "will differ",
            file=sys.stderr,
        )

    gensim_version = "unknown"
    dist_infos = sorted(gensim_data.parents[2].glob("gensim-*.dist-info"))
    if dist_infos:
        gensim_version = dist_infos[-1].name.removeprefix("gensim-").removesuffix(".dist-info")

    problems = math_problems()
    texts = {
        "news": news_texts(gensim_data),
        "wiki": wiki_texts(gensim_data),
        "code": code_texts(args.stdlib),
        "math": [f"Question: {q}\nAnswer: {a}" for q, a in problems],
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pt_files: list[Path] = []
    for domain in DOMAINS:
        rows = [{"text": t, "domain": domain} for t in texts[domain]]
        if len(rows) != ROWS_PER_DOMAIN or not all(r["text"] for r in rows):
            raise SystemExit(
                f"{domain}: expected {ROWS_PER_DOMAIN} non-empty rows, got {len(rows)}"
            )
        path = out / f"{domain}.jsonl"
        write_jsonl(path, rows)
        pt_files.append(path)
        write_jsonl(out / f"sft_{domain}.jsonl", sft_rows(domain, texts[domain], problems))
    (out / "dataset_info.json").write_text(
        json.dumps(dataset_info(), indent=2) + "\n", encoding="utf-8"
    )
    python_version = ".".join(str(x) for x in sys.version_info[:3])
    (out / "LICENSE.md").write_text(license_md(gensim_version, python_version), encoding="utf-8")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {len(list(out.iterdir()))} files, {total / 1e6:.2f} MB, to {out}")
    if not args.skip_tokenizer:
        train_tokenizer(pt_files)


if __name__ == "__main__":
    main()
