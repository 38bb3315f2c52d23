"""Strict config parsing: unknown keys, types, required keys, coercion, aliases, validation."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest
from dataflex_core import ConfigError, EmptyConfig, config_to_dict, parse_config
from dataflex_core.config import closest, unknown_key_error


@dataclass(frozen=True)
class Inner:
    """A nested config."""

    depth: int = 1
    label: str = "x"


@dataclass(frozen=True)
class Sample:
    """A config touching every supported annotation."""

    learning_rate: float = 0.1
    num_steps: int = 10
    enabled: bool = True
    name: str = "sample"
    mode: Literal["fast", "exact"] = "fast"
    proportions: tuple[float, ...] | None = None
    pair: tuple[int, str] = (1, "a")
    tags: list[str] = field(default_factory=list)
    scales: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    inner: Inner = field(default_factory=Inner)
    anything: Any = None


@dataclass(frozen=True)
class Required:
    """A config with required keys."""

    alpha: float
    beta: int
    gamma: str = "g"


@dataclass(frozen=True)
class Validated:
    """A config whose ``__post_init__`` checks ranges."""

    temperature: float = 1.0
    kind: str = "a"

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.kind == "config":
            raise ConfigError("kind 'config' is reserved")
        if self.kind == "type":
            raise TypeError("kind 'type' is not allowed")


@dataclass(frozen=True)
class WithAliases:
    """A config with a deprecated alias table."""

    __aliases__: ClassVar[dict[str, str]] = {"save_interval": "save_every", "kl_reg": "temperature"}

    save_every: int = 100
    temperature: float = 1.0


@dataclass(frozen=True)
class WithLiteralInt:
    """Literal ints must not accept bools (True == 1 in Python)."""

    level: Literal[0, 1, 2] = 0


@dataclass(frozen=True)
class Outer:
    """A config that nests another."""

    inner: Inner = field(default_factory=Inner)
    items: tuple[Inner, ...] = ()


# --------------------------------------------------------------------------- basics


def test_defaults_from_none_and_empty_mapping() -> None:
    assert parse_config(Sample, None) == Sample()
    assert parse_config(Sample, {}) == Sample()


def test_instance_is_returned_unchanged() -> None:
    cfg = Sample(num_steps=3)
    assert parse_config(Sample, cfg) is cfg


def test_values_are_set() -> None:
    cfg = parse_config(Sample, {"learning_rate": 0.5, "num_steps": 7, "name": "n", "mode": "exact"})
    assert (cfg.learning_rate, cfg.num_steps, cfg.name, cfg.mode) == (0.5, 7, "n", "exact")


def test_result_is_frozen() -> None:
    cfg = parse_config(Sample, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_steps = 3  # type: ignore[misc]


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_config(Sample, {"nope": 1})


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_names_the_closest_valid_key() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(Sample, {"learning_rat": 0.1})
    msg = str(exc.value)
    assert "'learning_rat'" in msg
    assert "did you mean 'learning_rate'?" in msg
    # every valid key is listed so the user can pick
    for name in ("learning_rate", "num_steps", "proportions", "inner"):
        assert name in msg


def test_unknown_key_typo_in_middle() -> None:
    with pytest.raises(ConfigError, match="did you mean 'num_steps'"):
        parse_config(Sample, {"num_stpes": 3})


def test_unknown_key_without_a_close_match_has_no_hint() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(Sample, {"zzzzzzzz": 1})
    assert "did you mean" not in str(exc.value)
    assert "Valid keys:" in str(exc.value)


def test_unknown_key_error_names_where() -> None:
    with pytest.raises(ConfigError, match=r"mixer 'doremi'"):
        parse_config(Sample, {"bogus": 1}, where="mixer 'doremi'")


def test_default_where_is_the_class_name() -> None:
    with pytest.raises(ConfigError, match=r"in Sample"):
        parse_config(Sample, {"bogus": 1})


def test_empty_config_rejects_every_key() -> None:
    assert parse_config(EmptyConfig, {}) == EmptyConfig()
    with pytest.raises(ConfigError, match=r"takes no keys"):
        parse_config(EmptyConfig, {"anything": 1})


def test_closest_and_unknown_key_error_helpers() -> None:
    assert closest("temprature", ["temperature", "seed"]) == "temperature"
    assert closest("qqq", ["temperature", "seed"]) is None
    err = unknown_key_error("sed", ["temperature", "seed"], "thing")
    assert isinstance(err, ConfigError)
    assert "did you mean 'seed'?" in str(err)
    assert "Valid keys: seed, temperature." in str(err)


def test_non_string_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="keys must be strings"):
        parse_config(Sample, {1: 2})  # type: ignore[dict-item]


def test_non_mapping_data_is_rejected() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(Sample, [("num_steps", 1)])  # type: ignore[arg-type]


def test_non_dataclass_is_rejected() -> None:
    class NotADataclass:
        pass

    with pytest.raises(ConfigError, match="not a dataclass"):
        parse_config(NotADataclass, {})


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_steps", "10"),  # str for int
        ("num_steps", 1.5),  # float for int
        ("num_steps", True),  # bool for int: bool is an int subclass, still rejected
        ("num_steps", None),  # None for a non-optional int
        ("learning_rate", "0.1"),  # str for float
        ("learning_rate", False),  # bool for float
        ("enabled", 1),  # int for bool
        ("enabled", "true"),  # str for bool
        ("name", 3),  # int for str
        ("mode", "slow"),  # not one of the literals
        ("proportions", 0.5),  # scalar for a tuple
        ("proportions", ["a", "b"]),  # wrong item type
        ("pair", [1]),  # fixed-length tuple, wrong length
        ("pair", [1, 2]),  # fixed-length tuple, wrong second item type
        ("tags", "abc"),  # a string is not a list of strings
        ("scales", [1.0]),  # list for a dict
        ("scales", {"a": "x"}),  # wrong value type
        ("seed", 1.0),  # float for int | None
        ("inner", 3),  # int for a nested dataclass
    ],
)
def test_wrong_types_are_rejected(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(Sample, {key: value})
    msg = str(exc.value)
    assert repr(key) in msg
    assert "must be" in msg
    assert type(value).__name__ in msg


def test_bool_for_int_message_names_the_types() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(Sample, {"num_steps": True})
    assert "key 'num_steps' must be int, got bool True" in str(exc.value)


def test_optional_message_lists_both_types() -> None:
    with pytest.raises(ConfigError, match=r"must be int \| null"):
        parse_config(Sample, {"seed": "x"})


def test_literal_message_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'fast' \| 'exact'"):
        parse_config(Sample, {"mode": "slow"})


def test_literal_int_rejects_bool() -> None:
    assert parse_config(WithLiteralInt, {"level": 1}).level == 1
    with pytest.raises(ConfigError):
        parse_config(WithLiteralInt, {"level": True})


def test_int_is_accepted_for_float_and_becomes_float() -> None:
    cfg = parse_config(Sample, {"learning_rate": 1})
    assert cfg.learning_rate == 1.0
    assert type(cfg.learning_rate) is float


def test_optional_accepts_none_and_value() -> None:
    assert parse_config(Sample, {"seed": None}).seed is None
    assert parse_config(Sample, {"seed": 3}).seed == 3


def test_any_accepts_everything() -> None:
    obj = object()
    assert parse_config(Sample, {"anything": obj}).anything is obj


# --------------------------------------------------------------------------- coercion


def test_list_becomes_tuple_for_variadic_tuple() -> None:
    cfg = parse_config(Sample, {"proportions": [1, 2, 3]})
    assert cfg.proportions == (1.0, 2.0, 3.0)
    assert isinstance(cfg.proportions, tuple)
    assert all(type(x) is float for x in cfg.proportions)


def test_tuple_input_stays_tuple() -> None:
    assert parse_config(Sample, {"proportions": (0.5, 0.5)}).proportions == (0.5, 0.5)


def test_fixed_length_tuple() -> None:
    cfg = parse_config(Sample, {"pair": [4, "b"]})
    assert cfg.pair == (4, "b")
    assert isinstance(cfg.pair, tuple)


def test_list_annotation_stays_list() -> None:
    cfg = parse_config(Sample, {"tags": ("a", "b")})
    assert cfg.tags == ["a", "b"]
    assert isinstance(cfg.tags, list)


def test_dict_values_are_coerced() -> None:
    cfg = parse_config(Sample, {"scales": {"a": 1, "b": 2.5}})
    assert cfg.scales == {"a": 1.0, "b": 2.5}
    assert type(cfg.scales["a"]) is float


# --------------------------------------------------------------------------- required keys


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(Required, {"alpha": 1.0})
    msg = str(exc.value)
    assert "missing required key(s) 'beta'" in msg
    assert "TypeError" not in msg


def test_missing_several_required_keys_lists_all() -> None:
    with pytest.raises(ConfigError, match=r"'alpha', 'beta'"):
        parse_config(Required, {})


def test_required_keys_given() -> None:
    assert parse_config(Required, {"alpha": 1, "beta": 2}) == Required(alpha=1.0, beta=2)


# --------------------------------------------------------------------------- nesting


def test_nested_dataclass_from_mapping() -> None:
    cfg = parse_config(Outer, {"inner": {"depth": 3}})
    assert cfg.inner == Inner(depth=3, label="x")


def test_nested_dataclass_instance_is_kept() -> None:
    inner = Inner(depth=5)
    assert parse_config(Outer, {"inner": inner}).inner is inner


def test_nested_unknown_key_names_the_path_and_hint() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(Outer, {"inner": {"dpth": 3}})
    msg = str(exc.value)
    assert "Outer.inner" in msg
    assert "did you mean 'depth'?" in msg


def test_nested_wrong_type_names_the_path() -> None:
    with pytest.raises(ConfigError, match=r"Outer\.inner: key 'depth' must be int"):
        parse_config(Outer, {"inner": {"depth": "deep"}})


def test_tuple_of_nested_dataclasses() -> None:
    cfg = parse_config(Outer, {"items": [{"depth": 1}, {"label": "y"}]})
    assert cfg.items == (Inner(depth=1), Inner(label="y"))


# --------------------------------------------------------------------------- aliases


def test_alias_maps_to_current_key_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dataflex_core.config"):
        cfg = parse_config(WithAliases, {"save_interval": 5})
    assert cfg.save_every == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "'save_interval'" in text and "'save_every'" in text


def test_each_alias_use_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dataflex_core.config"):
        cfg = parse_config(WithAliases, {"save_interval": 5, "kl_reg": 0.5})
    assert (cfg.save_every, cfg.temperature) == (5, 0.5)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_current_key_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dataflex_core.config"):
        parse_config(WithAliases, {"save_every": 5})
    assert not caplog.records


def test_alias_and_current_key_together_is_an_error() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse_config(WithAliases, {"save_every": 1, "save_interval": 2})


def test_alias_value_is_type_checked() -> None:
    with pytest.raises(ConfigError, match="key 'save_every' must be int"):
        parse_config(WithAliases, {"save_interval": "often"})


def test_unknown_key_near_an_alias_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="did you mean 'save_every'"):
        parse_config(WithAliases, {"save_evry": 1})


# --------------------------------------------------------------------------- __post_init__


def test_post_init_value_error_becomes_config_error_with_context() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(Validated, {"temperature": 0}, where="weighter 'loss'")
    msg = str(exc.value)
    assert msg.startswith("weighter 'loss': ")
    assert "temperature must be > 0, got 0.0" in msg
    assert isinstance(exc.value.__cause__, ValueError)


def test_post_init_type_error_becomes_config_error() -> None:
    with pytest.raises(ConfigError, match=r"Validated: kind 'type' is not allowed"):
        parse_config(Validated, {"kind": "type"})


def test_post_init_config_error_gets_context() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(Validated, {"kind": "config"}, where="selector 'x'")
    assert str(exc.value) == "selector 'x': kind 'config' is reserved"


def test_post_init_passes() -> None:
    assert parse_config(Validated, {"temperature": 2}).temperature == 2.0


# --------------------------------------------------------------------------- config_to_dict


def test_config_to_dict_is_json_shaped() -> None:
    cfg = parse_config(Sample, {"proportions": [1, 3], "inner": {"depth": 2}, "scales": {"a": 1}})
    data = config_to_dict(cfg)
    assert data["proportions"] == [1.0, 3.0]
    assert data["pair"] == [1, "a"]
    assert data["inner"] == {"depth": 2, "label": "x"}
    assert data["scales"] == {"a": 1.0}


def test_config_to_dict_round_trips_through_parse_config() -> None:
    cfg = parse_config(Outer, {"inner": {"depth": 4}, "items": [{"label": "q"}]})
    assert parse_config(Outer, config_to_dict(cfg)) == cfg
