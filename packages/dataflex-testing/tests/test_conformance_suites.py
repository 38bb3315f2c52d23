"""The conformance suites pass well-behaved toy components and catch broken ones.

The toys are defined here: dataflex-testing depends on dataflex-core only.
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from dataflex_core import (
    ComponentContext,
    ComponentSpec,
    ConfigError,
    MixDecision,
    MixFeedback,
    Registry,
    SelectRequest,
    StateError,
    WeightFeedback,
    derive,
    hookimpl,
)
from dataflex_testing import (
    MixerConformance,
    SelectorConformance,
    WeighterConformance,
    check_primitives,
)

# --------------------------------------------------------------------------- toy components


@dataclass(frozen=True)
class ToyMixerConfig:
    eta: float = 0.5


class ToyMixer:
    """Exponentiated-gradient mixer over per-domain mean losses."""

    config_class = ToyMixerConfig

    def __init__(self, config: ToyMixerConfig, context: ComponentContext) -> None:
        self.config, self.domains = config, tuple(context.domains)
        self.logits = [0.0] * len(self.domains)

    @property
    def proportions(self) -> tuple[float, ...]:
        z = np.exp(np.asarray(self.logits) - max(self.logits))
        return tuple((z / z.sum()).tolist())

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        if feedback is not None:
            loss = np.asarray(feedback.loss_sum) / np.asarray(feedback.token_count)
            if not np.all(np.isfinite(loss)):
                warnings.warn("non-finite feedback skipped", RuntimeWarning, stacklevel=2)
                return MixDecision(self.proportions)
            self.logits = (np.asarray(self.logits) + self.config.eta * loss).tolist()
        return MixDecision(self.proportions)

    def state_dict(self) -> dict[str, Any]:
        return {"domains": list(self.domains), "logits": list(self.logits)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["domains"]) != list(self.domains):
            raise StateError(f"domains {state['domains']} != {list(self.domains)}")
        self.logits = list(state["logits"])


class NumpyStateMixer(ToyMixer):
    """Broken: its state holds a numpy array."""

    def state_dict(self) -> dict[str, Any]:
        return {"domains": list(self.domains), "logits": np.asarray(self.logits)}


class ForgetfulMixer(ToyMixer):
    """Broken: load_state_dict ignores the saved logits, so resume restarts."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["domains"]) != list(self.domains):
            raise StateError("domains differ")


@dataclass(frozen=True)
class ToySelectorConfig:
    seed: int | None = None


class ToySelector:
    config_class = ToySelectorConfig

    def __init__(self, config: ToySelectorConfig, context: ComponentContext) -> None:
        self.seed = config.seed if config.seed is not None else context.seed

    def select(self, request: SelectRequest) -> list[int]:
        rng = np.random.Generator(
            np.random.PCG64(derive(self.seed, "toy", request.epoch, request.step))
        )
        replace = request.n > request.num_samples
        return rng.choice(request.num_samples, size=request.n, replace=replace).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class OffByOneSelector(ToySelector):
    """Broken: can return N."""

    def select(self, request: SelectRequest) -> list[int]:
        return [i + 1 for i in super().select(request)]


@dataclass(frozen=True)
class NoKeys:
    pass


class ToyWeighter:
    config_class = NoKeys

    def __init__(self, config: NoKeys, context: ComponentContext) -> None:
        pass

    def weigh(self, feedback: WeightFeedback) -> np.ndarray:
        losses = np.asarray(feedback.losses, dtype=np.float64)
        ok = np.isfinite(losses)
        if feedback.valid is not None:
            if np.any(np.asarray(feedback.valid) & ~ok):
                warnings.warn("non-finite loss", RuntimeWarning, stacklevel=2)
            ok &= np.asarray(feedback.valid, dtype=bool)
        w = np.where(ok, 1.0 / (1.0 + np.where(ok, losses, 0.0)), 0.0)
        return w

    def objective(self, feedback: WeightFeedback, weights: np.ndarray) -> float:
        losses = np.asarray(feedback.losses, dtype=np.float64)
        return float(np.sum(np.where(weights > 0, weights * np.nan_to_num(losses), 0.0)))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class NegativeWeighter(ToyWeighter):
    def weigh(self, feedback: WeightFeedback) -> np.ndarray:
        return -super().weigh(feedback)


# --------------------------------------------------------------------------- the suites pass


class TestToyMixer(MixerConformance):
    component_class = ToyMixer

    def valid_configs(self):
        return [{}, {"eta": 2.0}]


class TestToySelector(SelectorConformance):
    component_class = ToySelector


class TestToyWeighter(WeighterConformance):
    component_class = ToyWeighter


class _ToyPlugin:
    @hookimpl
    def dataflex_register_mixers(self) -> list[ComponentSpec]:
        return [ComponentSpec(kind="mixer", name="toy_mixer", factory=ToyMixer)]


class TestToyMixerThroughTheRegistry(MixerConformance):
    """``name`` makes the suite build through the process-wide registry."""

    name = "toy_mixer"

    @pytest.fixture(autouse=True)
    def _register(self, fresh_plugin_manager, monkeypatch):
        fresh_plugin_manager.register_plugin(_ToyPlugin(), name="toy")
        registry = Registry(fresh_plugin_manager)
        monkeypatch.setattr("dataflex_testing.conformance.get_registry", lambda: registry)


# --------------------------------------------------------------------------- broken ones fail


def _suite(base: type, **attrs: Any) -> Any:
    return type("Suite", (base,), attrs)()


def test_non_json_state_is_caught() -> None:
    suite = _suite(MixerConformance, component_class=NumpyStateMixer)
    with pytest.raises((StateError, AssertionError)):
        suite.test_state_is_json_safe_and_round_trips()


def test_forgetful_resume_is_caught() -> None:
    suite = _suite(MixerConformance, component_class=ForgetfulMixer)
    with pytest.raises(AssertionError, match="resumed"):
        suite.test_resume_equivalence()


def test_out_of_range_indices_are_caught() -> None:
    suite = _suite(SelectorConformance, component_class=OffByOneSelector, num_samples=5, window=5)
    with pytest.raises(AssertionError, match="outside"):
        suite.test_indices_in_range_and_count()


def test_negative_weights_are_caught() -> None:
    suite = _suite(WeighterConformance, component_class=NegativeWeighter)
    with pytest.raises(AssertionError):
        suite.test_weights_finite_nonnegative_same_length()


def test_lenient_config_is_caught() -> None:
    class Lenient:
        config_class = dict  # a mapping config swallows any key

    suite = _suite(MixerConformance, component_class=Lenient)
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        suite.test_unknown_config_key_is_rejected()


def test_suite_without_a_component_explains_itself() -> None:
    with pytest.raises(NotImplementedError, match="component_class"):
        _suite(MixerConformance).make()


# --------------------------------------------------------------------------- check_primitives


def _reference_primitives() -> types.ModuleType:
    """A minimal, correct copy of the §0.3 primitives (as a plugin author might write it)."""
    mod = types.ModuleType("reference_primitives")

    def top_k(score, n):
        s = np.asarray(score, dtype=np.float64).ravel()
        idx = np.flatnonzero(np.isfinite(s))
        if n > idx.size:
            raise ValueError("not enough finite scores")
        return idx[np.argsort(-s[idx], kind="stable")][:n]

    def sample_with_replacement(p, n, seed):
        p = np.asarray(p, dtype=np.float64)
        support = np.flatnonzero(p > 0)
        c = np.random.Generator(np.random.PCG64(seed)).multinomial(n, p[support] / p[support].sum())
        return np.repeat(support, c)

    def sample_without_replacement(p, n, seed, replacement=False):
        p = np.asarray(p, dtype=np.float64)
        if n > np.count_nonzero(p):
            if replacement:
                return sample_with_replacement(p, n, seed)
            raise ValueError("n > nnz(p)")
        g = np.random.Generator(np.random.PCG64(seed)).gumbel(size=p.size)
        with np.errstate(divide="ignore"):
            return top_k(np.log(p) + g, n)

    def largest_remainder(p, n):
        p = np.asarray(p, dtype=np.float64)
        raw = n * p / p.sum()
        c = np.floor(raw).astype(np.int64)
        frac = np.where(p > 0, raw - c, -1.0)
        c[np.argsort(-frac, kind="stable")[: n - c.sum()]] += 1
        return c

    mod.top_k = top_k
    mod.sample_with_replacement = sample_with_replacement
    mod.sample_without_replacement = sample_without_replacement
    mod.largest_remainder = largest_remainder
    return mod


def test_check_primitives_accepts_a_correct_copy() -> None:
    check_primitives(_reference_primitives())


def test_check_primitives_catches_the_predecessor_remainder_rule() -> None:
    mod = _reference_primitives()

    def last_takes_remainder(p, n):
        p = np.asarray(p, dtype=np.float64) / np.sum(p)
        c = np.floor(n * p).astype(np.int64)
        c[-1] += n - c.sum()
        return c

    mod.largest_remainder = last_takes_remainder
    with pytest.raises(AssertionError, match="5, 2, 3"):
        check_primitives(mod)


def test_check_primitives_catches_global_rng_use() -> None:
    mod = _reference_primitives()
    good = mod.sample_without_replacement

    def global_rng(p, n, seed, replacement=False):
        np.random.seed(seed)  # the predecessor's bug
        return good(p, n, seed, replacement)

    mod.sample_without_replacement = global_rng
    state = np.random.get_state()
    try:
        with pytest.raises(AssertionError, match="global RNG"):
            check_primitives(mod)
    finally:
        np.random.set_state(state)


def test_check_primitives_catches_zero_probability_picks() -> None:
    mod = _reference_primitives()

    def sloppy(p, n, seed, replacement=False):
        p = np.asarray(p, dtype=np.float64) + 1e-3  # smoothing lets p=0 through
        g = np.random.Generator(np.random.PCG64(seed)).gumbel(size=p.size)
        return np.argsort(-(np.log(p) + g), kind="stable")[:n]

    mod.sample_without_replacement = sloppy
    with pytest.raises(AssertionError):
        check_primitives(mod)


def test_unknown_key_messages_name_the_key() -> None:
    from dataflex_core import parse_config

    with pytest.raises(ConfigError, match="etta.*eta"):
        parse_config(ToyMixerConfig, {"etta": 1.0})
    assert math.isfinite(ToyMixerConfig().eta)
