"""The static and random selectors (spec §2.1, §2.2) and their conformance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    Registry,
    SelectRequest,
    StateError,
    derive,
)
from dataflex_select import RandomSelector, StaticSelector
from dataflex_select.selectors import warmup_indices
from dataflex_testing import SelectorConformance


def _perm(seed: int, epoch: int, n: int) -> np.ndarray:
    """π_e straight from the spec formula."""
    return np.random.Generator(np.random.PCG64(derive(seed, "static", epoch))).permutation(n)


def _req(**kw: object) -> SelectRequest:
    base: dict[str, object] = {"step": 0, "epoch": 0, "update": 0, "n": 4, "num_samples": 10}
    base.update(kw)
    return SelectRequest(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- static


def test_static_windows_are_slices_of_the_epoch_permutation() -> None:
    sel = StaticSelector({"seed": 5})
    pi = _perm(5, 2, 10)
    extras = {"warmup_samples": 3}
    # warmup: the first w0 = 3 entries; window u: π[3 + 4u : 3 + 4(u+1)] modulo N = 10.
    assert sel.select(_req(epoch=2, update=-1, n=3, warmup=True)) == pi[:3].tolist()
    assert sel.select(_req(epoch=2, update=0, extras=extras)) == pi[3:7].tolist()
    assert sel.select(_req(epoch=2, update=1, extras=extras)) == pi[[7, 8, 9, 0]].tolist()
    assert sel.select(_req(epoch=2, update=2, extras=extras)) == pi[[1, 2, 3, 4]].tolist()
    # warmup + the first windows of an epoch cover the pool once
    seen = pi[:3].tolist() + pi[3:7].tolist() + pi[7:10].tolist()
    assert sorted(seen) == list(range(10))


def test_static_epochs_differ_and_default_w0_is_zero() -> None:
    sel = StaticSelector(None, ComponentContext(seed=7))
    assert sel.select(_req(epoch=0)) == _perm(7, 0, 10)[:4].tolist()
    assert sel.select(_req(epoch=1)) == _perm(7, 1, 10)[:4].tolist()
    assert _perm(7, 0, 10).tolist() != _perm(7, 1, 10).tolist()


def test_static_without_shuffle_walks_in_order() -> None:
    sel = StaticSelector({"shuffle": False})
    assert sel.select(_req(update=2, extras={"warmup_samples": 1})) == [9, 0, 1, 2]
    assert sel.select(_req(update=-1, n=2, warmup=True)) == [0, 1]


def test_static_rejects_bad_requests() -> None:
    sel = StaticSelector()
    with pytest.raises(DataError, match="warmup_samples"):
        sel.select(_req(extras={"warmup_samples": -1}))
    with pytest.raises(DataError, match="update"):
        sel.select(_req(update=-1))
    with pytest.raises(DataError, match="empty"):
        sel.select(_req(num_samples=0))


# --------------------------------------------------------------------------- random


def test_random_window_matches_formula_and_is_reproducible() -> None:
    sel = RandomSelector({"seed": 3})
    got = sel.select(_req(step=12, epoch=1, n=6, num_samples=50))
    assert got == RandomSelector({"seed": 3}).select(_req(step=12, epoch=1, n=6, num_samples=50))
    assert len(set(got)) == 6 and all(0 <= i < 50 for i in got)
    # Gumbel-top-k over a uniform p with the spec's seed: the 6 largest Gumbel draws.
    g = np.random.Generator(np.random.PCG64(derive(3, "random", 1, 12))).gumbel(size=50)
    assert got == np.argsort(-g, kind="stable")[:6].tolist()
    # another step, another window
    assert got != sel.select(_req(step=13, epoch=1, n=6, num_samples=50))


def test_random_without_replacement_has_no_duplicates_and_refuses_n_above_N() -> None:
    sel = RandomSelector({"seed": 0})
    got = sel.select(_req(n=100, num_samples=100))
    assert sorted(got) == list(range(100))
    with pytest.raises(DataError, match="replacement: true"):
        sel.select(_req(n=101, num_samples=100))


def test_random_with_replacement() -> None:
    sel = RandomSelector({"seed": 0, "replacement": True})
    got = sel.select(_req(n=30, num_samples=10))
    assert len(got) == 30 and all(0 <= i < 10 for i in got)
    counts = np.random.Generator(np.random.PCG64(derive(0, "random", 0, 0))).multinomial(
        30, np.full(10, 0.1)
    )
    assert got == np.repeat(np.arange(10), counts).tolist()


def test_warmup_draw_is_seeded_by_epoch() -> None:
    sel = RandomSelector({"seed": 4})
    w0 = sel.select(_req(epoch=0, update=-1, n=5, warmup=True, num_samples=40))
    w1 = sel.select(_req(epoch=1, update=-1, n=5, warmup=True, num_samples=40))
    assert len(set(w0)) == 5 and w0 != w1  # a fresh warmup draw every Flex epoch
    g = np.random.Generator(np.random.PCG64(derive(4, "warmup", 0))).gumbel(size=40)
    assert w0 == np.argsort(-g, kind="stable")[:5].tolist()
    # more than N: with replacement
    big = warmup_indices(4, 0, 50, 40)
    assert len(big) == 50 and set(big.tolist()) <= set(range(40))


def test_selector_state() -> None:
    sel = RandomSelector({"seed": 4})
    sel.select(_req())
    sel.select(_req(step=1))
    state = json.loads(json.dumps(sel.state_dict()))
    assert state == {"seed": 4, "selections": 2}
    other = RandomSelector({"seed": 4})
    other.load_state_dict(state)
    assert other.selections == 2
    with pytest.raises(StateError, match="seed 4.*seed 5"):
        RandomSelector({"seed": 5}).load_state_dict(state)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="shufle"):
        StaticSelector({"shufle": False})
    with pytest.raises(ConfigError, match="seed"):
        RandomSelector({"seed": -2})


def test_plugin_registers_both(fresh_plugin_manager) -> None:
    registry = Registry(fresh_plugin_manager)
    ctx = ComponentContext(seed=1, num_samples=10)
    assert isinstance(registry.create("selector", "static", context=ctx), StaticSelector)
    assert isinstance(
        registry.create("selector", "random", context=ctx, replacement=True), RandomSelector
    )
    assert {s.name for s in registry.specs("selector")} >= {"static", "random"}


# --------------------------------------------------------------------------- conformance


class TestStaticSelectorConformance(SelectorConformance):
    name = "static"

    def valid_configs(self):
        return [{}, {"shuffle": False}, {"seed": 9}]


class TestRandomSelectorConformance(SelectorConformance):
    name = "random"

    def valid_configs(self):
        return [{}, {"replacement": True}, {"seed": 9}]


class TestRandomSelectorByClass(SelectorConformance):
    component_class = RandomSelector
    num_samples = 12
    window = 12
