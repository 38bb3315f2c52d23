"""When components update (algorithms spec §5.1), as pure arithmetic on the step counter.

``s`` is the number of completed optimizer steps. Updates are checked before the step that
follows ``s`` is taken, so an update "at s" sees the feedback of steps ``< s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dataflex_core.errors import ConfigError

__all__ = ["TRAIN_TYPES", "Schedule"]

TRAIN_TYPES: tuple[str, ...] = ("static", "dynamic_select", "dynamic_mix", "dynamic_weight")


@dataclass(frozen=True)
class Schedule:
    """The update schedule of a run.

    Attributes:
        train_type: One of :data:`TRAIN_TYPES`.
        warmup_step: Steps before the first update (select, mix) or the first weighted step.
        update_step: Steps between updates (>= 1 for select and mix).
        update_times: Select: updates per Flex epoch (<= 0: derived from the pool size). Mix:
            total updates (<= 0: until ``max_steps``).
        epoch_length: Flex epoch length ``E`` (select only; see :meth:`select_epoch_length`).
    """

    train_type: str = "static"
    warmup_step: int = 0
    update_step: int = 1
    update_times: int = 1
    epoch_length: int | None = None

    def __post_init__(self) -> None:
        if self.train_type not in TRAIN_TYPES:
            raise ConfigError(
                f"train_type {self.train_type!r} is not valid; use one of {', '.join(TRAIN_TYPES)}."
            )
        if self.warmup_step < 0:
            raise ConfigError(f"warmup_step must be >= 0, got {self.warmup_step}.")
        if self.train_type in ("dynamic_select", "dynamic_mix") and self.update_step < 1:
            raise ConfigError(
                f"update_step must be >= 1 for train_type {self.train_type!r}, got "
                f"{self.update_step}; set e.g. update_step: 10."
            )
        if self.epoch_length is not None and self.epoch_length <= self.warmup_step and (
            self.train_type == "dynamic_select"
        ):
            raise ConfigError(
                f"Flex epoch length {self.epoch_length} must exceed warmup_step {self.warmup_step}."
            )

    # ------------------------------------------------------------------ select
    def select_epoch_length(self, num_samples: int, global_batch: int) -> int:
        """``E = warmup + update_step * update_times``, or ``ceil(N / G)`` if update_times <= 0."""
        if self.update_times >= 1:
            return self.warmup_step + self.update_step * self.update_times
        return math.ceil(num_samples / global_batch)

    def select_updates_per_epoch(self, epoch_length: int) -> int:
        """``U = ceil((E - warmup) / update_step)``."""
        return math.ceil((epoch_length - self.warmup_step) / self.update_step)

    def _E(self) -> int:
        if self.epoch_length is None:
            raise ConfigError("this schedule has no epoch_length; set it for dynamic_select.")
        return self.epoch_length

    def epoch(self, s: int) -> int:
        """Flex epoch of step ``s`` (0 for types without epochs)."""
        return s // self._E() if self.train_type == "dynamic_select" else 0

    def position(self, s: int) -> int:
        """Position ``r`` of ``s`` inside its Flex epoch (``s`` itself without epochs)."""
        return s % self._E() if self.train_type == "dynamic_select" else s

    def is_epoch_start(self, s: int) -> bool:
        """True when ``s`` opens a Flex epoch (a fresh warmup draw is due)."""
        return self.train_type == "dynamic_select" and self.position(s) == 0

    def is_update(self, s: int) -> bool:
        """True when a component updates at ``s``."""
        if self.train_type in ("static", "dynamic_weight"):
            return False
        r = self.position(s)
        w = self.warmup_step
        if r < w:
            return False
        if (r - w) % self.update_step != 0:
            return False
        if self.train_type == "dynamic_mix" and self.update_times >= 1:
            return (r - w) // self.update_step < self.update_times
        return True

    def update_index(self, s: int) -> int:
        """0-based index of the update at ``s`` (within its epoch for select)."""
        return (self.position(s) - self.warmup_step) // self.update_step

    def is_weighted(self, s: int) -> bool:
        """True when weighting applies at ``s`` (``dynamic_weight`` and ``s >= warmup_step``)."""
        return self.train_type == "dynamic_weight" and s >= self.warmup_step

    # ------------------------------------------------------------------ totals
    def mix_total_steps(self, train_step: int, pool_size: int, global_batch: int, epochs: float) -> int:
        """Total optimizer steps of a ``dynamic_mix`` run (spec §5.1)."""
        if self.update_times >= 1:
            return self.warmup_step + self.update_step * self.update_times
        if train_step > 0:
            return train_step
        return int((pool_size // global_batch) * epochs)

    def select_total_steps(self, train_step: int, epochs: float) -> int:
        """Total optimizer steps of a ``dynamic_select`` run (spec §5.1)."""
        if train_step > 0:
            return train_step
        return math.ceil(epochs * self._E())
