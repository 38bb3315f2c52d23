"""Random projections (spec §1.5): conventions, JL statistics, determinism, streaming, structure."""

from __future__ import annotations

import math

import pytest
import torch
from dataflex_core import ConfigError, derive
from dataflex_ops import DenseProjector, SparseProjector, factor_matrix, make_projector
from dataflex_ops.projection import sjlt_scatter


def _grads(seed: int = 0, b: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(b, 7, 11, generator=g),
        "a.bias": torch.randn(b, 7, generator=g),
        "b.weight": torch.randn(b, 300, generator=g),
    }


def test_dense_convention_is_r_transpose_g() -> None:
    """Spec example: R = [[1,-1],[1,1],[-1,1]], g = [1,2,3] -> R^T g = [0, 4]."""
    r = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    g = torch.tensor([[1.0, 2.0, 3.0]])
    assert (g @ r).tolist() == [[0.0, 4.0]]
    proj = DenseProjector({"proj_dim": 6, "block_size": 4})
    x = torch.arange(1.0, 9.0)[None]  # P = 8 >= d (a larger d is an error)
    torch.testing.assert_close(proj.project({"t": x}), x @ proj.matrix("t", 8))


def test_sjlt_spec_example() -> None:
    """h = [0,1,0], xi = [+1,-1,+1], g = [1,2,3] -> phi = [4, -2]."""
    phi = sjlt_scatter(
        torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0, 1, 0]]), torch.tensor([[1, -1, 1]]), 2
    )
    assert phi.tolist() == [[4.0, -2.0]]


def test_rademacher_entries_and_per_tensor_seeding() -> None:
    proj = DenseProjector({"proj_dim": 10, "block_size": 4, "seed": 3})
    r = proj.matrix("w", 6)
    assert set(r.unique().tolist()) == {-1.0, 1.0} and r.shape == (6, 10)
    # column block b of a tensor is drawn from derive(seed, name, b)
    gen = torch.Generator().manual_seed(derive(3, "w", 1))
    block = torch.randint(0, 2, (6, 4), generator=gen, dtype=torch.int8).float() * 2 - 1
    torch.testing.assert_close(r[:, 4:8], block)


@pytest.mark.parametrize(
    "cfg",
    [
        {"projector": "rademacher"},
        {"projector": "gaussian"},
        {"projector": "sjlt", "sjlt_nnz": 1},
        {"projector": "sjlt", "sjlt_nnz": 4},
        {"projector": "rademacher", "projection_seeding": "trak_basic"},
    ],
)
def test_jl_norm_preservation(cfg) -> None:
    """E‖Rᵀx‖² = d‖x‖² (dense) or s‖x‖² (sparse); scale=True divides by √d or √s, so the
    squared-norm ratio has mean 1."""
    d = 256
    proj = make_projector({**cfg, "proj_dim": d, "scale": True, "block_size": 64})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2000, generator=g)
    y = proj.project({"x": x})
    ratio = y.double().norm(dim=1) ** 2 / x.double().norm(dim=1) ** 2
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.05)
    assert float(ratio.std()) < 0.25  # about sqrt(2/d) for dense
    # inner products: cosines are roughly preserved
    cos_x = torch.nn.functional.cosine_similarity(x[0:1], x[1:2] + x[0:1])
    cos_y = torch.nn.functional.cosine_similarity(y[0:1], y[1:2] + y[0:1])
    assert abs(float(cos_x - cos_y)) < 0.15


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "sjlt"])
def test_deterministic_by_seed(kind) -> None:
    g = _grads()
    a = make_projector({"projector": kind, "proj_dim": 32, "seed": 5}).project(g)
    b = make_projector({"projector": kind, "proj_dim": 32, "seed": 5}).project(g)
    c = make_projector({"projector": kind, "proj_dim": 32, "seed": 6}).project(g)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.dtype == torch.float32


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "sjlt"])
def test_block_streaming_equals_one_shot_product(kind) -> None:
    """Tiles of 64 input rows x 8 columns, no cache, equal g @ R with R built in one piece."""
    g = _grads()
    streamed = make_projector(
        {
            "projector": kind,
            "proj_dim": 24,
            "block_size": 8,
            "input_block_size": 64,
            "projector_cache_bytes": 0,
            "projection_batch_size": 2,
        }
    )
    one_shot = make_projector(
        {"projector": kind, "proj_dim": 24, "block_size": 8, "input_block_size": 64}
    )
    flat = torch.cat([v.reshape(5, -1) for v in g.values()], dim=1)
    r = torch.cat([one_shot.matrix(n, v[0].numel()) for n, v in g.items()], dim=0)
    torch.testing.assert_close(streamed.project(g), flat @ r, atol=1e-4, rtol=1e-5)
    # per_tensor: the result does not depend on the order of the tensors
    torch.testing.assert_close(
        streamed.project(dict(reversed(list(g.items())))), flat @ r, atol=1e-4, rtol=1e-5
    )


def test_input_blocks_are_seeded_per_block() -> None:
    proj = DenseProjector({"proj_dim": 8, "block_size": 8, "input_block_size": 5})
    r = proj.matrix("w", 12)  # row blocks [0,5), [5,10), [10,12)
    gen = torch.Generator().manual_seed(derive(0, "w", 0, 1))
    rows = torch.randint(0, 2, (5, 8), generator=gen, dtype=torch.int8).float() * 2 - 1
    torch.testing.assert_close(r[5:10], rows)


@pytest.mark.parametrize("s", [1, 3])
def test_countsketch_structure(s: int) -> None:
    proj = SparseProjector({"proj_dim": 12, "sjlt_nnz": s, "input_block_size": 7})
    r = proj.matrix("w", 20)  # row q = where coordinate q lands
    assert r.shape == (20, 12)
    assert set(r.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert ((r != 0).sum(dim=1) == s).all()  # exactly s nonzeros per coordinate
    width = 12 // s
    for j in range(s):  # one per slice [j*d/s, (j+1)*d/s)
        assert ((r[:, j * width : (j + 1) * width] != 0).sum(dim=1) == 1).all()
    buckets, signs = proj.hashes("w", 20, 0)
    assert buckets.shape == (s, 7) and set(signs.unique().tolist()) <= {-1, 1}
    assert ((buckets // width) == torch.arange(s)[:, None]).all()
    unscaled = proj.project({"w": torch.ones(1, 20)})
    assert float(unscaled.sum()) == pytest.approx(float(r.sum()))


def test_sjlt_needs_divisible_dim() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        SparseProjector({"proj_dim": 10, "sjlt_nnz": 3})
    with pytest.raises(ConfigError, match="dense"):
        SparseProjector({"projection_seeding": "trak_basic"})


def test_trak_basic_follows_the_spec_text() -> None:
    """Blocks of min(d, 128) columns, block b seeded seed + 1000 b + 100000 model_id."""
    d, p = 260, 50
    proj = DenseProjector(
        {"proj_dim": d, "projection_seeding": "trak_basic", "seed": 2, "model_id": 1}
    )
    spec = proj.spec()
    assert spec["block_size"] == 128 and spec["model_id"] == 1 and spec["seeding"] == "trak_basic"
    r = proj.matrix("ignored", p)
    for b, width in ((0, 128), (1, 128), (2, 4)):
        gen = torch.Generator().manual_seed(2 + 1000 * b + 100000)
        block = torch.empty(p, 128).bernoulli_(0.5, generator=gen) * 2 - 1
        torch.testing.assert_close(r[:, b * 128 : b * 128 + width], block[:, :width])
    small = DenseProjector({"proj_dim": 100, "projection_seeding": "trak_basic"})
    assert small.spec()["block_size"] == 100  # d = 100: one block of width 100, seed 0
    # the flat order of tensors matters in this mode (as in TRAK)
    g = _grads()
    flat = torch.cat([v.reshape(5, -1) for v in g.values()], dim=1)
    torch.testing.assert_close(proj.project(g), proj.project(flat))


def test_float16_input_and_output() -> None:
    g = _grads()
    p16 = DenseProjector(
        {"proj_dim": 16, "projection_input_dtype": "float16", "output_dtype": "float16"}
    )
    p32 = DenseProjector({"proj_dim": 16})
    a, b = p16.project(g), p32.project(g)
    assert a.dtype == torch.float16
    assert float((a.float() - b).norm() / b.norm()) < 1e-2


def test_scale_and_spec() -> None:
    g = _grads()
    raw = DenseProjector({"proj_dim": 16}).project(g)
    scaled = DenseProjector({"proj_dim": 16, "scale": True}).project(g)
    torch.testing.assert_close(scaled, raw / 4.0)
    a = DenseProjector({"proj_dim": 16, "projection_batch_size": 3}).spec()
    b = DenseProjector({"proj_dim": 16, "projector_cache_bytes": 0}).spec()
    assert a == b  # memory knobs are not part of the matrix's identity


def test_factor_matrix() -> None:
    assert factor_matrix(0, "m", "in", 8, 8) is None  # n <= k: identity
    a = factor_matrix(0, "m", "in", 9, 4)
    assert a.shape == (4, 9)
    assert torch.equal(a, factor_matrix(0, "m", "in", 9, 4))
    assert not torch.equal(a, factor_matrix(0, "m", "out", 9, 4))
    r = factor_matrix(0, "m", "in", 9, 4, "rademacher")
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert math.isfinite(float(a.sum()))
