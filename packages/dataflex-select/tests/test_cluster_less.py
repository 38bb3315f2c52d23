"""The ``cluster_less`` selector (spec §2.6): clustering, representatives, the worked example."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np
import pytest
from dataflex_core import ComponentContext, ConfigError, DataError, SelectRequest, StateError
from dataflex_select.cluster_less import (
    CLUSTERING_METHODS,
    POOL_EMBEDDING,
    Clustering,
    ClusterLessSelector,
    cluster_embeddings,
    cluster_features,
    order_members,
    representatives,
)
from dataflex_select.less import less_influence
from dataflex_testing import SelectorConformance


def _loop_answer(sel: Any, req: SelectRequest, value: Any) -> list[int]:
    """The integration's loop: call signals() until everything it asks for is in extras."""
    extras = dict(req.extras)
    for _ in range(5):
        missing = [
            s for s in sel.signals(dataclasses.replace(req, extras=extras)) if s.name not in extras
        ]
        if not missing:
            break
        for s in missing:
            extras[s.name] = value(s)
    return sel.select(dataclasses.replace(req, extras=extras))


class _Conformance(SelectorConformance):
    component_class = ClusterLessSelector

    def answer(self, selector: Any, request: SelectRequest) -> Any:
        return _loop_answer(selector, request, lambda s: self.signal_value(s, request))


class TestClusterLessConformance(_Conformance):
    def valid_configs(self) -> list[dict[str, Any]]:
        return [
            {"proj_dim": 8},
            {"proj_dim": 8, "cluster_size": 8, "representative_strategy": "nearest"},
            {
                "proj_dim": 8,
                "num_clusters": 5,
                "clustering_method": "spherical_kmeans",
                "representative_strategy": "mixed",
            },
            {
                "proj_dim": 8,
                "num_clusters": 6,
                "clustering_method": "farthest_first",
                "representative_strategy": "farthest",
            },
            {"proj_dim": 8, "num_clusters": 7, "clustering_method": "random_projection_lsh"},
            {
                "proj_dim": 8,
                "num_clusters": 4,
                "clustering_method": "random_partition",
                "selection_scope": "pool",
                "budget": 40,
            },
            {"proj_dim": 8, "cluster_size": 10, "candidate_subsample": 60, "exclude_recent": 1},
            {"proj_dim": 8, "cluster_size": 10, "history": 2},
        ]


# --------------------------------------------------------------------------- worked example

# Pool: rows 0-2 form cluster A, rows 3-4 cluster B. Row 0 is nearest A's centroid, row 2 farthest.
EMB = np.array([[10.0, 0.1], [10.0, -0.2], [10.0, 0.5], [-10.0, 0.0], [-10.0, 1.0]])
GRADS = np.array([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [1.0, 0.0], [1.0, 0.0]])


def test_spec_example_pure_parts() -> None:
    feats = cluster_features([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], [0, 0, 1, 1], 2)
    np.testing.assert_allclose(feats, [[0.707107, 0.707107], [1.0, 0.0]], atol=1e-6)
    inf = less_influence([feats], [np.array([[1.0, 0.0]])])
    np.testing.assert_allclose(inf, [0.707107, 1.0], atol=1e-6)
    # members inherit; equal scores by distance to the centroid, then index
    scores = inf[[0, 0, 0, 1, 1]]
    dist = [0.0333, 0.3333, 0.3667, 0.5, 0.5]
    assert order_members(scores, dist, 3).tolist() == [3, 4, 0]


def test_spec_example_through_the_selector() -> None:
    sel = ClusterLessSelector(
        {
            "proj_dim": 2,
            "num_clusters": 2,
            "samples_per_cluster": 2,
            "representative_strategy": "nearest",
        }
    )
    req = SelectRequest(step=3, epoch=0, update=0, n=3, num_samples=5)
    first = sel.signals(req)
    assert [s.name for s in first] == [POOL_EMBEDDING]
    assert (first[0].kind, first[0].indices) == ("embedding", None)
    values = {
        POOL_EMBEDDING: EMB,
        "target_grad@current": np.array([[1.0, 0.0]]),
        "target_subtask": [0],
    }

    def value(s: Any) -> Any:
        if s.name == "train_grad@current":
            assert sorted(s.indices) == [0, 1, 3, 4]  # nearest two of A, both of B
            return GRADS[list(s.indices)]
        return values[s.name]

    got = _loop_answer(sel, req, value)
    assert got == [3, 4, 0]
    np.testing.assert_allclose(sel.last_scores[1], [0.707107] * 3 + [1.0, 1.0], atol=1e-6)
    assert sel.clustering is not None
    assert sel.clustering.assignment.tolist() in ([0, 0, 0, 1, 1], [1, 1, 1, 0, 0])
    # the clustering is kept: the next update asks only for LESS signals
    nxt = [s.name for s in sel.signals(dataclasses.replace(req, step=5))]
    assert POOL_EMBEDDING not in nxt and "train_grad@current" in nxt


# --------------------------------------------------------------------------- clustering


def _blobs(
    seed: int = 0, per: int = 30, centers: int = 4, d: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * 10
    x = np.concatenate([c[j] + rng.normal(size=(per, d)) * 0.1 for j in range(centers)])
    return x, np.repeat(np.arange(centers), per)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("method", ["kmeans", "spherical_kmeans", "farthest_first"])
def test_clustering_recovers_separated_blobs(method: str) -> None:
    x, truth = _blobs()
    cl = cluster_embeddings(x, 4, method, seed=1)
    assert _same_partition(cl.assignment, truth)
    # distances are to the member mean
    for c in range(4):
        m = cl.members(c)
        centroid = x[m].mean(0)
        if method == "spherical_kmeans":
            xn = x[m] / np.linalg.norm(x[m], axis=1, keepdims=True)
            centroid = xn.mean(0) / np.linalg.norm(xn.mean(0))
            np.testing.assert_allclose(cl.distances[m], np.linalg.norm(xn - centroid, axis=1))
        else:
            np.testing.assert_allclose(cl.distances[m], np.linalg.norm(x[m] - centroid, axis=1))


@pytest.mark.parametrize("method", CLUSTERING_METHODS)
def test_clustering_is_seeded_and_deterministic(method: str) -> None:
    x, _ = _blobs(seed=2, per=25)
    a = cluster_embeddings(x, 9, method, seed=3, chunk_size=7)
    b = cluster_embeddings(x, 9, method, seed=3, chunk_size=100)
    assert a.assignment.tolist() == b.assignment.tolist()
    assert a.num_clusters == 9 and a.assignment.min() >= 0 and a.assignment.max() < 9
    assert a.embedding_sha256 == b.embedding_sha256 and len(a.embedding_sha256) == 64


def test_random_partition_sizes_and_lsh_bits() -> None:
    x = np.random.default_rng(0).normal(size=(103, 5))
    part = cluster_embeddings(x, 10, "random_partition", seed=0)
    sizes = np.bincount(part.assignment, minlength=10)
    assert sizes.max() - sizes.min() <= 1
    lsh = cluster_embeddings(x, 5, "random_projection_lsh", seed=0)  # 3 bits, codes mod 5
    assert lsh.assignment.max() < 5
    one_bit = cluster_embeddings(x, 5, "random_projection_lsh", seed=0, lsh_num_bits=1)
    assert set(one_bit.assignment.tolist()) <= {0, 1}


def test_kmeans_reseeds_empty_clusters() -> None:
    # 6 copies of one point and 2 distinct outliers, k = 3: k-means++ must still give 3 centers,
    # and an empty cluster takes the farthest point
    x = np.array([[0.0, 0.0]] * 6 + [[5.0, 0.0], [0.0, 7.0]])
    cl = cluster_embeddings(x, 3, "kmeans", seed=0)
    assert sorted(np.bincount(cl.assignment, minlength=3).tolist()) == [1, 1, 6]


def test_nan_embeddings_join_no_cluster_and_are_never_chosen() -> None:
    x, _ = _blobs(per=5, centers=2)
    x[3] = np.nan
    cl = cluster_embeddings(x, 2, "kmeans", seed=0)
    assert cl.assignment[3] == -1 and math.isnan(cl.distances[3])
    rows, _ = representatives(cl, 10, "nearest")
    assert 3 not in rows.tolist() and len(rows) == 9
    with pytest.raises(DataError, match="finite"):
        cluster_embeddings(np.full((3, 2), np.nan), 2)


def test_k_is_capped_at_the_number_of_rows() -> None:
    cl = cluster_embeddings(np.eye(3), 10, "kmeans")
    assert cl.num_clusters == 3 and sorted(cl.assignment.tolist()) == [0, 1, 2]


# --------------------------------------------------------------------------- representatives


def _toy() -> Clustering:
    # cluster 0: rows 0..4 with distances 5,1,3,2,4 ; cluster 1: rows 5, 6
    return Clustering(
        assignment=np.array([0, 0, 0, 0, 0, 1, 1]),
        distances=np.array([5.0, 1.0, 3.0, 2.0, 4.0, 1.0, 1.0]),
        num_clusters=2,
    )


def test_representative_strategies() -> None:
    cl = _toy()
    rows, clusters = representatives(cl, 3, "nearest")
    assert rows.tolist() == [1, 3, 2, 5, 6] and clusters.tolist() == [0, 0, 0, 1, 1]
    assert representatives(cl, 3, "farthest")[0].tolist() == [0, 4, 2, 5, 6]
    assert representatives(cl, 4, "mixed")[0].tolist() == [1, 0, 3, 4, 5, 6]
    r1 = representatives(cl, 2, "random", seed=11)[0]
    assert r1.tolist() == representatives(cl, 2, "random", seed=11)[0].tolist()
    assert len(r1) == 4 and set(r1.tolist()[2:]) == {5, 6}
    seen = {tuple(representatives(cl, 2, "random", seed=s)[0].tolist()[:2]) for s in range(20)}
    assert len(seen) > 1
    with pytest.raises(ConfigError):
        representatives(cl, 2, "random")


def test_random_representatives_change_with_the_step() -> None:
    sel = ClusterLessSelector(
        {"num_clusters": 3, "samples_per_cluster": 2}, ComponentContext(seed=4)
    )
    x, _ = _blobs(per=10, centers=3)
    sel.fit_clusters(x)
    a = sel.representatives_for(1)[0].tolist()
    assert a == sel.representatives_for(1)[0].tolist()
    assert any(sel.representatives_for(s)[0].tolist() != a for s in range(2, 8))


def test_cluster_features_skip_nan_representatives() -> None:
    feats = cluster_features([[np.nan, 0.0], [0.0, 2.0], [np.nan, np.nan]], [0, 0, 1], 3)
    np.testing.assert_allclose(feats[0], [0.0, 1.0])
    assert np.isnan(feats[1]).all() and np.isnan(feats[2]).all()


# --------------------------------------------------------------------------- config and state


def test_config_keys_and_defaults() -> None:
    c = ClusterLessSelector().config
    assert (c.num_clusters, c.cluster_size, c.samples_per_cluster, c.clustering_method) == (
        None,
        64,
        4,
        "kmeans",
    )
    assert (c.clustering_max_iter, c.clustering_batch_size, c.representative_strategy) == (
        20,
        8,
        "random",
    )
    assert (c.embedding_layer, c.embedding_pooling, c.lsh_num_bits) == (-1, "mean", None)
    assert c.proj_dim == 8192 and c.gradient_type == "adam"  # the LESS keys
    assert c.clusters_for(129) == 3
    for bad in ({"cluster_size": 0}, {"num_clusters": 0}, {"clustering_method": "dbscan"}):
        with pytest.raises(ConfigError):
            ClusterLessSelector(bad)


def test_embedding_signal_options() -> None:
    sel = ClusterLessSelector(
        {"embedding_model_name_or_path": "m", "embedding_layer": 3, "clustering_batch_size": 2}
    )
    sig = sel.signals(SelectRequest(step=1, epoch=0, update=0, n=2, num_samples=9))[0]
    assert sig.options["model"] == "m" and sig.options["layer"] == 3
    assert sig.options["batch_size"] == 2 and sig.options["pooling"] == "mean"


def test_wrong_embedding_rows_is_an_error() -> None:
    sel = ClusterLessSelector({"num_clusters": 2})
    req = SelectRequest(
        step=1, epoch=0, update=0, n=2, num_samples=9, extras={POOL_EMBEDDING: np.eye(4)}
    )
    with pytest.raises(DataError, match="4 rows"):
        sel.signals(req)


def test_state_restores_the_clustering_from_files(tmp_path: Any) -> None:
    cfg = {"proj_dim": 4, "num_clusters": 3, "samples_per_cluster": 2, "cache_dir": str(tmp_path)}
    x, _ = _blobs(per=6, centers=3, d=4)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(len(x), 4))
    target = rng.normal(size=(3, 4))

    def value(s: Any) -> Any:
        return {
            POOL_EMBEDDING: x,
            "train_grad@current": grads[list(s.indices)] if s.indices else None,
            "target_grad@current": target,
            "target_subtask": [0, 1, 1],
        }[s.name]

    a = ClusterLessSelector(cfg)
    req = SelectRequest(step=2, epoch=0, update=0, n=4, num_samples=len(x))
    _loop_answer(a, req, value)
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    saved = state["algorithm"]["clustering"]
    assert os.path.exists(saved["assignment"]["path"]) and saved["num_clusters"] == 3
    assert saved["embedding_sha256"] == a.clustering.embedding_sha256
    b = ClusterLessSelector(cfg)
    b.load_state_dict(state)
    assert b.clustering is not None
    assert b.clustering.assignment.tolist() == a.clustering.assignment.tolist()
    nxt = dataclasses.replace(req, step=4)
    assert POOL_EMBEDDING not in [s.name for s in b.signals(nxt)]
    assert _loop_answer(b, nxt, value) == _loop_answer(a, nxt, value)
    with pytest.raises(StateError, match="method"):
        ClusterLessSelector({**cfg, "clustering_method": "random_partition"}).load_state_dict(state)


def test_lloyd_reseeds_an_empty_cluster_with_the_farthest_point(monkeypatch: Any) -> None:
    import dataflex_select.cluster_less as mod

    # rows 0 and 1 coincide, so seeding them both leaves cluster 1 empty (ties go to cluster 0);
    # row 3 is the point farthest from its centroid and must take over cluster 1
    x = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 1.0]])
    monkeypatch.setattr(mod, "_kmeans_pp", lambda x, k, rng: np.array([0, 1, 2]))
    cl = cluster_embeddings(x, 3, "kmeans", seed=0)
    assert cl.assignment.tolist() == [0, 0, 2, 1]


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The standalone example of docs/select/cluster_less.md runs and prints what the page says."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[3] / "docs" / "select" / "cluster_less.md"
    if not page.exists():  # the package installed on its own, without the repository's docs
        pytest.skip(f"{page} not found")
    code = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)[0]
    exec(compile(code, str(page), "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out.split()
    promised = " ".join(re.findall(r"# (\[.*?\]|\(\(.*)", code)).split()
    for token in promised:
        assert token in printed, f"{token!r} promised by the page, printed {printed}"


def test_a_changed_pool_is_an_error() -> None:
    sel = ClusterLessSelector({"num_clusters": 2})
    sel.fit_clusters(np.eye(4))
    with pytest.raises(DataError, match="pool changed"):
        sel.signals(SelectRequest(step=1, epoch=0, update=0, n=2, num_samples=5))
