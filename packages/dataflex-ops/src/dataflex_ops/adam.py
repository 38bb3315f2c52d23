"""Adam preconditioning of per-sample gradients: training-side LESS/NICE features (spec §1.4).

Given a per-sample gradient ``g`` and the optimizer moments ``m``, ``v`` and step count ``t``
(completed steps) of the same parameter:

* common part: ``m′ = β₁ m + (1−β₁) g`` and ``v′ = β₂ v + (1−β₂) g⊙g``;
* ``paper`` (default): ``τ = t+1``, ``Γ = (m′/(1−β₁^τ)) ⊘ (√(v′/(1−β₂^τ)) + ε)``, with β and ε
  from the parameter's optimizer group (``adam_betas`` / ``adam_eps`` override them);
* ``official`` (LESS code): ``Γ = m′ ⊘ √(v′ + ε)`` with β₁=0.9, β₂=0.999, ε=1e-8 fixed (unless
  overridden), no bias correction, ε inside the root.

Moments come from a live optimizer (:meth:`AdamMoments.from_optimizer`) or from a Hugging Face
``Trainer`` checkpoint (:func:`load_trainer_moments`). ``optimizer.pt`` is keyed by integers:
the position of each parameter in the optimizer's param groups. The names are recovered by
rebuilding the Trainer's groups exactly as ``Trainer.create_optimizer`` does:

1. ``decay = Trainer.get_decay_parameter_names(model)`` of the installed transformers (biases
   and norm weights are excluded from weight decay);
2. group 0 = ``[n for n, p in model.named_parameters() if n in decay and p.requires_grad]``;
3. group 1 = ``[n for n, p in model.named_parameters() if n not in decay and p.requires_grad]``;
4. the saved integers count through group 0, then group 1.

**Assumption:** the model passed here has the same architecture, the same trainable
parameters and the same wrapping (PEFT or not) as the model the Trainer optimised, and the
Trainer used its default ``create_optimizer`` (no custom optimizer, no layer-wise groups). The
loader checks every group's size and every moment's shape against this reconstruction and
raises on any mismatch; ``tests/test_adam.py`` verifies the mapping against a real
``transformers.Trainer`` run.

Multi-checkpoint LESS: :func:`checkpoint_lr_weights` computes ``η̄_c`` (the mean logged
learning rate over steps ``(s_{c−1}, s_c]``, renormalised to sum 1) and
:func:`combine_checkpoints` stacks ``√η̄_c·φ_c`` so that one inner product gives
``Σ_c η̄_c ⟨φ_c, ψ_c⟩``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from dataflex_core import ConfigError, DataError

from dataflex_ops._common import canonical_name, unwrap_model

__all__ = [
    "OFFICIAL_BETAS",
    "OFFICIAL_EPS",
    "AdamMoments",
    "MissingMomentError",
    "adam_precondition",
    "precondition_grads",
    "trainer_parameter_groups",
    "load_trainer_moments",
    "checkpoint_lr_weights",
    "normalize_checkpoint_weights",
    "combine_checkpoints",
    "estimate_adam_bytes",
]

AdamVariant = Literal["paper", "official"]

#: The constants official LESS hard-codes.
OFFICIAL_BETAS: tuple[float, float] = (0.9, 0.999)
OFFICIAL_EPS: float = 1e-8

_DEFAULT_MEMORY_LIMIT = 8 * 2**30


class MissingMomentError(DataError, KeyError):
    """The optimizer holds no Adam moments for a feature parameter."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class AdamMoments:
    """Adam state per canonical parameter name.

    Attributes:
        exp_avg: ``m`` per name.
        exp_avg_sq: ``v`` per name.
        step: ``t`` (completed optimizer steps) per name.
        betas: ``(β₁, β₂)`` of the parameter's group.
        eps: ``ε`` of the parameter's group.
        lr: Learning rate of the parameter's group at save time.
        source: Where the moments came from (path or ``"live optimizer"``).
    """

    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    step: dict[str, int]
    betas: dict[str, tuple[float, float]] = field(default_factory=dict)
    eps: dict[str, float] = field(default_factory=dict)
    lr: dict[str, float] = field(default_factory=dict)
    source: str = ""

    @property
    def names(self) -> list[str]:
        """Names with moments, in insertion (optimizer) order."""
        return list(self.exp_avg)

    def require(self, names: Sequence[str]) -> None:
        """Raise :class:`MissingMomentError` naming the first parameters without moments."""
        missing = [n for n in names if n not in self.exp_avg or n not in self.exp_avg_sq]
        if missing:
            raise MissingMomentError(
                f"no Adam moments for {len(missing)} feature parameter(s), e.g. "
                f"{', '.join(missing[:3])} (source: {self.source or 'unknown'}). Causes: "
                "warmup_step = 0 (no optimizer step yet), a non-Adam optimizer, or a parameter "
                "filter that differs from the trained parameters."
            )

    @classmethod
    def from_optimizer(cls, optimizer: Any, model: torch.nn.Module) -> AdamMoments:
        """Moments of a live ``torch.optim`` Adam/AdamW (or a wrapper with ``.optimizer``).

        Under DeepSpeed ZeRO (parameters partitioned, the optimizer holding flat fp32
        partitions) the full moments of each trainable parameter are assembled with DeepSpeed's
        ``safe_get_full_optimizer_state``, a collective: every rank calls it, in parameter order.
        """
        params = list(unwrap_model(model).named_parameters())
        if any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for _, p in params):
            return cls._from_deepspeed(optimizer, params)
        inner = optimizer
        while not hasattr(inner, "param_groups") and hasattr(inner, "optimizer"):
            inner = inner.optimizer
        names = {id(p): canonical_name(n) for n, p in unwrap_model(model).named_parameters()}
        out = cls({}, {}, {}, source="live optimizer")
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state.get(p, {})
                name = names.get(id(p))
                if name is None or "exp_avg" not in state:
                    continue
                out.exp_avg[name] = state["exp_avg"]
                out.exp_avg_sq[name] = state["exp_avg_sq"]
                out.step[name] = int(_as_float(state.get("step", 0)))
                out.betas[name] = tuple(group.get("betas", OFFICIAL_BETAS))  # type: ignore[assignment]
                out.eps[name] = float(group.get("eps", OFFICIAL_EPS))
                out.lr[name] = float(_as_float(group.get("lr", math.nan)))
        return out


    @classmethod
    def _from_deepspeed(cls, optimizer: Any, params: Sequence[tuple[str, Any]]) -> AdamMoments:
        from deepspeed.utils import safe_get_full_optimizer_state

        # accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> the torch optimizer that steps
        # the flat fp32 partitions (whose state holds the step count).
        inner = optimizer
        while hasattr(inner, "optimizer"):
            inner = inner.optimizer
        groups = list(getattr(inner, "param_groups", []) or [{}])
        group = groups[0]
        steps = [
            int(_as_float(st["step"]))
            for st in getattr(inner, "state", {}).values()
            if isinstance(st, Mapping) and "step" in st
        ]
        step = max(steps) if steps else 0
        out = cls({}, {}, {}, source="live optimizer (DeepSpeed ZeRO)")
        for name, p in params:
            if not p.requires_grad:
                continue
            m = safe_get_full_optimizer_state(p, "exp_avg")
            v = safe_get_full_optimizer_state(p, "exp_avg_sq")
            if m is None or v is None or step == 0:
                continue
            key = canonical_name(name)
            out.exp_avg[key] = m.detach().reshape(p.ds_shape if hasattr(p, "ds_shape") else p.shape)
            out.exp_avg_sq[key] = v.detach().reshape(out.exp_avg[key].shape)
            out.step[key] = step
            out.betas[key] = tuple(group.get("betas", OFFICIAL_BETAS))  # type: ignore[assignment]
            out.eps[key] = float(group.get("eps", OFFICIAL_EPS))
            out.lr[key] = float(_as_float(group.get("lr", math.nan)))
        return out


def _as_float(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def adam_precondition(
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step: int,
    *,
    betas: tuple[float, float] = OFFICIAL_BETAS,
    eps: float = OFFICIAL_EPS,
    variant: AdamVariant = "paper",
) -> torch.Tensor:
    """The Adam feature ``Γ`` of per-sample gradients (float32).

    Args:
        g: ``[B, *shape]`` (or ``[*shape]``) per-sample gradients.
        m: ``[*shape]`` first moment.
        v: ``[*shape]`` second moment.
        step: ``t``, completed optimizer steps (``paper`` uses ``τ = t+1``).
        betas: ``(β₁, β₂)``.
        eps: ``ε``.
        variant: ``paper`` or ``official``.

    Returns:
        ``Γ`` with the shape of ``g``.
    """
    b1, b2 = float(betas[0]), float(betas[1])
    g = g.float()
    m = m.to(device=g.device, dtype=torch.float32)
    v = v.to(device=g.device, dtype=torch.float32)
    m1 = b1 * m + (1.0 - b1) * g
    v1 = b2 * v + (1.0 - b2) * g * g
    if variant == "official":
        return m1 / torch.sqrt(v1 + eps)
    if variant != "paper":
        raise ConfigError(f"adam_variant must be 'paper' or 'official', got {variant!r}.")
    tau = int(step) + 1
    m_hat = m1 / (1.0 - b1**tau)
    v_hat = v1 / (1.0 - b2**tau)
    return m_hat / (torch.sqrt(v_hat) + eps)


def estimate_adam_bytes(num_params: int) -> int:
    """The spec's estimate ``3·P·4`` bytes (``m``, ``v`` and ``Γ`` in float32)."""
    return 3 * int(num_params) * 4


def precondition_grads(
    grads: Mapping[str, torch.Tensor],
    moments: AdamMoments,
    *,
    variant: AdamVariant = "paper",
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    memory_limit: int = _DEFAULT_MEMORY_LIMIT,
) -> dict[str, torch.Tensor]:
    """Apply :func:`adam_precondition` tensor by tensor, looking moments up by name.

    Args:
        grads: ``{canonical_name: [B, *shape]}``.
        moments: The optimizer moments.
        variant: ``paper`` (group β/ε, bias-corrected) or ``official`` (0.9/0.999/1e-8).
        betas: Override of ``(β₁, β₂)`` (spec key ``adam_betas``).
        eps: Override of ``ε`` (spec key ``adam_eps``).
        memory_limit: Refuse (before any work) when ``3·P·4`` bytes exceed it.

    Raises:
        MissingMomentError: when a parameter has no moments.
        DataError: on a shape mismatch or when the memory estimate exceeds the limit.
    """
    names = list(grads)
    num = sum(int(np.prod(g.shape[1:])) for g in grads.values())
    need = estimate_adam_bytes(num)
    if need > memory_limit:
        raise DataError(
            f"Adam features of {num:,} parameters need about {need / 2**30:.2f} GiB "
            f"(3·P·4 bytes), above adam_feature_memory_limit = {memory_limit / 2**30:.2f} GiB; "
            "restrict the parameters (e.g. LoRA only) or raise the limit."
        )
    moments.require(names)
    out: dict[str, torch.Tensor] = {}
    for name, g in grads.items():
        m, v = moments.exp_avg[name], moments.exp_avg_sq[name]
        if tuple(m.shape) != tuple(g.shape[1:]):
            raise DataError(
                f"moment shape {tuple(m.shape)} of {name} does not match its gradient "
                f"{tuple(g.shape[1:])}; the moments belong to another model."
            )
        if variant == "official":
            b, e = OFFICIAL_BETAS, OFFICIAL_EPS
        else:
            b = moments.betas.get(name, OFFICIAL_BETAS)
            e = moments.eps.get(name, OFFICIAL_EPS)
        if betas is not None:
            b = betas
        if eps is not None:
            e = eps
        out[name] = adam_precondition(
            g, m, v, moments.step.get(name, 0), betas=b, eps=e, variant=variant
        )
    return out


# --------------------------------------------------------------------------- HF Trainer checkpoints

_FORBIDDEN_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def _decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """The installed transformers' rule for weight-decayed parameters."""
    try:
        from transformers import Trainer

        return set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - fall back to transformers 5's rule, written out
        names: set[str] = set()
        for mod_name, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                continue
            for p_name, _ in mod.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if not any(re.search(pat, full.lower()) for pat in _FORBIDDEN_DECAY):
                    names.add(full)
        return names


def trainer_parameter_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names (as ``model.named_parameters()`` spells them) in the Trainer's two groups.

    Pass the model exactly as the Trainer saw it (the PEFT model for LoRA runs, not a DDP
    wrapper). See the module docstring for the assumption.
    """
    decay = _decay_parameter_names(model)
    named = list(model.named_parameters())
    return [
        [n for n, p in named if n in decay and p.requires_grad],
        [n for n, p in named if n not in decay and p.requires_grad],
    ]


def _find_optimizer_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("optimizer.pt", "optimizer.bin"):
        if (path / name).is_file():
            return path / name
    raise DataError(
        f"no optimizer.pt or optimizer.bin in {path}; save checkpoints with optimizer state "
        "(the HF Trainer does unless save_only_model=True)."
    )


def load_trainer_moments(checkpoint: str | os.PathLike[str], model: torch.nn.Module) -> AdamMoments:
    """Adam moments of a Hugging Face Trainer checkpoint, keyed by canonical names.

    Args:
        checkpoint: A ``checkpoint-<step>`` folder (or the optimizer file itself).
        model: The model as the Trainer optimised it (same trainable parameters and wrapping).

    Returns:
        :class:`AdamMoments` on the CPU.

    Raises:
        DataError: when the file is missing or the saved groups do not match the
            reconstruction (sizes or shapes), naming the first mismatch.
    """
    path = _find_optimizer_file(Path(checkpoint))
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read optimizer state {path}: {type(exc).__name__}: {exc}") from exc
    state: Mapping[Any, Any] = saved.get("state", {})
    groups_saved: list[Mapping[str, Any]] = list(saved.get("param_groups", []))
    params = dict(model.named_parameters())
    out = AdamMoments({}, {}, {}, source=str(path))

    if state and all(isinstance(k, str) for k in state):  # name-keyed (FSDP / accelerate)
        lookup = {canonical_name(k): k for k in state}
        group_of: dict[str, Mapping[str, Any]] = {}
        for group in groups_saved:
            for key in group.get("params", []):
                if isinstance(key, str):
                    group_of[canonical_name(key)] = group
        shapes = {
            canonical_name(n): tuple(getattr(p, "ds_shape", None) or p.shape)
            for n, p in params.items()
        }
        if not set(lookup) & set(shapes):
            raise DataError(
                f"{path}: the optimizer state names none of the model's parameters (saved: "
                f"{', '.join(sorted(lookup)[:3])}; model: {', '.join(sorted(shapes)[:3])}). "
                "It belongs to another model; pass the checkpoint of the run that trained "
                "this model."
            )
        for name, key in lookup.items():
            moment = state[key].get("exp_avg") if isinstance(state[key], Mapping) else None
            if (
                isinstance(moment, torch.Tensor)
                and name in shapes
                and tuple(moment.shape) != shapes[name]
            ):
                raise DataError(
                    f"{path}: the saved moment of {name} has shape {tuple(moment.shape)} but the "
                    f"model's parameter has shape {shapes[name]}; the optimizer state belongs "
                    "to another model. Pass the checkpoint of the run that trained this model."
                )
            _put(out, name, state[key], group_of.get(name, {}))
        return out

    ours = [g for g in trainer_parameter_groups(model)]
    theirs = [list(g.get("params", [])) for g in groups_saved]
    if [len(g) for g in ours] != [len(g) for g in theirs]:
        ours_ne = [g for g in ours if g]
        theirs_ne = [(g, grp) for g, grp in zip(theirs, groups_saved, strict=True) if g]
        if [len(g) for g in ours_ne] != [len(g) for g, _ in theirs_ne]:
            raise DataError(
                f"{path}: the saved param groups hold {[len(g) for g in theirs]} parameters but "
                f"the model's trainable parameters give {[len(g) for g in ours]} (decay, no "
                "decay). Load the model exactly as it was trained (same PEFT adapters, same "
                "frozen parameters)."
            )
        ours = ours_ne
        theirs = [g for g, _ in theirs_ne]
        groups_saved = [grp for _, grp in theirs_ne]
    for names, ids, group in zip(ours, theirs, groups_saved, strict=True):
        for name, idx in zip(names, ids, strict=True):
            entry = state.get(idx)
            if entry is None:
                continue  # never stepped (e.g. no gradient yet): reported by require()
            moment = entry.get("exp_avg")
            if moment is None:
                continue  # not Adam state (e.g. SGD momentum): reported by require()
            shape = tuple(getattr(params[name], "ds_shape", None) or params[name].shape)
            if tuple(moment.shape) != shape:
                raise DataError(
                    f"{path}: saved moment #{idx} has shape {tuple(moment.shape)} but the "
                    f"reconstructed order maps it to {name} of shape {shape}; the optimizer "
                    "state does not belong to this model (or the Trainer used custom param "
                    "groups). Pass the checkpoint of the run that trained this model, loaded "
                    "with the same adapters and frozen parameters."
                )
            _put(out, canonical_name(name), entry, group)
    return out


def _put(out: AdamMoments, name: str, entry: Mapping[str, Any], group: Mapping[str, Any]) -> None:
    if "exp_avg" not in entry or "exp_avg_sq" not in entry:
        return
    out.exp_avg[name] = entry["exp_avg"]
    out.exp_avg_sq[name] = entry["exp_avg_sq"]
    out.step[name] = int(_as_float(entry.get("step", 0)))
    out.betas[name] = tuple(float(b) for b in group.get("betas", OFFICIAL_BETAS))  # type: ignore[assignment]
    out.eps[name] = float(group.get("eps", OFFICIAL_EPS))
    out.lr[name] = float(_as_float(group.get("lr", math.nan)))


# --------------------------------------------------------------------------- checkpoint weights


def _log_history(source: Any) -> list[Mapping[str, Any]]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / "trainer_state.json"
        if not path.is_file():
            raise DataError(f"no trainer_state.json at {path}.")
        source = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(source, Mapping):
        source = source.get("log_history", [])
    return list(source)


def checkpoint_lr_weights(
    steps: Sequence[int], trainer_state: str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any]
) -> np.ndarray:
    """LESS checkpoint weights ``η̄_c`` (``checkpoint_weights: auto``), summing to 1.

    ``η̄_c`` is the mean logged learning rate over the optimizer steps in ``(s_{c−1}, s_c]``
    (``s_0 = 0``), read from ``trainer_state.json``'s ``log_history``.

    Args:
        steps: Global steps ``s_c`` of the checkpoints, ascending.
        trainer_state: A path (file or checkpoint folder), the loaded JSON, or its
            ``log_history`` list.

    Raises:
        DataError: when the steps are not ascending or an interval has no logged learning rate
            (log more often, e.g. ``logging_steps: 1``, or give explicit weights).
    """
    steps = [int(s) for s in steps]
    if not steps or any(b <= a for a, b in zip([0, *steps], steps, strict=False)):
        raise DataError(f"checkpoint steps must be positive and ascending, got {steps}.")
    logged = [
        (int(e["step"]), float(e["learning_rate"]))
        for e in _log_history(trainer_state)
        if "learning_rate" in e and "step" in e
    ]
    means = []
    prev = 0
    for s in steps:
        lrs = [lr for st, lr in logged if prev < st <= s]
        if not lrs:
            raise DataError(
                f"no learning rate was logged in steps ({prev}, {s}]; set logging_steps so "
                "that every checkpoint interval has a log entry, or give checkpoint_weights "
                "explicitly."
            )
        means.append(sum(lrs) / len(lrs))
        prev = s
    return normalize_checkpoint_weights(means)


def normalize_checkpoint_weights(weights: Sequence[float]) -> np.ndarray:
    """Renormalise explicit checkpoint weights to sum 1 (float64)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(
            f"checkpoint weights must be a non-empty list of non-negative numbers, got {weights}."
        )
    return w / w.sum()


def combine_checkpoints(features: Sequence[Any], weights: Sequence[float]) -> np.ndarray:
    """Stack per-checkpoint features ``[N, d]`` as ``[√η̄_1 φ_1, …, √η̄_C φ_C]`` (``[N, C·d]``).

    With both sides combined this way, one inner product is the LESS score
    ``Σ_c η̄_c ⟨φ_c, ψ_c⟩``. ``weights`` are renormalised to sum 1.
    """
    w = normalize_checkpoint_weights(weights)
    if len(features) != len(w):
        raise ConfigError(f"{len(features)} feature sets but {len(w)} checkpoint weights.")
    arrays = [np.asarray(f, dtype=np.float32) for f in features]
    if len({a.shape for a in arrays}) != 1:
        raise DataError(f"checkpoint features differ in shape: {[a.shape for a in arrays]}.")
    return np.concatenate(
        [np.float32(np.sqrt(wc)) * a for wc, a in zip(w, arrays, strict=True)], axis=1
    )
