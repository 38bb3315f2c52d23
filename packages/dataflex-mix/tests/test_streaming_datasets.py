"""The streaming mixture over real ``datasets.IterableDataset`` sources.

dataflex-mix does not depend on ``datasets``; the isolation run of this package alone has no
``datasets`` installed, so this module is the one deliberate skip there. In the workspace venv
(``datasets`` 4.x) it runs.
"""

from __future__ import annotations

import itertools
import json

import pytest

datasets = pytest.importorskip(
    "datasets", reason="datasets is not installed (dataflex-mix alone does not depend on it)"
)

from dataflex_mix import StreamingMixture  # noqa: E402


def _domain(name: str, n: int, shuffle: bool = False):
    def gen():
        for i in range(n):
            yield {"text": f"{name}-{i}", "domain": name}

    ds = datasets.IterableDataset.from_generator(gen)
    return ds.shuffle(seed=0, buffer_size=4) if shuffle else ds


def _sources():
    return [_domain("wiki", 7, shuffle=True), _domain("code", 5), _domain("math", 3)]


def _make(sources):
    return StreamingMixture(
        sources,
        samples_per_step=6,
        proportions=[0.5, 0.3, 0.2],
        seed=1,
        domain_names=["wiki", "code", "math"],
    )


def _take(mix, n):
    return [(d, row["text"]) for d, row in itertools.islice(iter(mix), n)]


def test_items_come_from_their_domain_and_restart_with_new_epochs() -> None:
    out = _take(_make(_sources()), 60)
    names = ["wiki", "code", "math"]
    assert all(text.startswith(names[d]) for d, text in out)
    wiki = [text for d, text in out if d == 0]
    # 30 wiki items = 4 passes of 7 and a bit: each pass is a permutation of the 7 rows, and
    # set_epoch makes the shuffled passes differ.
    passes = [wiki[i : i + 7] for i in range(0, 28, 7)]
    assert all(sorted(p) == sorted(f"wiki-{i}" for i in range(7)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_resume_mid_stream() -> None:
    straight = _take(_make(_sources()), 50)
    first = _make(_sources())
    head = _take(first, 23)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _make(_sources())
    resumed.load_state_dict(state)
    assert head + _take(resumed, 27) == straight


def test_shards_partition_the_stream() -> None:
    full = _take(_make(_sources()), 36)
    halves = [_take(_make(_sources()).shard(r, 2), 18) for r in range(2)]
    assert halves[0] == full[0::2] and halves[1] == full[1::2]
