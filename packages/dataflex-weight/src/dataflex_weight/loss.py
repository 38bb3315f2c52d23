"""The ``loss`` weighter: loss-based sample reweighting (spec §4.1).

Sow, Woisetschläger, Bulusu, Wang, Jacobsen, Liang, "Dynamic Loss-Based Sample Reweighting for
Improved Large Language Model Pretraining", ICLR 2025, arXiv 2502.06733.

Over the global micro-batch ``B_mu`` (all ranks; invalid samples excluded):

* ``D = max(l_max - l_min, 1e-6)`` and ``l~_i = delta (2 l_i - l_max - l_min) / D`` in
  ``[-delta, delta]`` (the spec's ``2 delta l_i/D - delta (l_max + l_min)/D``, rearranged so that
  equal losses give exactly 0);
* a strategy ``g(l~)``: ``linupper`` ``min(l~ + delta, delta)``, ``quadratic`` (alias ``mid``)
  ``1 - l~^2/delta^2``, ``extremes`` ``|l~|``, ``upper`` ``l~/2 + delta/2``, ``identity`` ``l~``;
* ``w_i = softmax(g / r)_i`` (max-shifted) with the temperature ``r`` (alias ``kl_reg``), or
  ``w_i = 1/|B_mu|`` for ``uniform``. The weights sum to 1 over ``B_mu``.

The objective (:meth:`LossWeighter.objective`) depends on ``loss_base`` (see there).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    WeightFeedback,
    parse_config,
)
from dataflex_core.config import closest

from dataflex_weight.common import (
    _np_1d,
    _torch_1d,
    as_weights,
    batch_view,
    is_torch_tensor,
    weight_dtype,
    weighted_sum,
)

__all__ = [
    "STRATEGIES",
    "STRATEGY_ALIASES",
    "TemperatureSchedule",
    "LossWeighterConfig",
    "LossWeighter",
    "loss_weights",
    "normalized_losses",
]

log = logging.getLogger(__name__)

#: The strategies of spec §4.1, canonical names.
STRATEGIES: tuple[str, ...] = ("linupper", "quadratic", "extremes", "upper", "identity", "uniform")
#: Permanent aliases (no warning): the official configs call ``quadratic`` ``mid``.
STRATEGY_ALIASES: dict[str, str] = {"mid": "quadratic"}
#: The floor of the loss range ``D`` (spec §4.1; the official code's ``1e-6``).
RANGE_FLOOR = 1e-6

_WHAT = "weighter 'loss'"


def _positive(value: float, key: str, where: str = "") -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{where}{key} must be a finite number > 0, got {value!r}.")


@dataclass(frozen=True)
class TemperatureSchedule:
    """A linear temperature schedule: ``r(s) = start + (end - start) min(s / steps, 1)``.

    ``s`` is the global step (completed optimizer steps); after ``steps`` steps ``r`` stays at
    ``end``. The official code starts with a high ``r`` (near-uniform weights) and lowers it.

    Attributes:
        start: ``r`` at step 0 (> 0).
        end: ``r`` from step ``steps`` on (> 0).
        steps: Length of the ramp in optimizer steps (>= 1).
    """

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        _positive(self.start, "temperature_schedule.start")
        _positive(self.end, "temperature_schedule.end")
        if self.steps < 1:
            raise ConfigError(
                f"temperature_schedule.steps must be >= 1, got {self.steps!r}; it is the number "
                "of optimizer steps over which r moves from start to end."
            )

    def at(self, step: int) -> float:
        """The temperature at global step ``step``."""
        frac = min(max(step, 0) / self.steps, 1.0)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class LossWeighterConfig:
    """Config of the ``loss`` weighter (spec §4.1).

    Resolved values are written back in ``__post_init__``, so the config (and the effective
    config written to disk) shows what runs: ``strategy`` is canonical (``mid`` becomes
    ``quadratic``), ``temperature`` holds ``kl_reg`` or the default 1.0, and ``loss_base`` holds
    the value ``official_compat`` implies.

    Attributes:
        strategy: ``linupper`` (the paper's headline; default), ``quadratic`` (alias ``mid``, the
            official configs), ``extremes``, ``upper``, ``identity`` (the official README's
            "uniform": it upweights high loss) or ``uniform`` (true uniform ``1/|B_mu|``).
        delta: ``delta`` > 0, the half-width of the normalised loss range.
        temperature: ``r`` > 0 of the softmax (default 1.0). Smaller is sharper.
        kl_reg: Permanent alias of ``temperature`` (the paper's name; no warning). Giving both
            with different values is an error.
        temperature_schedule: ``{start, end, steps}``: ``r`` moves linearly from ``start`` to
            ``end`` over ``steps`` optimizer steps. Replaces ``temperature`` (giving both is an
            error).
        loss_base: ``sample_mean`` (the paper/README objective) or ``token_weighted`` (the
            official trainer). Default: ``token_weighted`` when ``official_compat``, else
            ``sample_mean``; an explicit value wins.
        official_compat: Switch every listed divergence to the official code (here: only
            ``loss_base``).
        legacy_strategy_names: Read ``strategy`` with the predecessor's (and the official
            code's) names: ``uniform`` then means ``identity``, with one WARNING naming the
            change. Off by default because ``uniform`` is also a strategy of its own; a
            migration of a predecessor config sets it.
    """

    strategy: str = "linupper"
    delta: float = 1.0
    temperature: float | None = None
    kl_reg: float | None = None
    temperature_schedule: TemperatureSchedule | None = None
    loss_base: Literal["sample_mean", "token_weighted"] | None = None
    official_compat: bool = False
    legacy_strategy_names: bool = False

    def __post_init__(self) -> None:
        strategy = self.strategy
        if self.legacy_strategy_names and strategy == "uniform":
            log.warning(
                "%s: strategy 'uniform' with legacy_strategy_names means the predecessor's and "
                "the official code's 'uniform', which is the 'identity' strategy (softmax of the "
                "normalised loss: it upweights high loss); running 'identity'. Write "
                "'strategy: identity' to keep this behaviour without the warning, or drop "
                "legacy_strategy_names for true uniform weights.",
                _WHAT,
            )
            strategy = "identity"
        strategy = STRATEGY_ALIASES.get(strategy, strategy)
        if strategy not in STRATEGIES:
            valid = [*STRATEGIES, *STRATEGY_ALIASES]
            hint = closest(str(self.strategy), valid)
            raise ConfigError(
                f"unknown strategy {self.strategy!r}"
                + (f"; did you mean {hint!r}?" if hint else ".")
                + f" Valid strategies: {', '.join(STRATEGIES)} (alias: mid = quadratic)."
            )
        object.__setattr__(self, "strategy", strategy)
        _positive(self.delta, "delta")

        temperature = self.temperature
        if self.kl_reg is not None:
            _positive(self.kl_reg, "kl_reg")
            if temperature is not None and temperature != self.kl_reg:
                raise ConfigError(
                    f"temperature ({temperature!r}) and its alias kl_reg ({self.kl_reg!r}) "
                    "disagree; give one of them."
                )
            temperature = self.kl_reg
        if self.temperature_schedule is not None:
            if temperature is not None:
                raise ConfigError(
                    "give either temperature (kl_reg) or temperature_schedule, not both; the "
                    "schedule sets the temperature at every step."
                )
        else:
            temperature = 1.0 if temperature is None else temperature
            _positive(temperature, "temperature")
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "kl_reg", None)

        if self.loss_base is None:
            base = "token_weighted" if self.official_compat else "sample_mean"
            object.__setattr__(self, "loss_base", base)

    def temperature_at(self, step: int) -> float:
        """The softmax temperature ``r`` at global step ``step``."""
        if self.temperature_schedule is not None:
            return self.temperature_schedule.at(step)
        assert self.temperature is not None  # resolved in __post_init__
        return self.temperature


# --------------------------------------------------------------------------- pure math


def _strategy(x: Any, strategy: str, delta: float) -> Any:
    """``g(l~)``: plain arithmetic, so it runs unchanged on numpy arrays and torch tensors."""
    if strategy == "linupper":
        # min(x + delta, delta) = delta + min(x, 0), and min(x, 0) = (x - |x|)/2 exactly
        return delta + (x - abs(x)) / 2
    if strategy == "quadratic":
        return 1 - x * x / (delta * delta)
    if strategy == "extremes":
        return abs(x)
    if strategy == "upper":
        return 0.5 * x + 0.5 * delta
    if strategy == "identity":
        return x
    raise ConfigError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}.")


def _canonical(strategy: str) -> str:
    s = STRATEGY_ALIASES.get(strategy, strategy)
    if s not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)} (alias: mid)."
        )
    return s


def normalized_losses(losses: Any, valid: Any = None, *, delta: float = 1.0) -> Any:
    """``l~ = delta (2 l - l_max - l_min) / max(l_max - l_min, 1e-6)`` over the valid entries.

    Invalid entries get 0. Works on numpy (float64) and on torch tensors (on their device).
    """
    if is_torch_tensor(losses):
        import torch

        lw = losses.detach()
        v = torch.isfinite(lw)
        if valid is not None:
            v = v & torch.as_tensor(valid, dtype=torch.bool, device=lw.device)
        if lw.numel() == 0:
            return torch.zeros_like(lw)
        # new_full fills on the device; torch.tensor(x, device=...) would copy from the host
        inf = lw.new_full((), math.inf)
        zero = lw.new_zeros(())
        any_valid = v.any()
        lmax = torch.where(any_valid, torch.where(v, lw, -inf).amax(), zero)
        lmin = torch.where(any_valid, torch.where(v, lw, inf).amin(), zero)
        rng = (lmax - lmin).clamp_min(RANGE_FLOOR)
        safe = torch.where(v, lw, lmin)
        return torch.where(v, delta * ((2 * safe - lmax) - lmin) / rng, torch.zeros_like(lw))
    arr = np.asarray(losses, dtype=np.float64)
    v = np.isfinite(arr) if valid is None else np.asarray(valid, dtype=bool) & np.isfinite(arr)
    out = np.zeros_like(arr)
    if not v.any():
        return out
    lv = arr[v]
    lmax, lmin = lv.max(), lv.min()
    rng = max(lmax - lmin, RANGE_FLOOR)
    out[v] = delta * ((2 * lv - lmax) - lmin) / rng
    return out


def loss_weights(
    losses: Any,
    valid: Any = None,
    *,
    strategy: str = "linupper",
    delta: float = 1.0,
    temperature: float = 1.0,
) -> Any:
    """Loss-based weights over one normalisation set ``B_mu`` (spec §4.1).

    Args:
        losses: The losses of the whole set ``B_mu`` (all ranks), 1-D: a numpy array (or
            anything ``np.asarray`` takes) or a torch tensor. Detached on use.
        valid: Validity flags of the same length (None: all valid). Non-finite losses are
            treated as invalid. Invalid entries get weight 0 and are excluded from ``D``,
            ``l_max``, ``l_min`` and the softmax.
        strategy: One of :data:`STRATEGIES` or an alias (``mid``).
        delta: ``delta`` > 0.
        temperature: ``r`` > 0.

    Returns:
        Weights summing to 1 over the valid entries (all zeros when none is valid): numpy
        float64, or a tensor on the losses' device (float64 for float64 losses, else float32).

    Example:
        >>> loss_weights([2.0, 3.0, 4.0]).round(6).tolist()
        [0.155362, 0.422319, 0.422319]
    """
    strategy = _canonical(strategy)
    if is_torch_tensor(losses):
        import torch

        lw = losses.detach().to(weight_dtype(losses))
        v = torch.isfinite(lw)
        if valid is not None:
            v = v & torch.as_tensor(valid, dtype=torch.bool, device=lw.device)
        if lw.numel() == 0:
            return torch.zeros_like(lw)
        if strategy == "uniform":
            vf = v.to(lw.dtype)
            return vf / vf.sum().clamp_min(1)
        z = _strategy(normalized_losses(lw, v, delta=delta), strategy, delta) / temperature
        z = torch.where(v, z, torch.full_like(z, -math.inf))
        top = z.amax()
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        e = torch.where(v, torch.exp(z - top), torch.zeros_like(z))
        total = e.sum()
        return e / torch.where(total > 0, total, torch.ones_like(total))
    arr = np.asarray(losses, dtype=np.float64)
    v = np.isfinite(arr)
    if valid is not None:
        v &= np.asarray(valid, dtype=bool)
    w = np.zeros_like(arr)
    if not v.any():
        return w
    if strategy == "uniform":
        w[v] = 1.0 / int(v.sum())
        return w
    z = _strategy(normalized_losses(arr, v, delta=delta)[v], strategy, delta) / temperature
    e = np.exp(z - z.max())
    w[v] = e / e.sum()
    return w


# --------------------------------------------------------------------------- the weighter


class LossWeighter:
    """Loss-based sample reweighting (spec §4.1); stateless (the schedule derives from ``s``).

    ``weigh`` normalises over the global micro-batch ``B_mu``: it reads
    ``feedback.global_losses``/``global_valid`` when given (required with ``world_size > 1``)
    and returns this rank's slice ``[local_offset : local_offset + n]`` of the global weights,
    which sum to 1 over ``B_mu``.

    Args:
        config: A :class:`LossWeighterConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts (unused).

    Example:
        >>> import numpy as np
        >>> from dataflex_core import WeightFeedback
        >>> fb = WeightFeedback(step=0, losses=np.array([2.0, 3.0, 4.0]))
        >>> weighter = LossWeighter({"strategy": "linupper"})
        >>> w = weighter.weigh(fb)
        >>> w.round(6).tolist(), round(weighter.objective(fb, w), 6)
        ([0.155362, 0.422319, 0.422319], 3.266956)
    """

    config_class = LossWeighterConfig

    def __init__(
        self,
        config: LossWeighterConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        self.config: LossWeighterConfig = parse_config(LossWeighterConfig, config, where=_WHAT)
        self.context = context if context is not None else ComponentContext()

    def temperature_at(self, step: int) -> float:
        """The temperature ``r`` used at global step ``step``."""
        return self.config.temperature_at(step)

    def weigh(self, feedback: WeightFeedback) -> Any:
        """Detached local weights, normalised over ``B_mu`` (spec §4.1).

        Invalid samples (``valid`` False) and valid samples with a non-finite loss get 0 (the
        latter with a ``RuntimeWarning``); they are left out of the loss range and the softmax.
        A batch whose valid losses are all equal (or holds one valid sample) gets uniform
        weights, because ``D`` is floored at ``1e-6``.

        Returns:
            numpy float64 weights, or a detached tensor on the losses' device (float32, or
            float64 for float64 losses), of the local length.
        """
        view = batch_view(feedback, _WHAT)
        cfg = self.config
        assert cfg.strategy is not None
        source = view.global_losses
        if source is None:  # only global_valid was given: a NaN placeholder for other ranks
            if cfg.strategy != "uniform":
                raise DataError(
                    f"{_WHAT}: strategy {cfg.strategy!r} needs the losses of every rank; pass "
                    "feedback.global_losses (all-gathered, padded, with global_valid)."
                )
            source = (
                view.global_valid.to(view.losses.dtype)
                if view.is_torch
                else view.global_valid.astype(np.float64)
            )
        w = loss_weights(
            source,
            view.global_valid,
            strategy=cfg.strategy,
            delta=cfg.delta,
            temperature=self.temperature_at(feedback.step),
        )
        return view.local_slice(w)

    def objective(self, feedback: WeightFeedback, weights: Any) -> Any:
        """This rank's share ``J_r`` of the micro-batch objective ``J_mu = sum_r J_r``.

        * ``loss_base: sample_mean`` (default): ``J_r = sum_{i in r} w_i l_i``. The weights sum
          to 1 over ``B_mu``, so ``sum_r J_r = sum_{i in B_mu} w_i l_i = J_mu``; with uniform
          weights this is the plain mean of the ``l_i`` over ``B_mu``.
        * ``loss_base: token_weighted`` (``official_compat``, the official trainer):
          ``J_r = b_r sum_{i in r} w_i (n_i / N_r) l_i`` with ``b_r`` the number of valid local
          samples, ``n_i = feedback.token_counts[i]`` and ``N_r = sum_{j in r} n_j`` over the
          valid local samples. Summed over ranks this is the spec's
          ``J_mu = sum_r b_r sum_{i in r} w_i (n_i/N_r) l_i``; with uniform weights it is the
          mean over ranks of the local token-weighted means. It depends on how ``B_mu`` is
          split over ranks, by design of the official trainer.

        The integration multiplies ``J_r`` by the world size (undoing the DDP/ZeRO gradient
        average) and lets the trainer divide by gradient accumulation, so the applied gradient
        is ``grad (1/GA) sum_mu J_mu`` (spec §4.0).

        Args:
            feedback: The feedback ``weights`` were computed from; ``losses`` keeps its graph.
            weights: The detached local weights from :meth:`weigh`.

        Returns:
            A 0-d tensor (connected to the losses' graph even when every weight is 0), or a
            float for numpy losses.

        Raises:
            DataError: ``token_weighted`` without ``feedback.token_counts``, or a shape mismatch.
        """
        view = batch_view(feedback, _WHAT, warn=False, require_global=False)
        w = as_weights(weights, view, _WHAT)
        if self.config.loss_base == "sample_mean":
            return weighted_sum(feedback.losses, w, view)
        if feedback.token_counts is None:
            raise DataError(
                f"{_WHAT}: loss_base 'token_weighted' needs feedback.token_counts (supervised "
                "tokens per sample, n_i); pass them or use loss_base: sample_mean."
            )
        if view.is_torch:
            import torch

            n_i = _torch_1d(feedback.token_counts, view.losses, w.dtype, _WHAT, "token_counts")
            n_i = torch.where(view.valid, n_i, torch.zeros_like(n_i))
            b_r = view.valid.to(w.dtype).sum()
            big_n = n_i.sum().clamp_min(1)
        else:
            n_i = _np_1d(feedback.token_counts, _WHAT, "token_counts", np.float64)
            n_i = np.where(view.valid, n_i, 0.0)
            b_r = float(view.valid.sum())
            big_n = max(float(n_i.sum()), 1.0)
        if n_i.shape[0] != view.n:
            raise DataError(
                f"{_WHAT}: feedback.token_counts has {n_i.shape[0]} entries for {view.n} losses."
            )
        return weighted_sum(feedback.losses, w * n_i, view) * (b_r / big_n)

    def state_dict(self) -> dict[str, Any]:
        """No state (spec §5.5): the temperature schedule derives from the step."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore; any mapping is accepted."""
