"""Conformance suites for DataFlex components, for our packages and for plugin authors.

Subclass a suite in a test module, name the subclass ``Test...`` so pytest collects it, and say
how to build the component: give its registered ``name`` (built through the registry, which also
checks the plugin's registration), or its ``component_class``, or override :meth:`build`::

    from dataflex_testing import MixerConformance

    class TestMyMixer(MixerConformance):
        name = "my_mixer"                       # registered through the `dataflex` entry point
        def valid_configs(self):
            return [{}, {"temperature": 0.5}]

Every suite checks, for each of :meth:`valid_configs`:

* strict config: an unknown key raises :class:`~dataflex_core.ConfigError` naming the key;
* the state is JSON-safe and survives ``json.dumps``/``json.loads`` and a reload unchanged;
* determinism: two components with the same config and feedback make identical decisions;
* resume equivalence: ``N+M`` steps equal ``N`` steps, ``state_dict`` through JSON, a load into a
  *fresh* instance, then ``M`` steps (decisions and final state);

plus the properties of its kind (proportions on the simplex, indices in range, weights finite
and non-negative). :func:`check_primitives` checks a package's copy of the shared sampling
primitives (algorithms spec §0.3).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pytest
from dataflex_core import (
    ComponentContext,
    ConfigError,
    MixDecision,
    Mixer,
    MixFeedback,
    Selector,
    SelectRequest,
    SignalRequest,
    StateError,
    Weighter,
    WeightFeedback,
    check_json_safe,
    get_registry,
    parse_config,
)
from dataflex_core.config import EmptyConfig

__all__ = [
    "ComponentConformance",
    "MixerConformance",
    "SelectorConformance",
    "WeighterConformance",
    "check_primitives",
    "UNKNOWN_KEY",
]

#: A config key no component defines, used to check strict parsing.
UNKNOWN_KEY = "definitely_not_a_config_key"


def _jsonify(obj: Any) -> Any:
    """Round-trip ``obj`` through JSON text, as a checkpoint would."""
    return json.loads(json.dumps(obj, allow_nan=False))


def _to_list(x: Any) -> Any:
    """Plain nested lists of floats from a numpy array, a torch tensor or a sequence."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).tolist()


class ComponentConformance:
    """Checks shared by every kind of component. Subclass a kind's suite, not this one.

    Hooks a subclass sets or overrides:

    * ``name`` (registered name, built through the registry) or ``component_class`` (built as
      ``component_class(parse_config(component_class.config_class, config), context)``), or
      override :meth:`build`;
    * :meth:`context`: the runtime context (seed, domains, pool size);
    * :meth:`valid_configs`: configs to run every check with (default: ``[{}]``);
    * :meth:`feedback`: one realistic input of the component's decision method per step;
    * ``steps`` and ``resume_after``: lengths of the determinism and resume runs.
    """

    kind: ClassVar[str] = ""
    protocol: ClassVar[type | None] = None
    name: ClassVar[str | None] = None
    component_class: ClassVar[type | None] = None
    seed: ClassVar[int] = 1234
    steps: ClassVar[int] = 8
    resume_after: ClassVar[int] = 3
    feedback_seed: ClassVar[int] = 20240501

    # ------------------------------------------------------------------ hooks
    def context(self) -> ComponentContext:
        """The runtime context components are built with."""
        return ComponentContext(seed=self.seed)

    def valid_configs(self) -> Sequence[Mapping[str, Any]]:
        """Configs (plain mappings) that every check runs with."""
        return [{}]

    def build(self, context: ComponentContext, **config: Any) -> Any:
        """Build a fresh component with ``context`` and the keyword ``config``."""
        if self.name is not None:
            return get_registry().create(self.kind, self.name, context=context, **config)
        if self.component_class is not None:
            cls = self.component_class
            cfg = parse_config(getattr(cls, "config_class", EmptyConfig), config)
            return cls(cfg, context)
        raise NotImplementedError(
            f"{type(self).__name__}: set `name` (a registered {self.kind} name) or "
            "`component_class`, or override build(context, **config)."
        )

    def make(self, **config: Any) -> Any:
        """A fresh component built with :meth:`context` and ``config``."""
        return self.build(self.context(), **config)

    def feedback(self, step: int, rng: np.random.Generator) -> Any:
        """The input of the decision method at ``step`` (drawn from ``rng``)."""
        raise NotImplementedError

    def decide(self, component: Any, feedback: Any) -> Any:
        """Feed ``feedback`` to ``component`` and return its decision."""
        raise NotImplementedError

    def comparable(self, decision: Any) -> Any:
        """The decision as plain data, for equality checks."""
        return decision

    # ------------------------------------------------------------------ helpers
    def feedback_sequence(self, n: int | None = None) -> list[Any]:
        """``n`` (default ``steps``) feedbacks from one seeded generator: the same every call."""
        rng = np.random.Generator(np.random.PCG64(self.feedback_seed))
        return [self.feedback(s, rng) for s in range(self.steps if n is None else n)]

    def run(self, component: Any, feedbacks: Sequence[Any]) -> list[Any]:
        """Decisions of ``component`` over ``feedbacks``, as plain data."""
        return [self.comparable(self.decide(component, fb)) for fb in feedbacks]

    def _config_class(self) -> type:
        if self.name is not None:
            registry = get_registry()
            return registry.config_class(registry.get(self.kind, self.name))
        if self.component_class is not None:
            return getattr(self.component_class, "config_class", EmptyConfig)
        raise NotImplementedError(
            f"{type(self).__name__}: set `name` or `component_class` so the config class is known."
        )

    # ------------------------------------------------------------------ tests
    def test_unknown_config_key_is_rejected(self) -> None:
        """An unknown key raises ConfigError, and the message names it."""
        with pytest.raises(ConfigError) as info:
            if self.name is not None:
                get_registry().create(
                    self.kind, self.name, context=self.context(), **{UNKNOWN_KEY: 1}
                )
            else:
                parse_config(self._config_class(), {UNKNOWN_KEY: 1})
        assert UNKNOWN_KEY in str(info.value), f"message does not name the key: {info.value}"

    def test_valid_configs_build(self) -> None:
        """Every valid config builds a component of the kind's protocol, with JSON-safe state."""
        for config in self.valid_configs():
            component = self.make(**config)
            if self.protocol is not None:
                assert isinstance(component, self.protocol), (
                    f"{type(component).__name__} does not implement {self.protocol.__name__}"
                )
            check_json_safe(component.state_dict())

    def test_state_is_json_safe_and_round_trips(self) -> None:
        """state_dict() is JSON-safe, survives JSON unchanged, and reloads to the same state."""
        feedbacks = self.feedback_sequence()
        for config in self.valid_configs():
            component = self.make(**config)
            self.run(component, feedbacks[: self.resume_after])
            state = component.state_dict()
            check_json_safe(state)
            assert _jsonify(state) == state, f"state changes through JSON (config {config})"
            fresh = self.make(**config)
            fresh.load_state_dict(_jsonify(state))
            assert fresh.state_dict() == state, f"reloaded state differs (config {config})"

    def test_deterministic_given_state(self) -> None:
        """Same config, same seed, same feedback: identical decisions and states."""
        feedbacks = self.feedback_sequence()
        for config in self.valid_configs():
            a, b = self.make(**config), self.make(**config)
            assert self.run(a, feedbacks) == self.run(b, feedbacks), f"config {config}"
            assert a.state_dict() == b.state_dict(), f"config {config}"

    def test_resume_equivalence(self) -> None:
        """N+M steps equal N steps, state through JSON into a fresh instance, then M steps."""
        feedbacks = self.feedback_sequence()
        n = self.resume_after
        for config in self.valid_configs():
            straight = self.make(**config)
            expected = self.run(straight, feedbacks)
            first = self.make(**config)
            self.run(first, feedbacks[:n])
            state = _jsonify(first.state_dict())
            resumed = self.make(**config)
            resumed.load_state_dict(state)
            got = self.run(resumed, feedbacks[n:])
            assert got == expected[n:], f"resumed decisions differ (config {config})"
            assert _jsonify(resumed.state_dict()) == _jsonify(straight.state_dict()), (
                f"resumed final state differs (config {config})"
            )


# --------------------------------------------------------------------------- mixers


class MixerConformance(ComponentConformance):
    """Conformance suite for mixers (``step(feedback) -> MixDecision``, ``proportions``).

    Extra hooks: ``domains`` (the context's domain names), ``skips_nonfinite_feedback`` (True:
    a feedback with NaN/inf leaves the proportions and the state unchanged) and
    ``warns_on_nonfinite_feedback`` (True: and says so with a warning; set False for a mixer
    that ignores feedback altogether).
    """

    kind: ClassVar[str] = "mixer"
    protocol: ClassVar[type | None] = Mixer
    domains: ClassVar[tuple[str, ...]] = ("wiki", "code", "math")
    skips_nonfinite_feedback: ClassVar[bool] = True
    warns_on_nonfinite_feedback: ClassVar[bool] = True
    simplex_tolerance: ClassVar[float] = 1e-9

    def context(self) -> ComponentContext:
        return ComponentContext(seed=self.seed, domains=self.domains)

    def feedback(self, step: int, rng: np.random.Generator) -> MixFeedback:
        """Realistic all-reduced feedback of one optimizer step over :attr:`domains`."""
        k = len(self.domains)
        tokens = rng.integers(50, 500, size=k).astype(np.float64)
        per_token = rng.uniform(1.0, 4.0, size=k)
        samples = rng.integers(1, 9, size=k)
        sample_domains = np.repeat(np.arange(k), samples)
        sample_losses = per_token[sample_domains] + rng.normal(0.0, 0.1, size=sample_domains.size)
        sample_loss_sum = np.bincount(sample_domains, weights=sample_losses, minlength=k)
        return MixFeedback(
            step=step,
            loss_sum=tuple((tokens * per_token).tolist()),
            token_count=tuple(tokens.tolist()),
            sample_count=tuple(samples.astype(np.float64).tolist()),
            sample_loss_sum=tuple(sample_loss_sum.tolist()),
            excess_loss_sum=tuple((tokens * per_token * rng.uniform(0.0, 0.5, size=k)).tolist()),
            sample_losses=tuple(sample_losses.tolist()),
            sample_domains=tuple(sample_domains.tolist()),
        )

    def decide(self, component: Any, feedback: Any) -> Any:
        return component.step(feedback)

    def comparable(self, decision: Any) -> Any:
        weights = decision.loss_weights
        return (list(decision.proportions), None if weights is None else list(weights))

    def assert_on_simplex(self, p: Sequence[float], what: str) -> None:
        """``p`` has one finite, non-negative entry per domain and sums to 1."""
        arr = np.asarray(p, dtype=np.float64)
        assert arr.shape == (len(self.domains),), f"{what}: {arr.shape} != ({len(self.domains)},)"
        assert np.all(np.isfinite(arr)), f"{what}: non-finite proportions {arr.tolist()}"
        assert np.all(arr >= 0), f"{what}: negative proportions {arr.tolist()}"
        assert abs(arr.sum() - 1.0) <= self.simplex_tolerance, f"{what}: sums to {arr.sum()!r}"

    def test_proportions_on_simplex(self) -> None:
        """Proportions (before any step and after each) and decisions lie on the simplex."""
        feedbacks = self.feedback_sequence()
        for config in self.valid_configs():
            mixer = self.make(**config)
            self.assert_on_simplex(mixer.proportions, f"initial proportions (config {config})")
            for fb in feedbacks:
                decision = mixer.step(fb)
                assert isinstance(decision, MixDecision), f"step returned {type(decision)}"
                self.assert_on_simplex(decision.proportions, f"step {fb.step} (config {config})")
                self.assert_on_simplex(mixer.proportions, f"after step {fb.step} (config {config})")
                if decision.loss_weights is not None:
                    w = np.asarray(decision.loss_weights, dtype=np.float64)
                    assert w.shape == (len(self.domains),), f"loss_weights shape {w.shape}"
                    assert np.all(np.isfinite(w)) and np.all(w >= 0), f"loss_weights {w.tolist()}"

    def test_step_without_feedback(self) -> None:
        """``step(None)`` (no training signal yet) returns a decision on the simplex."""
        for config in self.valid_configs():
            decision = self.make(**config).step(None)
            self.assert_on_simplex(decision.proportions, f"step(None) (config {config})")

    def test_nonfinite_feedback_is_skipped(self) -> None:
        """A feedback with NaN/inf keeps the state, returns the current proportions, and warns."""
        if not self.skips_nonfinite_feedback:
            return
        feedbacks = self.feedback_sequence()
        for config in self.valid_configs():
            mixer = self.make(**config)
            self.run(mixer, feedbacks[: self.resume_after])
            before_state, before_p = mixer.state_dict(), tuple(mixer.proportions)
            bad = feedbacks[self.resume_after]
            losses = list(bad.loss_sum)
            losses[0] = math.nan
            bad = dataclasses.replace(bad, loss_sum=tuple(losses))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                decision = mixer.step(bad)
            if self.warns_on_nonfinite_feedback:
                assert caught, f"no warning for a non-finite feedback (config {config})"
            assert tuple(decision.proportions) == before_p, f"config {config}"
            assert mixer.state_dict() == before_state, f"state changed (config {config})"

    def test_resume_with_other_domains_is_refused(self) -> None:
        """Loading a state saved for other domains raises StateError."""
        for config in self.valid_configs():
            state = _jsonify(self.make(**config).state_dict())
            # Same count (configs may hold one value per domain), another name for the last one.
            other = (*self.domains[:-1], f"{self.domains[-1]}_other")
            ctx = dataclasses.replace(self.context(), domains=other)
            with pytest.raises(StateError):
                self.build(ctx, **config).load_state_dict(state)


# --------------------------------------------------------------------------- selectors


class SelectorConformance(ComponentConformance):
    """Conformance suite for selectors (``select(SelectRequest) -> indices``).

    :meth:`feedback` yields :class:`~dataflex_core.SelectRequest` objects: a warmup draw at the
    start of every Flex epoch, then ``updates_per_epoch`` windows. Extra hooks:
    ``num_samples`` (``N``), ``window`` (``n``), ``warmup_samples``, ``updates_per_epoch``,
    ``update_step`` and ``distinct_indices`` (True: with the default config, a request with
    ``n <= N`` returns distinct indices).

    Selectors that read signals (``signals(request) -> list[SignalRequest]``) get synthetic,
    deterministic ones from :meth:`signal_value`; override it to feed realistic signals.
    ``target_size`` is the number of rows of the synthetic target set.
    """

    kind: ClassVar[str] = "selector"
    protocol: ClassVar[type | None] = Selector
    num_samples: ClassVar[int] = 97
    window: ClassVar[int] = 12
    warmup_samples: ClassVar[int] = 8
    updates_per_epoch: ClassVar[int] = 3
    update_step: ClassVar[int] = 2
    distinct_indices: ClassVar[bool] = True
    target_size: ClassVar[int] = 10
    signal_dim: ClassVar[int] = 8

    def context(self) -> ComponentContext:
        return ComponentContext(seed=self.seed, num_samples=self.num_samples)

    def signal_value(self, signal: SignalRequest, request: SelectRequest) -> Any:
        """A synthetic value of ``signal`` for ``request``: deterministic per (name, step).

        Rows are functions of the row index, so a candidate subset sees the same values as the
        whole pool would.
        """
        size = request.num_samples if signal.split == "train" else self.target_size
        label = sum(signal.name.encode()) * 7919 + signal.split.__len__()
        rng = np.random.default_rng([self.seed, label, request.step, request.epoch])
        rows = np.arange(size) if signal.indices is None else np.asarray(signal.indices, dtype=np.int64)
        if signal.kind == "loss":
            return rng.uniform(0.5, 5.0, size=size)[rows]
        if signal.kind in ("embedding", "grad_feature", "nice_feature"):
            x = rng.normal(size=(size, self.signal_dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            return x[rows]
        if signal.kind == "text":
            words = rng.integers(0, 50, size=(size, 12))
            return [" ".join(f"w{w}" for w in words[i]) for i in rows]
        if signal.kind == "subtask":
            return (np.arange(size) % 2)[rows]
        if signal.kind == "lr_weight":
            return 1.0
        raise NotImplementedError(f"no synthetic value for signal kind {signal.kind!r}")

    def answer(self, selector: Any, request: SelectRequest) -> Any:
        """Fill the signals ``selector`` asks for (in rounds, until it asks for nothing new),
        then call ``select``."""
        ask = getattr(selector, "signals", None)
        if ask is None:
            return selector.select(request)
        extras = dict(request.extras)
        for _ in range(8):  # selectors may ask in rounds (e.g. embeddings, then features)
            todo = [s for s in ask(dataclasses.replace(request, extras=extras)) if s.name not in extras]
            if not todo:
                break
            for sig in todo:
                assert isinstance(sig, SignalRequest), f"signals() returned {sig!r}"
                extras[sig.name] = self.signal_value(sig, request)
        else:
            raise AssertionError("signals() kept asking for new signals after 8 rounds")
        return selector.select(dataclasses.replace(request, extras=extras))

    def request(self, step: int, epoch: int, update: int) -> SelectRequest:
        """The request of ``update`` (-1: the warmup draw) of ``epoch`` at global ``step``."""
        warmup = update < 0
        return SelectRequest(
            step=step,
            epoch=epoch,
            update=update,
            n=self.warmup_samples if warmup else self.window,
            num_samples=self.num_samples,
            warmup=warmup,
            extras={"warmup_samples": self.warmup_samples},
        )

    def feedback(self, step: int, rng: np.random.Generator) -> SelectRequest:
        """The ``step``-th request of a run: warmup draw, then windows, epoch after epoch."""
        per_epoch = self.updates_per_epoch + 1
        epoch, r = divmod(step, per_epoch)
        update = r - 1
        warmup_steps = 1  # the warmup draw covers one optimizer step here
        global_step = epoch * (warmup_steps + self.updates_per_epoch * self.update_step)
        if update >= 0:
            global_step += warmup_steps + update * self.update_step
        return self.request(global_step, epoch, update)

    def decide(self, component: Any, feedback: Any) -> Any:
        return self.answer(component, feedback)

    def comparable(self, decision: Any) -> Any:
        return [int(i) for i in decision]

    def test_indices_in_range_and_count(self) -> None:
        """Every answer has ``n`` integer indices in ``[0, N)``."""
        requests = self.feedback_sequence()
        for config in self.valid_configs():
            selector = self.make(**config)
            for req in requests:
                got = list(self.answer(selector, req))
                assert len(got) == req.n, f"{len(got)} indices for n={req.n} (config {config})"
                for i in got:
                    assert isinstance(i, (int, np.integer)) and not isinstance(i, bool), repr(i)
                    assert 0 <= i < req.num_samples, f"index {i} outside [0, {req.num_samples})"

    def test_distinct_indices(self) -> None:
        """Default config, ``n <= N``: distinct indices (duplicates only where stated)."""
        if not self.distinct_indices:
            return
        selector = self.make()
        for req in self.feedback_sequence():
            if req.n <= req.num_samples:
                got = [int(i) for i in self.answer(selector, req)]
                assert len(set(got)) == len(got), f"duplicates in {got} for {req}"

    def test_warmup_draw(self) -> None:
        """The warmup draw is distinct when ``n <= N`` and still answers when ``n > N``."""
        for config in self.valid_configs():
            selector = self.make(**config)
            got = [int(i) for i in self.answer(selector, self.request(0, 0, -1))]
            assert len(got) == self.warmup_samples and len(set(got)) == len(got), got
            big = SelectRequest(
                step=0,
                epoch=1,
                update=-1,
                n=self.num_samples + 5,
                num_samples=self.num_samples,
                warmup=True,
                extras={"warmup_samples": self.num_samples + 5},
            )
            got = [int(i) for i in self.answer(selector, big)]
            assert len(got) == big.n and all(0 <= i < self.num_samples for i in got)


# --------------------------------------------------------------------------- weighters


class WeighterConformance(ComponentConformance):
    """Conformance suite for weighters (``weigh(WeightFeedback) -> weights``).

    The default :meth:`feedback` holds numpy losses of a micro-batch of ``batch_size`` samples;
    sample ``invalid_index`` is invalid (NaN loss, ``valid`` False). Extra hook:
    ``zero_weight_for_nonfinite`` (True: a valid sample with a non-finite loss gets weight 0 and a
    warning).
    """

    kind: ClassVar[str] = "weighter"
    protocol: ClassVar[type | None] = Weighter
    batch_size: ClassVar[int] = 8
    invalid_index: ClassVar[int] = 3
    num_domains: ClassVar[int] = 2
    zero_weight_for_nonfinite: ClassVar[bool] = True

    def context(self) -> ComponentContext:
        domains = tuple(f"d{k}" for k in range(self.num_domains))
        return ComponentContext(seed=self.seed, domains=domains)

    def feedback(self, step: int, rng: np.random.Generator) -> WeightFeedback:
        """Per-sample losses of one micro-batch, one of them invalid."""
        b = self.batch_size
        losses = rng.uniform(0.5, 4.0, size=b)
        counts = rng.integers(1, 64, size=b)
        valid = np.ones(b, dtype=bool)
        valid[self.invalid_index] = False
        losses[self.invalid_index] = math.nan
        counts[self.invalid_index] = 0
        return WeightFeedback(
            step=step,
            losses=losses,
            token_counts=counts,
            domains=rng.integers(0, self.num_domains, size=b),
            valid=valid,
        )

    def decide(self, component: Any, feedback: Any) -> Any:
        return component.weigh(feedback)

    def comparable(self, decision: Any) -> Any:
        return _to_list(decision)

    def test_weights_finite_nonnegative_same_length(self) -> None:
        """Weights are finite, >= 0, one per sample; invalid samples get 0."""
        for config in self.valid_configs():
            weighter = self.make(**config)
            for fb in self.feedback_sequence():
                w = np.asarray(_to_list(weighter.weigh(fb)), dtype=np.float64)
                n = len(_to_list(fb.losses))
                assert w.shape == (n,), f"{w.shape} weights for {n} losses (config {config})"
                assert np.all(np.isfinite(w)) and np.all(w >= 0), f"weights {w.tolist()}"
                if fb.valid is not None:
                    invalid = ~np.asarray(fb.valid, dtype=bool)
                    assert np.all(w[invalid] == 0), f"invalid samples weighted: {w.tolist()}"

    def test_nonfinite_loss_gets_zero_weight(self) -> None:
        """A valid sample with a NaN or infinite loss gets weight 0, with a warning."""
        if not self.zero_weight_for_nonfinite:
            return
        rng = np.random.Generator(np.random.PCG64(self.feedback_seed))
        for config in self.valid_configs():
            fb = self.feedback(0, rng)
            losses = np.array(_to_list(fb.losses))
            losses[0] = math.nan
            losses[1] = math.inf
            valid = np.ones(losses.shape, dtype=bool)
            fb = dataclasses.replace(fb, losses=losses, valid=valid)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                w = np.asarray(_to_list(self.make(**config).weigh(fb)), dtype=np.float64)
            assert caught, "no warning for non-finite losses"
            assert w[0] == 0 and w[1] == 0 and np.all(np.isfinite(w)), w.tolist()


# --------------------------------------------------------------------------- primitives


def check_primitives(module: ModuleType) -> None:
    """Check one package's copy of the shared sampling primitives (algorithms spec §0.3).

    ``module`` must define ``top_k``, ``sample_without_replacement``, ``sample_with_replacement``
    and ``largest_remainder``; ``blend_indices``, ``normalize_proportions`` and ``generator`` are
    checked when present. Call it from a test::

        def test_primitives():
            check_primitives(dataflex_mix.primitives)
    """
    global_before = np.random.get_state()

    # largest_remainder: the spec example, sums, zero entries, ties to the lower index.
    lr = module.largest_remainder
    got = np.asarray(lr([0.5, 0.25, 0.25], 10))
    assert got.tolist() == [5, 3, 2], f"largest_remainder([.5,.25,.25], 10) = {got.tolist()}"
    assert got.dtype == np.int64, f"largest_remainder dtype {got.dtype}"
    assert np.asarray(lr([1, 1, 1], 4)).tolist() == [2, 1, 1]
    assert np.asarray(lr([0.0, 1.0, 0.0], 5)).tolist() == [0, 5, 0]
    rng = np.random.Generator(np.random.PCG64(7))
    for _ in range(50):
        p = rng.dirichlet(np.ones(5))
        n = int(rng.integers(0, 1000))
        c = np.asarray(lr(p, n))
        assert c.sum() == n and np.all(c >= 0), (p.tolist(), n, c.tolist())
        assert np.all(np.abs(c - n * p) < 1.0 + 1e-9), (p.tolist(), n, c.tolist())

    # top_k: descending, ties to the lower index, non-finite never chosen.
    tk = module.top_k
    assert np.asarray(tk([1.0, 3.0, 3.0, 2.0], 2)).tolist() == [1, 2]
    assert np.asarray(tk([5.0, 5.0, 5.0], 3)).tolist() == [0, 1, 2]
    assert np.asarray(tk([0.0, 1.0, 0.0, 1.0, 0.0], 3)).tolist() == [1, 3, 0]
    scores = [math.nan, math.inf, 1.0, -math.inf, 0.0]
    assert np.asarray(tk(scores, 2)).tolist() == [2, 4]
    with pytest.raises(ValueError):
        tk(scores, 3)
    assert np.asarray(tk([1.0, 2.0], 0)).size == 0
    big = rng.integers(0, 20, size=5000).astype(np.float64)  # many ties
    assert np.asarray(tk(big, 37)).tolist() == np.argsort(-big, kind="stable")[:37].tolist()

    # Gumbel-top-k: reproducible, never p = 0, raises when n > nnz(p), distribution.
    swor = module.sample_without_replacement
    p = [0.1, 0.0, 0.4, 0.2, 0.0, 0.3]
    a, b = np.asarray(swor(p, 3, 42)), np.asarray(swor(p, 3, 42))
    assert a.tolist() == b.tolist(), "sample_without_replacement is not reproducible"
    assert len(set(a.tolist())) == 3
    full = np.asarray(swor(p, 4, 5))
    assert sorted(full.tolist()) == [0, 2, 3, 5], f"picked a p=0 index: {full.tolist()}"
    seen = {tuple(np.asarray(swor(p, 2, s)).tolist()) for s in range(40)}
    assert len(seen) > 1, "different seeds always give the same draw"
    assert all(1 not in d and 4 not in d for d in seen), seen
    with pytest.raises(ValueError):
        swor(p, 5, 0)
    repl = np.asarray(swor(p, 9, 3, replacement=True))
    assert repl.size == 9 and set(repl.tolist()) <= {0, 2, 3, 5}
    q = np.array([0.5, 0.3, 0.2, 0.0])
    trials = 3000
    first = np.bincount([int(np.asarray(swor(q, 1, s))[0]) for s in range(trials)], minlength=4)
    assert np.all(np.abs(first / trials - q) < 0.04), f"first-draw frequencies {first / trials}"

    # With replacement: multinomial counts emitted in ascending order.
    swr = module.sample_with_replacement
    x = np.asarray(swr(p, 50, 11))
    assert x.size == 50 and x.tolist() == sorted(x.tolist())
    assert set(x.tolist()) <= {0, 2, 3, 5}, f"picked a p=0 index: {x.tolist()}"
    assert x.tolist() == np.asarray(swr(p, 50, 11)).tolist(), "not reproducible"
    assert np.asarray(swr(p, 0, 1)).size == 0

    if hasattr(module, "blend_indices"):
        domains, within = module.blend_indices([0.75, 0.25], 4)
        assert np.asarray(domains).tolist() == [0, 1, 0, 0], np.asarray(domains).tolist()
        assert np.asarray(within).tolist() == [0, 0, 1, 2], np.asarray(within).tolist()
        d, _ = module.blend_indices([0.0, 1.0, 1.0], 10)
        assert 0 not in np.asarray(d).tolist(), "blend_indices chose a zero-weight domain"
        d, w = module.blend_indices([0.5, 0.3, 0.2], 100)
        assert np.bincount(np.asarray(d), minlength=3).tolist() == [50, 30, 20]

    if hasattr(module, "normalize_proportions"):
        norm = module.normalize_proportions
        assert np.allclose(norm([2, 1, 1], 3), [0.5, 0.25, 0.25])
        for bad in ([1, -1, 1], [1, 1], [0, 0, 0], [1, math.nan, 1]):
            with pytest.raises(ConfigError) as info:
                norm(bad, 3, key="my_key")
            assert "my_key" in str(info.value), str(info.value)

    if hasattr(module, "generator"):
        g = module.generator(3)
        assert isinstance(g.bit_generator, np.random.PCG64)
        assert g.random() == np.random.Generator(np.random.PCG64(3)).random()

    assert _same_global_state(global_before, np.random.get_state()), (
        "the primitives touched numpy's global RNG"
    )


def _same_global_state(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Compare two ``np.random.get_state()`` tuples (one entry is an array)."""
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])
