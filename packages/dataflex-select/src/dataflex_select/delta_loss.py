"""The ``delta_loss`` selector: a learning-progress window (algorithms spec §2.4).

The predecessor's heuristic, related to learnability and curriculum selection. Each sample's
learning progress is ``Δ_i = ℓ_i^ref − ℓ_i``: how much its loss dropped since a reference point.
Samples are ranked by ``Δ`` (largest first) and a window of width ``⌈w·N⌉`` slides along that
ranking over a Flex epoch, following a sigmoid: early updates favour the samples that improved
most, late updates those that improved least. Rows inside the window get weight 1, the rest
``outside_weight``; the window is drawn from those weights without replacement.

Pure core: :func:`delta_loss_window` (the window of update ``u`` of ``U``) and
:func:`delta_loss_weights` (weights from ``Δ``). :class:`DeltaLossSelector` is the shell: it
asks for the current losses (and, once, the reference losses), keeps ``ℓ^ref`` in its state,
and reads the number of updates per Flex epoch from ``request.extras["updates_per_epoch"]``.
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
    SelectRequest,
    SignalRequest,
    StateError,
    derive,
)
from numpy.typing import ArrayLike, NDArray

from dataflex_select.base import ScoredSelector, ScoredSelectorConfig, signal_rows
from dataflex_select.primitives import sample_without_replacement

__all__ = [
    "DeltaLossSelectorConfig",
    "DeltaLossSelector",
    "delta_loss_window",
    "delta_loss_weights",
    "UPDATES_PER_EPOCH_KEY",
    "REFERENCE_SIGNAL",
]

#: Key of ``SelectRequest.extras`` holding ``U``, the number of updates per Flex epoch.
UPDATES_PER_EPOCH_KEY = "updates_per_epoch"

#: Name of the signal carrying ``ℓ^ref`` with ``reference: initial`` (kind ``loss``, option
#: ``{"reference": "initial"}``): the losses the integration measured before the first step.
REFERENCE_SIGNAL = "reference_loss"


@dataclass(frozen=True)
class DeltaLossSelectorConfig(ScoredSelectorConfig):
    """Config of the ``delta_loss`` selector (spec §2.4), plus the shared keys of §2.0.

    Attributes:
        window_size: ``w``, the window's width as a fraction of the ranked rows; in (0, 1].
        steepness: ``k``, the sigmoid's steepness (how fast the window slides mid-epoch); >= 0.
        outside_weight: Weight of the rows outside the window (inside: 1); >= 0.
        truncate_negative: End the window at the last row with ``Δ >= 0`` (never favour rows
            whose loss went up).
        reference: ``initial`` (``ℓ^ref`` measured before the first optimizer step) or
            ``first_update`` (measured at the first update, whose window is uniform: the
            predecessor's behaviour).
        batch_size: Batch size of the eval forward that measures the losses (a signal option).
    """

    window_size: float = 0.2
    steepness: float = 10.0
    outside_weight: float = 0.025
    truncate_negative: bool = True
    reference: Literal["initial", "first_update"] = "initial"
    batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.window_size <= 1.0:
            raise ConfigError(f"window_size must be in (0, 1], got {self.window_size!r}.")
        if not (math.isfinite(self.steepness) and self.steepness >= 0):
            raise ConfigError(f"steepness must be a finite number >= 0, got {self.steepness!r}.")
        if not (math.isfinite(self.outside_weight) and self.outside_weight >= 0):
            raise ConfigError(
                f"outside_weight must be a finite number >= 0, got {self.outside_weight!r}."
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}.")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def delta_loss_window(
    num_ranked: int, u: int, U: int, window_size: float = 0.2, steepness: float = 10.0
) -> tuple[int, int, float]:
    """The rank window ``[start, end)`` of update ``u`` (1-based) of ``U`` (spec §2.4).

    ``x = (u−1)/max(U−1, 1)``, ``start = ⌊σ(k(x − ½))·(1−w)·N⌋``, ``end = min(N, start + ⌈w·N⌉)``.

    Returns:
        ``(start, end, sigmoid)``.

    Example (the spec's, ``N=10, w=0.2, k=10, U=3``):
        >>> [delta_loss_window(10, u, 3)[:2] for u in (1, 2, 3)]
        [(0, 2), (4, 6), (7, 9)]
    """
    if U < 1:
        raise DataError(f"delta_loss: updates per epoch must be >= 1, got U = {U}.")
    if not 1 <= u <= U:
        raise DataError(
            f"delta_loss: update u = {u} (1-based) is outside the epoch's 1..U = {U} updates; "
            f"request.extras[{UPDATES_PER_EPOCH_KEY!r}] must be the number of updates per "
            "Flex epoch."
        )
    x = (u - 1) / max(U - 1, 1)
    sig = _sigmoid(steepness * (x - 0.5))
    start = int(math.floor(sig * (1.0 - window_size) * num_ranked))
    end = min(num_ranked, start + int(math.ceil(window_size * num_ranked)))
    return start, end, sig


def delta_loss_weights(
    delta: ArrayLike,
    u: int,
    U: int,
    *,
    window_size: float = 0.2,
    steepness: float = 10.0,
    outside_weight: float = 0.025,
    truncate_negative: bool = True,
) -> NDArray[np.float64]:
    """Sampling weights of the ``delta_loss`` selector from ``Δ = ℓ^ref − ℓ`` (spec §2.4).

    The valid (finite) entries are ranked by ``Δ`` descending, ties to the lower position; ``N``
    in the window formula is the number of valid entries. Rank positions in the window of
    :func:`delta_loss_window` (cut at ``#{Δ >= 0}`` with ``truncate_negative``) get 1, the other
    valid ones ``outside_weight``, invalid ones 0. An empty window gives all valid entries
    weight 1.

    Raises:
        DataError: when no ``Δ`` is finite.
    """
    d = np.asarray(delta, dtype=np.float64)
    if d.ndim != 1:
        raise DataError(f"delta_loss: Δ must be 1-D, got shape {d.shape}.")
    valid = np.flatnonzero(np.isfinite(d))
    if valid.size == 0:
        raise DataError(
            f"delta_loss: none of the {d.size} samples has a finite current and reference loss."
        )
    order = valid[np.argsort(-d[valid], kind="stable")]
    start, end, _ = delta_loss_window(valid.size, u, U, window_size, steepness)
    if truncate_negative:
        end = min(end, int(np.count_nonzero(d[valid] >= 0)))
    w = np.zeros(d.size, dtype=np.float64)
    if start >= end:
        w[valid] = 1.0
        return w
    w[valid] = float(outside_weight)
    w[order[start:end]] = 1.0
    return w


def _json_floats(x: NDArray[np.float64]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in x.tolist()]


class DeltaLossSelector(ScoredSelector):
    """Learning-progress window (spec §2.4) on the shared shell (§2.0).

    Signals, for the candidate rows: ``loss`` (kind ``loss``). While no reference is stored:

    * ``reference: initial``: also ``reference_loss`` (kind ``loss``, options
      ``{"reference": "initial", "batch_size": ...}``) for **all** rows; the integration answers
      with the losses it measured before the first optimizer step.
    * ``reference: first_update``: ``loss`` is asked for all rows; those losses become
      ``ℓ^ref`` and this first window is uniform over the candidates.

    ``request.extras["updates_per_epoch"]`` (``U``) is required at every non-warmup update.
    The window is drawn with ``derive(seed, "delta_loss", epoch, step)``. The state keeps
    ``ℓ^ref`` (N floats, NaN as null) and the step it was measured at; it is kept across Flex
    epochs. ``last_scores`` holds the candidates' ``Δ``.
    """

    config_class = DeltaLossSelectorConfig
    name = "delta_loss"

    def __init__(
        self,
        config: DeltaLossSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        self.config: DeltaLossSelectorConfig
        self.reference: NDArray[np.float64] | None = None
        self.reference_step: int | None = None

    def _signals(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> list[SignalRequest]:
        options = {"batch_size": self.config.batch_size}
        rows = self.rows_of(candidates, request.num_samples)
        if self.reference is None and self.config.reference == "first_update":
            rows = None  # these losses become ℓ^ref for the whole pool
        out = [SignalRequest("loss", "loss", "train", rows, options)]
        if self.reference is None and self.config.reference == "initial":
            out.append(
                SignalRequest(
                    REFERENCE_SIGNAL,
                    "loss",
                    "train",
                    None,
                    {"reference": "initial", "batch_size": self.config.batch_size},
                )
            )
        return out

    def _updates_per_epoch(self, request: SelectRequest) -> int:
        U = request.extras.get(UPDATES_PER_EPOCH_KEY)
        if isinstance(U, bool) or not isinstance(U, (int, np.integer)) or U < 1:
            raise DataError(
                f"{self.what}: request.extras[{UPDATES_PER_EPOCH_KEY!r}] must be the number of "
                f"updates per Flex epoch (an integer >= 1), got {U!r}; the integration must "
                "provide it."
            )
        return int(U)

    def _choose(
        self, request: SelectRequest, candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        size = request.num_samples
        U = self._updates_per_epoch(request)
        draw_seed = derive(self.seed, "delta_loss", request.epoch, request.step)
        if self.reference is None:
            if self.config.reference == "first_update":
                losses = signal_rows(request, "loss", size, self.what)
                self.reference = np.asarray(losses, dtype=np.float64).reshape(-1)
                self.reference_step = int(request.step)
                self.last_scores = (candidates, np.zeros(len(candidates)))
                return candidates[
                    sample_without_replacement(np.ones(len(candidates)), n, draw_seed)
                ]
            ref = signal_rows(request, REFERENCE_SIGNAL, size, self.what)
            self.reference = np.asarray(ref, dtype=np.float64).reshape(-1)
            self.reference_step = 0  # measured before the first optimizer step
        if self.reference.shape != (size,):
            raise StateError(
                f"{self.what}: the stored reference losses cover {self.reference.size} rows but "
                f"the pool has N = {size}; the training dataset changed since they were measured."
            )
        now = np.asarray(
            signal_rows(request, "loss", len(candidates), self.what), dtype=np.float64
        ).reshape(-1)
        delta = self.reference[candidates] - now
        self.last_scores = (candidates, delta)
        cfg = self.config
        w = delta_loss_weights(
            delta,
            request.update + 1,
            U,
            window_size=cfg.window_size,
            steepness=cfg.steepness,
            outside_weight=cfg.outside_weight,
            truncate_negative=cfg.truncate_negative,
        )
        nnz = int(np.count_nonzero(w))
        if n > nnz:
            raise DataError(
                f"{self.what}: asked for {n} distinct rows but only {nnz} of {len(candidates)} "
                "candidates can be drawn (valid Δ, and outside_weight = "
                f"{cfg.outside_weight}); lower the window/budget or raise outside_weight."
            )
        return candidates[sample_without_replacement(w, n, draw_seed)]

    def _extra_state(self) -> dict[str, Any]:
        return {
            "reference": None if self.reference is None else _json_floats(self.reference),
            "reference_step": self.reference_step,
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        ref = state.get("reference")
        try:
            self.reference = (
                None
                if ref is None
                else np.asarray(
                    [math.nan if v is None else float(v) for v in ref], dtype=np.float64
                )
            )
            step = state.get("reference_step")
            self.reference_step = None if step is None else int(step)
        except (TypeError, ValueError) as exc:
            raise StateError(
                f"{self.what}: malformed reference losses in the state: {exc}"
            ) from exc
