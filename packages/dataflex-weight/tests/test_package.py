"""Package-level checks: lazy names, no torch on import, docstring examples."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import dataflex_weight
import pytest

MODULES = ("weighters", "loss", "adapt", "custom", "pooling", "common")


def test_every_public_name_resolves() -> None:
    for name in dataflex_weight.__all__:
        assert getattr(dataflex_weight, name) is not None, name
    assert set(dataflex_weight.__all__) <= set(dir(dataflex_weight))
    with pytest.raises(AttributeError):
        dataflex_weight.NoSuchWeighter  # noqa: B018


def test_numpy_paths_do_not_load_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "import dataflex_weight, dataflex_weight.plugin\n"
        f"for m in {MODULES!r}: __import__('dataflex_weight.' + m)\n"
        "from dataflex_core import WeightFeedback, create\n"
        "fb = WeightFeedback(step=0, losses=np.array([1.0, 2.0]), embeddings=np.eye(2))\n"
        "for name in ('uniform', 'loss', 'custom'):\n"
        "    w = create('weighter', name)\n"
        "    w.objective(fb, w.weigh(fb))\n"
        "a = create('weighter', 'adapt'); a.set_anchors(np.eye(2), 0); a.weigh(fb)\n"
        "dataflex_weight.position_weighted_pool(np.ones((3, 2)), np.ones(3))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module(f"dataflex_weight.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
