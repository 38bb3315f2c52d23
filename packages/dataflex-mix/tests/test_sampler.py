"""MixtureSampler: proportions per window, determinism, disjointness, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, StateError
from dataflex_mix.sampler import MixtureSampler


def make(props=None, **kw):
    props = props or {0: [0.5, 0.25, 0.25]}  # window start step -> proportions
    by_window = [props[k] for k in sorted(props)]
    args = dict(
        samples_per_step=8,
        total_steps=10,
        proportions_for=lambda u: by_window[u],
        window_starts=sorted(props),
        seed=3,
    )
    args.update(kw)
    return MixtureSampler([40, 20, 30], **args)


def domain_of(rows, offsets=(0, 40, 60)):
    return np.searchsorted(np.asarray(offsets), np.asarray(rows), side="right") - 1


def test_window_counts_follow_largest_remainder():
    s = make({0: [0.5, 0.25, 0.25], 5: [0.1, 0.0, 0.9]})
    rows = list(s)
    assert len(rows) == len(s) == 80
    d0 = np.bincount(domain_of(rows[:40]), minlength=3)
    d1 = np.bincount(domain_of(rows[40:]), minlength=3)
    # n = 40 rows: 0.5*40=20, 0.25*40=10, 10 ; second window 4, 0, 36 (exact, no remainder).
    assert d0.tolist() == [20, 10, 10]
    assert d1.tolist() == [4, 0, 36]


def test_largest_remainder_rounding_in_a_window():
    s = MixtureSampler([50, 50, 50], samples_per_step=10, total_steps=1,
                       proportions_for=lambda u: [0.5, 0.25, 0.25])
    counts = np.bincount(domain_of(list(s), (0, 50, 100)), minlength=3)
    assert counts.tolist() == [5, 3, 2]  # spec §0.3 example


def test_rows_within_domain_without_replacement_then_reshuffle():
    s = MixtureSampler([7], samples_per_step=7, total_steps=3, proportions_for=lambda u: [1.0],
                       window_starts=[0, 1, 2])
    rows = list(s)
    for i in range(3):
        assert sorted(rows[7 * i : 7 * i + 7]) == list(range(7))
    assert rows[:7] != rows[7:14]  # a new permutation each pass


def test_deterministic_and_seed_dependent():
    assert list(make()) == list(make())
    assert list(make()) != list(make(seed=4))


def test_blend_order_is_megatron_deterministic():
    s = MixtureSampler([10, 10], samples_per_step=4, total_steps=1,
                       proportions_for=lambda u: [0.75, 0.25], mixture_order="blend")
    assert domain_of(list(s), (0, 10)).tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("stop", [0, 3, 17, 40, 41, 63, 80])
def test_resume_at_any_consumed_position(stop):
    props = {0: [0.5, 0.25, 0.25], 5: [0.2, 0.3, 0.5], 8: [0.0, 0.5, 0.5]}
    full = list(make(props))
    a = make(props)
    it = iter(a)
    # Draw a few rows beyond the consumed position, like a prefetching loader.
    drawn = [next(it) for _ in range(min(stop + 5, len(a)))]
    assert drawn == full[: len(drawn)]
    state = json.loads(json.dumps(a.state_dict(consumed=stop)))
    b = make(props)
    b.load_state_dict(state)
    assert list(b) == full[stop:]


def test_proportions_read_when_window_starts():
    asked = []

    def pf(u):
        asked.append(u)
        return [1, 1, 1]

    s = make(proportions_for=pf, window_starts=[0, 2, 4])
    it = iter(s)
    next(it)
    assert asked == [0]
    for _ in range(16):
        next(it)
    assert asked == [0, 1]


def test_missing_decision_raises_clear_error():
    def pf(u):
        if u > 0:
            raise DataError("decision not ready")
        return [1, 1, 1]

    with pytest.raises(DataError, match="not ready"):
        list(make(proportions_for=pf, window_starts=[0, 2]))


def test_bad_inputs():
    with pytest.raises(ConfigError, match="window_starts"):
        make(window_starts=[1, 2])
    with pytest.raises(ConfigError):
        list(make({0: [0.5, -0.5, 1.0]}))
    with pytest.raises(DataError, match="no rows"):
        list(MixtureSampler([5, 0], samples_per_step=2, total_steps=1, proportions_for=lambda u: [0.5, 0.5]))
    s = make()
    state = s.state_dict(consumed=0)
    other = MixtureSampler([40, 20, 31], samples_per_step=8, total_steps=10,
                           proportions_for=lambda u: [1, 1, 1], seed=3)
    with pytest.raises(StateError, match="domain_sizes"):
        other.load_state_dict(state)


def test_ranks_get_disjoint_shards_of_one_sequence():
    # A distributed loader gives rank r the batches r, r+W, ... of the same global sequence.
    seq = list(make())
    b, world = 4, 2
    batches = [seq[i : i + b] for i in range(0, len(seq), b)]
    r0 = [x for bt in batches[0::world] for x in bt]
    r1 = [x for bt in batches[1::world] for x in bt]
    for step in range(10):  # within one optimizer step the ranks never share a row
        a = set(r0[step * b : (step + 1) * b])
        c = set(r1[step * b : (step + 1) * b])
        assert not a & c


@pytest.mark.parametrize(("composition", "unit"), [("pure_micro_batch", 4), ("pure_global_batch", 8)])
def test_pure_units_come_from_one_domain(composition, unit):
    props = {0: [0.5, 0.25, 0.25], 4: [0.1, 0.1, 0.8]}
    s = make(props, batch_composition=composition, micro_batch_size=4)
    rows = list(s)
    doms = domain_of(rows)
    for i in range(0, len(rows), unit):
        assert len(set(doms[i : i + unit].tolist())) == 1
    # deterministic, and resumable mid-window like the mixed composition
    assert rows == list(make(props, batch_composition=composition, micro_batch_size=4))
    a = make(props, batch_composition=composition, micro_batch_size=4)
    it = iter(a)
    for _ in range(45):
        next(it)
    b = make(props, batch_composition=composition, micro_batch_size=4)
    b.load_state_dict(json.loads(json.dumps(a.state_dict(consumed=37))))
    assert list(b) == rows[37:]


def test_pure_units_follow_proportions_in_distribution():
    s = MixtureSampler([10_000, 10_000], samples_per_step=2, total_steps=4000,
                       proportions_for=lambda u: [0.8, 0.2], batch_composition="pure_micro_batch",
                       micro_batch_size=2)
    doms = domain_of(list(s), (0, 10_000))
    assert abs(doms.mean() - 0.2) < 0.02  # 4000 draws: std of the share is 0.0063


def test_pure_micro_batch_needs_a_dividing_size():
    with pytest.raises(ConfigError, match="micro_batch_size"):
        make(batch_composition="pure_micro_batch", micro_batch_size=3)


def test_rows_for_step_matches_the_drawn_sequence():
    props = {0: [0.5, 0.25, 0.25], 5: [0.2, 0.3, 0.5]}
    s = make(props)
    rows = list(s)
    for step in (5, 9):
        assert s.rows_for_step(step).tolist() == rows[step * 8 : (step + 1) * 8]
    fresh = make(props)
    with pytest.raises(StateError, match="not available"):
        fresh.rows_for_step(0)
