"""``projection_seeding: trak_basic`` is bit-identical to ``traker``'s ``BasicProjector``
(spec §1.5.1).

The reference is the installed ``traker`` package itself (import name ``trak``), a workspace
dev dependency, run on the CPU: same flat gradients, same ``(grad_dim, proj_dim, block_size,
seed, model_id)``, same dtype, same batch. Equality is bitwise (``torch.equal``), not a
tolerance.
"""

from __future__ import annotations

import pytest
import torch
from dataflex_ops import DenseProjector

trak = pytest.importorskip(
    "trak", reason="traker is a workspace dev dependency; an isolated dataflex-ops venv lacks it"
)
from trak.projectors import BasicProjector, ProjectionType  # noqa: E402

_KINDS = {"rademacher": ProjectionType.rademacher, "gaussian": ProjectionType.normal}
_DTYPES = {"float32": torch.float32, "float16": torch.float16}

# (grad_dim, proj_dim, block_size, seed, model_id): one block (d <= block_size, incl. d < bs),
# several blocks with a narrower last one, LESS's own block_size 128, TRAK's default 100, and
# non-zero seeds / model ids
COMBOS = [
    (300, 64, 128, 0, 0),
    (257, 100, 100, 5, 0),
    (1000, 300, 128, 0, 0),
    (513, 260, 64, 7, 2),
    (2048, 512, 128, 1, 3),
]


def _grads(grad_dim: int, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-sample gradients split into three tensors (TRAK flattens a dict in its order)."""
    g = torch.Generator().manual_seed(seed)
    a = grad_dim // 3
    b = grad_dim // 4
    return {
        "w1": torch.randn(batch, a, generator=g) * 1e-2,
        "w2": torch.randn(batch, b, generator=g),
        "w3": torch.randn(batch, grad_dim - a - b, generator=g) * 3.0,
    }


def _pair(
    kind: str, dtype: str, grad_dim: int, proj_dim: int, block_size: int, seed: int, model_id: int
) -> tuple[DenseProjector, BasicProjector]:
    ours = DenseProjector(
        {
            "projector": kind,
            "projection_seeding": "trak_basic",
            "proj_dim": proj_dim,
            "block_size": block_size,
            "seed": seed,
            "model_id": model_id,
            "projection_input_dtype": dtype,
            "output_dtype": "float32",
        }
    )
    theirs = BasicProjector(
        grad_dim=grad_dim,
        proj_dim=proj_dim,
        seed=seed,
        proj_type=_KINDS[kind],
        device="cpu",
        block_size=block_size,
        dtype=_DTYPES[dtype],
        model_id=model_id,
    )
    return ours, theirs


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize(("grad_dim", "proj_dim", "block_size", "seed", "model_id"), COMBOS)
def test_trak_basic_is_bit_identical_to_basic_projector(
    kind: str, dtype: str, grad_dim: int, proj_dim: int, block_size: int, seed: int, model_id: int
) -> None:
    ours, theirs = _pair(kind, dtype, grad_dim, proj_dim, block_size, seed, model_id)
    grads = _grads(grad_dim, batch=6, seed=grad_dim + proj_dim)
    flat = torch.cat(list(grads.values()), dim=1)
    expected = theirs.project(flat.to(_DTYPES[dtype]), model_id=model_id)
    assert expected.dtype == _DTYPES[dtype]
    got = ours.project(grads)  # the {name: [B, ...]} form, flattened in the given order
    assert got.dtype == torch.float32 and got.shape == (6, proj_dim)
    # TRAK returns the projection dtype; ours is that result widened to float32 (exact)
    assert torch.equal(got, expected.float())
    assert torch.equal(ours.project(flat), expected.float())  # the [B, P] form


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_trak_basic_matrix_equals_basic_projector_matrix(kind: str) -> None:
    """The generated matrix itself, column by column (identity input rows)."""
    grad_dim, proj_dim = 40, 300
    ours, theirs = _pair(kind, "float32", grad_dim, proj_dim, 128, 3, 1)
    eye = torch.eye(grad_dim)
    torch.testing.assert_close(
        ours.matrix("flat", grad_dim), theirs.project(eye, model_id=1), atol=0, rtol=0
    )


def test_trak_basic_model_id_change_matches_reprojection() -> None:
    """TRAK re-seeds when ``project`` gets another model id; ours takes it from the config."""
    grad_dim, proj_dim = 500, 256
    grads = _grads(grad_dim, batch=4, seed=1)
    flat = torch.cat(list(grads.values()), dim=1)
    _, theirs = _pair("rademacher", "float32", grad_dim, proj_dim, 128, 0, 0)
    theirs.project(flat, model_id=0)
    switched = theirs.project(flat, model_id=4)
    ours4, _ = _pair("rademacher", "float32", grad_dim, proj_dim, 128, 0, 4)
    assert torch.equal(ours4.project(grads), switched)


def test_trak_basic_float16_output_dtype_matches() -> None:
    """``output_dtype: float16`` gives TRAK's float16 sketch exactly."""
    grad_dim, proj_dim = 700, 200
    grads = _grads(grad_dim, batch=5, seed=2)
    flat = torch.cat(list(grads.values()), dim=1).half()
    _, theirs = _pair("rademacher", "float16", grad_dim, proj_dim, 128, 0, 0)
    ours = DenseProjector(
        {
            "projection_seeding": "trak_basic",
            "proj_dim": proj_dim,
            "projection_input_dtype": "float16",
            "output_dtype": "float16",
        }
    )
    got = ours.project(grads)
    assert got.dtype == torch.float16
    assert torch.equal(got, theirs.project(flat, model_id=0))


def test_official_compat_featurizer_matches_less_projection(tiny_llama, lm_batch) -> None:
    """``official_compat`` features = LESS's path: flat per-sample gradient (parameter order),
    cast to float16, projected by ``BasicProjector`` (seed 0, model_id 0, block_size 128)."""
    from dataflex_ops import PerSampleGrad, per_sample_grads

    params = ["layers.1.mlp", "lm_head"]
    feat = PerSampleGrad(
        {
            "official_compat": True,
            "params": params,
            "strategy": "hooks",
            "projector": {"proj_dim": 256},
        }
    )
    out = feat(tiny_llama, lm_batch)
    assert out["projector"]["seeding"] == "trak_basic"
    assert out["projector"]["input_dtype"] == "float16"
    flat = per_sample_grads(tiny_llama, lm_batch, params=params, strategy="hooks").flat()
    theirs = BasicProjector(
        grad_dim=flat.shape[1],
        proj_dim=256,
        seed=0,
        proj_type=ProjectionType.rademacher,
        device="cpu",
        block_size=128,
        dtype=torch.float16,
    )
    assert torch.equal(out["values"], theirs.project(flat.half(), model_id=0).float())
