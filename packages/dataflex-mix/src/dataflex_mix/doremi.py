"""The ``doremi`` mixer: DoReMi's online domain reweighting of a proxy model (spec §3.3).

Reference: Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining",
NeurIPS 2023, arXiv 2305.10429.

This module holds step 2 of the DoReMi pipeline, the part that is pure arithmetic:

* the update of the domain weights ``α`` from per-domain excess losses of the proxy over the
  reference model (:func:`update_doremi`), with the running average ``ᾱ`` that step 3 trains on;
* the proxy objective, in numpy (:func:`proxy_objective`, :func:`proxy_loss_weights`). The
  LLaMA-Factory integration computes the same objective with torch, from the same per-domain
  weights, so that gradients flow through the proxy's token losses.

The decision of every step is ``MixDecision(proportions=π, loss_weights=α)``: the proxy *samples*
with the fixed proportions ``π`` (``proxy_sampling_proportions``, uniform by default) and weights
its loss with ``α``. Sampling by ``α`` would be a different algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    MixDecision,
    MixFeedback,
    StateError,
    parse_config,
)
from numpy.typing import ArrayLike, NDArray

from dataflex_mix._common import (
    check_count,
    check_finite,
    check_positive,
    check_unit_interval,
    per_domain_proportions,
    softmax,
    state_int,
    state_vector,
)
from dataflex_mix.mixers import _check_state_domains, check_domains, check_feedback
from dataflex_mix.primitives import normalize_proportions

__all__ = [
    "DoremiMixerConfig",
    "DoremiMixerState",
    "DoremiMixer",
    "init_doremi",
    "update_doremi",
    "doremi_alpha_update",
    "proxy_loss_weights",
    "proxy_objective",
]

_WHAT = "mixer 'doremi'"


@dataclass(frozen=True)
class DoremiMixerConfig:
    """Config of the ``doremi`` mixer (spec §3.3). Defaults are the paper's.

    Attributes:
        reference_model_path: The step-1 reference model. The LLaMA-Factory integration requires
            it and loads it; the mixer itself only needs the excess losses it produces, so a
            plain training loop may leave it null.
        reweight_eta: Step size ``η`` of the exponentiated-gradient update (> 0). Paper and run
            scripts: 1.0 (predecessor YAML: 0.1).
        reweight_eps: Smoothing ``c`` in ``α ← (1-c)·softmax(log α + ηλ) + c/K``, in [0, 1].
            Paper: 1e-3 (official code default 1e-4; predecessor YAML 0.01).
        update_every: Update when ``feedback.step % update_every == 0`` (>= 1); other steps'
            feedback is ignored (the decision stays).
        proxy_sampling_proportions: ``π``, the fixed proportions the proxy samples with:
            ``"uniform"`` or one non-negative number per domain.
        proxy_loss: ``paper`` (``J = Σ_k α_k · S_k/Z_k`` over present domains) or ``official``
            (token weights ``w̃ = (α/π)/Σ(α/π)``). Null: implied by ``official_compat``.
        average_includes_initial: The output average: False (paper) ``ᾱ = mean(α_1..α_n)``;
            True (official) ``ᾱ = mean(α_0..α_n)``. Null: implied by ``official_compat``.
        absent_domain_score: ``λ_k`` of a domain with no token in the step: ``stale`` keeps the
            previous score (official); ``zero`` sets it to 0.
        initial_domain_score: ``λ`` before the first update: ``"log_vocab"`` (``log |V|``, the
            official start) or a number.
        vocab_size: ``|V|`` for ``initial_domain_score: log_vocab``. Null: taken from
            ``context.extras["vocab_size"]`` (the integration passes the tokenizer's size).
        update_order: ``lagged`` (the loss of step ``s`` uses ``α`` from the update after step
            ``s-1``, as the official code under gradient accumulation) or ``paper`` (the
            integration runs one extra no-grad proxy forward so that step ``s`` uses ``α``
            updated from its own batch). The mixer's arithmetic is the same for both; the key
            tells the integration in which order to call it.
        initial_weights: ``α_0``, one non-negative number per domain (normalised). Null: uniform.
        official_compat: True switches every divergence to the official code
            (``proxy_loss: official``, ``average_includes_initial: true``); an explicit
            fine-grained key wins.
    """

    reference_model_path: str | None = None
    reweight_eta: float = 1.0
    reweight_eps: float = 1e-3
    update_every: int = 1
    proxy_sampling_proportions: Literal["uniform"] | tuple[float, ...] = "uniform"
    proxy_loss: Literal["paper", "official"] | None = None
    average_includes_initial: bool | None = None
    absent_domain_score: Literal["stale", "zero"] = "stale"
    initial_domain_score: Literal["log_vocab"] | float = "log_vocab"
    vocab_size: int | None = None
    update_order: Literal["lagged", "paper"] = "lagged"
    initial_weights: tuple[float, ...] | None = None
    official_compat: bool = False

    def __post_init__(self) -> None:
        check_positive(
            self.reweight_eta, "reweight_eta", "the paper uses 1.0 (predecessor YAML 0.1)."
        )
        check_unit_interval(
            self.reweight_eps,
            "reweight_eps",
            "it is the uniform smoothing c; the paper uses 1e-3.",
        )
        check_count(self.update_every, "update_every", 1, "use 1 to update after every step.")
        if not isinstance(self.proxy_sampling_proportions, str):
            normalize_proportions(
                self.proxy_sampling_proportions,
                len(self.proxy_sampling_proportions),
                key="proxy_sampling_proportions",
            )
        if self.initial_weights is not None:
            normalize_proportions(
                self.initial_weights, len(self.initial_weights), key="initial_weights"
            )
        if not isinstance(self.initial_domain_score, str):
            check_finite(
                self.initial_domain_score,
                "initial_domain_score",
                "give a number or 'log_vocab'.",
            )
        if self.vocab_size is not None:
            check_count(self.vocab_size, "vocab_size", 1, "give the tokenizer's vocabulary size.")

    @property
    def resolved_proxy_loss(self) -> Literal["paper", "official"]:
        """``proxy_loss``, or the value ``official_compat`` implies."""
        if self.proxy_loss is not None:
            return self.proxy_loss
        return "official" if self.official_compat else "paper"

    @property
    def resolved_average_includes_initial(self) -> bool:
        """``average_includes_initial``, or the value ``official_compat`` implies."""
        if self.average_includes_initial is not None:
            return self.average_includes_initial
        return self.official_compat


@dataclass(frozen=True)
class DoremiMixerState:
    """State of the ``doremi`` mixer (spec §5.5).

    Attributes:
        domains: Domain names, config order.
        alpha: Current domain weights ``α_n``.
        alpha_initial: ``α_0``.
        alpha_sum: ``Σ_{u=1..n} α_u`` (kept as a sum so the average is exact).
        n: Number of updates.
        scores: ``λ``, the last per-domain excess-loss scores.
        pi: The proxy's sampling proportions ``π``.
        last_step: ``feedback.step`` of the last update (None before the first).
    """

    domains: tuple[str, ...]
    alpha: tuple[float, ...]
    alpha_initial: tuple[float, ...]
    alpha_sum: tuple[float, ...]
    n: int
    scores: tuple[float, ...]
    pi: tuple[float, ...]
    last_step: int | None = None

    def average(self, includes_initial: bool) -> tuple[float, ...]:
        """``ᾱ``: ``mean(α_1..α_n)`` or, with ``includes_initial``, ``mean(α_0..α_n)``.

        Before the first update both are ``α_0``.
        """
        a0 = np.asarray(self.alpha_initial)
        total = np.asarray(self.alpha_sum)
        if self.n == 0:
            return self.alpha_initial
        avg = (a0 + total) / (self.n + 1) if includes_initial else total / self.n
        return tuple((avg / avg.sum()).tolist())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "domains": list(self.domains),
            "alpha": list(self.alpha),
            "alpha_initial": list(self.alpha_initial),
            "alpha_sum": list(self.alpha_sum),
            "n": self.n,
            "lambda": list(self.scores),
            "pi": list(self.pi),
            "last_step": self.last_step,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], domains: tuple[str, ...]) -> DoremiMixerState:
        """Restore from :meth:`to_dict`, checking the domain names against ``domains``."""
        _check_state_domains(state, domains, _WHAT)
        k = len(domains)

        def vec(key: str, nonneg: bool) -> tuple[float, ...]:
            arr = state_vector(state, key, k, _WHAT, nonnegative=nonneg)
            assert arr is not None
            return tuple(arr.tolist())

        alpha, pi = vec("alpha", True), vec("pi", True)
        for key, v in (("alpha", alpha), ("pi", pi)):
            if not math.isclose(sum(v), 1.0, abs_tol=1e-9):
                raise StateError(f"{_WHAT}: the saved {key!r} {list(v)} does not sum to 1.")
        n = state_int(state, "n", _WHAT)
        assert n is not None
        return cls(
            domains=domains,
            alpha=alpha,
            alpha_initial=vec("alpha_initial", True),
            alpha_sum=vec("alpha_sum", True),
            n=n,
            scores=vec("lambda", False),
            pi=pi,
            last_step=state_int(state, "last_step", _WHAT, optional=True),
        )


# --------------------------------------------------------------------------- pure math


def doremi_alpha_update(
    alpha: ArrayLike, scores: ArrayLike, eta: float, c: float
) -> NDArray[np.float64]:
    """``α ← (1-c)·softmax(log α + η·λ) + c/K`` (the update is ``+η``).

    Args:
        alpha: Current weights (on the simplex; zeros allowed, they stay at ``c/K``).
        scores: ``λ``, per-domain excess-loss scores.
        eta: Step size ``η``.
        c: Uniform smoothing in [0, 1].

    Returns:
        The new weights, float64, on the simplex.
    """
    a = np.asarray(alpha, dtype=np.float64)
    lam = np.asarray(scores, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logits = np.log(a) + eta * lam
    new = (1.0 - c) * softmax(logits) + c / a.size
    return new / new.sum()


def proxy_loss_weights(
    alpha: ArrayLike,
    pi: ArrayLike,
    token_counts: ArrayLike,
    variant: Literal["paper", "official"] = "paper",
) -> NDArray[np.float64]:
    """Per-domain weights ``v_k`` such that the proxy objective is ``J = Σ_k v_k · S_k``.

    ``S_k = Σ_{t∈k} m_t ℓ_t`` is domain ``k``'s sum of (masked) token losses over the step and
    ``Z_k = Σ_{t∈k} m_t`` its token count. Each token of domain ``k`` thus carries weight
    ``v_k``, which is how the integration applies the objective with torch:
    ``J = Σ_t v_{d(t)} m_t ℓ_t``.

    * ``paper``: ``v_k = α_k / Z_k`` for ``Z_k > 0``, else 0, i.e.
      ``J = Σ_{k: Z_k>0} α_k · S_k/Z_k``;
    * ``official``: ``v_k = w̃_k / Σ_j w̃_j Z_j`` with ``w̃ = (α/π)/Σ(α/π)``, i.e.
      ``J = Σ_t w̃_{d(t)} m_t ℓ_t / Σ_t w̃_{d(t)} m_t``.

    Args:
        alpha: Domain weights ``α``.
        pi: Sampling proportions ``π`` (only ``official`` uses them; entries with ``π_k = 0``
            get weight 0, since such a domain is never sampled).
        token_counts: ``Z_k``, all-reduced over the step's global batch.
        variant: ``paper`` or ``official``.

    Returns:
        A float64 vector of per-domain weights (zeros where the domain has no token).
    """
    a = np.asarray(alpha, dtype=np.float64)
    z = np.asarray(token_counts, dtype=np.float64)
    present = z > 0
    if variant == "paper":
        return np.where(present, a / np.where(present, z, 1.0), 0.0)
    if variant != "official":
        raise ConfigError(f"proxy_loss must be 'paper' or 'official', got {variant!r}.")
    p = np.asarray(pi, dtype=np.float64)
    ratio = np.where(p > 0, a / np.where(p > 0, p, 1.0), 0.0)
    if not ratio.sum() > 0:
        return np.zeros_like(a)
    w_tilde = ratio / ratio.sum()
    denom = float(np.sum(w_tilde * z))
    if not denom > 0:
        return np.zeros_like(a)
    return np.where(present, w_tilde / denom, 0.0)


def proxy_objective(
    domain_loss_sums: ArrayLike,
    domain_token_counts: ArrayLike,
    alpha: ArrayLike,
    pi: ArrayLike,
    variant: Literal["paper", "official"] = "paper",
) -> float:
    """The proxy objective ``J`` of one step from per-domain sums (see :func:`proxy_loss_weights`).

    Example (spec §3.3): ``α = [0.7, 0.3]``, uniform ``π``, domain-0 token losses ``[1, 3]``,
    domain-1 ``[4]``: ``paper`` gives 2.6, ``official`` 2.352941.
    """
    s = np.asarray(domain_loss_sums, dtype=np.float64)
    v = proxy_loss_weights(alpha, pi, domain_token_counts, variant)
    return float(np.sum(v * np.where(v != 0, s, 0.0)))


def _initial_scores(config: DoremiMixerConfig, k: int, vocab_size: int | None) -> np.ndarray:
    if isinstance(config.initial_domain_score, str):
        if vocab_size is None:
            raise ConfigError(
                f"{_WHAT}: initial_domain_score 'log_vocab' needs the vocabulary size, but "
                "vocab_size is null and context.extras has no 'vocab_size'; set vocab_size: "
                "<tokenizer vocabulary size>, or give initial_domain_score a number."
            )
        return np.full(k, math.log(vocab_size))
    return np.full(k, float(config.initial_domain_score))


def init_doremi(
    config: DoremiMixerConfig, domains: Sequence[str], vocab_size: int | None = None
) -> DoremiMixerState:
    """``α_0`` (``initial_weights`` or uniform), ``λ_0`` (``log|V|`` or a number), ``n = 0``.

    Args:
        config: The mixer config.
        domains: Domain names in config order.
        vocab_size: ``|V|`` when ``config.vocab_size`` is null.

    Raises:
        ConfigError: on a per-domain list of the wrong length or a missing vocabulary size.
    """
    k = len(domains)
    if config.initial_weights is None:
        a0 = np.full(k, 1.0 / k)
    else:
        a0 = per_domain_proportions(config.initial_weights, k, "initial_weights", _WHAT)
    if isinstance(config.proxy_sampling_proportions, str):
        pi = np.full(k, 1.0 / k)
    else:
        pi = per_domain_proportions(
            config.proxy_sampling_proportions, k, "proxy_sampling_proportions", _WHAT
        )
    v = config.vocab_size if config.vocab_size is not None else vocab_size
    scores = _initial_scores(config, k, v)
    return DoremiMixerState(
        domains=tuple(domains),
        alpha=tuple(a0.tolist()),
        alpha_initial=tuple(a0.tolist()),
        alpha_sum=tuple(np.zeros(k).tolist()),
        n=0,
        scores=tuple(scores.tolist()),
        pi=tuple(pi.tolist()),
    )


def update_doremi(
    config: DoremiMixerConfig, state: DoremiMixerState, feedback: MixFeedback | None
) -> tuple[MixDecision, DoremiMixerState]:
    """One DoReMi update from a step's all-reduced feedback.

    ``λ_k = excess_loss_sum_k / token_count_k`` for every domain with ``Z_k > 0`` (per-token
    clipping ``max(ℓ - ℓ_ref, 0)`` happens before the sum, in the integration); an absent
    domain keeps its previous score (``stale``) or gets 0 (``zero``). Then
    ``α ← (1-c)·softmax(log α + ηλ) + c/K`` and ``n ← n + 1``.

    No update happens for ``feedback=None`` or when ``feedback.step % update_every != 0``.

    Raises:
        DataError: when the feedback has no ``excess_loss_sum`` (no reference model).
    """
    if feedback is None or feedback.step % config.update_every != 0:
        return MixDecision(proportions=state.pi, loss_weights=state.alpha), state
    if feedback.excess_loss_sum is None:
        raise DataError(
            f"{_WHAT}: feedback of step {feedback.step} has no excess_loss_sum. The DoReMi proxy "
            "needs a reference model: set `reference_model_path` to the step-1 model so the "
            "integration can compute Σ max(ℓ_proxy - ℓ_ref, 0) per domain (or fill "
            "MixFeedback.excess_loss_sum yourself)."
        )
    z = np.asarray(feedback.token_count, dtype=np.float64)
    excess = np.asarray(feedback.excess_loss_sum, dtype=np.float64)
    present = z > 0
    fallback = np.asarray(state.scores) if config.absent_domain_score == "stale" else 0.0
    scores = np.where(present, excess / np.where(present, z, 1.0), fallback)
    alpha = doremi_alpha_update(state.alpha, scores, config.reweight_eta, config.reweight_eps)
    new = replace(
        state,
        alpha=tuple(alpha.tolist()),
        alpha_sum=tuple((np.asarray(state.alpha_sum) + alpha).tolist()),
        n=state.n + 1,
        scores=tuple(scores.tolist()),
        last_step=int(feedback.step),
    )
    return MixDecision(proportions=new.pi, loss_weights=new.alpha), new


# --------------------------------------------------------------------------- shell


class DoremiMixer:
    """DoReMi's proxy-side mixer (spec §3.3, step 2).

    The proxy samples by the fixed ``π`` (:attr:`proportions`) and trains on the α-weighted loss
    (:attr:`weights`, the decision's ``loss_weights``); after each optimizer step the
    integration passes the all-reduced per-domain excess losses and token counts, and α moves
    toward domains where the proxy lags the reference. The output for step 3 is the **average**
    :attr:`average_weights` (``doremi_average_weights.json``), not the last α.

    Args:
        config: A :class:`DoremiMixerConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts: ``domains`` (config order); ``extras["vocab_size"]`` when the
            config has no ``vocab_size`` and ``initial_domain_score`` is ``log_vocab``.

    Example:
        >>> from dataflex_core import ComponentContext, MixFeedback
        >>> m = DoremiMixer({"vocab_size": 32000}, ComponentContext(domains=("a", "b")))
        >>> d = m.step(MixFeedback(step=1, loss_sum=(6.0, 2.0), token_count=(3.0, 2.0),
        ...                        sample_count=(1.0, 1.0), excess_loss_sum=(3.0, 0.0)))
        >>> d.proportions, d.loss_weights[0] > 0.5
        ((0.5, 0.5), True)
    """

    config_class = DoremiMixerConfig

    def __init__(
        self,
        config: DoremiMixerConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: DoremiMixerConfig = parse_config(DoremiMixerConfig, config, where=_WHAT)
        self.context = context if context is not None else ComponentContext()
        self.domains = check_domains(self.context, _WHAT)
        extra_vocab = self.context.extras.get("vocab_size")
        if extra_vocab is not None and (
            isinstance(extra_vocab, bool) or not isinstance(extra_vocab, int) or extra_vocab < 1
        ):
            raise ConfigError(
                f"{_WHAT}: context.extras['vocab_size'] must be a positive int, got "
                f"{extra_vocab!r}; pass the tokenizer's vocabulary size (len(tokenizer))."
            )
        self.vocab_size: int | None = (
            self.config.vocab_size if self.config.vocab_size is not None else extra_vocab
        )
        self._state = init_doremi(self.config, self.domains, self.vocab_size)

    # ------------------------------------------------------------------ decisions
    @property
    def proportions(self) -> tuple[float, ...]:
        """``π``: the proxy's fixed sampling proportions."""
        return self._state.pi

    @property
    def weights(self) -> tuple[float, ...]:
        """``α``: the current domain weights of the proxy loss."""
        return self._state.alpha

    @property
    def average_weights(self) -> tuple[float, ...]:
        """``ᾱ``: the output mixture for the target model (paper or official average)."""
        return self._state.average(self.config.resolved_average_includes_initial)

    @property
    def scores(self) -> tuple[float, ...]:
        """``λ``: the last per-domain excess-loss scores."""
        return self._state.scores

    @property
    def updates(self) -> int:
        """``n``: the number of updates so far."""
        return self._state.n

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        """Update α from ``feedback`` and return ``MixDecision(proportions=π, loss_weights=α)``.

        Non-finite feedback is skipped with a warning (state untouched).

        Raises:
            DataError: if ``feedback.excess_loss_sum`` is missing (no reference model).
        """
        if feedback is not None and not check_feedback(feedback, len(self.domains), _WHAT):
            return MixDecision(proportions=self._state.pi, loss_weights=self._state.alpha)
        decision, self._state = update_doremi(self.config, self._state, feedback)
        return decision

    def proxy_loss_weights(self, token_counts: ArrayLike) -> NDArray[np.float64]:
        """Per-domain token weights of this step's proxy loss, from the current α and π.

        See :func:`proxy_loss_weights`; the variant is the resolved ``proxy_loss``.
        """
        return proxy_loss_weights(
            self._state.alpha, self._state.pi, token_counts, self.config.resolved_proxy_loss
        )

    # ------------------------------------------------------------------ outputs
    def average_weights_record(self) -> dict[str, Any]:
        """The content of ``doremi_average_weights.json`` (step 3 reads ``average``).

        Returns:
            ``{"domains", "average", "alpha", "n", "step", "average_includes_initial"}``.
        """
        return {
            "domains": list(self.domains),
            "average": list(self.average_weights),
            "alpha": list(self._state.alpha),
            "n": self._state.n,
            "step": self._state.last_step,
            "average_includes_initial": self.config.resolved_average_includes_initial,
        }

    def weights_history_record(self, step: int | None = None) -> dict[str, Any]:
        """One line of ``doremi_weights.jsonl``: step, domains, α, λ, ᾱ and n.

        Args:
            step: The global step to record (default: the step of the last update).
        """
        return {
            "step": self._state.last_step if step is None else int(step),
            "domains": list(self.domains),
            "alpha": list(self._state.alpha),
            "lambda": list(self._state.scores),
            "average": list(self.average_weights),
            "n": self._state.n,
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: domains, α, α_0, Σα, n, λ, π, last step."""
        return self._state.to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the domain names must match this run's."""
        self._state = DoremiMixerState.from_dict(state, self.domains)
