"""The ``loss`` selector: loss-quantile importance sampling (algorithms spec §2.3).

Lineage: Loshchilov & Hutter 2015 (online batch selection), Katharopoulos & Fleuret 2018,
Jiang et al. 2019 (Selective Backprop). The exact banded rule is the predecessor's.

The pure core, :func:`loss_probabilities`, turns per-sample losses into sampling probabilities:
the losses are cut into low / medium / high bands at two quantiles (linear interpolation), the
``focus`` band gets weight ``focus_weight`` and the others 1, and the weights are sharpened by a
temperature. :func:`select_by_loss` then draws ``n`` rows (Gumbel-top-k, or with replacement).
:class:`LossSelector` is the stateful shell: it asks the integration for the current losses of
the candidate rows and answers with a window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    SelectRequest,
    SignalRequest,
    derive,
)
from numpy.typing import ArrayLike, NDArray

from dataflex_select.base import ScoredSelector, ScoredSelectorConfig, signal_rows
from dataflex_select.primitives import sample_with_replacement, sample_without_replacement

__all__ = [
    "LossSelectorConfig",
    "LossSelector",
    "loss_bands",
    "loss_probabilities",
    "select_by_loss",
    "BANDS",
]

#: Band names in order: ``ℓ ≤ q₁``, ``q₁ < ℓ ≤ q₂``, ``ℓ > q₂``.
BANDS: tuple[str, str, str] = ("low", "medium", "high")

#: Added to every weight before the temperature, so that a zero weight stays finite (spec §2.3).
_EPS = 1e-12


@dataclass(frozen=True)
class LossSelectorConfig(ScoredSelectorConfig):
    """Config of the ``loss`` selector (spec §2.3), plus the shared keys of §2.0.

    Attributes:
        focus: The band that gets ``focus_weight``: ``low``, ``medium`` or ``high``.
        focus_weight: Weight of the focus band (the other bands get 1); ``> 0``.
        quantiles: ``[q₁, q₂]``, the quantile levels cutting the bands; ``0 <= q₁ <= q₂ <= 1``.
        temperature: ``p ∝ w^(1/temperature)``; ``> 0``. Below 1 sharpens, above 1 flattens.
        replacement: Draw the window with replacement (multinomial) instead of Gumbel-top-k.
        batch_size: Batch size of the eval forward that measures the losses (a signal option).
    """

    focus: Literal["low", "medium", "high"] = "medium"
    focus_weight: float = 5.0
    quantiles: tuple[float, float] = (0.33, 0.66)
    temperature: float = 1.0
    replacement: bool = False
    batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.focus_weight) and self.focus_weight > 0):
            raise ConfigError(
                f"focus_weight must be a finite number > 0, got {self.focus_weight!r}."
            )
        q1, q2 = self.quantiles
        if not (0.0 <= q1 <= q2 <= 1.0):
            raise ConfigError(
                f"quantiles = {list(self.quantiles)!r}: need 0 <= q1 <= q2 <= 1 (default "
                "[0.33, 0.66])."
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {self.temperature!r}.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}.")


def _losses(losses: ArrayLike, what: str = "losses") -> NDArray[np.float64]:
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{what} must be a 1-D vector of per-sample losses, got shape {arr.shape}.")
    return arr


def loss_bands(losses: ArrayLike, quantiles: Sequence[float] = (0.33, 0.66)) -> NDArray[np.int64]:
    """Band of each sample: 0 low (``ℓ ≤ q₁``), 1 medium (``q₁ < ℓ ≤ q₂``), 2 high, -1 invalid.

    ``q₁, q₂`` are the ``quantiles`` of the finite losses with linear interpolation
    (``np.quantile``'s default). Non-finite losses are invalid.

    Example:
        >>> loss_bands([1, 2, 3, 4, 5, 6]).tolist()   # q = [2.65, 4.3]
        [0, 0, 1, 1, 2, 2]
    """
    arr = _losses(losses)
    valid = np.isfinite(arr)
    bands = np.full(arr.shape, -1, dtype=np.int64)
    if not valid.any():
        return bands
    q1, q2 = np.quantile(arr[valid], [float(quantiles[0]), float(quantiles[1])])
    v = arr[valid]
    bands[valid] = np.where(v <= q1, 0, np.where(v <= q2, 1, 2))
    return bands


def loss_probabilities(
    losses: ArrayLike,
    focus: str = "medium",
    focus_weight: float = 5.0,
    quantiles: Sequence[float] = (0.33, 0.66),
    temperature: float = 1.0,
) -> NDArray[np.float64]:
    """Sampling probabilities of the ``loss`` selector (spec §2.3).

    ``w_i = focus_weight`` in the ``focus`` band, else 1; ``p_i ∝ (w_i + 1e-12)^(1/temperature)``;
    samples with a non-finite loss get ``p_i = 0``.

    Args:
        losses: Per-sample token-mean losses (NaN = invalid).
        focus: ``low``, ``medium`` or ``high``.
        focus_weight: Weight of the focus band.
        quantiles: The two quantile levels cutting the bands.
        temperature: Softening exponent, ``> 0``.

    Returns:
        A float64 vector on the simplex, the same length as ``losses``.

    Raises:
        DataError: when no loss is finite.

    Example (the spec's):
        >>> (loss_probabilities([1, 2, 3, 4, 5, 6]) * 14).round(6).tolist()
        [1.0, 1.0, 5.0, 5.0, 1.0, 1.0]
    """
    if focus not in BANDS:
        raise ConfigError(f"focus must be one of {', '.join(BANDS)}, got {focus!r}.")
    bands = loss_bands(losses, quantiles)
    valid = bands >= 0
    if not valid.any():
        raise DataError(
            f"loss selector: none of the {bands.size} losses is finite (all samples invalid: no "
            "supervised tokens?); check the dataset's labels."
        )
    w = np.where(bands == BANDS.index(focus), float(focus_weight), 1.0)
    p = np.where(valid, (w + _EPS) ** (1.0 / float(temperature)), 0.0)
    return p / p.sum()


def select_by_loss(
    losses: ArrayLike,
    n: int,
    seed: int,
    *,
    focus: str = "medium",
    focus_weight: float = 5.0,
    quantiles: Sequence[float] = (0.33, 0.66),
    temperature: float = 1.0,
    replacement: bool = False,
) -> NDArray[np.int64]:
    """Draw ``n`` positions of ``losses`` with :func:`loss_probabilities` (spec §2.3).

    Without replacement: Gumbel-top-k (``sample_without_replacement``), which raises when ``n``
    exceeds the number of valid samples. With ``replacement``: ``sample_with_replacement``
    (ascending; the window sampler shuffles).

    Returns:
        Positions into ``losses`` (int64, length ``n``).
    """
    p = loss_probabilities(losses, focus, focus_weight, quantiles, temperature)
    if replacement:
        return sample_with_replacement(p, n, seed)
    nnz = int(np.count_nonzero(p))
    if n > nnz:
        raise DataError(
            f"loss selector: asked for {n} distinct rows but only {nnz} of {p.size} candidates "
            "have a valid loss; lower the window/budget, score more rows, or set "
            "`replacement: true`."
        )
    return sample_without_replacement(p, n, seed)


class LossSelector(ScoredSelector):
    """Loss-quantile importance sampling (spec §2.3) on the shared shell (§2.0).

    Signal: ``loss`` (kind ``loss``, option ``batch_size``) for the candidate rows. The window
    is drawn with ``derive(seed, "loss", epoch, step)``. ``last_scores`` holds the candidates'
    sampling probabilities.

    Args:
        config: A :class:`LossSelectorConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts; ``context.seed`` is the seed unless ``config.seed`` is set.
    """

    config_class = LossSelectorConfig
    name = "loss"

    def __init__(
        self,
        config: LossSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self.config: LossSelectorConfig
        self.distinct = not self.config.replacement

    def _signals(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> list[SignalRequest]:
        return [
            SignalRequest(
                name="loss",
                kind="loss",
                split="train",
                indices=self.rows_of(candidates, request.num_samples),
                options={"batch_size": self.config.batch_size},
            )
        ]

    def _choose(
        self, request: SelectRequest, candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        losses = _losses(signal_rows(request, "loss", len(candidates), self.what), "signal 'loss'")
        cfg = self.config
        p = loss_probabilities(losses, cfg.focus, cfg.focus_weight, cfg.quantiles, cfg.temperature)
        self.last_scores = (candidates, p)
        picks = select_by_loss(
            losses,
            n,
            derive(self.seed, "loss", request.epoch, request.step),
            focus=cfg.focus,
            focus_weight=cfg.focus_weight,
            quantiles=cfg.quantiles,
            temperature=cfg.temperature,
            replacement=cfg.replacement,
        )
        return candidates[picks]
