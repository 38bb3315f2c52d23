"""Tests of the tiny model and tokenizer builder and of the bundled example data."""

from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path

import pytest
from dataflex_llamafactory import assets

REPO_ROOT = Path(__file__).resolve().parents[3]
DATA_DIR = REPO_ROOT / "examples" / "data"
DOMAINS = ("news", "wiki", "code", "math")

needs_repo_data = pytest.mark.skipif(
    not (DATA_DIR / "dataset_info.json").is_file(),
    reason="the bundled data lives in the repository checkout, not in the installed package",
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DATAFLEX_CACHE_DIR", str(root))
    return root


def _weights(path: str | Path) -> bytes:
    return (Path(path) / "model.safetensors").read_bytes()


# --------------------------------------------------------------------------- tokenizer


def test_builtin_tokenizer_round_trip_and_special_tokens() -> None:
    tok = assets.load_builtin_tokenizer()
    assert len(tok) == assets.TINY_TOKENIZER_VOCAB_SIZE
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    texts = [
        "Hundreds of people have been forced to vacate their homes.",
        "def f(x):\n    return x ** 2  # square\n\n\tend  ",
        "Question: 12 x 7 = ?\nAnswer: 84.",
        "Ünïcödé, emoji 🙂 and 日本語 survive byte-level BPE.",
        "",
    ]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id  # Llama-style <s> prefix
        plain = tok(text, add_special_tokens=False)["input_ids"]
        assert ids[1:] == plain
        assert tok.decode(plain) == text
        assert tok.decode(ids, skip_special_tokens=True) == text
    # A tokenizer trained on the bundled data compresses its domains well below a byte per token.
    assert len(tok(texts[0], add_special_tokens=False)["input_ids"]) < len(texts[0]) / 3


def test_chat_template_matches_llamafactory_default() -> None:
    tok = assets.load_builtin_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == "<s>System: Be brief.</s>\nHuman: hi</s>\nAssistant:hello</s>\n"
    no_system = tok.apply_chat_template(
        [{"role": "system", "content": ""}, *messages[1:2]], tokenize=False
    )
    assert no_system == "<s>Human: hi</s>\nAssistant:"


def test_build_tokenizer_is_deterministic(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"text": f"row {i}: the quick brown fox jumps over {i % 7} lazy dogs"} for i in range(60)
    ]
    rows.append({"instruction": "Continue:", "input": "", "output": "alpaca rows count too"})
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lines = tmp_path / "lines.txt"
    lines.write_text("plain text lines\n\nare read one by one\n", encoding="utf-8")

    first = assets.build_tokenizer([corpus, lines], vocab_size=300)
    second = assets.build_tokenizer([corpus, lines], vocab_size=300)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert len(first) == 300
    assert first.decode(first("quick brown ünï")["input_ids"], skip_special_tokens=True) == (
        "quick brown ünï"
    )
    with pytest.raises(ValueError, match="too small"):
        assets.build_tokenizer([corpus], vocab_size=100)


@needs_repo_data
def test_shipped_tokenizer_is_regenerated_from_bundled_data() -> None:
    # tools/make_bundled_data.py trains the shipped tokenizer on the four pre-training files.
    trained = assets.build_tokenizer([DATA_DIR / f"{d}.jsonl" for d in DOMAINS])
    shipped = assets.load_builtin_tokenizer()
    assert trained.get_vocab() == shipped.get_vocab()
    text = (DATA_DIR / "code.jsonl").read_text(encoding="utf-8")[:2000]
    assert trained(text)["input_ids"] == shipped(text)["input_ids"]


# --------------------------------------------------------------------------- model


def test_build_is_deterministic_and_loads(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng_before = torch.random.get_rng_state()
    a = assets.build_tiny_llama(tmp_path / "a", seed=0)
    b = assets.build_tiny_llama(tmp_path / "b", seed=0)
    c = assets.build_tiny_llama(tmp_path / "c", seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    assert _weights(a) == _weights(b)
    assert _weights(a) != _weights(c)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    model = AutoModelForCausalLM.from_pretrained(a)
    tok = AutoTokenizer.from_pretrained(a)
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 <= n_params <= 1_000_000
    assert model.config.vocab_size == len(tok) == assets.TINY_TOKENIZER_VOCAB_SIZE
    assert model.config.tie_word_embeddings is False
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)
    batch = tok(["def f(x):", "Question: 2 + 2?"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.item()
    assert abs(loss - math.log(len(tok))) < 0.5  # an untrained model is near uniform
    info = json.loads((a / "dataflex_build.json").read_text())
    assert info["seed"] == 0 and info["num_parameters"] == n_params


def test_build_with_trained_tokenizer_and_overrides(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} of a tiny corpus" for i in range(50)), encoding="utf-8")
    out = assets.build_tiny_llama(
        tmp_path / "m", corpus_files=[corpus], config_overrides={"num_hidden_layers": 1}
    )
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1
    assert model.config.vocab_size == len(tok)
    assert tok.decode(tok("line 7 of")["input_ids"], skip_special_tokens=True) == "line 7 of"
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # loadable by transformers 4.x


def test_build_refuses_to_overwrite(tmp_path: Path) -> None:
    out = assets.build_tiny_llama(tmp_path / "m", seed=0)
    before = _weights(out)
    with pytest.raises(FileExistsError, match="exist_ok"):
        assets.build_tiny_llama(out, seed=1)
    assert assets.build_tiny_llama(out, seed=1, exist_ok=True) == out
    assert _weights(out) == before  # the existing build is kept
    other = tmp_path / "not-a-model"
    other.mkdir()
    (other / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        assets.build_tiny_llama(other, exist_ok=True)
    assert (other / "notes.txt").read_text() == "user data"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (assets.build_tiny_llama(empty) / "model.safetensors").is_file()


def test_concurrent_builders_leave_one_complete_build(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(assets.build_tiny_llama(out, seed=0, exist_ok=True))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [out] * 4
    assert _weights(out) == _weights(assets.build_tiny_llama(tmp_path / "ref", seed=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "shared"]


# --------------------------------------------------------------------------- resolve_model


def test_resolve_model_builds_once_and_caches(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real_build = assets.build_tiny_llama

    def counting_build(out_dir, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(Path(out_dir))
        return real_build(out_dir, **kwargs)

    monkeypatch.setattr(assets, "build_tiny_llama", counting_build)
    first = assets.resolve_model("builtin:tiny-llama")
    assert Path(first).parent == cache / "models"
    assert Path(first).name == f"tiny-llama-{assets.builtin_cache_key(0)}"
    stat = (Path(first) / "model.safetensors").stat()
    second = assets.resolve_model("builtin:tiny-llama")
    assert second == first
    assert len(calls) == 1
    again = (Path(second) / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert assets.resolve_model("builtin:tiny-llama?seed=0") == first


def test_resolve_model_seed_and_passthrough(cache: Path) -> None:
    seed0 = assets.resolve_model("builtin:tiny-llama")
    seed1 = assets.resolve_model("builtin:tiny-llama?seed=1")
    assert seed0 != seed1
    assert _weights(seed0) != _weights(seed1)
    for spec in ("Qwen/Qwen2.5-0.5B", "/models/llama", "./relative/dir"):
        assert assets.resolve_model(spec) == spec
    assert not (cache / "models" / "Qwen").exists()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("builtin:tiny-gpt", "unknown builtin model"),
        ("builtin:tiny-llama?sed=1", "unknown parameter"),
        ("builtin:tiny-llama?seed=x", "one integer"),
        ("builtin:tiny-llama?seed=1&seed=2", "one integer"),
    ],
)
def test_resolve_model_rejects_bad_specs(cache: Path, spec: str, match: str) -> None:
    from dataflex_core.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        assets.resolve_model(spec)
    assert not cache.exists()


def test_changed_inputs_never_reuse_a_stale_build(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = assets.resolve_model("builtin:tiny-llama")

    changed_tokenizer = tmp_path / "tokenizer"
    shutil.copytree(assets.BUILTIN_TOKENIZER_DIR, changed_tokenizer)
    config_path = changed_tokenizer / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 256
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr(assets, "BUILTIN_TOKENIZER_DIR", changed_tokenizer)

    rebuilt = assets.resolve_model("builtin:tiny-llama")
    assert rebuilt != original
    assert (
        json.loads((Path(rebuilt) / "tokenizer_config.json").read_text())["model_max_length"] == 256
    )

    key = assets.builtin_cache_key(0)
    assert assets.builtin_cache_key(0, {"hidden_size": 32}) != key
    assert assets.builtin_cache_key(1) != key
    monkeypatch.setattr(assets, "BUILDER_VERSION", assets.BUILDER_VERSION + ".test")
    assert assets.builtin_cache_key(0) != key


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DATAFLEX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "dataflex"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "dataflex"
    monkeypatch.setenv("DATAFLEX_CACHE_DIR", str(tmp_path / "explicit"))
    assert assets.cache_dir() == tmp_path / "explicit"


# --------------------------------------------------------------------------- bundled data


@needs_repo_data
def test_bundled_data_files() -> None:
    info = json.loads((DATA_DIR / "dataset_info.json").read_text(encoding="utf-8"))
    files = {p.name for p in DATA_DIR.glob("*.jsonl")}
    assert {entry["file_name"] for entry in info.values()} == files
    for domain in DOMAINS:
        assert info[domain] == {"file_name": f"{domain}.jsonl", "columns": {"prompt": "text"}}
        assert info[f"sft_{domain}"]["columns"] == {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
        }
        assert info[f"sft_{domain}"].get("formatting", "alpaca") == "alpaca"

        rows = [json.loads(line) for line in (DATA_DIR / f"{domain}.jsonl").open(encoding="utf-8")]
        assert 200 <= len(rows) <= 300
        assert all(set(r) == {"text", "domain"} for r in rows)
        assert all(r["domain"] == domain and r["text"].strip() for r in rows)
        assert all(len(r["text"]) <= 1500 for r in rows)
        assert len({r["text"] for r in rows}) == len(rows)  # no duplicates

        sft = [
            json.loads(line) for line in (DATA_DIR / f"sft_{domain}.jsonl").open(encoding="utf-8")
        ]
        assert len(sft) >= 32
        assert all(set(r) == {"instruction", "input", "output", "domain"} for r in sft)
        assert all(r["domain"] == domain and r["instruction"] and r["output"] for r in sft)

    total = sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.is_file())
    assert total < 2_000_000
    license_text = (DATA_DIR / "LICENSE.md").read_text(encoding="utf-8")
    for domain in DOMAINS:
        assert f"| {domain} |" in license_text
