"""``feedback_from_samples``: per-sample losses to per-domain sums, each on its own domain."""

from __future__ import annotations

import pytest
from dataflex_core import DataError
from dataflex_mix import feedback_from_samples


def test_per_domain_sums() -> None:
    fb = feedback_from_samples(
        3,
        losses=[1.0, 2.0, 4.0],
        domains=[1, 0, 1],
        num_domains=3,
        token_counts=[2, 5, 1],
        excess_loss_sums=[0.5, 0.0, 1.5],
        eval_loss=[1, 2, 3],
        extras={"gate_loads": [[1]]},
    )
    assert fb.step == 3
    assert fb.loss_sum == (10.0, 1.0 * 2 + 4.0 * 1, 0.0)
    assert fb.token_count == (5.0, 3.0, 0.0)
    assert fb.sample_count == (1.0, 2.0, 0.0)
    assert fb.sample_loss_sum == (2.0, 5.0, 0.0)
    assert fb.excess_loss_sum == (0.0, 2.0, 0.0)
    assert fb.sample_losses == (1.0, 2.0, 4.0) and fb.sample_domains == (1, 0, 1)
    assert fb.eval_loss == (1.0, 2.0, 3.0) and fb.extras == {"gate_loads": [[1]]}


def test_default_token_counts_are_one() -> None:
    fb = feedback_from_samples(0, [1.0, 3.0], [0, 0], 2)
    assert fb.loss_sum == (4.0, 0.0) and fb.token_count == (2.0, 0.0) and fb.excess_loss_sum is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"domains": [0]}, "one per sample"),
        ({"domains": [0, 2]}, "integer ids"),
        ({"domains": [0.0, 1.0]}, "integer ids"),
        ({"token_counts": [1]}, "token_counts"),
        ({"excess_loss_sums": [1, 2, 3]}, "excess_loss_sums"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {"step": 0, "losses": [1.0, 2.0], "domains": [0, 1], "num_domains": 2, **kwargs}
    with pytest.raises(DataError, match=match):
        feedback_from_samples(**args)
