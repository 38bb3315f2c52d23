"""The shell every signal-driven selector shares (algorithms spec §2.0).

A selector built on :class:`ScoredSelector` implements two methods:

* ``_signals(request, candidates) -> list[SignalRequest]``: what it needs computed (per-sample
  losses, embeddings, gradient features, raw text) for the ``candidates`` rows of the pool and
  for the target set. The integration computes them and passes them back in
  ``request.extras[name]``, one row per candidate (in ``candidates`` order).
* ``_choose(request, candidates, n) -> indices``: pick ``n`` pool indices from ``candidates``
  using those signals.

The shell does everything else the spec asks of every selector, so that no algorithm repeats it:

* the warmup draw of each Flex epoch (uniform, ``derive(seed, "warmup", epoch)``; §2.2);
* ``candidate_subsample``: a seeded random subset is scored at each update; the rest get score
  ``−∞`` (never chosen) for that update;
* ``exclude_recent``: indices picked in the last ``r`` windows are not candidates;
* ``selection_scope: pool``: pick ``budget`` rows once (again at later updates only with
  ``refresh: true``), then serve windows that walk seeded permutations of that subset;
* a JSON-safe state that resumes exactly (the pool subset, its cursor, the recent windows).

Everything is numpy; no model is ever run here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    SelectRequest,
    SignalRequest,
    StateError,
    derive,
    parse_config,
)
from numpy.typing import NDArray

from dataflex_select.primitives import generator, sample_without_replacement
from dataflex_select.selectors import check_request, warmup_indices

__all__ = [
    "ScoredSelectorConfig",
    "ScoredSelector",
    "budget_count",
    "signal_rows",
]


def _ceil_fraction(fraction: float, num_samples: int) -> int:
    """``⌈fraction · N⌉`` of the decimal value: ``0.07 · 100`` is 7 (binary floating point gives
    7.000000000000001, whose ceiling would be 8)."""
    return int(math.ceil(round(fraction * num_samples, 9)))


def budget_count(budget: float | int, num_samples: int, key: str = "budget") -> int:
    """Resolve a budget given as a fraction of the pool (``0 < b <= 1``, float) or a count.

    Raises:
        DataError: when the budget is at most zero or larger than the pool.
    """
    if isinstance(budget, bool):
        raise ConfigError(f"{key} must be a fraction in (0, 1] or a row count, got {budget!r}.")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise DataError(
                f"{key} = {budget!r}: a fractional {key} must be in (0, 1]; give a row count "
                f"(an integer) for an absolute size."
            )
        return max(1, _ceil_fraction(budget, num_samples))
    count = int(budget)
    if count < 1:
        raise DataError(f"{key} = {budget!r} selects nothing; it must be >= 1 (or a fraction).")
    if count > num_samples:
        raise DataError(
            f"{key} = {count} is larger than the pool of N = {num_samples} rows; lower it, or "
            "give a fraction such as 0.05."
        )
    return count


def signal_rows(request: SelectRequest, name: str, rows: int, what: str) -> Any:
    """``request.extras[name]``, checked to hold ``rows`` rows (clear errors otherwise)."""
    if name not in request.extras:
        raise DataError(
            f"{what}: the signal {name!r} is missing from request.extras; the caller must compute "
            "every SignalRequest returned by selector.signals(request) before select(request)."
        )
    value = request.extras[name]
    got = len(value)
    if got != rows:
        raise DataError(
            f"{what}: signal {name!r} has {got} rows but {rows} were requested; the rows must "
            "follow the signal's `indices`."
        )
    return value


@dataclass(frozen=True)
class ScoredSelectorConfig:
    """Keys every signal-driven selector has (spec §2.0).

    Attributes:
        seed: Base seed; None means the run seed.
        selection_scope: ``window`` (every update picks the next window) or ``pool`` (pick
            ``budget`` rows once, then walk seeded permutations of them).
        budget: ``pool`` scope size: a fraction of ``N`` in (0, 1] (float) or a row count (int).
        refresh: ``pool`` scope: re-pick the subset at every update.
        candidate_subsample: Score only a seeded random subset per update: a fraction (float)
            or a count (int); null scores the whole pool.
        exclude_recent: Exclude indices picked in the last ``r`` windows.
    """

    seed: int | None = None
    selection_scope: Literal["window", "pool"] = "window"
    # int before float: parse_config tries union members in order and would turn a count of
    # 5 into the fraction 5.0.
    budget: int | float = 0.05
    refresh: bool = False
    candidate_subsample: int | float | None = None
    exclude_recent: int = 0

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0 or null (the run seed), got {self.seed!r}.")
        if self.exclude_recent < 0:
            raise ConfigError(f"exclude_recent must be >= 0, got {self.exclude_recent!r}.")
        b = self.budget
        if isinstance(b, float) and not 0.0 < b <= 1.0:
            raise ConfigError(
                f"budget = {b!r}: a fractional budget must be in (0, 1]; use an integer for a "
                "row count."
            )
        if isinstance(b, int) and not isinstance(b, bool) and b < 1:
            raise ConfigError(f"budget = {b!r} selects nothing; it must be >= 1 or a fraction.")
        c = self.candidate_subsample
        if c is not None:
            if isinstance(c, float) and not 0.0 < c <= 1.0:
                raise ConfigError(
                    f"candidate_subsample = {c!r}: a fraction must be in (0, 1]; use an integer "
                    "for a count, or null to score the whole pool."
                )
            if isinstance(c, int) and c < 1:
                raise ConfigError(f"candidate_subsample = {c!r} must be >= 1, a fraction, or null.")


class ScoredSelector:
    """Base class of the signal-driven selectors; see the module docstring.

    Subclasses set ``config_class`` (a dataclass extending :class:`ScoredSelectorConfig`),
    ``name``, and implement :meth:`_signals` and :meth:`_choose`. ``distinct`` says whether
    ``_choose`` returns distinct indices (False for with-replacement samplers such as TSDS).
    """

    config_class: ClassVar[type] = ScoredSelectorConfig
    name: ClassVar[str] = ""
    distinct: ClassVar[bool] = True

    def __init__(self, config: Any = None, context: ComponentContext | None = None) -> None:
        self.config: Any = parse_config(self.config_class, config, where=f"selector {self.name!r}")
        self.context = context if context is not None else ComponentContext()
        self.seed: int = (
            int(self.config.seed) if self.config.seed is not None else int(self.context.seed)
        )
        self.selections = 0
        self._pool: NDArray[np.int64] | None = None  # pool-scope subset
        self._pool_step = -1  # step at which the subset was picked
        self._pool_cursor = 0  # windows served from the subset, in rows
        self._recent: list[list[int]] = []  # last `exclude_recent` windows
        # rows whose signal had no valid value (e.g. no unmasked token): never chosen, not even
        # by a random fill
        self._invalid_rows: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        #: ``(indices, scores)`` of the last scored update, for reports (scores NaN = unscored).
        self.last_scores: tuple[NDArray[np.int64], NDArray[np.float64]] | None = None

    @property
    def what(self) -> str:
        return f"selector {self.name!r}"

    # ------------------------------------------------------------------ to implement

    def _signals(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> list[SignalRequest]:
        """Signals needed to choose among ``candidates`` (rows of the pool)."""
        return []

    def _choose(
        self, request: SelectRequest, candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        """Pick ``n`` pool indices from ``candidates`` (signals are in ``request.extras``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _extra_state(self) -> dict[str, Any]:
        """Algorithm state beyond the shell's (JSON-safe)."""
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`_extra_state`."""

    # ------------------------------------------------------------------ shell

    def note_invalid_rows(self, rows: Any, values: Any) -> None:
        """Remember the pool ``rows`` whose signal ``values`` (one row each) are not finite."""
        arr = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            self._invalid_rows = np.union1d(self._invalid_rows, np.asarray(rows)[bad]).astype(np.int64)

    def allowed_mask(self, request: SelectRequest, candidates: NDArray[np.int64]) -> NDArray[np.bool_]:
        """A length-``N`` mask of the candidates, without rows noted invalid."""
        allowed = np.zeros(request.num_samples, dtype=bool)
        allowed[candidates] = True
        allowed[self._invalid_rows] = False
        return allowed

    def candidates(self, request: SelectRequest) -> NDArray[np.int64]:
        """The pool rows scored at this update, ascending (``candidate_subsample``, recent)."""
        size = request.num_samples
        c = self.config.candidate_subsample
        if c is None:
            cand = np.arange(size, dtype=np.int64)
        else:
            m = min(size, _ceil_fraction(c, size) if isinstance(c, float) else int(c))
            seed = derive(self.seed, "candidates", request.epoch, request.step)
            cand = np.sort(sample_without_replacement(np.ones(size), m, seed))
        if self.config.exclude_recent and self._recent:
            recent = np.unique(
                np.concatenate([np.asarray(w, dtype=np.int64) for w in self._recent])
            )
            cand = cand[~np.isin(cand, recent)]
        return cand

    def _picks_now(self, request: SelectRequest) -> bool:
        """Whether this (non-warmup) request scores the pool: always in window scope."""
        if self.config.selection_scope == "window":
            return True
        return self._pool is None or (self.config.refresh and request.step != self._pool_step)

    def signals(self, request: SelectRequest) -> list[SignalRequest]:
        """What the integration must compute before :meth:`select` answers ``request``."""
        check_request(request, self.what)
        if request.warmup or not self._picks_now(request):
            return []
        return self._signals(request, self.candidates(request))

    def choose(self, request: SelectRequest, n: int) -> NDArray[np.int64]:
        """Score the candidates and pick ``n`` of them (the offline path; no scope logic)."""
        cand = self.candidates(request)
        if n > len(cand) and self.distinct:
            raise DataError(
                f"{self.what}: asked for {n} distinct rows but only {len(cand)} candidates "
                f"remain (pool N = {request.num_samples}, candidate_subsample = "
                f"{self.config.candidate_subsample!r}, exclude_recent = "
                f"{self.config.exclude_recent}); lower the budget/window or score more rows."
            )
        out = np.asarray(self._choose(request, cand, n), dtype=np.int64)
        if out.shape != (n,):
            raise DataError(f"{self.what}: chose {out.shape} indices, expected ({n},).")
        return out

    def _pool_window(self, n: int) -> NDArray[np.int64]:
        assert self._pool is not None
        size = len(self._pool)
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            pass_no, pos = divmod(self._pool_cursor, size)
            perm = generator(
                derive(self.seed, "pool_window", self._pool_step, pass_no)
            ).permutation(size)
            take = min(n - filled, size - pos)
            out[filled : filled + take] = self._pool[perm[pos : pos + take]]
            filled += take
            self._pool_cursor += take
        return out

    def select(self, request: SelectRequest) -> list[int]:
        """Answer ``request``: the warmup draw, a scored window, or a window of the pool subset."""
        check_request(request, self.what)
        n, size = request.n, request.num_samples
        if request.warmup:
            self.selections += 1
            return warmup_indices(self.seed, request.epoch, n, size).tolist()
        if self.config.selection_scope == "pool":
            if self._picks_now(request):
                b = budget_count(self.config.budget, size)
                self._pool = np.sort(self.choose(request, b))
                self._pool_step = request.step
                self._pool_cursor = 0
            out = self._pool_window(n)
        else:
            out = self.choose(request, n)
        if self.config.exclude_recent:
            self._recent.append(out.tolist())
            self._recent = self._recent[-self.config.exclude_recent :]
        self.selections += 1
        return out.tolist()

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: seed, counters, the pool subset and cursor, recent windows."""
        return {
            "seed": self.seed,
            "selections": self.selections,
            "pool": None if self._pool is None else self._pool.tolist(),
            "pool_step": self._pool_step,
            "pool_cursor": self._pool_cursor,
            "recent": [list(w) for w in self._recent],
            "invalid_rows": self._invalid_rows.tolist(),
            "algorithm": self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the seed must match this run's."""
        seed = state.get("seed")
        if seed != self.seed:
            raise StateError(
                f"{self.what}: the saved state was made with seed {seed!r} but this run has seed "
                f"{self.seed}; resume with `seed: {seed}` (or the same run seed)."
            )
        try:
            selections = int(state.get("selections", 0))
            pool = state.get("pool")
            self._pool = None if pool is None else np.asarray(pool, dtype=np.int64)
            self._pool_step = int(state.get("pool_step", -1))
            self._pool_cursor = int(state.get("pool_cursor", 0))
            self._recent = [[int(i) for i in w] for w in state.get("recent", [])]
            self._invalid_rows = np.asarray(state.get("invalid_rows", []), dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise StateError(f"{self.what}: malformed saved state: {exc}") from exc
        self.selections = selections
        self._load_extra_state(state.get("algorithm", {}) or {})

    @staticmethod
    def rows_of(candidates: NDArray[np.int64], num_samples: int) -> tuple[int, ...] | None:
        """``SignalRequest.indices`` for ``candidates``: None when they are the whole pool."""
        if len(candidates) == num_samples:
            return None
        return tuple(int(i) for i in candidates)


def scores_to_report(
    candidates: Sequence[int], scores: NDArray[np.float64], num_samples: int
) -> NDArray[np.float64]:
    """A length-``N`` score vector with NaN for unscored rows (reports and plots)."""
    full = np.full(num_samples, np.nan)
    full[np.asarray(candidates, dtype=np.int64)] = scores
    return full
