"""The update schedule (algorithms spec §5.1), including the spec's worked examples."""

from __future__ import annotations

import math

import pytest
from dataflex_core import TRAIN_TYPES, ConfigError, Schedule, parse_config

N, G, WARMUP, UPDATE_STEP = 1000, 16, 4, 3


# --------------------------------------------------------------------------- dynamic_select


def test_spec_example_update_times_nonpositive() -> None:
    """N=1000, G=16, warmup 4, update_step 3, update_times <= 0: E=63, U=20, r=4,7,...,61."""
    for update_times in (0, -1):
        base = Schedule("dynamic_select", WARMUP, UPDATE_STEP, update_times)
        E = base.select_epoch_length(N, G)
        assert E == 63 == math.ceil(N / G)
        assert base.select_updates_per_epoch(E) == 20
        sched = Schedule("dynamic_select", WARMUP, UPDATE_STEP, update_times, epoch_length=E)
        updates = [s for s in range(E) if sched.is_update(s)]
        assert updates == list(range(4, 62, 3))
        assert updates[0] == 4 and updates[-1] == 61
        assert len(updates) == 20
        assert [sched.update_index(s) for s in updates] == list(range(20))


def test_spec_example_update_times_four() -> None:
    """update_times=4: E = 4 + 3*4 = 16, updates at r=4,7,10,13."""
    base = Schedule("dynamic_select", WARMUP, UPDATE_STEP, 4)
    E = base.select_epoch_length(N, G)
    assert E == 16
    assert base.select_updates_per_epoch(E) == 4
    sched = Schedule("dynamic_select", WARMUP, UPDATE_STEP, 4, epoch_length=E)
    assert [s for s in range(E) if sched.is_update(s)] == [4, 7, 10, 13]


def test_select_epochs_repeat() -> None:
    sched = Schedule("dynamic_select", WARMUP, UPDATE_STEP, 4, epoch_length=16)
    steps = range(48)
    assert [s for s in steps if sched.is_epoch_start(s)] == [0, 16, 32]
    assert [s for s in steps if sched.is_update(s)] == [
        4,
        7,
        10,
        13,
        20,
        23,
        26,
        29,
        36,
        39,
        42,
        45,
    ]
    assert [sched.epoch(s) for s in (0, 15, 16, 31, 32)] == [0, 0, 1, 1, 2]
    assert [sched.position(s) for s in (0, 15, 16, 20, 33)] == [0, 15, 0, 4, 1]
    assert sched.update_index(20) == 0
    assert sched.update_index(45) == 3


def test_select_warmup_zero_updates_at_epoch_start() -> None:
    sched = Schedule("dynamic_select", 0, 5, 2, epoch_length=10)
    assert [s for s in range(20) if sched.is_update(s)] == [0, 5, 10, 15]
    assert sched.is_epoch_start(0) and sched.is_update(0)


def test_select_total_steps() -> None:
    sched = Schedule("dynamic_select", WARMUP, UPDATE_STEP, 4, epoch_length=16)
    assert sched.select_total_steps(train_step=0, epochs=1) == 16
    assert sched.select_total_steps(train_step=0, epochs=2.5) == 40  # ceil(2.5 * 16)
    assert sched.select_total_steps(train_step=0, epochs=1.01) == 17  # ceil
    assert sched.select_total_steps(train_step=100, epochs=2.5) == 100


def test_select_needs_epoch_length_for_positions() -> None:
    sched = Schedule("dynamic_select", WARMUP, UPDATE_STEP, 4)
    with pytest.raises(ConfigError, match="epoch_length"):
        sched.is_update(5)


def test_select_epoch_length_must_exceed_warmup() -> None:
    with pytest.raises(ConfigError, match="must exceed warmup_step"):
        Schedule("dynamic_select", 10, 1, 1, epoch_length=10)


# --------------------------------------------------------------------------- dynamic_mix


def test_mix_bounded_updates_and_total() -> None:
    sched = Schedule("dynamic_mix", WARMUP, UPDATE_STEP, 4)
    total = sched.mix_total_steps(train_step=0, pool_size=N, global_batch=G, epochs=3)
    assert total == 16  # warmup + update_step * update_times
    assert [s for s in range(40) if sched.is_update(s)] == [4, 7, 10, 13]
    assert not sched.is_update(16)
    # update_times >= 1 wins over train_step and epochs
    assert sched.mix_total_steps(train_step=100, pool_size=N, global_batch=G, epochs=3) == 16


def test_mix_unbounded_updates() -> None:
    for update_times in (0, -1):
        sched = Schedule("dynamic_mix", WARMUP, UPDATE_STEP, update_times)
        assert [s for s in range(20) if sched.is_update(s)] == [4, 7, 10, 13, 16, 19]
        assert sched.is_update(WARMUP + UPDATE_STEP * 1000)
        # train_step if > 0
        assert sched.mix_total_steps(train_step=50, pool_size=N, global_batch=G, epochs=2) == 50
        # else floor(sum |source_k| / G) * epochs
        assert sched.mix_total_steps(train_step=0, pool_size=N, global_batch=G, epochs=2) == 124
        assert sched.mix_total_steps(train_step=0, pool_size=N, global_batch=G, epochs=1.5) == 93


def test_mix_has_no_epochs() -> None:
    sched = Schedule("dynamic_mix", WARMUP, UPDATE_STEP, 4)
    assert sched.epoch(100) == 0
    assert sched.position(100) == 100
    assert not sched.is_epoch_start(0)
    assert sched.update_index(10) == 2


def test_mix_warmup_zero_updates_before_first_step() -> None:
    sched = Schedule("dynamic_mix", 0, 2, 3)
    assert [s for s in range(10) if sched.is_update(s)] == [0, 2, 4]


# --------------------------------------------------------------------------- weight, static


def test_dynamic_weight_applies_from_warmup() -> None:
    sched = Schedule("dynamic_weight", warmup_step=3, update_step=0)  # update_step is ignored
    assert [s for s in range(6) if sched.is_weighted(s)] == [3, 4, 5]
    assert not any(sched.is_update(s) for s in range(10))


def test_static_never_updates_or_weights() -> None:
    sched = Schedule()
    assert sched.train_type == "static"
    assert not any(sched.is_update(s) or sched.is_weighted(s) for s in range(10))
    assert Schedule("static", update_step=0).train_type == "static"


def test_defaults_match_spec() -> None:
    sched = Schedule()
    assert (sched.warmup_step, sched.update_step, sched.update_times) == (0, 1, 1)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", ["dynamic_weighting", "static_full", "", "Dynamic_Mix"])
def test_invalid_train_type_lists_valid_ones(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Schedule(bad)
    msg = str(exc.value)
    assert repr(bad) in msg
    for valid in ("static", "dynamic_select", "dynamic_mix", "dynamic_weight"):
        assert valid in msg


def test_train_types_constant() -> None:
    assert TRAIN_TYPES == ("static", "dynamic_select", "dynamic_mix", "dynamic_weight")


@pytest.mark.parametrize("train_type", ["dynamic_select", "dynamic_mix"])
@pytest.mark.parametrize("update_step", [0, -2])
def test_update_step_must_be_positive(train_type: str, update_step: int) -> None:
    with pytest.raises(ConfigError) as exc:
        Schedule(train_type, warmup_step=1, update_step=update_step)
    msg = str(exc.value)
    assert "update_step must be >= 1" in msg
    assert train_type in msg


def test_negative_warmup_is_rejected() -> None:
    with pytest.raises(ConfigError, match="warmup_step must be >= 0"):
        Schedule("dynamic_mix", warmup_step=-1)


def test_schedule_parses_strictly_from_a_mapping() -> None:
    sched = parse_config(
        Schedule, {"train_type": "dynamic_mix", "warmup_step": 4, "update_step": 3}
    )
    assert sched == Schedule("dynamic_mix", 4, 3)
    with pytest.raises(ConfigError, match="did you mean 'update_step'"):
        parse_config(Schedule, {"update_steps": 3})
    with pytest.raises(ConfigError, match="update_step must be >= 1"):
        parse_config(Schedule, {"train_type": "dynamic_select", "update_step": 0})
    with pytest.raises(ConfigError, match="must be int"):
        parse_config(Schedule, {"warmup_step": True})
