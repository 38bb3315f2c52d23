"""Property-based tests (hypothesis) of every registered mixer, selector and weighter.

The conformance suites in ``dataflex_testing`` check each component on fixed feedback
sequences. These tests draw the inputs at random instead: the number of domains, pool sizes,
windows, budgets, configs, seeds, step sequences, and the signals themselves (losses,
embeddings, gradient features, texts), including invalid entries (NaN/inf feedback, NaN signal
rows, invalid samples) wherever the contract says what must happen to them
(algorithms spec §0.3, §2.0, §3.0, §4.0).

Properties, for every component and every drawn input:

* mixers: every decision (and ``mixer.proportions``) lies on the simplex, one entry per
  domain; loss weights are finite and >= 0; a feedback holding NaN/inf is skipped (a warning,
  the state and the proportions unchanged); two instances make identical decisions; a state
  saved through JSON at any step and loaded into a fresh instance continues identically;
* selectors: ``n`` integer indices in ``[0, N)``, distinct where the selector promises it,
  drawn from the update's candidates, never a row whose signal is NaN (model-scored windows);
  ``selection_scope: pool`` picks exactly the resolved ``budget`` rows (distinct, valid) and its
  windows walk permutations of that subset; determinism and JSON resume as above;
* weighters: one finite weight >= 0 per sample, 0 for invalid samples and non-finite losses
  (or embeddings), a finite objective, determinism; the ``loss`` weights sum to 1 over the
  valid samples; splitting the batch over ranks gives the single-process weights and
  objective; the torch path agrees with the numpy path.

Examples are kept small (hypothesis ``max_examples`` 20-40, ``derandomize=True``, no example
database) so the module runs in well under a minute on two cores and is reproducible in CI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import warnings
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from dataflex_core import (
    ComponentContext,
    DataError,
    MixDecision,
    MixFeedback,
    SelectRequest,
    SignalRequest,
    WeightFeedback,
    check_json_safe,
    get_registry,
)
from dataflex_select.base import budget_count
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

# --------------------------------------------------------------------------- settings


def _settings(max_examples: int) -> settings:
    """Small, reproducible runs: no example database, a fixed derivation of the examples."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


SIMPLEX_TOL = 1e-9

MIXERS = ("static", "random", "doremi", "odm", "aioli", "dynamic_moe")
SELECTORS = (
    "static",
    "random",
    "loss",
    "delta_loss",
    "less",
    "cluster_less",
    "nice",
    "near",
    "tsds",
    "dsir",
)
WEIGHTERS = ("uniform", "loss", "adapt", "custom")


def _jsonify(obj: Any) -> Any:
    """Round-trip ``obj`` through JSON text, as a checkpoint would."""
    return json.loads(json.dumps(obj, allow_nan=False))


def test_every_registered_component_has_properties() -> None:
    """A newly registered mixer, selector or weighter must get its properties here too."""
    registry = get_registry()
    for kind, covered in (("mixer", MIXERS), ("selector", SELECTORS), ("weighter", WEIGHTERS)):
        missing = sorted(set(registry.names(kind)) - set(covered))
        assert not missing, f"{kind}s without property tests in {__file__}: {missing}"


# =========================================================================== mixers

# Feedback kinds of one optimizer step.
_OK, _ABSENT, _NONE, _NAN, _NAN_EXTRA = "ok", "absent", "none", "nan", "nan_extra"
_CHECKED_FIELDS = (  # every field dataflex_mix.mixers.check_feedback rejects when non-finite
    "loss_sum",
    "token_count",
    "sample_count",
    "sample_loss_sum",
    "excess_loss_sum",
    "sample_losses",
)


def _proportion_list(k: int) -> st.SearchStrategy[list[float]]:
    """A non-negative per-domain list with a positive sum (zeros allowed)."""
    entry = st.one_of(st.just(0.0), st.floats(1e-3, 10.0, allow_nan=False))
    return st.lists(entry, min_size=k, max_size=k).filter(lambda v: sum(v) > 0)


@st.composite
def mixer_config(draw: st.DrawFn, name: str, k: int) -> dict[str, Any]:
    """A valid config of mixer ``name`` for ``k`` domains."""
    opt = lambda s: st.one_of(st.none(), s)  # noqa: E731
    seed = opt(st.integers(0, 2**31 - 1))
    if name == "static":
        p = draw(opt(_proportion_list(k)))
        return {} if p is None else {"proportions": p}
    if name == "random":
        return {
            "seed": draw(seed),
            "distribution": draw(st.sampled_from(["dirichlet", "uniform_normalized"])),
            "concentration": draw(st.floats(0.05, 5.0)),
        }
    if name == "doremi":
        cfg: dict[str, Any] = {
            "vocab_size": draw(st.integers(2, 200_000)),
            "reweight_eta": draw(st.floats(0.01, 5.0)),
            "reweight_eps": draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0])),
            "update_every": draw(st.integers(1, 3)),
            "absent_domain_score": draw(st.sampled_from(["stale", "zero"])),
            "official_compat": draw(st.booleans()),
        }
        if draw(st.booleans()):
            cfg["initial_domain_score"] = draw(st.floats(-5.0, 15.0))
        if draw(st.booleans()):
            cfg["initial_weights"] = draw(_proportion_list(k))
        if draw(st.booleans()):
            cfg["proxy_sampling_proportions"] = draw(_proportion_list(k))
        return cfg
    if name == "odm":
        variant = draw(
            st.sampled_from(
                [
                    None,
                    "paper",
                    "official_exp3",
                    "official_smoothed_mean",
                    "official_smoothed_mean_group",
                ]
            )
        )
        cfg = {
            "variant": variant,
            "alpha": draw(st.floats(0.0, 1.0)),
            "reward_scale": draw(st.floats(0.1, 20.0)),
            "warmup_steps": draw(st.integers(0, 3)),
            "official_compat": draw(st.booleans()),
            "t_counter": draw(st.sampled_from([None, "rounds", "global_step"])),
            # ε_min in [0, 1/K], both ends included
            "min_exploration_rate": draw(
                st.one_of(st.sampled_from([0.0, 1.0 / k]), st.floats(0.0, 1.0).map(lambda f: f / k))
            ),
        }
        importance = draw(st.booleans())
        cfg["importance_weighting"] = importance
        resolved = variant or ("official_smoothed_mean" if cfg["official_compat"] else "paper")
        uses_iw = resolved == "official_exp3" or (resolved == "paper" and importance)
        arms = ["micro_batch", "global_batch"] + ([] if uses_iw else ["mixed"])
        cfg["arm_unit"] = draw(st.sampled_from(arms))
        if draw(st.booleans()):
            cfg["initial_proportions"] = draw(_proportion_list(k))
        return cfg
    if name == "aioli":
        f = draw(st.floats(0.01, 1.0).filter(lambda f: abs(f - 1.0 / k) > 1e-3))
        return {
            "lp_rounds": draw(st.integers(1, 2)),
            "lp_steps": draw(st.integers(1, 3)),
            "update_steps": draw(st.integers(1, 4)),
            "eta": draw(st.floats(0.01, 5.0)),
            "one_hot_factor": f,
            "normalize_A": draw(st.booleans()),
            "ema": draw(opt(st.floats(0.0, 0.99))),
            "seed": draw(seed),
        }
    if name == "dynamic_moe":
        return {
            "eta": draw(st.floats(0.01, 20.0)),
            "c": draw(st.floats(0.0, 1.0)),
            "gate_layers": draw(st.sampled_from(["all", "last"])),
            "collect_steps": draw(st.integers(1, 10)),
        }
    raise AssertionError(name)


@dataclasses.dataclass(frozen=True)
class MixCase:
    """One drawn mixer run: the mixer, its config and context, and the feedback sequence."""

    name: str
    k: int
    config: dict[str, Any]
    context: ComponentContext
    kinds: tuple[str, ...]
    scale: float
    seed: int
    layers: int
    experts: int

    def build(self) -> Any:
        return get_registry().create("mixer", self.name, context=self.context, **self.config)

    def feedbacks(self) -> list[MixFeedback | None]:
        """The feedback of every step (None: no training signal yet), from one seeded rng."""
        rng = np.random.default_rng(self.seed)
        return [self._feedback(s, kind, rng) for s, kind in enumerate(self.kinds)]

    def _feedback(self, step: int, kind: str, rng: np.random.Generator) -> MixFeedback | None:
        if kind == _NONE:
            return None
        k = self.k
        tokens = rng.integers(1, 500, size=k).astype(np.float64)
        if kind == _ABSENT:  # some domains drew no sample this step
            absent = rng.random(k) < 0.5
            if absent.all():
                absent[int(rng.integers(k))] = False
            tokens[absent] = 0.0
        per_token = rng.uniform(0.0, self.scale, size=k)
        samples = np.where(tokens > 0, rng.integers(1, 9, size=k), 0)
        sample_domains = np.repeat(np.arange(k), samples)
        sample_losses = per_token[sample_domains] * rng.uniform(0.5, 1.5, sample_domains.size)
        loss_sum = tokens * per_token
        fields: dict[str, Any] = {
            "loss_sum": loss_sum,
            "token_count": tokens,
            "sample_count": samples.astype(np.float64),
            "sample_loss_sum": np.bincount(sample_domains, sample_losses, minlength=k),
            "excess_loss_sum": loss_sum * rng.uniform(0.0, 1.0, size=k),
            "sample_losses": sample_losses,
        }
        if kind == _NAN:
            name = _CHECKED_FIELDS[int(rng.integers(len(_CHECKED_FIELDS)))]
            arr = np.array(fields[name], dtype=np.float64)
            if arr.size == 0:
                name, arr = "loss_sum", np.array(fields["loss_sum"])
            arr[int(rng.integers(arr.size))] = [math.nan, math.inf, -math.inf][int(rng.integers(3))]
            fields[name] = arr
        extras: dict[str, Any] = {}
        eval_loss = None
        if self.name == "aioli":
            ev = 3.0 - 0.01 * step + rng.normal(0.0, 0.05 * self.scale + 1e-3, size=k)
            if kind == _NAN_EXTRA:
                ev[int(rng.integers(k))] = math.nan
            eval_loss = tuple(ev.tolist())
        if self.name == "dynamic_moe":
            loads = rng.integers(0, 100, size=(k, self.layers, self.experts)).astype(np.float64)
            loads[:, :, 0] += 1.0  # every (domain, layer) routes at least one token
            if kind == _NAN_EXTRA:
                loads[int(rng.integers(k)), 0, 0] = math.nan
            extras["gate_loads"] = loads.tolist()
        if self.name == "odm" and rng.random() < 0.3:
            extras["proportions_used"] = rng.dirichlet(np.ones(k)).tolist()
        return MixFeedback(
            step=step,
            **{key: tuple(np.asarray(v, dtype=np.float64).tolist()) for key, v in fields.items()},
            sample_domains=tuple(sample_domains.tolist()),
            eval_loss=eval_loss,
            extras=extras,
        )


@st.composite
def mix_cases(draw: st.DrawFn, name: str) -> MixCase:
    k = draw(st.integers(2 if name == "aioli" else 1, 6))
    extra_kinds = [_NAN_EXTRA] if name in ("aioli", "dynamic_moe") else []
    kinds = draw(
        st.lists(
            st.sampled_from([_OK, _OK, _OK, _ABSENT, _NONE, _NAN, *extra_kinds]),
            min_size=1,
            max_size=14,
        )
    )
    extras: dict[str, Any] = {}
    if name == "odm" and draw(st.booleans()):
        extras["warmup_step"] = draw(st.integers(0, 3))
    context = ComponentContext(
        seed=draw(st.integers(0, 2**31 - 1)),
        domains=tuple(f"d{i}" for i in range(k)),
        extras=extras,
    )
    return MixCase(
        name=name,
        k=k,
        config=draw(mixer_config(name, k)),
        context=context,
        kinds=tuple(kinds),
        scale=draw(st.sampled_from([1e-3, 1.0, 4.0, 30.0])),
        seed=draw(st.integers(0, 2**32 - 1)),
        layers=draw(st.integers(1, 3)),
        experts=draw(st.integers(1, 6)),
    )


def _assert_simplex(p: Sequence[float], k: int, what: str) -> None:
    arr = np.asarray(p, dtype=np.float64)
    assert arr.shape == (k,), f"{what}: shape {arr.shape} for {k} domains"
    assert np.all(np.isfinite(arr)), f"{what}: non-finite {arr.tolist()}"
    assert np.all(arr >= 0), f"{what}: negative {arr.tolist()}"
    assert abs(float(arr.sum()) - 1.0) <= SIMPLEX_TOL, f"{what}: sums to {arr.sum()!r}"


def _expect_skip(case: MixCase, mixer: Any, fb: MixFeedback | None, kind: str) -> bool:
    """Whether the contract says ``fb`` must be skipped (non-finite values it reads)."""
    if fb is None:
        return False
    if kind == _NAN:
        return True
    if kind == _NAN_EXTRA:
        # aioli reads the eval losses only when a phase ends; dynamic_moe always reads loads
        return case.name == "dynamic_moe" or bool(mixer.eval_due)
    return False


def _decided(decision: Any) -> tuple[list[float], list[float] | None]:
    w = decision.loss_weights
    return list(decision.proportions), None if w is None else list(w)


def _mix_step(case: MixCase, mixer: Any, fb: MixFeedback | None, kind: str) -> Any:
    """One step, checking the per-step properties; returns the decision as plain data."""
    k = case.k
    skip = _expect_skip(case, mixer, fb, kind)
    before_state, before_p = _jsonify(mixer.state_dict()), tuple(mixer.proportions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decision = mixer.step(fb)
    assert isinstance(decision, MixDecision), f"step returned {type(decision).__name__}"
    _assert_simplex(decision.proportions, k, f"{case.name} decision ({kind})")
    _assert_simplex(mixer.proportions, k, f"{case.name} proportions after a {kind} step")
    if decision.loss_weights is not None:
        w = np.asarray(decision.loss_weights, dtype=np.float64)
        assert w.shape == (k,) and np.all(np.isfinite(w)) and np.all(w >= 0), w.tolist()
    if case.name == "doremi":
        _assert_simplex(mixer.average_weights, k, "doremi average weights")
    if skip:
        event("mixer: skipped a non-finite feedback")
        assert any(issubclass(c.category, RuntimeWarning) for c in caught), (
            f"{case.name}: no warning for a non-finite feedback ({kind})"
        )
        assert tuple(decision.proportions) == before_p, "a skipped step changed the decision"
        assert _jsonify(mixer.state_dict()) == before_state, "a skipped step changed the state"
    return _decided(decision)


def _mix_run(case: MixCase, mixer: Any, fbs: Sequence[Any], kinds: Sequence[str]) -> list[Any]:
    return [_mix_step(case, mixer, fb, kind) for fb, kind in zip(fbs, kinds, strict=True)]


def _check_mixer(case: MixCase, split: int) -> None:
    note(f"case: {case}")
    fbs = case.feedbacks()
    a = case.build()
    _assert_simplex(a.proportions, case.k, f"{case.name} initial proportions")
    check_json_safe(a.state_dict())
    straight = _mix_run(case, a, fbs, case.kinds)
    state = a.state_dict()
    check_json_safe(state)
    assert _jsonify(state) == state, "the state changes through JSON"

    b = case.build()  # determinism: same config, context and feedback
    assert _mix_run(case, b, fbs, case.kinds) == straight
    assert _jsonify(b.state_dict()) == _jsonify(state)

    r = min(split, len(fbs))  # resume: r steps, JSON state into a fresh instance, the rest
    first = case.build()
    _mix_run(case, first, fbs[:r], case.kinds[:r])
    resumed = case.build()
    resumed.load_state_dict(_jsonify(first.state_dict()))
    assert tuple(resumed.proportions) == tuple(first.proportions)
    assert _mix_run(case, resumed, fbs[r:], case.kinds[r:]) == straight[r:], f"resume at {r}"
    assert _jsonify(resumed.state_dict()) == _jsonify(state), f"final state after resume at {r}"


@pytest.mark.parametrize("name", MIXERS)
@_settings(40)
@given(data=st.data())
def test_mixer_properties(name: str, data: st.DataObject) -> None:
    """Simplex decisions, skipped non-finite feedback, determinism and JSON resume."""
    case = data.draw(mix_cases(name), label="case")
    split = data.draw(st.integers(0, len(case.kinds)), label="resume after")
    _check_mixer(case, split)


@pytest.mark.parametrize("variant", ["official_smoothed_mean", "official_smoothed_mean_group"])
def test_odm_large_finite_loss_keeps_the_policy_on_the_simplex(variant: str) -> None:
    """A finite feedback never takes the proportions off the simplex (diverging run: L = 800)."""
    mixer = get_registry().create(
        "mixer", "odm", context=ComponentContext(domains=("a", "b")), variant=variant
    )
    fb = MixFeedback(
        step=1, loss_sum=(1600.0, 0.0), token_count=(2.0, 0.0), sample_count=(1.0, 0.0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decision = mixer.step(fb)
    _assert_simplex(decision.proportions, 2, f"odm {variant} after a loss of 800")
    check_json_safe(mixer.state_dict())


# =========================================================================== selectors

_SIGNAL_DIM = 6


@dataclasses.dataclass(frozen=True)
class Signals:
    """Synthetic, deterministic signal values; rows in ``nan_rows`` are invalid (NaN).

    Model signals of the pool (losses, gradient features) change with the step; embeddings,
    texts and subtask labels do not (an external embedding model, raw data). Values are
    functions of the row, so a candidate subset sees what the whole pool would.
    """

    seed: int
    nan_rows: frozenset[int]
    target_size: int
    subtasks: int
    ties: bool  # losses on a coarse grid (many ties)
    duplicates: tuple[tuple[int, int], ...]  # (row, copy_of): identical embeddings/features

    def __call__(self, sig: SignalRequest, request: SelectRequest) -> Any:
        train = sig.split == "train"
        size = request.num_samples if train else self.target_size
        static = sig.kind in ("embedding", "text", "subtask")
        key = [self.seed, zlib.crc32(f"{sig.name}/{sig.split}".encode())]
        if not static:
            key += [request.step, request.epoch]
        rng = np.random.default_rng(key)
        rows = np.arange(size) if sig.indices is None else np.asarray(sig.indices, np.int64)
        if sig.kind == "lr_weight":
            return float(rng.uniform(1e-5, 1e-3))
        if sig.kind == "subtask":
            return rng.integers(0, self.subtasks, size=size)[rows]
        if sig.kind == "text":
            words = rng.integers(0, 30, size=(size, 10))
            lengths = rng.integers(0, 11, size=size)  # some texts are empty
            return [" ".join(f"w{w}" for w in words[i, : lengths[i]]) for i in rows]
        if sig.kind == "loss":
            values: np.ndarray = rng.uniform(0.0, 6.0, size=size)
            if self.ties:
                values = np.round(values)
        elif sig.kind in ("embedding", "grad_feature", "nice_feature"):
            values = rng.normal(size=(size, _SIGNAL_DIM))
            values /= np.linalg.norm(values, axis=1, keepdims=True)
            values = values.astype(np.float32)
        else:
            raise AssertionError(f"no synthetic value for signal kind {sig.kind!r}")
        if train:
            for row, copy_of in self.duplicates:
                if row < size and copy_of < size:
                    values[row] = values[copy_of]
            bad = [i for i in self.nan_rows if i < size]
            values[bad] = np.nan
        return values[rows]


def answer(selector: Any, request: SelectRequest, signals: Signals) -> list[int]:
    """The integration's loop: fill what ``signals()`` asks for (in rounds), then ``select``."""
    ask = getattr(selector, "signals", None)
    if ask is None:
        return selector.select(request)
    extras = dict(request.extras)
    for _ in range(8):
        todo = [s for s in ask(dataclasses.replace(request, extras=extras)) if s.name not in extras]
        if not todo:
            break
        for sig in todo:
            assert isinstance(sig, SignalRequest), repr(sig)
            extras[sig.name] = signals(sig, request)
    else:  # pragma: no cover - a selector bug
        raise AssertionError("signals() kept asking for new signals after 8 rounds")
    return selector.select(dataclasses.replace(request, extras=extras))


_REWARD = {"backend": "rule", "function": "dataflex_select.rewards:exact_match"}
_SCORED = {"loss", "delta_loss", "less", "cluster_less", "nice", "near", "tsds", "dsir"}
_NAN_AWARE = _SCORED - {"dsir"}  # selectors whose signals can mark a row invalid (NaN)


@st.composite
def shell_config(draw: st.DrawFn, n_pool: int, n_valid: int, window: int) -> dict[str, Any]:
    """The §2.0 keys every scored selector shares."""
    cfg: dict[str, Any] = {}
    if draw(st.booleans()):
        cfg["seed"] = draw(st.integers(0, 1000))
    if draw(st.integers(0, 2)) == 0:  # pool scope
        cfg["selection_scope"] = "pool"
        if draw(st.booleans()):
            cfg["budget"] = draw(
                st.floats(0.01, 1.0).filter(lambda b: math.ceil(b * n_pool) <= n_valid)
            )
        else:
            cfg["budget"] = draw(st.integers(1, n_valid))
        cfg["refresh"] = draw(st.booleans())
    else:
        if draw(st.integers(0, 3)) == 0:
            cfg["candidate_subsample"] = draw(
                st.one_of(st.floats(0.5, 1.0), st.integers(max(1, n_pool // 2), n_pool))
            )
        if draw(st.integers(0, 3)) == 0:
            cfg["exclude_recent"] = draw(st.integers(1, 2))
    return cfg


@st.composite
def selector_config(
    draw: st.DrawFn, name: str, n_pool: int, n_valid: int, window: int
) -> dict[str, Any]:
    """A valid config of selector ``name``."""
    if name == "static":
        return {
            "shuffle": draw(st.booleans()),
            "seed": draw(st.one_of(st.none(), st.integers(0, 99))),
        }
    if name == "random":
        return {
            "replacement": draw(st.booleans()),
            "seed": draw(st.one_of(st.none(), st.integers(0, 99))),
        }
    cfg = draw(shell_config(n_pool, n_valid, window))
    history_ok = "candidate_subsample" not in cfg
    if name == "loss":
        q1 = draw(st.floats(0.0, 1.0))
        cfg.update(
            focus=draw(st.sampled_from(["low", "medium", "high"])),
            focus_weight=draw(st.floats(0.01, 50.0)),
            quantiles=[q1, draw(st.floats(q1, 1.0))],
            temperature=draw(st.floats(0.05, 5.0)),
            replacement=draw(st.booleans()),
        )
    elif name == "delta_loss":
        cfg.update(
            reference=draw(st.sampled_from(["initial", "first_update"])),
            window_size=draw(st.floats(0.01, 1.0)),
            steepness=draw(st.floats(0.0, 30.0)),
            # > 0: with outside_weight 0 a narrow window legitimately runs short of rows
            outside_weight=draw(st.floats(1e-3, 1.0)),
            truncate_negative=draw(st.booleans()),
        )
    elif name in ("less", "cluster_less", "nice"):
        cfg.update(
            proj_dim=_SIGNAL_DIM,
            similarity=draw(st.sampled_from(["cosine", "inner_product"])),
            aggregation=draw(st.sampled_from(["max_of_means", "mean"])),
        )
        mode = draw(st.sampled_from(["one", "checkpoints", "history"]))
        if mode == "checkpoints":
            cfg["checkpoints"] = ["ck/a", "ck/b"]
            if draw(st.booleans()):
                cfg["checkpoint_weights"] = draw(
                    st.lists(st.floats(0.1, 5.0), min_size=2, max_size=2)
                )
        elif mode == "history" and history_ok:
            cfg["history"] = draw(st.integers(2, 3))
        if name == "cluster_less":
            method = draw(
                st.sampled_from(
                    [
                        "kmeans",
                        "spherical_kmeans",
                        "farthest_first",
                        "random_projection_lsh",
                        "random_partition",
                    ]
                )
            )
            cfg.update(
                clustering_method=method,
                samples_per_cluster=draw(st.integers(1, 4)),
                representative_strategy=draw(
                    st.sampled_from(["random", "nearest", "farthest", "mixed"])
                ),
            )
            if draw(st.booleans()):
                cfg["num_clusters"] = draw(st.integers(1, max(1, n_valid)))
            else:
                cfg["cluster_size"] = draw(st.integers(1, 16))
        if name == "nice":
            cfg["reward"] = _REWARD
            cfg["policy"] = draw(st.sampled_from(["vanilla", "rejection", "topk"]))
    elif name == "near":
        cfg.update(
            exclude_selected=draw(st.booleans()),
            recompute=draw(st.sampled_from(["never", "every_update"])),
        )
        if draw(st.booleans()):
            cfg["max_K"] = draw(st.integers(1, n_pool))
            cfg["on_shortfall"] = "fill_random"
    elif name == "tsds":
        cfg.update(
            alpha=draw(st.floats(0.0, 1.0)),
            C=draw(st.floats(0.1, 10.0)),
            sigma=draw(st.sampled_from([0.0, 0.25, 0.75, 2.0])),
            max_K=draw(st.integers(2, 50)),
            kde_K=draw(st.integers(1, 50)),
            recompute=draw(st.sampled_from(["never", "every_update"])),
            sampling=draw(st.sampled_from(["with_replacement", "without_replacement"])),
        )
        if cfg["sampling"] == "without_replacement":
            cfg["on_shortfall"] = "fill_random"  # p is sparse: without it a shortfall is legit
    elif name == "dsir":
        cfg.update(
            ngrams=draw(st.integers(1, 3)),
            num_buckets=draw(st.sampled_from([1, 7, 101, 10000])),
            top_k=draw(st.booleans()),
        )
    return cfg


@dataclasses.dataclass(frozen=True)
class SelectCase:
    name: str
    config: dict[str, Any]
    context: ComponentContext
    requests: tuple[SelectRequest, ...]
    signals: Signals

    @property
    def num_samples(self) -> int:
        return self.requests[0].num_samples

    def build(self) -> Any:
        return get_registry().create("selector", self.name, context=self.context, **self.config)

    def distinct(self) -> bool:
        """Whether a window of ``n <= N`` must hold distinct indices."""
        c = self.config
        if self.name in ("random", "loss"):
            return not c.get("replacement", False)
        if self.name == "tsds":
            return c.get("sampling", "with_replacement") == "without_replacement"
        return True

    def exempt_from_nan_rule(self, update_index: int) -> bool:
        """Draws the contract lets reach invalid rows: seeded uniform fills and the first
        (uniform) window of ``delta_loss`` with ``reference: first_update``."""
        return (
            self.name == "delta_loss"
            and self.config.get("reference") == "first_update"
            and update_index == 0
        )


@st.composite
def select_cases(draw: st.DrawFn, name: str) -> SelectCase:
    n_pool = draw(st.integers(4, 40))
    n_nan = draw(st.integers(0, n_pool // 4)) if name in _NAN_AWARE else 0
    seed = draw(st.integers(0, 2**31 - 1))
    nan_rows = frozenset(
        np.random.default_rng(seed).choice(n_pool, size=n_nan, replace=False).tolist()
    )
    n_valid = n_pool - n_nan
    exclude_cap = 3  # (1 + exclude_recent) windows must fit in the valid rows
    window = draw(st.integers(1, max(1, n_valid // exclude_cap)))
    warmup_n = draw(st.integers(0, n_pool + 3))
    config = draw(selector_config(name, n_pool, n_valid, window))
    if config.get("candidate_subsample") is not None:
        # the candidates must leave room for (1 + exclude_recent) windows of valid rows
        c = config["candidate_subsample"]
        m = min(n_pool, math.ceil(c * n_pool)) if isinstance(c, float) else int(c)
        window = max(1, min(window, (m - n_nan) // exclude_cap))
    updates, update_step = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    epochs, warmup = draw(st.integers(1, 2)), draw(st.booleans())
    requests, step = [], 0
    for e in range(epochs):
        extras = {"warmup_samples": warmup_n if warmup else 0, "updates_per_epoch": updates}
        if warmup:
            requests.append(SelectRequest(step, e, -1, warmup_n, n_pool, True, extras))
            step += 1
        for u in range(updates):
            requests.append(SelectRequest(step, e, u, window, n_pool, False, extras))
            step += update_step
    duplicates = tuple(
        draw(
            st.lists(st.tuples(st.integers(0, n_pool - 1), st.integers(0, n_pool - 1)), max_size=3)
        )
    )
    signals = Signals(
        seed=draw(st.integers(0, 2**31 - 1)),
        nan_rows=nan_rows,
        target_size=draw(st.integers(1, 6)),
        subtasks=draw(st.integers(1, 3)),
        ties=draw(st.booleans()),
        duplicates=duplicates,
    )
    return SelectCase(
        name=name,
        config=config,
        context=ComponentContext(seed=seed, num_samples=n_pool),
        requests=tuple(requests),
        signals=signals,
    )


def _state(selector: Any) -> Any:
    return _jsonify(selector.state_dict())


def _select_run(case: SelectCase, selector: Any, requests: Sequence[SelectRequest]) -> list[Any]:
    """Answers (plain lists), stopping at a DataError (recorded as its message)."""
    out: list[Any] = []
    for req in requests:
        try:
            out.append([int(i) for i in answer(selector, req, case.signals)])
        except DataError as exc:
            out.append(f"DataError: {exc}")
            break
    return out


def _check_selector(case: SelectCase, split: int) -> None:
    note(f"case: {case}")
    n_pool, nan_rows = case.num_samples, case.signals.nan_rows
    event(f"selector: scope {case.config.get('selection_scope', 'window')}")
    if nan_rows:
        event("selector: some rows have NaN signals")
    scored = case.name in _SCORED
    pool_scope = case.config.get("selection_scope") == "pool"
    distinct = case.distinct()
    sel = case.build()
    if scored:
        assert getattr(sel, "distinct", True) == distinct, "the selector's `distinct` flag"
    straight: list[Any] = []
    pool: list[int] | None = None
    since_pick: list[int] = []
    update_index = 0
    # near's exclude_selected: rows it chose earlier in the Flex epoch (windows, or the pool
    # subsets it picked) are not eligible again
    taken: set[int] = set()
    taken_epoch = None
    excludes_taken = case.name == "near" and case.config.get("exclude_selected", False)
    for req in case.requests:
        cands = None
        if scored and not req.warmup:
            cands = set(int(i) for i in sel.candidates(req))
            if req.epoch != taken_epoch:
                taken, taken_epoch = set(), req.epoch
        try:
            got = answer(sel, req, case.signals)
        except DataError as exc:
            # Only a genuine shortfall may refuse: fewer valid candidates than rows wanted.
            need = budget_count(case.config["budget"], n_pool) if pool_scope else req.n
            eligible = len(cands - nan_rows - taken) if cands is not None else n_pool
            note(f"DataError at {req}: {exc}")
            event("selector: refused a short request (DataError)")
            assert cands is not None and need > eligible, f"unexpected DataError: {exc}"
            straight.append(f"DataError: {exc}")
            break
        idx = list(got)
        assert len(idx) == req.n, f"{len(idx)} indices for n = {req.n}"
        for i in idx:
            assert isinstance(i, (int, np.integer)) and not isinstance(i, bool), repr(i)
            assert 0 <= i < n_pool, f"index {i} outside [0, {n_pool})"
        idx = [int(i) for i in idx]
        straight.append(idx)
        if req.warmup:
            if req.n <= n_pool:
                assert len(set(idx)) == len(idx), f"warmup draw has duplicates: {idx}"
            continue
        if pool_scope and scored:
            # the subset is picked at the first update, and again at each one with refresh
            if pool is None or case.config.get("refresh"):
                pool = [int(i) for i in sel.state_dict()["pool"]]
                if excludes_taken:
                    taken |= set(pool)
                since_pick = []
                budget = case.config["budget"]
                assert len(pool) == budget_count(budget, n_pool)
                if isinstance(budget, float):  # ceil(b·N), at least 1 (in float arithmetic)
                    assert max(1.0, budget * n_pool) <= len(pool) < max(1.0, budget * n_pool) + 1
                else:
                    assert len(pool) == budget
                if distinct:
                    assert len(set(pool)) == len(pool), f"the pool subset repeats rows: {pool}"
                assert cands is not None and set(pool) <= cands, (
                    "the pool subset left the candidates"
                )
                if case.name in _NAN_AWARE and not case.exempt_from_nan_rule(update_index):
                    assert not set(pool) & nan_rows, (
                        f"invalid rows {set(pool) & nan_rows} in the pool"
                    )
            assert pool is not None and set(idx) <= set(pool), "a window left the pool subset"
            since_pick += idx
            b = len(pool)
            for start in range(0, len(since_pick) - b + 1, b):  # every full pass: a permutation
                assert sorted(since_pick[start : start + b]) == sorted(pool), (
                    "pool windows do not walk permutations of the subset"
                )
        else:
            if distinct and req.n <= n_pool:
                assert len(set(idx)) == len(idx), f"duplicates in {idx}"
            if excludes_taken:
                assert not set(idx) & taken, "exclude_selected: a row was chosen twice in an epoch"
                taken |= set(idx)
            if cands is not None:
                assert set(idx) <= cands, f"rows {set(idx) - cands} are not candidates"
                if case.name in _NAN_AWARE and not case.exempt_from_nan_rule(update_index):
                    assert not set(idx) & nan_rows, (
                        f"invalid (NaN) rows {set(idx) & nan_rows} chosen"
                    )
        update_index += 1
    check_json_safe(sel.state_dict())

    twin = case.build()  # determinism
    assert _select_run(case, twin, case.requests) == straight
    assert _state(twin) == _state(sel)

    done = len(straight) if isinstance(straight[-1], list) else len(straight) - 1
    r = min(split, done)  # resume after r answered requests
    first = case.build()
    _select_run(case, first, case.requests[:r])
    resumed = case.build()
    resumed.load_state_dict(_jsonify(first.state_dict()))
    assert _select_run(case, resumed, case.requests[r:]) == straight[r:], f"resume after {r}"
    assert _state(resumed) == _state(sel), f"final state after resume at {r}"


@pytest.mark.parametrize("name", SELECTORS)
@_settings(30)
@given(data=st.data())
def test_selector_properties(name: str, data: st.DataObject) -> None:
    """Range, count, distinctness, no invalid rows, pool budgets, determinism, JSON resume."""
    case = data.draw(select_cases(name), label="case")
    split = data.draw(st.integers(0, len(case.requests)), label="resume after")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN rows are logged/warned about by design
        _check_selector(case, split)


@pytest.mark.parametrize(
    ("budget", "n_pool", "rows"), [(0.07, 100, 7), (0.28, 25, 7), (0.14, 50, 7)]
)
def test_fractional_budget_is_decimal_fraction_of_pool(
    budget: float, n_pool: int, rows: int
) -> None:
    """``budget: 0.07`` of a 100-row pool is 7 rows, as the user wrote it (decimal ceil)."""
    assert math.ceil(Fraction(str(budget)) * n_pool) == rows
    assert budget_count(budget, n_pool) == rows


# =========================================================================== weighters

# A module the custom weighter's config can name ("dataflex_property_fns:<function>").
_FNS = types.ModuleType("dataflex_property_fns")


def _inverse(losses_local: Any, **_: Any) -> Any:
    return 1.0 / (1.0 + np.nan_to_num(np.asarray(losses_local), nan=0.0, posinf=0.0))


def _global_softmax(losses_global: Any, valid_global: Any, **_: Any) -> Any:
    """Weights over the whole global micro-batch (the weighter slices this rank's part)."""
    lg = np.where(np.asarray(valid_global), np.asarray(losses_global), -np.inf)
    if not np.isfinite(lg).any():
        return np.zeros(lg.shape)
    e = np.exp(lg - lg[np.isfinite(lg)].max())
    return e / e.sum()


def _nothing(**_: Any) -> None:
    return None


_FNS.inverse = _inverse  # type: ignore[attr-defined]
_FNS.global_softmax = _global_softmax  # type: ignore[attr-defined]
_FNS.nothing = _nothing  # type: ignore[attr-defined]
sys.modules[_FNS.__name__] = _FNS

_EMB_DIM = 5


@dataclasses.dataclass(frozen=True)
class WeightCase:
    name: str
    config: dict[str, Any]
    seed: int
    losses: tuple[float, ...]
    valid: tuple[bool, ...]
    token_counts: tuple[int, ...]
    embeddings: tuple[tuple[float, ...], ...]
    anchors: tuple[tuple[float, ...], ...]
    step: int

    def build(self) -> Any:
        w = get_registry().create(
            "weighter",
            self.name,
            context=ComponentContext(seed=self.seed, domains=("a", "b")),
            **self.config,
        )
        if self.name == "adapt":
            w.set_anchors(np.asarray(self.anchors), step=0)
        return w

    def feedback(
        self, lo: int = 0, hi: int | None = None, world_size: int = 1, like: Callable | None = None
    ) -> WeightFeedback:
        """This case's feedback, or rank ``[lo, hi)`` of it with the global fields."""
        hi = len(self.losses) if hi is None else hi
        conv = like or (lambda x: x)
        losses = np.asarray(self.losses, dtype=np.float64)
        valid = np.asarray(self.valid, dtype=bool)
        counts = np.asarray(self.token_counts, dtype=np.int64)
        emb = np.asarray(self.embeddings, dtype=np.float64).reshape(len(self.losses), _EMB_DIM)
        glob: dict[str, Any] = {}
        if world_size > 1:
            glob = dict(
                global_losses=losses, global_valid=valid, local_offset=lo, world_size=world_size
            )
        return WeightFeedback(
            step=self.step,
            losses=conv(losses[lo:hi]),
            token_counts=counts[lo:hi],
            domains=np.arange(lo, hi) % 2,
            valid=valid[lo:hi],
            embeddings=emb[lo:hi],
            **glob,
        )

    @property
    def effective_valid(self) -> np.ndarray:
        """``valid`` and a finite loss (and, for adapt, a finite embedding)."""
        ok = np.asarray(self.valid, bool) & np.isfinite(np.asarray(self.losses, dtype=np.float64))
        if self.name == "adapt":
            emb = np.asarray(self.embeddings, dtype=np.float64).reshape(len(self.losses), _EMB_DIM)
            ok &= np.isfinite(emb).all(axis=1)
        return ok


@st.composite
def weighter_config(draw: st.DrawFn, name: str) -> dict[str, Any]:
    if name == "uniform":
        return {}
    if name == "loss":
        cfg: dict[str, Any] = {
            "strategy": draw(
                st.sampled_from(
                    ["linupper", "quadratic", "mid", "extremes", "upper", "identity", "uniform"]
                )
            ),
            "delta": draw(st.floats(0.01, 5.0)),
        }
        which = draw(st.sampled_from(["temperature", "kl_reg", "schedule", "none"]))
        if which in ("temperature", "kl_reg"):
            cfg[which] = draw(st.floats(0.05, 5.0))
        elif which == "schedule":
            cfg["temperature_schedule"] = {
                "start": draw(st.floats(0.05, 5.0)),
                "end": draw(st.floats(0.05, 5.0)),
                "steps": draw(st.integers(1, 10)),
            }
        cfg["loss_base"] = draw(st.sampled_from([None, "sample_mean", "token_weighted"]))
        cfg["official_compat"] = draw(st.booleans())
        return cfg
    if name == "adapt":
        return {
            "tau": draw(st.floats(0.05, 5.0)),
            "clip": draw(st.one_of(st.none(), st.floats(0.05, 1.0))),
            "loss_normalization": draw(st.sampled_from(["mean", "weight_sum", "sum"])),
        }
    if name == "custom":
        fn = draw(st.sampled_from([None, "inverse", "global_softmax", "nothing"]))
        cfg = {"loss_normalization": draw(st.sampled_from(["mean", "weight_sum", "sum"]))}
        if fn is not None:
            cfg["function"] = f"{_FNS.__name__}:{fn}"
        return cfg
    raise AssertionError(name)


@st.composite
def weight_cases(draw: st.DrawFn, name: str) -> WeightCase:
    b = draw(st.integers(1, 12))
    scale = draw(st.sampled_from([1e-6, 1.0, 10.0, 1e3]))
    finite = st.floats(0.0, scale, allow_nan=False, allow_infinity=False)
    entry = st.one_of(
        finite.map(lambda x: ("ok", x)),
        finite.map(lambda x: ("ok", x)),
        finite.map(lambda x: ("ok", x)),
        st.just(("invalid", math.nan)),  # no supervised token: NaN loss, valid False
        st.sampled_from([math.nan, math.inf, -math.inf]).map(
            lambda x: ("bad", x)
        ),  # valid, diverged
    )
    samples = draw(st.lists(entry, min_size=b, max_size=b))
    losses = tuple(x for _, x in samples)
    valid = tuple(kind != "invalid" for kind, _ in samples)
    counts = tuple(draw(st.integers(1, 64)) if kind != "invalid" else 0 for kind, _ in samples)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    emb = rng.normal(size=(b, _EMB_DIM))
    if name == "adapt":
        for i in draw(st.lists(st.integers(0, b - 1), max_size=2)):
            emb[i, int(rng.integers(_EMB_DIM))] = math.nan
    anchors = rng.normal(size=(int(rng.integers(1, 4)), _EMB_DIM))
    return WeightCase(
        name=name,
        config=draw(weighter_config(name)),
        seed=draw(st.integers(0, 2**31 - 1)),
        losses=losses,
        valid=valid,
        token_counts=counts,
        embeddings=tuple(map(tuple, emb.tolist())),
        anchors=tuple(map(tuple, anchors.tolist())),
        step=draw(st.integers(0, 20)),
    )


def _weigh(weighter: Any, fb: WeightFeedback, **objective_kw: Any) -> tuple[np.ndarray, float]:
    """Weights (numpy) and objective (a float) of ``fb``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-finite losses of valid samples warn by design
        w = weighter.weigh(fb)
        obj = weighter.objective(fb, w, **objective_kw)
    if hasattr(w, "detach"):
        w = w.detach().cpu().numpy()
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().item()
    return np.asarray(w, dtype=np.float64), float(obj)


def _rank_bounds(b: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    edges = [0, *sorted(set(min(max(c, 0), b) for c in cuts)), b]
    return list(zip(edges[:-1], edges[1:], strict=True))


@pytest.mark.parametrize("name", WEIGHTERS)
@_settings(40)
@given(data=st.data())
def test_weighter_properties(name: str, data: st.DataObject) -> None:
    """Finite non-negative weights, 0 for invalid samples, finite objective, determinism,
    and rank splits that reproduce the single-process weights and objective."""
    case = data.draw(weight_cases(name), label="case")
    note(f"case: {case}")
    weighter = case.build()
    fb = case.feedback()
    w, obj = _weigh(weighter, fb)
    b = len(case.losses)
    assert w.shape == (b,), f"{w.shape} weights for {b} losses"
    assert np.all(np.isfinite(w)) and np.all(w >= 0), f"weights {w.tolist()}"
    ok = case.effective_valid
    assert np.all(w[~ok] == 0), f"invalid samples weighted: {w.tolist()} (valid {ok.tolist()})"
    assert math.isfinite(obj), f"objective {obj!r}"
    if name == "uniform" or (
        name == "custom" and case.config.get("function") in (None, f"{_FNS.__name__}:nothing")
    ):
        assert w.tolist() == ok.astype(np.float64).tolist()
    if name == "loss":
        total = float(w.sum())
        assert (abs(total - 1.0) <= 1e-9) if ok.any() else total == 0.0, f"weights sum to {total}"
    check_json_safe(weighter.state_dict())

    twin = case.build()  # determinism, and a state round trip into a fresh instance
    assert _weigh(twin, fb)[0].tolist() == w.tolist()
    fresh = case.build()
    fresh.load_state_dict(_jsonify(weighter.state_dict()))
    assert _weigh(fresh, fb)[0].tolist() == w.tolist()

    # The same global micro-batch split over ranks: the local weights are the single-process
    # weights' slices, and the ranks' objective shares add up to the single-process objective.
    cuts = data.draw(st.lists(st.integers(0, b), max_size=3), label="rank cuts")
    bounds = _rank_bounds(b, cuts)
    token_weighted = name == "loss" and (
        case.config.get("loss_base") == "token_weighted"
        or (case.config.get("loss_base") is None and case.config.get("official_compat"))
    )
    if len(bounds) > 1:
        ranks = [(case.build(), case.feedback(lo, hi, world_size=len(bounds))) for lo, hi in bounds]
        kw: dict[str, Any] = {}
        if case.config.get("loss_normalization") == "weight_sum":  # the all-reduced Σw
            kw["global_weight_sum"] = float(w.sum())
        parts = [_weigh(weighter_r, fb_r, **kw) for weighter_r, fb_r in ranks]
        got = np.concatenate([p[0] for p in parts])
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-15)
        if not token_weighted:  # token_weighted depends on the split by design (spec §4.1)
            total = sum(p[1] for p in parts)
            assert math.isclose(total, obj, rel_tol=1e-9, abs_tol=1e-12), (total, obj)


@pytest.mark.parametrize("name", WEIGHTERS)
@_settings(20)
@given(data=st.data())
def test_weighter_torch_matches_numpy(name: str, data: st.DataObject) -> None:
    """float64 tensors give the numpy path's weights and objective."""
    torch = pytest.importorskip("torch")
    case = data.draw(weight_cases(name), label="case")
    note(f"case: {case}")
    w_np, obj_np = _weigh(case.build(), case.feedback())
    w_t, obj_t = _weigh(
        case.build(), case.feedback(like=lambda x: torch.as_tensor(x, dtype=torch.float64))
    )
    np.testing.assert_allclose(w_t, w_np, rtol=1e-12, atol=1e-15)
    assert math.isclose(obj_t, obj_np, rel_tol=1e-9, abs_tol=1e-12), (obj_t, obj_np)
