"""Per-sample gradients (algorithms spec §1.3).

``g_i = ∇_{θ_f} ℓ_i(θ)`` is the gradient of **this sample's** loss alone (§1.1: token mean of
the supervised cross-entropy by default, or the sum): never a batch or rank average, never
scaled by ``1/GA``, never read from ``p.grad``. ``θ_f`` is chosen by a parameter filter
(``trainable``, ``lora``, ``all`` or a list of regular expressions) and named canonically
(``module.`` and ``base_model.model.`` stripped), in ``named_parameters()`` order.

Strategies (``strategy``):

``loop``
    Reference semantics: each sample alone (batch of one, no padding) through the unwrapped
    module, then ``torch.autograd.grad(ℓ_i, θ_f)``. Works for any model, including
    DeepSpeed ZeRO-3 modules (parameters are gathered by the forward/backward hooks).
``vmap``
    ``torch.func.vmap(grad(f))`` over ``functional_call`` in chunks of ``chunk_size`` samples
    (right-padded, pads masked), with eager attention switched on for the duration (SDPA has
    no batching rule for the mask's data-dependent branches). Memory: ``chunk_size`` full
    per-sample gradients at once.
``hooks``
    Exact, for ``nn.Linear`` parameters only: forward hooks capture each module's input
    ``x_{i,t}``; ``autograd.grad(Σ_i ℓ_i, outputs)`` gives ``δ_{i,t} = ∂ℓ_i/∂y_{i,t}`` without
    forming any parameter gradient; ``G_i = Σ_t δ_{i,t} x_{i,t}ᵀ`` (bias ``Σ_t δ_{i,t}``).
``factorized``
    LoGra (arXiv 2405.13954): ``Φ_i = Σ_t (P_o δ_{i,t}) ⊗ (P_i x_{i,t}) = P_o G_i P_iᵀ`` per
    linear module (flattened row-major, modules in name order), with seeded Gaussian or
    Rademacher ``P_i ∈ ℝ^{k_in×n_in}``, ``P_o ∈ ℝ^{k_out×n_out}`` (identity on a side with
    ``n ≤ k``). The full per-sample gradient is never built.
``auto``
    ZeRO-3 → ``loop``; otherwise ``vmap`` checked once against ``loop`` on one sample, with
    one WARNING and a fallback to ``loop`` when it fails (an error with ``strict_strategy``).

Every strategy first moves each row's unmasked tokens to the front, so the padding side and
the amount of padding do not change a sample's gradient. A sample without a supervised token
is invalid: its gradient row is NaN and ``valid_i = False``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from dataflex_core import ComponentContext, ConfigError, parse_config

from dataflex_ops._common import (
    canonical_name,
    check_token_batch,
    compact_rows,
    eval_mode,
    is_zero3_model,
    model_inputs,
    parameter_hash,
    select_parameters,
    unwrap_model,
)
from dataflex_ops.adam import (
    AdamMoments,
    MissingMomentError,
    load_trainer_moments,
    precondition_grads,
)
from dataflex_ops.loss import _logits_of, per_sample_loss
from dataflex_ops.projection import Projector, ProjectorConfig, factor_matrix, make_projector

__all__ = [
    "STRATEGIES",
    "PerSampleGrads",
    "FactorizedGrads",
    "GradStrategyError",
    "canonical_name",
    "select_parameters",
    "parameter_hash",
    "per_sample_grads",
    "factorized_grads",
    "linear_modules",
    "PerSampleGradConfig",
    "PerSampleGrad",
]

log = logging.getLogger(__name__)

Strategy = Literal["auto", "vmap", "loop", "hooks", "factorized"]
#: Strategy names accepted by :func:`per_sample_grads` (``factorized`` has its own function).
STRATEGIES: tuple[str, ...] = ("auto", "vmap", "loop", "hooks", "factorized")


class GradStrategyError(RuntimeError):
    """A per-sample gradient strategy cannot run on this model (and no fallback is allowed)."""


@dataclass
class PerSampleGrads:
    """Per-sample gradients of a batch.

    Attributes:
        names: Canonical parameter names, in ``named_parameters()`` order.
        grads: ``{name: [B, *shape]}`` float32 tensors (NaN rows for invalid samples).
        valid: ``[B]`` bool, False for samples without a supervised token.
        strategy: The strategy that actually ran.
    """

    names: tuple[str, ...]
    grads: dict[str, torch.Tensor]
    valid: torch.Tensor
    strategy: str
    shapes: tuple[tuple[int, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.shapes:
            self.shapes = tuple(tuple(self.grads[n].shape[1:]) for n in self.names)

    @property
    def param_hash(self) -> str:
        """Hash of the parameter list (names and shapes): features with different hashes are
        never compared."""
        return parameter_hash(zip(self.names, self.shapes, strict=True))

    @property
    def num_params(self) -> int:
        """``P = Σ numel``."""
        return sum(math.prod(s) for s in self.shapes)

    def flat(self) -> torch.Tensor:
        """``[B, P]``: the tensors flattened and concatenated in ``names`` order."""
        return torch.cat([self.grads[n].reshape(self.valid.shape[0], -1) for n in self.names], 1)


@dataclass
class FactorizedGrads:
    """LoGra features of a batch.

    Attributes:
        values: ``[B, D]`` float32 with ``D = Σ_modules k_out'·k_in'``.
        valid: ``[B]`` bool.
        modules: Canonical module names in feature order (sorted).
        dims: ``(k_out', k_in')`` per module (``n`` on an identity side).
        seed: The seed of the factor matrices.
    """

    values: torch.Tensor
    valid: torch.Tensor
    modules: tuple[str, ...]
    dims: tuple[tuple[int, int], ...]
    seed: int
    projection: str = "gaussian"

    @property
    def param_hash(self) -> str:
        """Hash of the module list and feature dimensions."""
        return parameter_hash(zip(self.modules, self.dims, strict=True))


# --------------------------------------------------------------------------- batch handling


def _prepare(
    batch: Mapping[str, Any], device: torch.device, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Compact rows (real tokens first), move to ``device``; returns ids, mask, labels, extras."""
    if "labels" not in batch or "input_ids" not in batch:
        raise KeyError("per-sample gradients need a batch with 'input_ids' and 'labels'.")
    inputs = model_inputs(batch)
    check_token_batch(inputs["input_ids"], "per-sample gradients")
    if tuple(batch["labels"].shape) != tuple(inputs["input_ids"].shape):
        raise ValueError(
            f"labels {tuple(batch['labels'].shape)} and input_ids "
            f"{tuple(inputs['input_ids'].shape)} must have the same [B, T] shape."
        )
    ids = inputs.pop("input_ids").to(device)
    mask = inputs.pop("attention_mask", None)
    mask = mask.to(device) if mask is not None else None
    labels = batch["labels"].to(device)
    seq = {
        k: v.to(device)
        for k, v in inputs.items()
        if isinstance(v, torch.Tensor) and v.shape[:2] == ids.shape
    }
    rest = {k: v for k, v in inputs.items() if k not in seq}
    if rest:
        raise ValueError(
            f"per-sample gradients take [B, T] model inputs only; drop {sorted(rest)} from the "
            "batch or give them one value per token."
        )
    seq["labels"] = labels
    ids, mask, extra, _ = compact_rows(ids, mask, seq, pad_values={"labels": ignore_index})
    labels = extra.pop("labels")
    return ids, mask, labels, extra


def _valid_of(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (labels[:, 1:] != ignore_index).any(dim=1)


def _forward_kwargs(module: torch.nn.Module) -> dict[str, Any]:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def _token_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str, ignore_index: int
) -> torch.Tensor:
    """§1.1 loss of one sample from ``[T, V]`` logits and ``[T]`` labels (vmap-friendly)."""
    targets = labels[1:]
    mask = targets != ignore_index
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    nll = -logp.gather(-1, targets.clamp(min=0)[:, None])[:, 0]
    total = (nll * mask).sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1)


@contextlib.contextmanager
def _eager_attention(module: torch.nn.Module) -> Iterator[None]:
    """Switch HF attention to ``eager`` for the duration (restored afterwards)."""
    changed: list[tuple[Any, Any]] = []
    seen: set[int] = set()
    for sub in module.modules():
        cfg = getattr(sub, "config", None)
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation"):
            continue
        seen.add(id(cfg))
        old = cfg._attn_implementation
        if old not in (None, "eager"):
            try:
                cfg._attn_implementation = "eager"
                changed.append((cfg, old))
            except Exception:  # noqa: BLE001 - a config that refuses keeps its attention
                pass
    try:
        yield
    finally:
        for cfg, old in changed:
            cfg._attn_implementation = old


@contextlib.contextmanager
def _requiring_grad(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    shape = getattr(p, "ds_shape", None)  # ZeRO-3 keeps the full shape here
    return tuple(shape) if shape is not None else tuple(p.shape)


# --------------------------------------------------------------------------- strategies


def _grads_loop(
    module: torch.nn.Module,
    chosen: list[tuple[str, torch.nn.Parameter]],
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    extra: dict[str, torch.Tensor],
    reduction: str,
    ignore_index: int,
    rows: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    params = [p for _, p in chosen]
    fkw = _forward_kwargs(module)
    rows = list(range(ids.shape[0])) if rows is None else list(rows)
    out: dict[str, list[torch.Tensor]] = {n: [] for n, _ in chosen}
    valid = _valid_of(labels, ignore_index)
    # ZeRO-3 gathers parameters in forward and backward (collectives), so every rank must run
    # both for every row, including rows without a supervised token
    lockstep = is_zero3_model(module)
    with _requiring_grad(params), torch.enable_grad():
        for i in rows:
            if not lockstep and not bool(valid[i]):
                # no supervised token (or fewer than two tokens): nothing to differentiate;
                # the caller sets the row to NaN
                for name, p in chosen:
                    out[name].append(
                        torch.zeros(_full_shape(p), dtype=torch.float32, device=ids.device)
                    )
                continue
            n = max(int(mask[i].sum().item()), 1)
            kwargs = {k: v[i : i + 1, :n] for k, v in extra.items()}
            output = module(
                input_ids=ids[i : i + 1, :n],
                attention_mask=mask[i : i + 1, :n],
                **kwargs,
                **fkw,
            )
            logits = _logits_of(output)
            if logits is None:
                raise GradStrategyError(f"{type(module).__name__} returned no logits.")
            loss, _ = per_sample_loss(
                logits, labels[i : i + 1, :n], reduction=reduction, ignore_index=ignore_index
            )
            if bool(valid[i]):
                loss = loss[0]
            else:  # ZeRO-3 lockstep: a zero loss that still has a graph; masked by the caller
                loss = logits.float().sum() * 0.0
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for (name, p), g in zip(chosen, grads, strict=True):
                if g is None:
                    g = torch.zeros(_full_shape(p), dtype=torch.float32, device=ids.device)
                out[name].append(g.detach().float().reshape(_full_shape(p)))
    return {n: torch.stack(v) for n, v in out.items()}


def _grads_vmap(
    module: torch.nn.Module,
    chosen: list[tuple[str, torch.nn.Parameter]],
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    extra: dict[str, torch.Tensor],
    reduction: str,
    ignore_index: int,
    chunk_size: int,
) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    # functional_call needs the module's own (non-canonical) names
    by_id = {id(p): n for n, p in module.named_parameters()}
    keys = [by_id[id(p)] for _, p in chosen]
    fkw = _forward_kwargs(module)
    extra_keys = sorted(extra)

    def loss_one(
        params: dict[str, torch.Tensor],
        ids_i: torch.Tensor,
        mask_i: torch.Tensor,
        labels_i: torch.Tensor,
        *extras: torch.Tensor,
    ) -> torch.Tensor:
        kwargs = {k: e[None] for k, e in zip(extra_keys, extras, strict=True)}
        output = functional_call(
            module,
            params,
            args=(),
            kwargs={"input_ids": ids_i[None], "attention_mask": mask_i[None], **kwargs, **fkw},
            strict=False,
        )
        logits = _logits_of(output)
        return _token_loss(logits[0], labels_i, reduction, ignore_index)

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, *([0] * len(extra_keys))))
    params = {k: p.detach() for k, (_, p) in zip(keys, chosen, strict=True)}
    pieces: dict[str, list[torch.Tensor]] = {n: [] for n, _ in chosen}
    with _eager_attention(module):
        for s0 in range(0, ids.shape[0], chunk_size):
            sl = slice(s0, s0 + chunk_size)
            # trim the chunk to its longest row: less work, same result (pads are masked)
            width = max(int(mask[sl].sum(dim=1).max().item()), 1)
            g = per_sample(
                params,
                ids[sl, :width],
                mask[sl, :width],
                labels[sl, :width],
                *[extra[k][sl, :width] for k in extra_keys],
            )
            for (name, _), key in zip(chosen, keys, strict=True):
                pieces[name].append(g[key].detach().float())
    return {n: torch.cat(v) for n, v in pieces.items()}


def linear_modules(
    model: torch.nn.Module, chosen: list[tuple[str, torch.nn.Parameter]]
) -> tuple[list[tuple[str, torch.nn.Linear, bool]], list[str]]:
    """Linear modules whose weight is chosen: ``[(canonical_name, module, has_bias_chosen)]``,
    and the chosen parameters that are not a linear weight or bias."""
    module = unwrap_model(model)
    chosen_ids = {id(p) for _, p in chosen}
    covered: set[int] = set()
    found: list[tuple[str, torch.nn.Linear, bool]] = []
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and id(sub.weight) in chosen_ids:
            bias = sub.bias is not None and id(sub.bias) in chosen_ids
            found.append((canonical_name(name), sub, bias))
            covered.add(id(sub.weight))
            if bias:
                covered.add(id(sub.bias))
    others = [n for n, p in chosen if id(p) not in covered]
    return found, others


def _capture_linear(
    module: torch.nn.Module,
    targets: list[tuple[str, torch.nn.Linear, bool]],
    chosen: list[tuple[str, torch.nn.Parameter]],
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    extra: dict[str, torch.Tensor],
    reduction: str,
    ignore_index: int,
    combine: Any,
) -> dict[str, torch.Tensor]:
    """Run one forward/backward with hooks; ``combine(name, x, delta)`` per captured call."""
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n, _, _ in targets}
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n, _, _ in targets}
    handles = []

    def make_hook(name: str) -> Any:
        def hook(_mod: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            inputs[name].append(args[0].detach())
            outputs[name].append(out)

        return hook

    for name, sub, _ in targets:
        handles.append(sub.register_forward_hook(make_hook(name)))
    params = [p for _, p in chosen]
    result: dict[str, torch.Tensor] = {}
    try:
        with _requiring_grad(params), torch.enable_grad():
            output = module(input_ids=ids, attention_mask=mask, **extra, **_forward_kwargs(module))
            logits = _logits_of(output)
            if logits is None:
                raise GradStrategyError(f"{type(module).__name__} returned no logits.")
            losses, valid = per_sample_loss(
                logits, labels, reduction=reduction, ignore_index=ignore_index
            )
            # a sum, so each sample's δ is the gradient of its own loss
            total = torch.where(valid, losses, torch.zeros_like(losses)).sum()
            flat_outs = [o for n, _, _ in targets for o in outputs[n]]
            if not total.requires_grad:
                # no row has two tokens, so no loss term has a graph: a zero loss with one
                # (every δ is zero, the rows are masked; the backward still runs, which keeps
                # ZeRO-3 ranks in lockstep)
                total = logits.float().sum() * 0.0
            deltas = torch.autograd.grad(total, flat_outs, allow_unused=True)
        pos = 0
        for name, _, _ in targets:
            for x in inputs[name]:
                d = deltas[pos]
                pos += 1
                if d is None:
                    d = torch.zeros(*x.shape[:-1], outputs[name][0].shape[-1], device=x.device)
                part = combine(name, x.float(), d.detach().float())
                result[name] = part if name not in result else result[name] + part
    finally:
        for h in handles:
            h.remove()
    return result


def _grads_hooks(
    module: torch.nn.Module,
    chosen: list[tuple[str, torch.nn.Parameter]],
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    extra: dict[str, torch.Tensor],
    reduction: str,
    ignore_index: int,
) -> dict[str, torch.Tensor]:
    targets, others = linear_modules(module, chosen)
    if others:
        raise GradStrategyError(
            f"strategy 'hooks' handles nn.Linear weights and biases only; these chosen "
            f"parameters are neither: {', '.join(others[:8])}"
            f"{' ...' if len(others) > 8 else ''}. Exclude them with the parameter filter."
        )
    bias_of = {n: b for n, _, b in targets}

    def combine(name: str, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        g = torch.einsum("bto,bti->boi", d, x).flatten(1)
        if bias_of[name]:
            g = torch.cat([g, d.sum(dim=1)], dim=1)
        return g

    captured = _capture_linear(
        module, targets, chosen, ids, mask, labels, extra, reduction, ignore_index, combine
    )
    out: dict[str, torch.Tensor] = {}
    by_id = {id(p): n for n, p in chosen}
    for name, sub, bias in targets:
        g = captured[name]
        shape = _full_shape(sub.weight)  # ZeRO-3 partitions keep the full shape in ds_shape
        n_w = shape[0] * shape[1]
        out[by_id[id(sub.weight)]] = g[:, :n_w].reshape(-1, *shape)
        if bias:
            out[by_id[id(sub.bias)]] = g[:, n_w:]
    return {n: out[n] for n, _ in chosen}


# --------------------------------------------------------------------------- public API


def _check_against_loop(
    module: torch.nn.Module,
    chosen: list[tuple[str, torch.nn.Parameter]],
    got: dict[str, torch.Tensor],
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    extra: dict[str, torch.Tensor],
    reduction: str,
    ignore_index: int,
    rtol: float,
) -> float:
    valid = _valid_of(labels, ignore_index)
    row = int(valid.nonzero()[0, 0]) if bool(valid.any()) else 0
    ref = _grads_loop(module, chosen, ids, mask, labels, extra, reduction, ignore_index, [row])
    num = sum(float((got[n][row] - ref[n][0]).pow(2).sum()) for n, _ in chosen)
    den = sum(float(ref[n][0].pow(2).sum()) for n, _ in chosen)
    return math.sqrt(num / max(den, 1e-30))


def per_sample_grads(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    params: str | Sequence[str] = "trainable",
    strategy: Strategy = "auto",
    chunk_size: int = 8,
    reduction: Literal["mean", "sum"] = "mean",
    ignore_index: int = -100,
    strict_strategy: bool = False,
    check_rtol: float = 1e-3,
) -> PerSampleGrads:
    """Exact per-sample gradients of a causal LM's §1.1 loss.

    Runs in eval mode (dropout off) and restores the caller's mode; parameters' ``requires_grad``
    flags and ``.grad`` are left untouched.

    Args:
        model: An HF causal LM (plain, PEFT, DDP-wrapped, or a DeepSpeed ZeRO-3 module).
        batch: ``input_ids``, ``labels`` (-100 = ignored), optional ``attention_mask``.
        params: The parameter filter (see :func:`select_parameters`).
        strategy: ``auto``, ``vmap``, ``loop`` or ``hooks`` (``factorized``: use
            :func:`factorized_grads`).
        chunk_size: Samples per vmap call (bounds memory).
        reduction: ``mean`` (token mean, default) or ``sum`` per sample.
        ignore_index: Label value of unsupervised positions.
        strict_strategy: With ``auto``, raise instead of falling back from vmap to loop.
        check_rtol: ``auto``'s tolerance for the vmap-vs-loop check on one sample.

    Returns:
        :class:`PerSampleGrads` (float32, on the model's device).

    Raises:
        GradStrategyError: when the strategy cannot run (vmap on ZeRO-3, a failed ``auto``
            check under ``strict_strategy``, non-linear parameters for ``hooks``).
    """
    if strategy not in ("auto", "vmap", "loop", "hooks"):
        raise ValueError(
            f"strategy must be auto, vmap, loop or hooks, got {strategy!r} "
            "(factorized features come from factorized_grads)."
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    module = unwrap_model(model)
    chosen = select_parameters(module, params)
    zero3 = is_zero3_model(module)
    device = next(module.parameters()).device
    ids, mask, labels, extra = _prepare(batch, device, ignore_index)
    valid = _valid_of(labels, ignore_index)
    effective = strategy
    with eval_mode(module):
        if strategy == "auto":
            effective = "loop" if zero3 else "vmap"
        if effective == "vmap" and zero3:
            raise GradStrategyError(
                "vmap cannot run on a DeepSpeed ZeRO-3 module (its parameter hooks have no "
                "vmap support); use strategy 'loop' or 'auto'."
            )
        grads: dict[str, torch.Tensor]
        if effective == "vmap":
            try:
                grads = _grads_vmap(
                    module, chosen, ids, mask, labels, extra, reduction, ignore_index, chunk_size
                )
                if strategy == "auto":
                    err = _check_against_loop(
                        module,
                        chosen,
                        grads,
                        ids,
                        mask,
                        labels,
                        extra,
                        reduction,
                        ignore_index,
                        check_rtol,
                    )
                    if not err <= check_rtol:
                        raise GradStrategyError(
                            f"vmap differs from loop by {err:.3g} (relative) on one sample"
                        )
            except Exception as exc:
                if strategy != "auto" or strict_strategy:
                    if isinstance(exc, GradStrategyError):
                        raise
                    raise GradStrategyError(
                        f"per-sample gradients by vmap failed on {type(module).__name__}: "
                        f"{type(exc).__name__}: {exc}. Use strategy 'loop' (exact, slower)."
                    ) from exc
                log.warning(
                    "per-sample gradients: vmap failed on %s (%s: %s); falling back to loop.",
                    type(module).__name__,
                    type(exc).__name__,
                    str(exc)[:200],
                )
                effective = "loop"
        if effective == "loop":
            grads = _grads_loop(module, chosen, ids, mask, labels, extra, reduction, ignore_index)
        elif effective == "hooks":
            grads = _grads_hooks(module, chosen, ids, mask, labels, extra, reduction, ignore_index)
    for name in grads:
        grads[name][~valid] = float("nan")
    names = tuple(n for n, _ in chosen)
    shapes = tuple(_full_shape(p) for _, p in chosen)
    return PerSampleGrads(names=names, grads=grads, valid=valid, strategy=effective, shapes=shapes)


def factorized_grads(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    params: str | Sequence[str] = "trainable",
    k_in: int = 16,
    k_out: int = 16,
    seed: int = 0,
    projection: Literal["gaussian", "rademacher"] = "gaussian",
    reduction: Literal["mean", "sum"] = "mean",
    ignore_index: int = -100,
    skip_non_linear: bool = False,
) -> FactorizedGrads:
    """LoGra features ``Φ_i = P_o G_i P_iᵀ`` of the chosen linear modules (spec §1.5.4).

    One forward and one backward for the whole batch; only the projected activations
    ``[B, T, k_in]`` and output gradients ``[B, T, k_out]`` are kept per module.

    Args:
        model: An HF causal LM (plain, PEFT or DDP-wrapped).
        batch: ``input_ids``, ``labels``, optional ``attention_mask``.
        params: Parameter filter; each chosen ``nn.Linear`` weight contributes one module.
        k_in: Input-side projection size (identity when ``n_in ≤ k_in``).
        k_out: Output-side projection size (identity when ``n_out ≤ k_out``).
        seed: Seed of the factor matrices (``derive(seed, module, "in"|"out")``).
        projection: ``gaussian`` (LoGra) or ``rademacher``.
        reduction: Per-sample loss reduction.
        ignore_index: Label value of unsupervised positions.
        skip_non_linear: Ignore chosen parameters that are not linear weights (biases, norms,
            embeddings) instead of raising.

    Returns:
        :class:`FactorizedGrads` with ``values [B, D]`` float32; invalid rows are NaN.
    """
    if k_in < 1 or k_out < 1:
        raise ValueError(f"k_in and k_out must be >= 1, got {k_in}, {k_out}.")
    module = unwrap_model(model)
    chosen = select_parameters(module, params)
    targets, others = linear_modules(module, chosen)
    biases = [n for n, _, b in targets if b]
    if (others or biases) and not skip_non_linear:
        bad = others + [f"{n}.bias" for n in biases]
        raise GradStrategyError(
            "factorized features cover nn.Linear weights only; these chosen parameters are "
            f"not: {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}. Narrow the parameter "
            "filter (e.g. 'lora' or ['_proj']) or pass skip_non_linear=True."
        )
    if not targets:
        raise GradStrategyError("factorized features need at least one chosen nn.Linear weight.")
    targets = sorted(((n, m, False) for n, m, _ in targets), key=lambda t: t[0])
    device = next(module.parameters()).device
    ids, mask, labels, extra = _prepare(batch, device, ignore_index)
    valid = _valid_of(labels, ignore_index)
    mats: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    dims: list[tuple[int, int]] = []
    for name, sub, _ in targets:
        n_out, n_in = _full_shape(sub.weight)
        p_in = factor_matrix(seed, name, "in", n_in, k_in, projection)
        p_out = factor_matrix(seed, name, "out", n_out, k_out, projection)
        mats[name] = (
            None if p_in is None else p_in.to(device),
            None if p_out is None else p_out.to(device),
        )
        dims.append((n_out if p_out is None else k_out, n_in if p_in is None else k_in))

    def combine(name: str, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        p_in, p_out = mats[name]
        xp = x if p_in is None else x @ p_in.T
        dp = d if p_out is None else d @ p_out.T
        return torch.einsum("bto,bti->boi", dp, xp).flatten(1)

    chosen_w = [(n, m.weight) for n, m, _ in targets]
    with eval_mode(module):
        captured = _capture_linear(
            module, targets, chosen_w, ids, mask, labels, extra, reduction, ignore_index, combine
        )
    values = torch.cat([captured[n] for n, _, _ in targets], dim=1)
    values[~valid] = float("nan")
    return FactorizedGrads(
        values=values,
        valid=valid,
        modules=tuple(n for n, _, _ in targets),
        dims=tuple(dims),
        seed=seed,
        projection=projection,
    )


# --------------------------------------------------------------------------- featurizer


@dataclass(frozen=True)
class PerSampleGradConfig:
    """Config of the ``per_sample_grad`` featurizer: gradient → (Adam) → (projection) → (norm).

    Attributes:
        strategy: ``auto``, ``vmap``, ``loop``, ``hooks`` or ``factorized`` (spec
            ``grad_strategy``).
        params: ``trainable``, ``lora``, ``all`` or a list of regular expressions.
        chunk_size: Samples per vmap call (spec ``per_sample_batch_size``).
        loss_reduction: ``mean`` or ``sum`` per sample.
        ignore_index: Label value of unsupervised positions.
        strict_strategy: Raise instead of falling back from vmap to loop under ``auto``.
        factor_k_in: LoGra input-side size ``k_i``.
        factor_k_out: LoGra output-side size ``k_o``.
        factor_projection: ``gaussian`` (LoGra) or ``rademacher`` factor matrices.
        seed: Seed of the factor matrices.
        gradient_type: ``sgd`` (raw ``g``) or ``adam`` (``Γ``, spec §1.4).
        adam_variant: ``paper`` or ``official``; None follows ``official_compat``.
        official_compat: ``adam_variant: official``; a ``projector`` given as a mapping also
            defaults to ``projection_seeding: trak_basic`` and ``projection_input_dtype:
            float16`` (explicit keys win).
        adam_checkpoint: HF Trainer checkpoint folder with ``optimizer.pt``; without it the
            live optimizer in ``context.extras["optimizer"]`` is used.
        adam_betas: Override of the optimizer group's ``(β₁, β₂)``.
        adam_eps: Override of the optimizer group's ``ε``.
        adam_feature_memory_limit: Bytes; ``3·P·4`` above it is refused before any work.
        projector: A :class:`~dataflex_ops.projection.ProjectorConfig` (mapping) or None.
        normalize: ℓ₂-normalise the final rows.
    """

    strategy: Literal["auto", "vmap", "loop", "hooks", "factorized"] = "auto"
    params: str | tuple[str, ...] = "trainable"
    chunk_size: int = 8
    loss_reduction: Literal["mean", "sum"] = "mean"
    ignore_index: int = -100
    strict_strategy: bool = False
    factor_k_in: int = 16
    factor_k_out: int = 16
    factor_projection: Literal["gaussian", "rademacher"] = "gaussian"
    seed: int = 0
    gradient_type: Literal["sgd", "adam"] = "sgd"
    adam_variant: Literal["paper", "official"] | None = None
    official_compat: bool = False
    adam_checkpoint: str | None = None
    adam_betas: tuple[float, float] | None = None
    adam_eps: float | None = None
    adam_feature_memory_limit: int = 8 * 2**30
    projector: ProjectorConfig | None = None
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {self.chunk_size}.")
        if self.factor_k_in < 1 or self.factor_k_out < 1:
            raise ConfigError("factor_k_in and factor_k_out must be >= 1.")
        if self.strategy == "factorized" and self.gradient_type == "adam":
            raise ConfigError(
                "gradient_type 'adam' needs exact per-parameter gradients; factorized features "
                "are sgd-only (spec §1.5.4). Use strategy auto/vmap/loop/hooks."
            )
        if self.adam_variant is None:
            object.__setattr__(
                self, "adam_variant", "official" if self.official_compat else "paper"
            )

    @property
    def effective_adam_variant(self) -> str:
        """The Adam variant after ``official_compat`` is applied."""
        return str(self.adam_variant)


class PerSampleGrad:
    """Featurizer: per-sample gradient features of a batch (spec §1.3–1.5).

    ``values`` is ``[B, D]`` float32: the flat per-sample gradients (or their Adam transform,
    or LoGra features), projected when a ``projector`` is configured and ℓ₂-normalised with
    ``normalize``. The result also carries the parameter hash and the projector spec, which
    must match for features to be compared.

    Args:
        config: A :class:`PerSampleGradConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts; ``context.extras["optimizer"]`` is the live optimizer for
            ``gradient_type: adam`` without ``adam_checkpoint``.
    """

    config_class = PerSampleGradConfig

    def __init__(
        self,
        config: PerSampleGradConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        if (
            isinstance(config, Mapping)
            and config.get("official_compat")
            and isinstance(config.get("projector"), Mapping)
        ):
            proj = dict(config["projector"])
            proj.setdefault("projection_seeding", "trak_basic")
            proj.setdefault("projection_input_dtype", "float16")
            config = {**config, "projector": proj}
        self.config: PerSampleGradConfig = parse_config(
            PerSampleGradConfig, config, where="featurizer 'per_sample_grad'"
        )
        self.context = context if context is not None else ComponentContext()
        self.projector: Projector | None = (
            make_projector(self.config.projector) if self.config.projector is not None else None
        )
        self._strategy: str = self.config.strategy
        self._moments: AdamMoments | None = None

    def _adam_moments(self, model: torch.nn.Module) -> AdamMoments:
        if self._moments is None:
            if self.config.adam_checkpoint:
                self._moments = load_trainer_moments(self.config.adam_checkpoint, model)
            else:
                optimizer = (self.context.extras or {}).get("optimizer")
                if optimizer is None:
                    raise MissingMomentError(
                        "gradient_type 'adam' needs optimizer moments: set adam_checkpoint to a "
                        "Trainer checkpoint folder, or pass the live optimizer as "
                        "context.extras['optimizer']."
                    )
                return AdamMoments.from_optimizer(optimizer, model)  # live: never cached
        return self._moments

    def __call__(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Compute the batch's features.

        Returns:
            ``{"values": [B, D] float32, "valid": [B] bool, "param_hash": str,
            "names": tuple, "strategy": str, "projector": dict | None}``.
        """
        c = self.config
        if self._strategy == "factorized":
            fz = factorized_grads(
                model,
                batch,
                params=c.params,
                k_in=c.factor_k_in,
                k_out=c.factor_k_out,
                seed=c.seed,
                projection=c.factor_projection,
                reduction=c.loss_reduction,
                ignore_index=c.ignore_index,
            )
            valid, names, phash, effective = fz.valid, fz.modules, fz.param_hash, "factorized"
            tensors: Mapping[str, torch.Tensor] | torch.Tensor = fz.values
        else:
            got = per_sample_grads(
                model,
                batch,
                params=c.params,
                strategy=self._strategy,  # type: ignore[arg-type]
                chunk_size=c.chunk_size,
                reduction=c.loss_reduction,
                ignore_index=c.ignore_index,
                strict_strategy=c.strict_strategy,
            )
            if self._strategy == "auto":  # decided once per featurizer
                self._strategy = got.strategy
            valid, names, phash, effective = got.valid, got.names, got.param_hash, got.strategy
            tensors = got.grads
            if c.gradient_type == "adam":
                tensors = precondition_grads(
                    got.grads,
                    self._adam_moments(model),
                    variant=c.effective_adam_variant,  # type: ignore[arg-type]
                    betas=c.adam_betas,
                    eps=c.adam_eps,
                    memory_limit=c.adam_feature_memory_limit,
                )
        if self.projector is not None:
            values = self.projector.project(tensors, name="factorized").float()
        elif isinstance(tensors, torch.Tensor):
            values = tensors
        else:
            values = torch.cat([t.reshape(t.shape[0], -1) for t in tensors.values()], dim=1)
        if c.normalize:
            values = values / values.norm(dim=1, keepdim=True).clamp(min=1e-12)
        values = torch.where(valid[:, None], values, torch.full_like(values, float("nan")))
        return {
            "values": values,
            "valid": valid,
            "param_hash": phash,
            "names": tuple(names),
            "strategy": effective,
            "projector": self.projector.spec() if self.projector is not None else None,
        }
