"""Map-style mixture sampler: draws rows of a multi-domain dataset in the current proportions.

The dataset is K domains concatenated in config order (domain ``k`` owns the global rows
``offsets[k] .. offsets[k] + sizes[k] - 1``). The sampler yields one *global* sequence of row
indices, identical on every rank; a distributed loader (accelerate, ``DistributedSampler``-style
sharding) splits it, so ranks see disjoint rows in the same proportions.

The sequence is cut into **windows** of whole optimizer steps. Window ``u`` starts at step
``window_starts[u]`` and draws its ``n`` rows (``n = steps * samples_per_step``) with the
proportions ``proportions_for(u)``, read when the window's first row is drawn:

* counts per domain by ``largest_remainder(p, n)`` (spec §0.3);
* rows within a domain walk a seeded permutation without replacement, reshuffled with a new seed
  when exhausted (``within_domain="permutation"``), or are drawn uniformly with replacement
  (``"with_replacement"``, the predecessor's behaviour);
* the window's (domain, row) list is shuffled with a window seed (``mixture_order="shuffle"``)
  or laid out by deterministic Megatron-style blending (``"blend"``).

Everything is a function of the seed, the window index and the domain positions at the window
start, so :meth:`state_dict` can describe any *consumed* position (a trainer's loader draws
ahead of the step it trains), and a restored sampler continues on exactly the rows an
uninterrupted one would have produced.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from dataflex_core import ConfigError, DataError, StateError, derive

from dataflex_mix.primitives import blend_indices, largest_remainder, normalize_proportions

__all__ = ["MixtureSampler"]

_SCHEMA = 1


class MixtureSampler:
    """Yields global row indices in windows, each drawn with that window's proportions.

    Args:
        domain_sizes: Rows per domain, in config order.
        samples_per_step: Rows one optimizer step consumes over all ranks (``G = b * GA * W``).
        total_steps: Steps the sequence covers; ``len(sampler) = total_steps * samples_per_step``.
        proportions_for: Called with a window index ``u`` when window ``u`` begins; returns its
            proportions (one per domain). It may raise if the decision is not ready.
        window_starts: Step at which each window begins; must start with 0 and increase.
            Default: one window over the whole run.
        seed: Base seed of every derived generator.
        mixture_order: ``"shuffle"`` (default) or ``"blend"``.
        batch_composition: ``"mixed"`` (default: a window's rows are mixed as above),
            ``"pure_micro_batch"`` (every run of ``micro_batch_size`` rows, i.e. one micro-batch
            of one rank, comes from one domain drawn from the window's proportions with the
            window's generator: ODM's arms) or ``"pure_global_batch"`` (one domain per step).
        micro_batch_size: Rows of one micro-batch on one rank (``pure_micro_batch`` only).
        within_domain: ``"permutation"`` (default) or ``"with_replacement"``.
        domain_names: Names for messages and state checks (default ``domain0..``).
    """

    def __init__(
        self,
        domain_sizes: Sequence[int],
        *,
        samples_per_step: int,
        total_steps: int,
        proportions_for: Callable[[int], Sequence[float]],
        window_starts: Sequence[int] = (0,),
        seed: int = 0,
        mixture_order: Literal["shuffle", "blend"] = "shuffle",
        within_domain: Literal["permutation", "with_replacement"] = "permutation",
        domain_names: Sequence[str] | None = None,
        batch_composition: Literal["mixed", "pure_micro_batch", "pure_global_batch"] = "mixed",
        micro_batch_size: int | None = None,
    ) -> None:
        sizes = [int(s) for s in domain_sizes]
        if not sizes:
            raise ConfigError("MixtureSampler needs at least one domain (domain_sizes is empty).")
        self.domain_names = (
            list(domain_names) if domain_names is not None else [f"domain{k}" for k in range(len(sizes))]
        )
        if len(self.domain_names) != len(sizes):
            raise ConfigError(
                f"domain_names has {len(self.domain_names)} entries but domain_sizes has {len(sizes)}."
            )
        for name, size in zip(self.domain_names, sizes, strict=True):
            if size < 0:
                raise ConfigError(f"domain {name!r} has negative size {size}.")
        if samples_per_step < 1:
            raise ConfigError(f"samples_per_step must be >= 1, got {samples_per_step}.")
        if total_steps < 0:
            raise ConfigError(f"total_steps must be >= 0, got {total_steps}.")
        starts = [int(s) for s in window_starts]
        if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ConfigError(
                f"window_starts must begin with 0 and strictly increase, got {list(window_starts)}."
            )
        if mixture_order not in ("shuffle", "blend"):
            raise ConfigError(f"mixture_order must be 'shuffle' or 'blend', got {mixture_order!r}.")
        if within_domain not in ("permutation", "with_replacement"):
            raise ConfigError(
                f"within_domain must be 'permutation' or 'with_replacement', got {within_domain!r}."
            )
        if batch_composition not in ("mixed", "pure_micro_batch", "pure_global_batch"):
            raise ConfigError(
                "batch_composition must be 'mixed', 'pure_micro_batch' or 'pure_global_batch', "
                f"got {batch_composition!r}."
            )
        if batch_composition == "pure_micro_batch":
            if micro_batch_size is None or micro_batch_size < 1 or samples_per_step % micro_batch_size:
                raise ConfigError(
                    f"pure_micro_batch needs micro_batch_size dividing samples_per_step "
                    f"({samples_per_step}), got {micro_batch_size!r}."
                )
        self.batch_composition = batch_composition
        self.unit = (
            int(micro_batch_size) if batch_composition == "pure_micro_batch"  # type: ignore[arg-type]
            else int(samples_per_step) if batch_composition == "pure_global_batch"
            else 1
        )
        self.sizes = sizes
        self.offsets = [0]
        for s in sizes[:-1]:
            self.offsets.append(self.offsets[-1] + s)
        self.samples_per_step = int(samples_per_step)
        self.total_steps = int(total_steps)
        self.window_starts = [s for s in starts if s < max(self.total_steps, 1)]
        self.proportions_for = proportions_for
        self.seed = int(seed)
        self.mixture_order = mixture_order
        self.within_domain = within_domain
        # Per-domain permutation stream: (epoch, position) for each domain.
        self._domain_epoch = [0] * len(sizes)
        self._domain_pos = [0] * len(sizes)
        self._position = 0  # rows drawn so far
        # Windows started so far: u -> record (start row, proportions, domain state at start).
        self._windows: dict[int, dict[str, Any]] = {}
        self._current: tuple[int, np.ndarray] | None = None  # (u, rows of window u)
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}
        self._rows_cache: dict[int, np.ndarray] = {}  # rows of the last few windows drawn

    # ------------------------------------------------------------------ geometry
    def __len__(self) -> int:
        return self.total_steps * self.samples_per_step

    @property
    def position(self) -> int:
        """Rows drawn so far (may run ahead of the rows a trainer has consumed)."""
        return self._position

    def window_of_step(self, step: int) -> int:
        """Index of the window containing optimizer step ``step``."""
        return bisect.bisect_right(self.window_starts, step) - 1

    def _window_bounds(self, u: int) -> tuple[int, int]:
        start = self.window_starts[u] * self.samples_per_step
        end_step = self.window_starts[u + 1] if u + 1 < len(self.window_starts) else self.total_steps
        return start, end_step * self.samples_per_step

    # ------------------------------------------------------------------ drawing
    def _take(self, k: int, count: int, u: int) -> np.ndarray:
        size = self.sizes[k]
        if count == 0:
            return np.empty(0, dtype=np.int64)
        if size == 0:
            raise DataError(
                f"domain {self.domain_names[k]!r} has no rows but window {u} gives it a positive "
                "proportion; remove the domain or give it proportion 0."
            )
        if self.within_domain == "with_replacement":
            rng = np.random.Generator(np.random.PCG64(derive(self.seed, "with_replacement", k, u)))
            return self.offsets[k] + rng.integers(0, size, size=count, dtype=np.int64)
        out = []
        need = count
        while need > 0:
            perm = self._permutation(k, self._domain_epoch[k])
            pos = self._domain_pos[k]
            chunk = perm[pos : pos + need]
            out.append(chunk)
            need -= len(chunk)
            self._domain_pos[k] = pos + len(chunk)
            if self._domain_pos[k] >= size:
                self._domain_epoch[k] += 1
                self._domain_pos[k] = 0
        return self.offsets[k] + np.concatenate(out).astype(np.int64)

    def _permutation(self, k: int, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(k)
        if cached is None or cached[0] != epoch:
            rng = np.random.Generator(np.random.PCG64(derive(self.seed, "domain", k, epoch)))
            cached = (epoch, rng.permutation(self.sizes[k]))
            self._perm_cache[k] = cached
        return cached[1]

    def _build_window(self, u: int, proportions: np.ndarray) -> np.ndarray:
        start, end = self._window_bounds(u)
        n = end - start
        if self.batch_composition != "mixed":
            # One domain per unit (micro-batch or step), drawn from p by the window's generator;
            # rows of a unit walk that domain's permutation.
            rng = np.random.Generator(np.random.PCG64(derive(self.seed, "units", u)))
            units = rng.choice(len(self.sizes), size=n // self.unit, p=proportions)
            return np.concatenate([self._take(int(k), self.unit, u) for k in units]).astype(np.int64)
        if self.mixture_order == "blend":
            domains, _ = blend_indices(proportions, n)
            counts = np.bincount(domains, minlength=len(self.sizes))
            pools = [self._take(k, int(counts[k]), u) for k in range(len(self.sizes))]
            cursor = [0] * len(self.sizes)
            rows = np.empty(n, dtype=np.int64)
            for i, k in enumerate(domains):
                rows[i] = pools[k][cursor[k]]
                cursor[k] += 1
            return rows
        counts = largest_remainder(proportions, n)
        rows = np.concatenate([self._take(k, int(counts[k]), u) for k in range(len(self.sizes))])
        order = np.random.Generator(np.random.PCG64(derive(self.seed, "window", u))).permutation(n)
        return rows[order]

    def _start_window(self, u: int, proportions: Sequence[float] | None = None) -> None:
        if proportions is None:
            proportions = self.proportions_for(u)
        p = normalize_proportions(proportions, len(self.sizes), key=f"proportions of window {u}")
        empty = [self.domain_names[k] for k in range(len(p)) if p[k] > 0 and self.sizes[k] == 0]
        if empty:
            raise DataError(
                f"domain(s) {empty} have no rows but a positive proportion in window {u}; "
                "remove them from the dataset list or give them proportion 0."
            )
        self._windows[u] = {
            "u": u,
            "proportions": [float(x) for x in p],
            "domain_epoch": list(self._domain_epoch),
            "domain_pos": list(self._domain_pos),
        }
        # Keep only a few recent windows: enough to describe any position a loader lags behind.
        for old in [w for w in self._windows if w < u - 2]:
            del self._windows[old]
        self._current = (u, self._build_window(u, p))
        self._rows_cache[u] = self._current[1]
        for old in [w for w in self._rows_cache if w < u - 2]:
            del self._rows_cache[old]

    def __iter__(self) -> Iterator[int]:
        while self._position < len(self):
            step = self._position // self.samples_per_step
            u = self.window_of_step(step)
            if self._current is None or self._current[0] != u:
                self._start_window(u)
            assert self._current is not None
            start, _ = self._window_bounds(u)
            rows = self._current[1]
            row = int(rows[self._position - start])
            self._position += 1
            yield row

    def rows_for_step(self, step: int) -> np.ndarray:
        """Global rows of optimizer step ``step`` (its window must have started recently).

        A trainer uses this to know a step's whole global batch before its first backward,
        e.g. DoReMi's per-domain token counts ``Z_k``.
        """
        u = self.window_of_step(step)
        rows = self._rows_cache.get(u)
        if rows is None:
            raise StateError(
                f"rows of step {step} (window {u}) are not available: the window has not started "
                f"or is too old (kept: {sorted(self._rows_cache)})."
            )
        start, _ = self._window_bounds(u)
        lo = step * self.samples_per_step - start
        return rows[lo : lo + self.samples_per_step]

    def proportions_of_window(self, u: int) -> list[float] | None:
        """Proportions window ``u`` was drawn with, if it has started and is still recorded."""
        rec = self._windows.get(u)
        return list(rec["proportions"]) if rec else None

    # ------------------------------------------------------------------ state
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """JSON-safe state that resumes the sequence at row ``consumed`` (default: drawn rows).

        Args:
            consumed: Rows a trainer has actually used (``completed_steps * samples_per_step``);
                must lie in a window that has started (or be the start of the next one).
        """
        pos = self._position if consumed is None else int(consumed)
        if pos < 0 or pos > len(self):
            raise StateError(f"consumed position {pos} is outside [0, {len(self)}].")
        step = min(pos // self.samples_per_step, max(self.total_steps - 1, 0))
        u = self.window_of_step(step) if self.total_steps else 0
        rec = self._windows.get(u)
        state: dict[str, Any] = {
            "schema": _SCHEMA,
            "domain_names": list(self.domain_names),
            "domain_sizes": list(self.sizes),
            "samples_per_step": self.samples_per_step,
            "total_steps": self.total_steps,
            "window_starts": list(self.window_starts),
            "seed": self.seed,
            "mixture_order": self.mixture_order,
            "within_domain": self.within_domain,
            "batch_composition": self.batch_composition,
            "unit": self.unit,
            "position": pos,
            "window": None,
        }
        if rec is not None:
            state["window"] = dict(rec)
        elif pos > self.window_starts[u] * self.samples_per_step:
            raise StateError(
                f"position {pos} lies inside window {u}, which this sampler has not recorded "
                f"(recorded: {sorted(self._windows)}); save the state closer to the drawn position."
            )
        else:
            # Window u has not started: resuming draws it fresh from the current domain state,
            # which is valid only if no later window started either.
            if any(w >= u for w in self._windows):
                raise StateError(f"cannot describe position {pos}: window {u} state was dropped.")
            state["window"] = {
                "u": u,
                "proportions": None,
                "domain_epoch": list(self._domain_epoch),
                "domain_pos": list(self._domain_pos),
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; the next ``iter`` continues from it."""
        if state.get("schema") != _SCHEMA:
            raise StateError(f"unknown sampler state schema {state.get('schema')!r}; expected {_SCHEMA}.")
        checks = {
            "domain_names": list(self.domain_names),
            "domain_sizes": list(self.sizes),
            "samples_per_step": self.samples_per_step,
            "total_steps": self.total_steps,
            "window_starts": list(self.window_starts),
            "seed": self.seed,
            "mixture_order": self.mixture_order,
            "within_domain": self.within_domain,
            "batch_composition": self.batch_composition,
            "unit": self.unit,
        }
        for key, mine in checks.items():
            if state.get(key) != mine:
                raise StateError(
                    f"sampler state has {key}={state.get(key)!r} but this run has {mine!r}; "
                    "resume with the same datasets, batch sizes, schedule and seed."
                )
        win = state["window"]
        u = int(win["u"])
        self._domain_epoch = [int(x) for x in win["domain_epoch"]]
        self._domain_pos = [int(x) for x in win["domain_pos"]]
        self._windows = {}
        self._current = None
        self._rows_cache = {}
        if win["proportions"] is not None:
            self._start_window(u, win["proportions"])
        self._position = int(state["position"])
