"""Structural protocols that components implement (duck typing; no base class required)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from dataflex_core.specs import MixDecision, MixFeedback, SelectRequest, WeightFeedback

__all__ = ["Stateful", "Mixer", "Selector", "Weighter"]


@runtime_checkable
class Stateful(Protocol):
    """Anything whose state can be saved to JSON-safe data and restored exactly."""

    def state_dict(self) -> dict[str, Any]:
        """Return a JSON-safe snapshot (only str keys, lists, numbers, strings, bools, None)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the snapshot produced by :meth:`state_dict`."""
        ...


@runtime_checkable
class Mixer(Stateful, Protocol):
    """Decides domain proportions from per-domain feedback."""

    @property
    def proportions(self) -> tuple[float, ...]:
        """Current proportions (one per domain, on the simplex)."""
        ...

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        """Take feedback (None before any training signal) and return the next decision."""
        ...


@runtime_checkable
class Selector(Stateful, Protocol):
    """Decides which training indices come next."""

    def select(self, request: SelectRequest) -> Sequence[int]:
        """Return ``request.n`` indices in ``[0, request.num_samples)``."""
        ...


@runtime_checkable
class Weighter(Stateful, Protocol):
    """Decides how much each sample of a micro-batch counts in the loss."""

    def weigh(self, feedback: WeightFeedback) -> Any:
        """Return detached, non-negative weights of the same type and length as the losses."""
        ...

    def objective(self, feedback: WeightFeedback, weights: Any) -> Any:
        """This rank's share ``J_r`` of the micro-batch objective, ``J_mu = sum_r J_r``.

        Built from ``feedback.losses`` (keeping their graph) and the detached ``weights``, with
        the weighter's own normalisation over the global micro-batch (e.g. the sample mean
        divides by ``|B_mu|``, not by the local size). The integration multiplies by the world
        size to undo DDP/ZeRO gradient averaging and lets the trainer divide by gradient
        accumulation, so the applied gradient equals the gradient of ``J``.
        """
        ...
