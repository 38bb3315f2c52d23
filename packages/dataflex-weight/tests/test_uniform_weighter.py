"""The uniform weighter on numpy inputs, and its conformance."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError, Registry, WeightFeedback
from dataflex_testing import WeighterConformance
from dataflex_weight import UniformWeighter


def test_ones_for_numpy_losses() -> None:
    w = UniformWeighter().weigh(WeightFeedback(step=0, losses=np.array([0.5, 2.0, 3.0])))
    assert isinstance(w, np.ndarray) and w.dtype == np.float64
    assert w.tolist() == [1.0, 1.0, 1.0]


def test_lists_become_numpy() -> None:
    w = UniformWeighter().weigh(WeightFeedback(step=0, losses=[1.0, 2.0]))
    assert isinstance(w, np.ndarray) and w.tolist() == [1.0, 1.0]


def test_invalid_samples_get_zero_silently() -> None:
    fb = WeightFeedback(step=0, losses=np.array([1.0, math.nan, 2.0]), valid=[True, False, True])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an invalid sample's NaN is expected: no warning
        assert UniformWeighter().weigh(fb).tolist() == [1.0, 0.0, 1.0]


def test_nan_loss_of_a_valid_sample_gets_zero_with_a_warning() -> None:
    fb = WeightFeedback(step=3, losses=np.array([1.0, math.nan, math.inf]))
    with pytest.warns(RuntimeWarning, match="2 valid sample"):
        w = UniformWeighter().weigh(fb)
    assert w.tolist() == [1.0, 0.0, 0.0]


def test_valid_mask_length_is_checked() -> None:
    with pytest.raises(DataError, match="one validity flag per sample"):
        UniformWeighter().weigh(WeightFeedback(step=0, losses=np.ones(3), valid=[True]))


def test_takes_no_config_keys() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        UniformWeighter({"temperature": 1.0})


def test_state_is_empty() -> None:
    weighter = UniformWeighter()
    assert weighter.state_dict() == {}
    weighter.load_state_dict({})


def test_plugin_registers_uniform(fresh_plugin_manager) -> None:
    registry = Registry(fresh_plugin_manager)
    assert isinstance(registry.create("weighter", "uniform"), UniformWeighter)


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, numpy as np, dataflex_weight, dataflex_weight.plugin\n"
        "from dataflex_core import WeightFeedback\n"
        "dataflex_weight.UniformWeighter().weigh(WeightFeedback(step=0, losses=np.ones(2)))\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class TestUniformWeighterConformance(WeighterConformance):
    name = "uniform"


class TestUniformWeighterByClass(WeighterConformance):
    component_class = UniformWeighter
    batch_size = 5
    invalid_index = 0
