"""The streaming mixture over plain Python iterables (no ``datasets`` needed)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, StateError
from dataflex_mix import StreamingMixture, blend_indices, largest_remainder


def _stream(d: int) -> Iterator[str]:
    for i in itertools.count():
        yield f"d{d}-{i}"


def _gens(k: int = 3) -> list[Iterator[str]]:
    """Fresh infinite generators, one per domain: "d<k>-<i>"."""
    return [_stream(d) for d in range(k)]


def _take(mix: StreamingMixture, n: int) -> list[tuple[int, str]]:
    return list(itertools.islice(iter(mix), n))


class Counting:
    """A re-iterable finite source that counts reads and records set_epoch calls."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n
        self.reads = 0
        self.epochs: list[int] = []
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)
        self.epoch = epoch

    def __iter__(self) -> Iterator[str]:
        for i in range(self.n):
            self.reads += 1
            yield f"{self.name}{self.epoch}.{i}"


# --------------------------------------------------------------------------- proportions


def test_window_counts_follow_largest_remainder() -> None:
    p = [0.5, 0.3, 0.2]
    mix = StreamingMixture(_gens(), samples_per_step=7, window_steps=2, proportions=p, seed=1)
    out = _take(mix, 14 * 3)
    for u in range(3):
        window = [d for d, _ in out[14 * u : 14 * (u + 1)]]
        assert np.bincount(window, minlength=3).tolist() == largest_remainder(p, 14).tolist()


def test_items_keep_source_order_within_a_domain() -> None:
    mix = StreamingMixture(_gens(), samples_per_step=10, seed=3)
    out = _take(mix, 60)
    for d in range(3):
        items = [item for dd, item in out if dd == d]
        assert items == [f"d{d}-{i}" for i in range(len(items))]


def test_deterministic_given_seed() -> None:
    a = _take(StreamingMixture(_gens(), samples_per_step=8, seed=4), 40)
    b = _take(StreamingMixture(_gens(), samples_per_step=8, seed=4), 40)
    c = _take(StreamingMixture(_gens(), samples_per_step=8, seed=5), 40)
    assert a == b and a != c


def test_live_proportions_apply_from_the_next_window() -> None:
    mix = StreamingMixture(_gens(2), samples_per_step=4, seed=0)
    it = iter(mix)
    first = [next(it)[0] for _ in range(2)]  # window 0 started with uniform
    mix.set_proportions([1.0, 0.0])
    rest_of_window = [next(it)[0] for _ in range(2)]
    assert sorted(first + rest_of_window) == [0, 0, 1, 1]
    assert [next(it)[0] for _ in range(8)] == [0] * 8
    assert mix.proportions_of_window(2) == [1.0, 0.0]
    assert mix.proportions == [1.0, 0.0]


def test_proportions_for_callable() -> None:
    calls: list[int] = []

    def props(u: int) -> list[float]:
        calls.append(u)
        return [1.0, 0.0] if u % 2 == 0 else [0.0, 1.0]

    mix = StreamingMixture(_gens(2), samples_per_step=3, proportions_for=props, seed=0)
    assert [d for d, _ in _take(mix, 12)] == [0] * 3 + [1] * 3 + [0] * 3 + [1] * 3
    assert calls == [0, 1, 2, 3]


def test_blend_order() -> None:
    mix = StreamingMixture(
        _gens(2), samples_per_step=4, proportions=[0.75, 0.25], mixture_order="blend"
    )
    domains, _ = blend_indices([0.75, 0.25], 4)
    assert [d for d, _ in _take(mix, 4)] == domains.tolist() == [0, 1, 0, 0]


def test_total_steps_and_len() -> None:
    mix = StreamingMixture(_gens(), samples_per_step=5, total_steps=3, seed=0)
    assert len(mix) == 15 and len(list(mix)) == 15
    assert list(mix) == []  # exhausted: iterating again continues from the end
    with pytest.raises(TypeError, match="total_steps"):
        len(StreamingMixture(_gens(), samples_per_step=5))


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("order", ["shuffle", "blend"])
@pytest.mark.parametrize("cut", [0, 5, 12, 13, 30])
def test_resume_mid_stream_equals_straight_run(order: str, cut: int) -> None:
    def make(sources):
        return StreamingMixture(
            sources,
            samples_per_step=6,
            window_steps=1,
            proportions_for=lambda u: [1 + u % 3, 2, 1],
            mixture_order=order,
            seed=11,
        )

    straight = _take(make(_gens()), 48)
    first = make(_gens())
    head = _take(first, cut)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make(_gens())  # fresh generators: the state skips what was consumed
    resumed.load_state_dict(state)
    assert head + _take(resumed, 48 - cut) == straight


def test_resume_with_live_proportions() -> None:
    straight = StreamingMixture(_gens(2), samples_per_step=4, seed=2)
    first = StreamingMixture(_gens(2), samples_per_step=4, seed=2)
    it_a, it_b = iter(straight), iter(first)
    out_a = [next(it_a) for _ in range(6)]
    out_b = [next(it_b) for _ in range(6)]
    straight.set_proportions([0.25, 0.75])
    first.set_proportions([0.25, 0.75])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = StreamingMixture(_gens(2), samples_per_step=4, seed=2)
    resumed.load_state_dict(state)
    assert out_a == out_b
    assert [next(it_a) for _ in range(10)] == _take(resumed, 10)


def test_state_at_a_consumed_position_behind_the_drawn_one() -> None:
    mix = StreamingMixture(
        _gens(), samples_per_step=4, seed=7, proportions_for=lambda u: [u + 1, 1, 1]
    )
    out = _take(mix, 20)  # the loader drew ahead...
    state = mix.state_dict(consumed=12)  # ...but the trainer used 3 steps
    resumed = StreamingMixture(
        _gens(), samples_per_step=4, seed=7, proportions_for=lambda u: [u + 1, 1, 1]
    )
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert _take(resumed, 8) == out[12:]
    with pytest.raises(StateError, match="not recorded"):
        mix.state_dict(consumed=0)


def test_resume_skips_whole_passes() -> None:
    sources = [Counting("a", 5), Counting("b", 5)]
    mix = StreamingMixture(sources, samples_per_step=4, proportions=[0.5, 0.5], seed=0)
    head = _take(mix, 48)  # 24 items per domain: passes 0..3 and 4 items of pass 4
    state = json.loads(json.dumps(mix.state_dict()))
    assert state["pass_lengths"] == [5, 5]
    fresh = [Counting("a", 5), Counting("b", 5)]
    resumed = StreamingMixture(fresh, samples_per_step=4, proportions=[0.5, 0.5], seed=0)
    resumed.load_state_dict(state)
    nxt = _take(resumed, 2)
    straight = _take(
        StreamingMixture(
            [Counting("a", 5), Counting("b", 5)], samples_per_step=4, proportions=[0.5, 0.5]
        ),
        50,
    )
    assert head + nxt == straight
    # The resumed sources jumped to pass 4 with set_epoch and re-read only its first items.
    read = [src for src in fresh if src.epochs]
    assert read and all(src.epochs[0] == 4 for src in read)
    assert sum(src.reads for src in fresh) <= 2 * 5
    assert "a4.3" in {i for _, i in head} and "b4.3" in {i for _, i in head}


def test_load_rejects_other_setup() -> None:
    state = StreamingMixture(_gens(), samples_per_step=4, seed=1).state_dict()
    with pytest.raises(StateError, match="seed"):
        StreamingMixture(_gens(), samples_per_step=4, seed=2).load_state_dict(state)
    with pytest.raises(StateError, match="samples_per_step"):
        StreamingMixture(_gens(), samples_per_step=5, seed=1).load_state_dict(state)
    with pytest.raises(StateError, match="schema"):
        StreamingMixture(_gens(), samples_per_step=4, seed=1).load_state_dict({})


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize(("world", "block"), [(2, 1), (3, 1), (2, 3)])
def test_shards_are_disjoint_and_cover_the_stream(world: int, block: int) -> None:
    def make():
        return StreamingMixture(
            _gens(), samples_per_step=12, total_steps=4, proportions=[0.5, 0.25, 0.25], seed=3
        )

    full = list(make())
    shards = [list(make().shard(r, world, block)) for r in range(world)]
    for r, got in enumerate(shards):
        expected = [x for g, x in enumerate(full) if (g // block) % world == r]
        assert got == expected
        assert len(make().shard(r, world, block)) == len(expected)
    assert sorted(x for s in shards for x in s) == sorted(full)


def test_shard_resume() -> None:
    def make():
        return StreamingMixture(_gens(), samples_per_step=8, seed=9).shard(1, 2, block=2)

    straight = _take(make(), 30)
    first = make()
    head = _take(first, 11)
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + _take(resumed, 19) == straight


def test_shard_arguments() -> None:
    mix = StreamingMixture(_gens(), samples_per_step=4)
    with pytest.raises(ConfigError, match="rank"):
        mix.shard(2, 2)
    with pytest.raises(ConfigError, match="block"):
        mix.shard(0, 2, block=0)


# --------------------------------------------------------------------------- exhaustion


def test_restart_reiterates_lists() -> None:
    mix = StreamingMixture([["a0", "a1"], ["b0"]], samples_per_step=4, total_steps=2)
    items = [x for _, x in mix]
    assert items.count("b0") == 4 and items.count("a0") == 2


def test_restart_calls_set_epoch() -> None:
    src = Counting("a", 2)
    list(StreamingMixture([src], samples_per_step=5, total_steps=1))
    assert src.epochs == [0, 1, 2]


def test_generator_cannot_restart() -> None:
    mix = StreamingMixture([iter(["a0"]), _gens(1)[0]], samples_per_step=4, seed=0)
    with pytest.raises(DataError, match="cannot be iterated again"):
        _take(mix, 8)


def test_stop_and_error_policies() -> None:
    stop = StreamingMixture([["a0", "a1"], _gens(1)[0]], samples_per_step=4, on_exhausted="stop")
    out = _take(stop, 100)
    assert [x for d, x in out if d == 0] == ["a0", "a1"] and len(out) < 100
    err = StreamingMixture([["a0"], _gens(1)[0]], samples_per_step=4, on_exhausted="error")
    with pytest.raises(DataError, match="ran out"):
        _take(err, 100)


# --------------------------------------------------------------------------- misc


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sources": []}, "at least one source"),
        ({"samples_per_step": 0}, "samples_per_step"),
        ({"window_steps": 0}, "window_steps"),
        ({"proportions": [1.0, -1.0, 1.0]}, "proportions"),
        ({"proportions": [1.0, 1.0]}, "proportions"),
        ({"mixture_order": "random"}, "mixture_order"),
        ({"on_exhausted": "loop"}, "on_exhausted"),
        ({"total_steps": -1}, "total_steps"),
        ({"domain_names": ["x"]}, "domain_names"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"sources": _gens(), "samples_per_step": 4, **kwargs}
    with pytest.raises(ConfigError, match=match):
        StreamingMixture(**args)


def test_global_rng_untouched() -> None:
    before = np.random.get_state()
    mix = StreamingMixture(_gens(), samples_per_step=8, seed=1)
    _take(mix, 100)
    mix.load_state_dict(mix.state_dict())
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
