"""``nice``: NICE, LESS with policy-gradient target features (algorithms spec §2.7).

Reference: Wang, Lin, Qiao, Koh, Foo, Low, "NICE Data Selection for Instruction Tuning with
Non-differentiable Evaluation Metric", ICML 2025 (OpenReview ``2wt8m5HUBs``). Official code:
JTWang2000/NICE, built on LESS.

The training side is LESS's (Adam features ``φ_c(z)``). The target side replaces the SGD
gradient of a reference answer by a Monte-Carlo policy-gradient estimate: for each target prompt
``x`` at checkpoint ``c``, draw ``M = mc_samples`` answers ``y_m ~ π_θ(·|x)``, score them with a
reward ``r_m = R(x, y_m, y*)``, and form

``ĝ(x) = Σ_m coef_m ∇_θ NLL_sum(y_m | x)``  (+ ``coef_ref ∇_θ NLL_sum(y* | x)``)

with the coefficients of :func:`nice_coefficients` (``policy``):

* ``vanilla``: ``coef_m = r_m`` over all samples;
* ``rejection``: the kept set ``S = {m : r_m > 0}``, ``coef_m = r_m / |S|``;
* ``hard_rejection``: ``S = {m : r_m > R(x, y*) − 1e-5}``, ``coef_m = r_m / |S|``;
* ``topk``: ``S`` = the ``topk`` highest rewards (ties to the lower index), ``coef_m = r_m / |S|``;
* ``S = ∅``: ``worst_case_protect`` → ``ĝ = R(x, y*) ∇ NLL_sum(y* | x)``, otherwise ``ĝ = 0``.

Samples whose reward is NaN (a reward backend with ``on_error: skip_sample``) are never kept.
``ψ_c(x) = normalise(Rᵀ ĝ(x))`` (zero stays zero) is the ``nice_feature`` signal; scoring,
aggregation and selection are LESS's (:func:`~dataflex_select.less.less_influence`), with target
rows whose feature is not finite counted as zero vectors (their scores are 0, never NaN).

This module is numpy only. The integration computes ``nice_feature`` with
:func:`nice_group_plan` (which rows to differentiate, with which coefficient, in which group) and
``dataflex_ops.grouped_grads.grouped_sequence_grads`` (one backward per prompt).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from dataflex_core import ComponentContext, ConfigError, DataError, derive
from numpy.typing import ArrayLike, NDArray

from dataflex_select.less import LessSelector, LessSelectorConfig, projector_spec

__all__ = [
    "NICE_POLICIES",
    "HARD_REJECTION_MARGIN",
    "NiceSelectorConfig",
    "NiceSelector",
    "NicePlan",
    "nice_coefficients",
    "nice_aggregate",
    "nice_group_plan",
    "nice_generation_seed",
]

log = logging.getLogger(__name__)

NICE_POLICIES: tuple[str, ...] = ("vanilla", "rejection", "hard_rejection", "topk")
#: ``hard_rejection`` keeps ``r_m > R(x, y*) − HARD_REJECTION_MARGIN``.
HARD_REJECTION_MARGIN = 1e-5


# --------------------------------------------------------------------------- pure core


def nice_coefficients(
    rewards: ArrayLike,
    policy: str = "vanilla",
    topk: int = 10,
    ref_reward: float | None = None,
    worst_case_protect: bool = False,
    *,
    row: int | None = None,
) -> tuple[NDArray[np.float64], float | None]:
    """Coefficients of one target prompt's policy-gradient estimate (spec §2.7 step 3).

    Args:
        rewards: ``[M]`` rewards of the prompt's generations (NaN: no reward, never kept).
        policy: ``vanilla``, ``rejection``, ``hard_rejection`` or ``topk``.
        topk: Kept samples of ``topk``.
        ref_reward: ``R(x, y*)`` of the reference answer, or None when the prompt has none.
        worst_case_protect: When the kept set is empty, use the reference answer.
        row: The target row, for error messages.

    Returns:
        ``(coefs, ref_coef)``: ``ĝ = Σ_m coefs[m] ∇NLL(y_m|x) + ref_coef ∇NLL(y*|x)``, with
        ``ref_coef`` None when the reference answer is not used.

    Raises:
        DataError: ``hard_rejection`` or ``worst_case_protect`` without a reference reward.
        ConfigError: an unknown policy or ``topk < 1``.
    """
    if policy not in NICE_POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(NICE_POLICIES)}, got {policy!r}.")
    if topk < 1:
        raise ConfigError(f"topk must be >= 1, got {topk}.")
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    where = "" if row is None else f" (target row {row})"
    needs_ref = policy == "hard_rejection" or worst_case_protect
    if needs_ref and (ref_reward is None or not np.isfinite(ref_reward)):
        what = "policy 'hard_rejection'" if policy == "hard_rejection" else "worst_case_protect"
        raise DataError(
            f"NICE {what} needs the reward of a reference answer, but the target prompt"
            f"{where} has none; give every target example a reference answer (its response "
            "column), or use policy vanilla/rejection/topk without worst_case_protect."
        )
    ok = np.isfinite(r)
    coefs = np.zeros_like(r)
    if policy == "vanilla":
        keep = ok
    elif policy == "rejection":
        keep = ok & (r > 0)
    elif policy == "hard_rejection":
        assert ref_reward is not None
        keep = ok & (r > float(ref_reward) - HARD_REJECTION_MARGIN)
    else:  # topk: the highest rewards, ties to the lower index
        finite = np.flatnonzero(ok)
        order = finite[np.argsort(-r[finite], kind="stable")][:topk]
        keep = np.zeros_like(ok)
        keep[order] = True
    count = int(keep.sum())
    if count == 0:
        if worst_case_protect:
            return coefs, float(ref_reward)  # type: ignore[arg-type]
        return coefs, None
    coefs[keep] = r[keep] if policy == "vanilla" else r[keep] / count
    return coefs, None


def nice_aggregate(
    per_generation_grads: ArrayLike,
    rewards: ArrayLike,
    policy: str = "vanilla",
    topk: int = 10,
    ref_reward: float | None = None,
    worst_case_protect: bool = False,
    ref_grad: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """``ĝ(x)`` from explicit per-generation gradients ``[M, P]`` (reference and tests).

    ``ref_grad`` (``[P]``, ``∇NLL(y*|x)``) is needed only when the reference answer is used.
    """
    g = np.asarray(per_generation_grads, dtype=np.float64)
    if g.ndim != 2:
        raise DataError(f"per_generation_grads must be [M, P], got shape {g.shape}.")
    coefs, ref_coef = nice_coefficients(rewards, policy, topk, ref_reward, worst_case_protect)
    if coefs.shape[0] != g.shape[0]:
        raise DataError(f"{coefs.shape[0]} rewards for {g.shape[0]} generation gradients.")
    out = coefs @ g
    if ref_coef is not None:
        if ref_grad is None:
            raise DataError("the reference answer is used (empty kept set) but ref_grad is None.")
        out = out + ref_coef * np.asarray(ref_grad, dtype=np.float64).reshape(-1)
    return out


@dataclass(frozen=True)
class NicePlan:
    """What to differentiate for a batch of target prompts.

    Attributes:
        items: ``(prompt, generation)`` per sequence to differentiate; ``generation = -1`` is the
            reference answer ``y*``.
        coefficients: ``[len(items)]`` float64 coefficient of each sequence's NLL.
        groups: ``[len(items)]`` int64 group (= prompt position) of each sequence.
        num_groups: Number of prompts; a prompt without items has ``ĝ = 0``.
    """

    items: tuple[tuple[int, int], ...]
    coefficients: NDArray[np.float64]
    groups: NDArray[np.int64]
    num_groups: int


def nice_group_plan(
    rewards: Sequence[ArrayLike],
    ref_rewards: Sequence[float | None] | None = None,
    policy: str = "vanilla",
    topk: int = 10,
    worst_case_protect: bool = False,
    *,
    rows: Sequence[int] | None = None,
) -> NicePlan:
    """The sequences, coefficients and groups of ``ĝ`` for several prompts.

    Sequences with a zero coefficient are left out (they add nothing to ``ĝ``). Feed the result to
    ``dataflex_ops.grouped_grads.grouped_sequence_grads(model, batch_of(items), coefficients,
    groups, num_groups)``: one backward per prompt.

    Args:
        rewards: One ``[M_x]`` reward vector per prompt.
        ref_rewards: ``R(x, y*)`` per prompt (None entries: no reference answer).
        policy, topk, worst_case_protect: As in :func:`nice_coefficients`.
        rows: Target row of each prompt, for error messages.
    """
    refs = [None] * len(rewards) if ref_rewards is None else list(ref_rewards)
    if len(refs) != len(rewards):
        raise DataError(f"{len(refs)} reference rewards for {len(rewards)} prompts.")
    items: list[tuple[int, int]] = []
    coefs: list[float] = []
    groups: list[int] = []
    for x, (r, ref) in enumerate(zip(rewards, refs, strict=True)):
        row = x if rows is None else int(rows[x])
        c, ref_coef = nice_coefficients(r, policy, topk, ref, worst_case_protect, row=row)
        for m in np.flatnonzero(c):
            items.append((x, int(m)))
            coefs.append(float(c[m]))
            groups.append(x)
        if ref_coef is not None and ref_coef != 0:
            items.append((x, -1))
            coefs.append(float(ref_coef))
            groups.append(x)
    return NicePlan(
        items=tuple(items),
        coefficients=np.asarray(coefs, dtype=np.float64),
        groups=np.asarray(groups, dtype=np.int64),
        num_groups=len(rewards),
    )


def nice_generation_seed(seed: int, checkpoint: str, row: int, m: int) -> int:
    """Seed of generation ``m`` of target row ``row`` at ``checkpoint``:
    ``derive(seed, "nice_gen", checkpoint, row, m)`` (spec §2.7 step 1)."""
    return derive(seed, "nice_gen", checkpoint, row, m)


# --------------------------------------------------------------------------- config


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _legacy_reward_local(params: Mapping[str, Any]) -> dict[str, Any]:
    """Fallback mapping of the predecessor's reward keys (used when ``dataflex_select.rewards``
    does not provide ``reward_config_from_nice_params``)."""
    cfg: dict[str, Any] = dict(params.get("reward") or {})
    backend = params.get("reward_model_backend")
    if backend is not None:
        mapped = {"local_vllm": ("local_model", {"engine": "vllm"}), "api": ("http", {})}
        if backend not in mapped:
            raise ConfigError(
                f"reward_model_backend must be local_vllm or api (deprecated), got {backend!r}."
            )
        new, extra = mapped[backend]
        cfg.setdefault("backend", new)
        for k, v in extra.items():
            cfg.setdefault(k, v)
        log.warning("NICE key 'reward_model_backend' is deprecated; use reward.backend: %s.", new)
    if params.get("reward_model_path") is not None:
        cfg.setdefault("model_name_or_path", params["reward_model_path"])
        cfg.setdefault("backend", "local_model")
        log.warning("NICE key 'reward_model_path' is deprecated; use reward.model_name_or_path.")
    extra_params = params.get("reward_backend_params")
    if extra_params is not None:
        for k, v in dict(extra_params).items():
            cfg.setdefault(k, v)
        log.warning("NICE key 'reward_backend_params' is deprecated; write its keys under reward:.")
    return cfg


def _fold_reward(params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from dataflex_select.rewards import reward_config_from_nice_params
    except (ImportError, AttributeError):
        return _legacy_reward_local(params)
    cfg, _ = reward_config_from_nice_params(params)
    return cfg


@dataclass(frozen=True)
class NiceSelectorConfig(LessSelectorConfig):
    """Config of the ``nice`` selector: every LESS key (same defaults) plus the NICE keys.

    Attributes:
        mc_samples: Generations ``M`` per target prompt (official scripts 20; predecessor 4).
        generation_temperature: Sampling temperature (``top_p = 1``, ``top_k = 0``); sampling
            from ``π`` itself keeps the estimator unbiased.
        max_new_tokens: Generation length limit.
        max_prompt_length: Prompt length limit (longer prompts are an error at generation).
        policy: ``vanilla``, ``rejection``, ``hard_rejection`` or ``topk``.
        topk: Kept samples of ``policy: topk``.
        worst_case_protect: Empty kept set → the reference answer's gradient, weighted by its
            reward.
        nll_normalize: Token-mean NLL instead of the token sum.
        policy_model_path: The policy under evaluation; null is the model being trained (at the
            checkpoint being scored).
        generation_backend: ``hf``; ``vllm`` is not supported in this build.
        reward: The reward backend mapping (``backend: rule | local_model | http | ...`` plus
            the backend's keys, see ``dataflex_select.rewards``). Required.
        reward_model_path: Deprecated: ``reward.model_name_or_path``.
        reward_model_backend: Deprecated: ``local_vllm`` → ``reward.backend: local_model`` with
            ``engine: vllm``; ``api`` → ``reward.backend: http``.
        reward_backend_params: Deprecated: ``reward.*``.

    The three deprecated keys are folded into ``reward`` (one WARNING each) and read back as
    null.
    """

    mc_samples: int = 20
    generation_temperature: float = 1.0
    max_new_tokens: int = 512
    max_prompt_length: int = 4096
    policy: Literal["vanilla", "rejection", "hard_rejection", "topk"] = "vanilla"
    topk: int = 10
    worst_case_protect: bool = False
    nll_normalize: bool = False
    policy_model_path: str | None = None
    generation_backend: Literal["hf", "vllm"] = "hf"
    reward: Mapping[str, Any] | None = None
    reward_model_path: str | None = None
    reward_model_backend: str | None = None
    reward_backend_params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("mc_samples", "max_new_tokens", "max_prompt_length", "topk"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}.")
        if not self.generation_temperature > 0:
            raise ConfigError(
                f"generation_temperature must be > 0, got {self.generation_temperature!r}; NICE "
                "samples from the policy (1.0 keeps the estimator unbiased)."
            )
        if self.generation_backend == "vllm":
            raise ConfigError(
                "generation_backend 'vllm' is not supported in this build; use 'hf' (batched, "
                "seeded generation from the live model)."
            )
        legacy = {
            k: getattr(self, k)
            for k in ("reward_model_path", "reward_model_backend", "reward_backend_params")
            if getattr(self, k) is not None
        }
        reward: dict[str, Any] | None = None if self.reward is None else dict(self.reward)
        if legacy:
            reward = _fold_reward({**({"reward": reward} if reward is not None else {}), **legacy})
            for k in legacy:
                object.__setattr__(self, k, None)
        if not reward:
            raise ConfigError(
                "nice needs a reward backend: set `reward: {backend: rule, function: "
                "'dataflex_select.rewards:exact_match'}` (or local_model / http)."
            )
        backend = reward.get("backend")
        if not isinstance(backend, str) or not backend:
            raise ConfigError(
                f"reward must name its backend (reward.backend: rule | local_model | http | "
                f"'package.module:Class'), got reward = {reward!r}."
            )
        object.__setattr__(self, "reward", _json_safe(reward))


# --------------------------------------------------------------------------- selector


class NiceSelector(LessSelector):
    """NICE (spec §2.7) on the LESS shell.

    **Signals**, per checkpoint ``c``: ``train_grad@c`` exactly as LESS (``grad_feature``,
    ``gradient_type: adam`` by default), ``target_nice@c`` (``nice_feature``, target split: the
    normalised projected ``ĝ`` of every target prompt), ``lr_weight@c`` as LESS, and
    ``target_subtask``. The ``target_nice@c`` options carry everything the integration needs:
    ``checkpoint``/``checkpoint_label``, ``policy_model_path``, ``generation_backend``,
    ``mc_samples``, ``temperature`` (``top_p: 1``, ``top_k: 0``), ``max_new_tokens``,
    ``max_prompt_length``, ``policy``, ``topk``, ``worst_case_protect``, ``nll_normalize``
    (``nll_reduction: sum | mean``), ``reward`` (the backend mapping), ``generation_seed`` (the
    run seed: generation ``m`` of target row ``x`` uses :func:`nice_generation_seed`), the
    projector keys (and ``projector_config`` for ``dataflex_ops``), ``grad_strategy``,
    ``feature_dtype`` and ``cache_dir``.

    ``hard_rejection`` and ``worst_case_protect`` need a reference answer per target prompt;
    the integration's call to :func:`nice_coefficients` / :func:`nice_group_plan` raises a
    :class:`~dataflex_core.DataError` naming the first target row without one.

    Scores: as LESS, with non-finite target rows counted as zero (score 0). Training rows with
    non-finite features (no supervised token) are never selected, as in LESS.
    """

    config_class: ClassVar[type] = NiceSelectorConfig
    name: ClassVar[str] = "nice"
    invalid_targets: ClassVar[str] = "zero"
    target_kind: ClassVar[str] = "nice_feature"
    target_prefix: ClassVar[str] = "target_nice"

    def __init__(
        self,
        config: NiceSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self.config: NiceSelectorConfig

    def target_options(self, checkpoint: str | None) -> dict[str, Any]:
        c = self.config
        return {
            "checkpoint": checkpoint,
            "checkpoint_label": "current" if checkpoint is None else checkpoint,
            "policy_model_path": c.policy_model_path,
            "generation_backend": c.generation_backend,
            "mc_samples": c.mc_samples,
            "temperature": c.generation_temperature,
            "top_p": 1.0,
            "top_k": 0,
            "max_new_tokens": c.max_new_tokens,
            "max_prompt_length": c.max_prompt_length,
            "policy": c.policy,
            "topk": c.topk,
            "worst_case_protect": c.worst_case_protect,
            "needs_reference": c.policy == "hard_rejection" or c.worst_case_protect,
            "nll_normalize": c.nll_normalize,
            "nll_reduction": "mean" if c.nll_normalize else "sum",
            "reward": _json_safe(c.reward),
            "generation_seed": self.seed,
            **projector_spec(c),
            "projection_batch_size": c.projection_batch_size,
            "projector_config": self.projector_config(),
            "grad_strategy": c.grad_strategy,
            "feature_dtype": c.feature_dtype,
            "cache_dir": self.cache_dir,
            "normalize": True,
        }
