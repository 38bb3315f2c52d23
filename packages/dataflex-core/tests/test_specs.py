"""Specs, runtime context, feedback records, protocols and the error hierarchy."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from dataflex_core import (
    ComponentContext,
    ComponentNotFound,
    ComponentSpec,
    ConfigError,
    DataError,
    DataflexError,
    MixDecision,
    Mixer,
    MixFeedback,
    PluginError,
    Selector,
    SelectRequest,
    StateError,
    Stateful,
    Weighter,
    WeightFeedback,
)


def test_error_hierarchy() -> None:
    for err in (ConfigError, PluginError, ComponentNotFound, StateError, DataError):
        assert issubclass(err, DataflexError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(DataError, ValueError)
    assert issubclass(ComponentNotFound, LookupError)
    assert str(ComponentNotFound("plain message")) == "plain message"
    assert str(ComponentNotFound()) == ""


@pytest.mark.parametrize(
    "obj",
    [
        ComponentSpec("mixer", "m", factory="a:B"),
        ComponentContext(),
        MixFeedback(step=0, loss_sum=[1.0], token_count=[1.0], sample_count=[1.0]),
        MixDecision(proportions=(1.0,)),
        SelectRequest(step=0, epoch=0, update=-1, n=4, num_samples=10, warmup=True),
        WeightFeedback(step=0, losses=[1.0]),
    ],
)
def test_records_are_frozen(obj: Any) -> None:
    field = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, None)


def test_context_defaults() -> None:
    ctx = ComponentContext()
    assert (ctx.name, ctx.seed, ctx.domains, ctx.num_samples, ctx.rank, ctx.world_size) == (
        "",
        0,
        (),
        None,
        0,
        1,
    )
    assert dict(ctx.extras) == {}


class ListMixer:
    def __init__(self) -> None:
        self._p = (0.5, 0.5)

    @property
    def proportions(self) -> tuple[float, ...]:
        return self._p

    def step(self, feedback: MixFeedback | None = None) -> MixDecision:
        return MixDecision(self._p)

    def state_dict(self) -> dict[str, Any]:
        return {"p": list(self._p)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._p = tuple(state["p"])


class FirstSelector:
    def select(self, request: SelectRequest) -> Sequence[int]:
        return list(range(request.n))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class OnesWeighter:
    def weigh(self, feedback: WeightFeedback) -> Any:
        return [1.0 for _ in feedback.losses]

    def objective(self, feedback: WeightFeedback, weights: Any) -> Any:
        return sum(w * x for w, x in zip(weights, feedback.losses)) / len(weights)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def test_protocols_are_structural() -> None:
    assert isinstance(ListMixer(), Mixer)
    assert isinstance(ListMixer(), Stateful)
    assert isinstance(FirstSelector(), Selector)
    assert isinstance(OnesWeighter(), Weighter)
    assert not isinstance(FirstSelector(), Mixer)
    assert not isinstance(object(), Stateful)
