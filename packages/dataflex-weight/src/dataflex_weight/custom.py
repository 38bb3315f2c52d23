"""The ``custom`` weighter and the base class for your own weighters (spec §4.3).

Two ways to weigh samples with your own rule:

1. **A function, named in the config** (no plugin needed)::

       # mypkg/weights.py
       def inverse_loss(losses_local, losses_global, valid_global, token_counts, domain_ids,
                        step, embeddings):
           return 1.0 / (1.0 + losses_local)          # or None for "unweighted"

   .. code-block:: yaml

      weighters:
        my_rule:
          type: custom
          params: {function: "mypkg.weights:inverse_loss", loss_normalization: mean}

   The function is called with keyword arguments (so the order of its parameters is free; it
   may take ``**kwargs`` to ignore some), plus the entries of the config's ``params`` mapping:

   * ``losses_local``: this rank's per-sample losses, **detached** (a numpy float64 array, or a
     tensor on the losses' device);
   * ``losses_global``: the losses of the global micro-batch ``B_mu`` (all ranks), detached
     (the local losses with one process; None when the trainer passed only ``global_valid``);
   * ``valid_global``: validity of ``B_mu`` (bool; invalid and non-finite losses are False);
   * ``token_counts``, ``domain_ids``, ``embeddings``: this rank's, as the trainer passed them
     (``feedback.token_counts``, ``feedback.domains``, ``feedback.embeddings``; may be None);
   * ``step``: the global step ``s``.

   It returns ``w >= 0``, one per **local** sample (a weight vector over all of ``B_mu`` is also
   accepted and sliced to this rank), or None for "unweighted" (weight 1 per valid sample).

2. **A weighter class in a plugin**: subclass :class:`CustomWeighterBase`, implement
   :meth:`~CustomWeighterBase.compute_weights`, give it a frozen-dataclass ``config_class``
   with a ``loss_normalization`` key, and register it from your plugin's
   ``dataflex_register_weighters()`` hook (see ``docs/weighters/custom.md``).

Either way the framework checks the weights (one per local sample, finite, non-negative:
:class:`~dataflex_core.DataError` otherwise; only valid samples are checked, invalid ones are
set to 0), detaches them, and forms the objective with ``loss_normalization`` (default
``mean``, as in §4.2). The checks read one boolean back to the host: one device sync per step in
the torch path (plus a host-to-device copy when the function returns numpy for tensor losses,
and whatever the function itself does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    WeightFeedback,
    parse_config,
)
from dataflex_core.registry import load_object

from dataflex_weight.common import (
    BatchView,
    _np_1d,
    _torch_1d,
    batch_view,
    normalized_objective,
    warn_nonfinite,
)

__all__ = [
    "CustomWeighterConfig",
    "CustomWeighterBase",
    "CustomWeighter",
    "template_weights",
]


def template_weights(
    losses_local: Any,
    losses_global: Any,
    valid_global: Any,
    token_counts: Any,
    domain_ids: Any,
    step: int,
    embeddings: Any,
) -> Any:
    """The template of a weight function: copy it and return your weights.

    Returning None means "unweighted": every valid sample gets weight 1, so with the default
    ``loss_normalization: mean`` the objective is the sample mean over ``B_mu``.

    Args:
        losses_local: This rank's per-sample losses, detached (numpy or a tensor).
        losses_global: The losses of the global micro-batch ``B_mu``, detached (None when the
            trainer passed only ``global_valid``).
        valid_global: Validity of ``B_mu`` (invalid or non-finite losses are False).
        token_counts: This rank's supervised tokens per sample (or None).
        domain_ids: This rank's domain index per sample (or None).
        step: The global step ``s``.
        embeddings: This rank's pooled embeddings ``[n, H]`` (or None).

    Returns:
        Local weights ``w >= 0`` (numpy, a tensor, or a sequence), or None.
    """
    return None


@dataclass(frozen=True)
class CustomWeighterConfig:
    """Config of the ``custom`` weighter (spec §4.3).

    Attributes:
        function: ``"package.module:function"`` computing the weights (see the module doc).
            None runs the template (:func:`template_weights`): uniform weights.
        loss_normalization: ``mean`` (default), ``weight_sum`` or ``sum`` (spec §4.2).
        params: Extra keyword arguments for ``function`` (plain config values).
        eps: Floor of the ``weight_sum`` denominator, > 0.
    """

    function: str | None = None
    loss_normalization: Literal["mean", "weight_sum", "sum"] = "mean"
    params: dict[str, Any] = field(default_factory=dict)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.function is not None:
            module, _, attr = self.function.partition(":")
            if not module or not attr:
                raise ConfigError(
                    f"function {self.function!r} must be written as 'package.module:function'."
                )
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps must be a finite number > 0, got {self.eps!r}.")
        if self.params and self.function is None:
            raise ConfigError("params are the keyword arguments of function; set function too.")


class CustomWeighterBase:
    """Base class of a user weighter: implement :meth:`compute_weights`, get the rest.

    The base class checks and detaches the weights (:meth:`weigh`), forms the objective with
    ``self.config.loss_normalization`` (``mean`` when the config has no such key), and holds no
    state. Subclasses set ``config_class`` (a frozen dataclass) and may override
    :meth:`state_dict`/:meth:`load_state_dict` to keep state.

    Args:
        config: An instance of ``config_class``, a mapping of its keys, or None for defaults.
        context: Runtime facts (seed, domains, rank).
    """

    config_class: ClassVar[type] = CustomWeighterConfig
    #: Name used in messages when ``context.name`` is empty (default: the class name).
    label: ClassVar[str] = ""

    def __init__(self, config: Any = None, context: ComponentContext | None = None) -> None:
        self.context = context if context is not None else ComponentContext()
        name = self.context.name or self.label or type(self).__name__
        self.what = f"weighter {name!r}"
        self.config = parse_config(self.config_class, config, where=self.what)

    # ------------------------------------------------------------------ to override
    def compute_weights(
        self,
        *,
        losses_local: Any,
        losses_global: Any,
        valid_global: Any,
        token_counts: Any,
        domain_ids: Any,
        step: int,
        embeddings: Any,
    ) -> Any:
        """Return local weights ``w >= 0`` (or weights over ``B_mu``), or None (unweighted).

        The arguments are those of :func:`template_weights`. The default returns None.
        """
        return None

    # ------------------------------------------------------------------ the contract
    @property
    def loss_normalization(self) -> str:
        """The objective's normalisation (``mean`` unless the config says otherwise)."""
        return str(getattr(self.config, "loss_normalization", "mean"))

    def weigh(self, feedback: WeightFeedback) -> Any:
        """Call :meth:`compute_weights` and return its checked, detached local weights.

        Invalid samples (and valid samples with a non-finite loss, with a warning) get 0.

        Raises:
            DataError: when the weights have the wrong length or a valid sample's weight is
                negative or not finite.
        """
        view = batch_view(feedback, self.what, warn=False)
        raw = self.compute_weights(
            losses_local=view.losses,
            losses_global=view.global_losses,
            valid_global=view.global_valid,
            token_counts=feedback.token_counts,
            domain_ids=feedback.domains,
            step=feedback.step,
            embeddings=feedback.embeddings,
        )
        return self._check(raw, view, feedback.step)

    def _check(self, raw: Any, view: BatchView, step: int) -> Any:
        if raw is None:
            warn_nonfinite(view, self.what, step)
            return view.valid.to(view.losses.dtype) if view.is_torch else view.valid * 1.0
        if view.is_torch:
            import torch

            w = _torch_1d(raw, view.losses, view.losses.dtype, self.what, "weights")
        else:
            w = _np_1d(raw, self.what, "weights", np.float64)
        size = int(w.shape[0])
        if size != view.n:
            if size == view.global_size:
                w = view.local_slice(w)
            else:
                raise DataError(
                    f"{self.what}: the weight function returned {size} weights for {view.n} "
                    f"local samples (global micro-batch: {view.global_size}); return one weight "
                    "per local sample."
                )
        if view.is_torch:
            bad = view.valid & ~(torch.isfinite(w) & (w >= 0))
            # one host read covers the weight check and the non-finite-loss warning
            if bool((bad | view.nonfinite).any()):
                if bool(bad.any()):
                    raise DataError(self._bad_message(w.detach().cpu().numpy(), view))
                warn_nonfinite(view, self.what, step)
            return torch.where(view.valid, w, torch.zeros_like(w))
        bad = view.valid & ~(np.isfinite(w) & (w >= 0))
        if bad.any():
            raise DataError(self._bad_message(w, view))
        warn_nonfinite(view, self.what, step)
        return np.where(view.valid, w, 0.0)

    def _bad_message(self, w: np.ndarray, view: BatchView) -> str:
        valid = view.valid.detach().cpu().numpy() if view.is_torch else view.valid
        shown = [float(x) for x in w[valid]][:8]
        return (
            f"{self.what}: the weights of valid samples must be finite and >= 0, got {shown} "
            "(first 8 valid); fix the weight function."
        )

    def objective(
        self, feedback: WeightFeedback, weights: Any, *, global_weight_sum: Any = None
    ) -> Any:
        """This rank's share ``J_r`` of ``J_mu`` under ``loss_normalization``.

        See :func:`~dataflex_weight.common.normalized_objective`: ``mean`` divides by the valid
        samples of ``B_mu``; ``weight_sum`` by ``global_weight_sum`` (required when
        ``world_size > 1``); ``sum`` by nothing.
        """
        return normalized_objective(
            feedback,
            weights,
            self.loss_normalization,
            self.what,
            global_weight_sum=global_weight_sum,
            eps=float(getattr(self.config, "eps", 1e-8)),
        )

    def state_dict(self) -> dict[str, Any]:
        """No state by default (spec §5.5)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore by default."""


class CustomWeighter(CustomWeighterBase):
    """The ``custom`` weighter: weights from the function named in ``config.function``.

    Without a function it is the template: uniform weights, so the objective is the sample
    mean (spec §4.3).

    Example:
        >>> import numpy as np
        >>> from dataflex_core import WeightFeedback
        >>> weighter = CustomWeighter()
        >>> fb = WeightFeedback(step=0, losses=np.array([1.0, 3.0]))
        >>> weighter.objective(fb, weighter.weigh(fb))
        2.0
    """

    config_class: ClassVar[type] = CustomWeighterConfig
    label: ClassVar[str] = "custom"

    def __init__(self, config: Any = None, context: ComponentContext | None = None) -> None:
        super().__init__(config, context)
        self.function: Callable[..., Any] = template_weights
        if self.config.function is not None:
            fn = load_object(self.config.function, f"{self.what} function")
            if not callable(fn):
                raise ConfigError(
                    f"{self.what}: function {self.config.function!r} is not callable."
                )
            self.function = fn

    def compute_weights(self, **inputs: Any) -> Any:
        """Call the configured function with the inputs and ``params``."""
        return self.function(**inputs, **self.config.params)
