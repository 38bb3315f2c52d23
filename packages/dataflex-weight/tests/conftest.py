"""Fixtures of the dataflex-weight tests.

``split_feedback`` splits one global micro-batch into per-rank feedbacks, the way an
integration builds them after the all-gather, so the tests can simulate several ranks in one
process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import pytest
from dataflex_core import WeightFeedback


def _split_feedback(
    losses: Any,
    sizes: Sequence[int],
    *,
    valid: Any = None,
    token_counts: Any = None,
    embeddings: Any = None,
    step: int = 0,
    convert: Callable[[Any], Any] = lambda x: x,
) -> list[WeightFeedback]:
    """One feedback per rank, as an integration builds them after the all-gather.

    ``sizes`` are the per-rank micro-batch sizes (unequal sizes are allowed); every feedback
    carries the global losses and validity of the whole batch and its ``local_offset``.
    ``convert`` maps numpy arrays to the backend under test (e.g. ``torch.as_tensor``).
    """
    losses = np.asarray(losses, dtype=np.float64)
    n = losses.shape[0]
    assert sum(sizes) == n
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    out = []
    offset = 0
    for size in sizes:
        sl = slice(offset, offset + size)
        out.append(
            WeightFeedback(
                step=step,
                losses=convert(losses[sl]),
                valid=convert(valid[sl]),
                token_counts=None
                if token_counts is None
                else convert(np.asarray(token_counts)[sl]),
                embeddings=None if embeddings is None else convert(np.asarray(embeddings)[sl]),
                global_losses=convert(losses),
                global_valid=convert(valid),
                local_offset=offset,
                world_size=len(sizes),
            )
        )
        offset += size
    return out


@pytest.fixture
def split_feedback() -> Callable[..., list[WeightFeedback]]:
    """The function ``split_feedback(losses, sizes, *, valid, token_counts, embeddings, step,
    convert)`` returning one feedback per rank."""
    return _split_feedback


@contextmanager
def _count_host_reads() -> Iterator[dict[str, int]]:
    import torch  # only the torch test modules use this fixture

    counts: dict[str, int] = {}
    names = ("item", "cpu", "numpy", "tolist", "__bool__", "__int__", "__float__", "__index__")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def wrap(name: str) -> Callable[..., Any]:
        original = originals[name]

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts[name] = counts.get(name, 0) + 1
            return original(self, *args, **kwargs)

        return counted

    try:
        for name in names:
            setattr(torch.Tensor, name, wrap(name))
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.fixture
def count_host_reads() -> Callable[[], AbstractContextManager[dict[str, int]]]:
    """``with count_host_reads() as counts:`` counts the tensor methods that read a value back
    to the host (``item``, ``cpu``, ``numpy``, ``tolist``, ``bool()``, ``int()``, ``float()``).
    A host read of a device tensor waits for the device: the per-step path keeps them few."""
    return _count_host_reads
