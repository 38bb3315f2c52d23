"""Streaming mixture: draws from one iterable per domain in live proportions (torch-free).

For data that does not fit a map-style dataset (``datasets.IterableDataset`` with
``streaming=True``, generators over shards, web datasets), :class:`StreamingMixture` mixes one
iterable per domain. It yields ``(domain, item)`` pairs, one per **slot**, in the following way.

* The slot sequence is cut into **windows** of ``window_steps · samples_per_step`` slots. Window
  ``u`` takes its proportions when its first slot is drawn: ``proportions_for(u)`` if given,
  else the live proportions last set with :meth:`StreamingMixture.set_proportions` (a mixer's
  decision, say). Its per-domain counts come from ``largest_remainder(p, n)`` (spec §0.3), in an
  order shuffled by ``Generator(PCG64(derive(seed, "stream_window", u)))``
  (``mixture_order="shuffle"``) or laid out by deterministic Megatron-style blending
  (``"blend"``).
* Within a domain, items are taken in the source's own order (a stream cannot be permuted;
  shuffle the source itself, e.g. ``IterableDataset.shuffle(buffer_size=...)``). When a source
  runs out, ``on_exhausted`` decides: ``restart`` iterates it again (calling
  ``source.set_epoch(e)`` when it has one, so a shuffled HF dataset reshuffles), ``stop`` ends the
  mixture, ``error`` raises.
* The slot sequence is a function of the seed and the proportions only, so it is identical on
  every rank. :meth:`StreamingMixture.shard` gives rank ``r`` of ``W`` the slots ``g`` with
  ``(g // block) % W == r``: disjoint slots, identical proportions.

**Resuming.** The state is small: the next slot position, the current window (index,
proportions, per-domain item counts at its start) and each source's pass length once known.
Sources cannot seek, so a restored mixture re-opens every source and skips the items already
consumed: ``c_k mod pass_length_k`` reads for domain ``k`` (whole passes are skipped through
``set_epoch`` when the pass length is known). This costs one read per skipped item, the price of
streaming; a sharded mixture also reads (and drops) the items that belong to other ranks. When
that is too slow, shard the sources themselves (``datasets.distributed.split_dataset_by_node``)
and give every rank an unsharded mixture with the same seed: each rank then draws the same
domain sequence from its own shard.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from dataflex_core import ConfigError, DataError, StateError, derive

from dataflex_mix.primitives import blend_indices, largest_remainder, normalize_proportions

__all__ = ["StreamingMixture"]

T = TypeVar("T")
_SCHEMA = 1


class _Stop(Exception):
    """A source ran out under ``on_exhausted="stop"``."""


class _Reader(Generic[T]):
    """Reads one source by global within-domain index ``c``, restarting passes as configured."""

    def __init__(
        self, source: Iterable[T], name: str, on_exhausted: str, pass_length: int | None
    ) -> None:
        self.source = source
        self.name = name
        self.on_exhausted = on_exhausted
        self.pass_length = pass_length
        self.epoch = 0
        self.offset = 0  # items read in the current pass
        self.index = 0  # global within-domain index of the next item
        self._it: Iterator[T] | None = None

    def _open(self, epoch: int) -> None:
        set_epoch = getattr(self.source, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        self._it = iter(self.source)
        self.epoch = epoch
        self.offset = 0

    def _next(self) -> T:
        if self._it is None:
            self._open(self.epoch)
        assert self._it is not None
        while True:
            try:
                item = next(self._it)
            except StopIteration:
                if self.on_exhausted == "stop":
                    raise _Stop from None
                if self.on_exhausted == "error":
                    raise DataError(
                        f"source {self.name!r} ran out after {self.offset} items (pass "
                        f"{self.epoch}); use on_exhausted='restart' to iterate it again, or "
                        "'stop' to end the mixture."
                    ) from None
                if self.offset == 0:
                    raise DataError(
                        f"source {self.name!r} yielded no items in pass {self.epoch}: it is empty "
                        "or cannot be iterated again (a generator or iterator is consumed once). "
                        "Pass a re-iterable source (a list, a datasets.IterableDataset, an object "
                        "whose __iter__ starts over), or use on_exhausted='stop'."
                    ) from None
                self.pass_length = self.offset
                self._open(self.epoch + 1)
                continue
            self.offset += 1
            self.index += 1
            return item

    def get(self, c: int) -> T:
        """The item with global within-domain index ``c`` (``c >= index``)."""
        if c < self.index:
            raise StateError(
                f"source {self.name!r}: item {c} was already read (next is {self.index})."
            )
        if self.pass_length and c - self.index >= self.pass_length:
            # Skip whole passes without reading them: jump to the pass that holds item c.
            epoch = c // self.pass_length
            self._open(epoch)
            self.index = epoch * self.pass_length
        while self.index < c:
            self._next()
        return self._next()


class StreamingMixture(Generic[T]):
    """Mixes one iterable per domain in live proportions; yields ``(domain, item)`` pairs.

    Args:
        sources: One iterable per domain, in config order (lists, generators,
            ``datasets.IterableDataset``, anything iterable).
        samples_per_step: Slots one optimizer step consumes over all ranks (``G``).
        proportions: Initial live proportions (default uniform); see :meth:`set_proportions`.
        proportions_for: If given, called with the window index ``u`` when window ``u`` starts;
            it overrides the live proportions.
        window_steps: Optimizer steps per window (>= 1); proportions change only between
            windows.
        seed: Base seed of the window orders.
        mixture_order: ``"shuffle"`` (default) or ``"blend"``.
        on_exhausted: ``"restart"`` (default), ``"stop"`` or ``"error"``.
        total_steps: Stop after this many steps' slots (None: run until a ``stop``).
        domain_names: Names for messages and state checks (default ``domain0..``).

    Example:
        >>> mix = StreamingMixture([["a0", "a1"], ["b0"]], samples_per_step=4, seed=0,
        ...                        proportions=[0.5, 0.5], total_steps=1)
        >>> sorted(item for _, item in mix)
        ['a0', 'a1', 'b0', 'b0']
    """

    def __init__(
        self,
        sources: Sequence[Iterable[T]],
        *,
        samples_per_step: int,
        proportions: Sequence[float] | None = None,
        proportions_for: Callable[[int], Sequence[float]] | None = None,
        window_steps: int = 1,
        seed: int = 0,
        mixture_order: Literal["shuffle", "blend"] = "shuffle",
        on_exhausted: Literal["restart", "stop", "error"] = "restart",
        total_steps: int | None = None,
        domain_names: Sequence[str] | None = None,
    ) -> None:
        self.sources = list(sources)
        k = len(self.sources)
        if k == 0:
            raise ConfigError("StreamingMixture needs at least one source (sources is empty).")
        self.domain_names = (
            [str(n) for n in domain_names]
            if domain_names is not None
            else [f"domain{i}" for i in range(k)]
        )
        if len(self.domain_names) != k:
            raise ConfigError(
                f"domain_names has {len(self.domain_names)} entries but there are {k} sources."
            )
        for key, value, low in (
            ("samples_per_step", samples_per_step, 1),
            ("window_steps", window_steps, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}.")
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0
        ):
            raise ConfigError(f"total_steps must be an integer >= 0 or None, got {total_steps!r}.")
        if mixture_order not in ("shuffle", "blend"):
            raise ConfigError(f"mixture_order must be 'shuffle' or 'blend', got {mixture_order!r}.")
        if on_exhausted not in ("restart", "stop", "error"):
            raise ConfigError(
                f"on_exhausted must be 'restart', 'stop' or 'error', got {on_exhausted!r}."
            )
        self.samples_per_step = samples_per_step
        self.window_steps = window_steps
        self.window_size = samples_per_step * window_steps
        self.seed = int(seed)
        self.mixture_order = mixture_order
        self.on_exhausted = on_exhausted
        self.total_steps = total_steps
        self.proportions_for = proportions_for
        self._live = self._check_proportions(
            proportions if proportions is not None else [1.0] * k, "proportions"
        )
        self.rank = 0
        self.world_size = 1
        self.block = 1
        self._reset_progress(position=0, window=None, pass_lengths=[None] * k)

    # ------------------------------------------------------------------ configuration
    def _check_proportions(self, p: Sequence[float], key: str) -> list[float]:
        return [float(x) for x in normalize_proportions(p, len(self.sources), key=key)]

    def set_proportions(self, proportions: Sequence[float]) -> None:
        """Set the live proportions; windows that start from now on use them."""
        self._live = self._check_proportions(proportions, "proportions")

    @property
    def proportions(self) -> list[float]:
        """The live proportions (what the next window uses without ``proportions_for``)."""
        return list(self._live)

    def shard(self, rank: int, world_size: int, block: int = 1) -> StreamingMixture[T]:
        """A copy that yields only the slots of ``rank``: ``(g // block) % world_size == rank``.

        Every rank walks the same slot sequence and keeps its own slots, so the ranks' items
        are disjoint and their mixtures identical. ``block`` keeps runs of ``block`` consecutive
        slots on one rank (e.g. the micro-batch size). The copy starts at this mixture's
        current position and shares its sources.
        """
        for key, value, low in (("world_size", world_size, 1), ("block", block, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}.")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be an integer in [0, {world_size}), got {rank!r}.")
        other: StreamingMixture[T] = StreamingMixture(
            self.sources,
            samples_per_step=self.samples_per_step,
            proportions=self._live,
            proportions_for=self.proportions_for,
            window_steps=self.window_steps,
            seed=self.seed,
            mixture_order=self.mixture_order,
            on_exhausted=self.on_exhausted,
            total_steps=self.total_steps,
            domain_names=self.domain_names,
        )
        other.rank, other.world_size, other.block = rank, world_size, block
        other.load_state_dict(self.state_dict())
        return other

    # ------------------------------------------------------------------ geometry
    @property
    def total_slots(self) -> int | None:
        """Slots over all ranks (``total_steps · samples_per_step``), or None when unbounded."""
        return None if self.total_steps is None else self.total_steps * self.samples_per_step

    def __len__(self) -> int:
        """Slots this (shard of the) mixture yields; only defined with ``total_steps``."""
        total = self.total_slots
        if total is None:
            raise TypeError("an unbounded StreamingMixture has no len(); set total_steps.")
        cycle = self.block * self.world_size
        full, rem = divmod(total, cycle)
        return full * self.block + min(max(rem - self.rank * self.block, 0), self.block)

    @property
    def position(self) -> int:
        """The global index of the next slot this mixture examines."""
        return self._position

    def _owns(self, g: int) -> bool:
        return (g // self.block) % self.world_size == self.rank

    # ------------------------------------------------------------------ windows
    def _reset_progress(
        self,
        position: int,
        window: Mapping[str, Any] | None,
        pass_lengths: Sequence[int | None],
    ) -> None:
        k = len(self.sources)
        self._position = position
        # u -> {"u", "proportions", "start_counts"}: a few recent windows, so that a state can
        # describe a consumed position a loader lags behind.
        self._windows: dict[int, dict[str, Any]] = {}
        self._slots: tuple[int, np.ndarray, np.ndarray] | None = None  # (u, domains, within)
        self._readers = [
            _Reader(src, name, self.on_exhausted, pl)
            for src, name, pl in zip(self.sources, self.domain_names, pass_lengths, strict=True)
        ]
        if window is None:
            self._windows[0] = {"u": 0, "proportions": None, "start_counts": [0] * k}
        else:
            self._windows[int(window["u"])] = {
                "u": int(window["u"]),
                "proportions": None
                if window["proportions"] is None
                else [float(x) for x in window["proportions"]],
                "start_counts": [int(x) for x in window["start_counts"]],
            }

    def _counts(self, p: Sequence[float]) -> np.ndarray:
        return largest_remainder(p, self.window_size)

    def _window(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """Domain and within-domain index of every slot of window ``u`` (built on first use)."""
        if self._slots is not None and self._slots[0] == u:
            return self._slots[1], self._slots[2]
        rec = self._windows.get(u)
        if rec is None:
            prev = self._windows.get(u - 1)
            if prev is None or prev["proportions"] is None:
                raise StateError(
                    f"window {u} cannot be built: window {u - 1} is not recorded (recorded: "
                    f"{sorted(self._windows)})."
                )
            start = np.asarray(prev["start_counts"]) + self._counts(prev["proportions"])
            rec = {"u": u, "proportions": None, "start_counts": [int(x) for x in start]}
            self._windows[u] = rec
        if rec["proportions"] is None:
            raw = self.proportions_for(u) if self.proportions_for is not None else self._live
            rec["proportions"] = self._check_proportions(raw, f"proportions of window {u}")
        for old in [w for w in self._windows if w < u - 2]:
            del self._windows[old]
        p = rec["proportions"]
        n = self.window_size
        if self.mixture_order == "blend":
            domains, _ = blend_indices(p, n)
        else:
            counts = self._counts(p)
            ordered = np.repeat(np.arange(len(self.sources)), counts)
            rng = np.random.Generator(np.random.PCG64(derive(self.seed, "stream_window", u)))
            domains = ordered[rng.permutation(n)]
        within = np.empty(n, dtype=np.int64)
        seen = np.asarray(rec["start_counts"], dtype=np.int64).copy()
        for s, d in enumerate(domains):
            within[s] = seen[d]
            seen[d] += 1
        self._slots = (u, domains.astype(np.int64), within)
        return self._slots[1], self._slots[2]

    def proportions_of_window(self, u: int) -> list[float] | None:
        """Proportions window ``u`` was drawn with, if it has started and is still recorded."""
        rec = self._windows.get(u)
        return None if rec is None or rec["proportions"] is None else list(rec["proportions"])

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[int, T]]:
        """Yield ``(domain, item)`` for this rank's slots, continuing from the current state."""
        total = self.total_slots
        positions = (
            itertools.count(self._position) if total is None else range(self._position, total)
        )
        for g in positions:
            if not self._owns(g):
                continue
            u, s = divmod(g, self.window_size)
            domains, within = self._window(u)
            d = int(domains[s])
            try:
                item = self._readers[d].get(int(within[s]))
            except _Stop:
                return
            self._position = g + 1
            yield d, item
        if total is not None:
            self._position = max(self._position, total)

    # ------------------------------------------------------------------ state
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """JSON-safe state that resumes at global slot ``consumed`` (default: the position).

        Args:
            consumed: Global slots a trainer has actually used (``steps · samples_per_step``);
                must lie in a recorded window or at the start of the next one. Passing it
                makes the state identical on every rank.
        """
        pos = self._position if consumed is None else int(consumed)
        if pos < 0 or (self.total_slots is not None and pos > self.total_slots):
            raise StateError(f"consumed position {pos} is outside [0, {self.total_slots}].")
        u = pos // self.window_size
        rec = self._windows.get(u)
        if rec is None:
            prev = self._windows.get(u - 1)
            if prev is None or prev["proportions"] is None:
                raise StateError(
                    f"cannot describe position {pos}: window {u} is not recorded (recorded: "
                    f"{sorted(self._windows)}); save the state closer to the drawn position."
                )
            start = np.asarray(prev["start_counts"]) + self._counts(prev["proportions"])
            rec = {"u": u, "proportions": None, "start_counts": [int(x) for x in start]}
        return {
            "schema": _SCHEMA,
            "domain_names": list(self.domain_names),
            "samples_per_step": self.samples_per_step,
            "window_steps": self.window_steps,
            "seed": self.seed,
            "mixture_order": self.mixture_order,
            "position": pos,
            "window": {
                "u": int(rec["u"]),
                "proportions": None if rec["proportions"] is None else list(rec["proportions"]),
                "start_counts": list(rec["start_counts"]),
            },
            "live_proportions": list(self._live),
            "pass_lengths": [r.pass_length for r in self._readers],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Sources are re-opened and skipped lazily."""
        if state.get("schema") != _SCHEMA:
            raise StateError(
                f"unknown streaming-mixture state schema {state.get('schema')!r}; "
                f"expected {_SCHEMA}."
            )
        checks = {
            "domain_names": list(self.domain_names),
            "samples_per_step": self.samples_per_step,
            "window_steps": self.window_steps,
            "seed": self.seed,
            "mixture_order": self.mixture_order,
        }
        for key, mine in checks.items():
            if state.get(key) != mine:
                raise StateError(
                    f"streaming-mixture state has {key}={state.get(key)!r} but this mixture has "
                    f"{mine!r}; resume with the same sources, batch size, window and seed."
                )
        k = len(self.sources)
        try:
            window = state["window"]
            if len(window["start_counts"]) != k or len(state["pass_lengths"]) != k:
                raise ValueError("per-domain lists of the wrong length")
            pass_lengths = [None if x is None else int(x) for x in state["pass_lengths"]]
            live = self._check_proportions(state["live_proportions"], "live_proportions")
            position = int(state["position"])
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise StateError(f"invalid streaming-mixture state: {exc}.") from None
        self._live = live
        self._reset_progress(position=position, window=window, pass_lengths=pass_lengths)
