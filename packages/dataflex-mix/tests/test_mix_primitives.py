"""The shared sampling primitives of dataflex-mix against spec §0.3 and §3.0 examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dataflex_core import ConfigError, DataError
from dataflex_mix import primitives as prim
from dataflex_testing import check_primitives


def test_conformance_of_the_copy() -> None:
    check_primitives(prim)


def test_largest_remainder_spec_example() -> None:
    # 10·[.5,.25,.25] = [5, 2.5, 2.5] -> floors [5,2,2], one unit left, tie -> lower k.
    assert prim.largest_remainder([0.5, 0.25, 0.25], 10).tolist() == [5, 3, 2]


def test_largest_remainder_hand_computed() -> None:
    # 7·[.2,.3,.5] = [1.4, 2.1, 3.5] -> floors [1,2,3], one left to the largest fraction (.5).
    assert prim.largest_remainder([0.2, 0.3, 0.5], 7).tolist() == [1, 2, 4]
    # Unnormalised input: [3,1] over 5 -> [3.75, 1.25] -> [4, 1].
    assert prim.largest_remainder([3, 1], 5).tolist() == [4, 1]
    assert prim.largest_remainder([1.0], 0).tolist() == [0]


def test_blend_indices_spec_example() -> None:
    domains, within = prim.blend_indices([0.75, 0.25], 4)
    assert domains.tolist() == [0, 1, 0, 0]
    assert within.tolist() == [0, 0, 1, 2]


def test_blend_indices_prefixes_track_weights() -> None:
    w = np.array([0.5, 0.3, 0.2])
    domains, within = prim.blend_indices(w, 200)
    counts = np.zeros(3)
    for s, k in enumerate(domains.tolist(), start=1):
        counts[k] += 1
        assert np.all(np.abs(counts - w * s) <= 2.0), (s, counts.tolist())
    # within-domain indices count up per domain
    for k in range(3):
        assert within[domains == k].tolist() == list(range(int((domains == k).sum())))


def test_top_k_hand_computed() -> None:
    assert prim.top_k([0.3, 0.9, 0.1, 0.9, -math.inf], 3).tolist() == [1, 3, 0]
    assert prim.top_k(np.array([[2.0, 1.0], [3.0, 0.0]]), 2).tolist() == [2, 0]  # flattened
    with pytest.raises(DataError):
        prim.top_k([1.0], -1)


def test_sample_without_replacement_returns_all_support_when_n_equals_nnz() -> None:
    got = prim.sample_without_replacement([0, 2, 0, 1], 2, seed=9)
    assert sorted(got.tolist()) == [1, 3]
    with pytest.raises(DataError, match="replacement"):
        prim.sample_without_replacement([0, 2, 0, 1], 3, seed=9)


def test_sample_with_replacement_counts() -> None:
    got = prim.sample_with_replacement([1.0, 0.0, 1.0], 1000, seed=1)
    counts = np.bincount(got, minlength=3)
    assert counts[1] == 0 and counts.sum() == 1000
    assert abs(counts[0] - 500) < 80


@pytest.mark.parametrize("bad", [[1, -1], [1, math.nan], [0, 0], [math.inf, 1]])
def test_sampling_rejects_bad_probabilities(bad: list[float]) -> None:
    with pytest.raises(DataError):
        prim.sample_with_replacement(bad, 1, seed=0)


def test_normalize_proportions() -> None:
    assert prim.normalize_proportions([2, 1, 1], 3).tolist() == [0.5, 0.25, 0.25]
    with pytest.raises(ConfigError, match=r"proportions.*2 entries.*3 domains"):
        prim.normalize_proportions([1, 1], 3)
    with pytest.raises(ConfigError, match=r"init_mixture_proportions.*negative"):
        prim.normalize_proportions([1, -1, 1], 3, key="init_mixture_proportions")
    with pytest.raises(ConfigError, match="sums to 0"):
        prim.normalize_proportions([0, 0, 0], 3)
    with pytest.raises(ConfigError, match="non-finite"):
        prim.normalize_proportions([1, math.nan, 1], 3)


def test_generator_is_pcg64_and_leaves_global_rng_alone() -> None:
    before = np.random.get_state()
    g = prim.generator(5)
    g.random(10)
    after = np.random.get_state()
    assert isinstance(g.bit_generator, np.random.PCG64)
    assert np.array_equal(before[1], after[1]) and before[2:] == after[2:]
