"""The ``adapt`` weighter: ADAPT, anchor-similarity sample weights (spec §4.2).

Zhao et al., "Rethinking Data Curation in LLM Training: Online Reweighting Offers Better
Generalization than Offline Methods", ICLR 2026, arXiv 2605.05227 (code: Ryan0v0/ADAPT).

.. warning::
   **The weighting rule is unverified against the paper.** It follows the predecessor's reading
   (spec §4.2, §6.6). Every choice is a config key, and no fidelity to the paper is claimed
   until the rule is checked against it. The configurable choices are: the temperature ``tau``,
   the optional ``clip``, the anchor refresh period ``refresh_interval``, the anchor batch size
   ``anchor_batch_size``, the pooling (``pooling``) and hidden layer (``layer``) of the
   embeddings, the norm floor ``eps`` and the objective's ``loss_normalization``.

Math, with ``phi_i`` the ℓ2-normalised embedding of training sample ``i`` and ``phi_a`` those
of the anchors ``A`` (target-set samples):

* ``score_i = (1/|A|) sum_a <phi_i, phi_a> = <phi_i, phi_bar_A>``, so only the mean anchor
  ``phi_bar_A`` (not re-normalised) is kept;
* ``w_i = sigmoid(score_i / tau)``, then ``min(w_i, clip)`` when ``clip`` is set;
* invalid samples, and valid samples with a non-finite loss or embedding, get 0.

The weights need no normalisation over ranks (each depends on its own sample only); the
objective's ``mean``/``weight_sum`` denominators do (see :meth:`AdaptWeighter.objective`).

The integration computes the embeddings (``pooling`` of ``hidden_states[layer]`` from the
training forward, detached: no extra forward) and, when :meth:`AdaptWeighter.needs_refresh`
says so, the anchor embeddings (``anchor_batch_size`` target samples per forward, sharded over
ranks and all-gathered), and passes them to :meth:`AdaptWeighter.set_anchors` on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    StateError,
    WeightFeedback,
    parse_config,
)

from dataflex_weight.common import batch_view, is_torch_tensor, normalized_objective, warn_nonfinite

__all__ = [
    "AdaptWeighterConfig",
    "AdaptWeighter",
    "adapt_weights",
    "mean_anchor",
]

_WHAT = "weighter 'adapt'"


@dataclass(frozen=True)
class AdaptWeighterConfig:
    """Config of the ``adapt`` weighter (spec §4.2). Every key is a choice not yet verified
    against the paper.

    Attributes:
        tau: Sigmoid temperature ``tau`` > 0: ``w = sigmoid(score / tau)``.
        refresh_interval: Recompute the anchors when ``s mod refresh_interval = 0`` (once per
            optimizer step; the predecessor recomputed them on every micro-step), >= 1.
        anchor_batch_size: Target samples per forward when the integration embeds the anchors.
        clip: Upper bound of the weights (``min(w, clip)``), > 0, or None for no clipping.
        eps: Norm floor of the embedding normalisation (``x / max(||x||, eps)``) and of the
            ``weight_sum`` denominator, > 0.
        pooling: How the integration pools hidden states into embeddings
            (``position_weighted``, ``mean``, ``last_token``; spec §1.2).
        layer: Which ``hidden_states`` entry the integration pools (-1: the final one).
        loss_normalization: ``mean`` (default: ``(1/|B_mu|) sum w_i l_i``), ``weight_sum``
            (divide by ``sum w``) or ``sum`` (the predecessor's form).
    """

    tau: float = 1.0
    refresh_interval: int = 50
    anchor_batch_size: int = 8
    clip: float | None = None
    eps: float = 1e-8
    pooling: Literal["position_weighted", "mean", "last_token"] = "position_weighted"
    layer: int = -1
    loss_normalization: Literal["mean", "weight_sum", "sum"] = "mean"

    def __post_init__(self) -> None:
        for key in ("tau", "eps"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be a finite number > 0, got {value!r}.")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be a finite number > 0 or null, got {self.clip!r}.")
        if self.refresh_interval < 1:
            raise ConfigError(
                f"refresh_interval must be >= 1 (optimizer steps between anchor refreshes), "
                f"got {self.refresh_interval!r}."
            )
        if self.anchor_batch_size < 1:
            raise ConfigError(f"anchor_batch_size must be >= 1, got {self.anchor_batch_size!r}.")


# --------------------------------------------------------------------------- pure math


def _rows_2d(x: Any, what: str, field: str) -> Any:
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise DataError(
            f"{what}: {field} must be a matrix [samples, dim] of pooled embeddings, got shape "
            f"{shape}."
        )
    return x


def mean_anchor(embeddings: Any, *, eps: float = 1e-8) -> Any:
    """``phi_bar_A = (1/|A|) sum_a phi_a / max(||phi_a||, eps)`` (not re-normalised).

    Args:
        embeddings: ``[|A|, H]`` pooled anchor embeddings (numpy or a tensor).
        eps: Norm floor.

    Returns:
        ``[H]``: numpy float64, or a tensor on the embeddings' device (float32, or float64).

    Raises:
        DataError: on an empty or non-matrix input, or non-finite entries.
    """
    if is_torch_tensor(embeddings):
        import torch

        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        e = _rows_2d(embeddings.detach().to(dtype), _WHAT, "anchor embeddings")
        finite = bool(torch.isfinite(e).all())  # once per refresh, not per step
        norms = torch.linalg.vector_norm(e, dim=-1, keepdim=True).clamp_min(eps)
    else:
        e = _rows_2d(np.asarray(embeddings, dtype=np.float64), _WHAT, "anchor embeddings")
        finite = bool(np.isfinite(e).all())
        norms = np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), eps)
    if e.shape[0] == 0:
        raise DataError(f"{_WHAT}: set_anchors got no anchor embeddings; pass at least one.")
    if not finite:
        raise DataError(f"{_WHAT}: the anchor embeddings contain NaN or infinite values.")
    return (e / norms).mean(0)


def adapt_weights(
    embeddings: Any,
    anchor: Any,
    *,
    tau: float = 1.0,
    clip: float | None = None,
    eps: float = 1e-8,
) -> Any:
    """``w_i = min(sigmoid(<phi_i, phi_bar_A> / tau), clip)`` with ``phi_i`` normalised.

    Non-finite embedding rows get weight 0. Validity masks are applied by the weighter.

    Args:
        embeddings: ``[n, H]`` pooled embeddings of the training samples (numpy or a tensor).
        anchor: ``[H]`` mean anchor ``phi_bar_A`` (:func:`mean_anchor`).
        tau: Temperature > 0.
        clip: Optional upper bound.
        eps: Norm floor.

    Returns:
        ``[n]`` weights: numpy float64, or a tensor on the embeddings' device.

    Example:
        >>> adapt_weights([[1.0, 0.0], [0.6, 0.8]], [0.5, 0.5]).round(6).tolist()
        [0.622459, 0.668188]
    """
    if is_torch_tensor(embeddings):
        import torch

        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        e = _rows_2d(embeddings.detach().to(dtype), _WHAT, "feedback.embeddings")
        a = torch.as_tensor(anchor, dtype=dtype, device=e.device)
        finite = torch.isfinite(e).all(dim=-1)
        e = torch.where(finite.unsqueeze(-1), e, torch.zeros_like(e))
        e = e / torch.linalg.vector_norm(e, dim=-1, keepdim=True).clamp_min(eps)
        w = torch.sigmoid((e @ a) / tau)
        if clip is not None:
            w = w.clamp_max(clip)
        return torch.where(finite, w, torch.zeros_like(w))
    e = _rows_2d(np.asarray(embeddings, dtype=np.float64), _WHAT, "feedback.embeddings")
    a = np.asarray(anchor, dtype=np.float64)
    finite = np.isfinite(e).all(axis=-1)
    e = np.where(finite[:, None], e, 0.0)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), eps)
    x = (e @ a) / tau
    # stable sigmoid: exp of a non-positive number only
    z = np.exp(-np.abs(x))
    w = np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
    if clip is not None:
        w = np.minimum(w, clip)
    return np.where(finite, w, 0.0)


# --------------------------------------------------------------------------- the weighter


class AdaptWeighter:
    """ADAPT (spec §4.2; **unverified against the paper**, see the module doc).

    State: the mean anchor ``phi_bar_A`` and the step it was computed at (spec §5.5).

    Args:
        config: An :class:`AdaptWeighterConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts (unused).

    Example:
        >>> import numpy as np
        >>> from dataflex_core import WeightFeedback
        >>> weighter = AdaptWeighter()
        >>> weighter.set_anchors(np.array([[1.0, 0.0], [0.0, 1.0]]), step=0)
        >>> fb = WeightFeedback(step=0, losses=np.array([1.0, 2.0]),
        ...                     embeddings=np.array([[1.0, 0.0], [0.6, 0.8]]))
        >>> weighter.weigh(fb).round(6).tolist()
        [0.622459, 0.668188]
    """

    config_class = AdaptWeighterConfig

    def __init__(
        self,
        config: AdaptWeighterConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: AdaptWeighterConfig = parse_config(AdaptWeighterConfig, config, where=_WHAT)
        self.context = context if context is not None else ComponentContext()
        self._anchor: np.ndarray | None = None
        self._anchor_step: int | None = None
        self._device_anchor: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ anchors
    @property
    def anchor_mean(self) -> np.ndarray | None:
        """``phi_bar_A`` (float64, a copy), or None before :meth:`set_anchors`."""
        return None if self._anchor is None else self._anchor.copy()

    @property
    def anchor_step(self) -> int | None:
        """The global step the anchors were computed at, or None."""
        return self._anchor_step

    def needs_refresh(self, step: int) -> bool:
        """Whether the integration should recompute the anchors before weighing at ``step``.

        True when no anchors are set, or when ``step mod refresh_interval = 0`` and the anchors
        were not already computed at this step (so it answers True once per optimizer step,
        however many micro-batches that step has).
        """
        if self._anchor is None:
            return True
        return step % self.config.refresh_interval == 0 and step != self._anchor_step

    def set_anchors(self, embeddings: Any, step: int) -> None:
        """Set ``phi_bar_A`` from the pooled anchor embeddings ``[|A|, H]`` of every rank.

        The embeddings are ℓ2-normalised here (they may come unnormalised). A tensor input is
        reduced on its device and copied to the host once (per refresh, not per step).

        Raises:
            DataError: on an empty, non-matrix or non-finite input.
        """
        mean = mean_anchor(embeddings, eps=self.config.eps)
        if is_torch_tensor(mean):
            mean = mean.detach().cpu().double().numpy()
        self._anchor = np.asarray(mean, dtype=np.float64)
        self._anchor_step = int(step)
        self._device_anchor = {}

    def _anchor_like(self, embeddings: Any) -> Any:
        # one host-to-device copy per refresh and device, not per step
        import torch

        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        key = (str(embeddings.device), str(dtype))
        cached = self._device_anchor.get(key)
        if cached is None:
            cached = torch.as_tensor(self._anchor, dtype=dtype, device=embeddings.device)
            self._device_anchor[key] = cached
        return cached

    # ------------------------------------------------------------------ weighting
    def weigh(self, feedback: WeightFeedback) -> Any:
        """Detached local weights ``min(sigmoid(<phi_i, phi_bar_A>/tau), clip)``.

        Needs ``feedback.embeddings`` (``[n, H]``, pooled; normalised here) and anchors.
        Invalid samples get 0; valid samples with a non-finite loss or embedding get 0 with a
        ``RuntimeWarning``. Global fields are not needed: each weight depends on its sample.

        Raises:
            DataError: without embeddings or anchors, or on mismatched shapes.
        """
        view = batch_view(feedback, _WHAT, warn=False, require_global=False)
        if self._anchor is None:
            raise DataError(
                f"{_WHAT}: no anchors yet; call set_anchors(anchor_embeddings, step) before "
                "weighing (needs_refresh(step) says when)."
            )
        emb = feedback.embeddings
        if emb is None:
            raise DataError(
                f"{_WHAT}: feedback.embeddings is None; ADAPT needs the pooled embedding of "
                f"every local sample ([n, {self._anchor.shape[0]}])."
            )
        if view.is_torch:
            import torch

            emb = emb if is_torch_tensor(emb) else torch.as_tensor(np.asarray(emb))
            emb = emb.detach().to(device=view.losses.device)
            anchor = self._anchor_like(emb)
        else:
            emb = np.asarray(emb.detach().cpu() if is_torch_tensor(emb) else emb, np.float64)
            anchor = self._anchor
        if tuple(emb.shape) != (view.n, self._anchor.shape[0]):
            raise DataError(
                f"{_WHAT}: feedback.embeddings has shape {tuple(emb.shape)}, expected "
                f"({view.n}, {self._anchor.shape[0]}): one pooled embedding per local loss, of "
                "the anchors' dimension."
            )
        cfg = self.config
        w = adapt_weights(emb, anchor, tau=cfg.tau, clip=cfg.clip, eps=cfg.eps)
        if view.is_torch:
            bad_emb = view.valid & ~torch.isfinite(emb).all(dim=-1)
            warn_nonfinite(view, _WHAT, feedback.step, bad_emb, "embedding")
            return torch.where(view.valid, w.to(view.losses.dtype), torch.zeros_like(view.losses))
        bad_emb = view.valid & ~np.isfinite(emb).all(axis=-1)
        warn_nonfinite(view, _WHAT, feedback.step, bad_emb, "embedding")
        return np.where(view.valid, w, 0.0)

    def objective(
        self, feedback: WeightFeedback, weights: Any, *, global_weight_sum: Any = None
    ) -> Any:
        """This rank's share ``J_r`` of ``J_mu`` under ``loss_normalization`` (spec §4.2).

        With ``S_r = sum_{i in r} w_i l_i``:

        * ``mean``: ``J_r = S_r / |B_mu|``, ``|B_mu|`` the valid samples of all ranks (from
          ``feedback.global_valid``/``global_losses``, required when ``world_size > 1``);
        * ``weight_sum``: ``J_r = S_r / max(sum_{j in B_mu} w_j, eps)``. Pass
          ``global_weight_sum`` (the all-reduced sum of every rank's weights); without it the
          local sum is used, which is only right with one process, so ``world_size > 1``
          raises;
        * ``sum``: ``J_r = S_r``.

        ``sum_r J_r = J_mu`` in each case: every denominator is the same on every rank.

        Raises:
            DataError: see :func:`~dataflex_weight.common.normalized_objective`.
        """
        return normalized_objective(
            feedback,
            weights,
            self.config.loss_normalization,
            _WHAT,
            global_weight_sum=global_weight_sum,
            eps=self.config.eps,
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{"anchor_mean": [...] | None, "anchor_step": int | None}`` (JSON-safe)."""
        return {
            "anchor_mean": None if self._anchor is None else self._anchor.tolist(),
            "anchor_step": self._anchor_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            StateError: when the state is not an ``adapt`` state.
        """
        if not isinstance(state, Mapping) or not {"anchor_mean", "anchor_step"} <= set(state):
            raise StateError(
                f"{_WHAT}: expected a state with 'anchor_mean' and 'anchor_step', got "
                f"{state!r:.200}."
            )
        mean, step = state["anchor_mean"], state["anchor_step"]
        if mean is None and step is None:
            self._anchor, self._anchor_step, self._device_anchor = None, None, {}
            return
        try:
            arr = np.asarray(mean, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.zeros((0, 0))
        if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
            raise StateError(f"{_WHAT}: invalid saved anchor_mean {mean!r:.200}.")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise StateError(f"{_WHAT}: invalid saved anchor_step {step!r}.")
        self._anchor, self._anchor_step, self._device_anchor = arr, step, {}
