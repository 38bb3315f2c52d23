"""Random projections of per-sample gradients (algorithms spec §1.5).

``φ = Rᵀ g`` with ``R ∈ ℝ^{P×d}``, **unscaled** by default as in TRAK, so
``E⟨Rᵀx, Rᵀy⟩ = d·⟨x, y⟩`` for dense ±1 and Gaussian matrices and ``s·⟨x, y⟩`` for the sparse
JL transform; ``scale=True`` divides by ``√d`` (dense) or ``√s`` (sparse). Cosine scores do not
depend on the scale.

Three matrices, all seeded by :func:`dataflex_core.derive` (or TRAK's rule in ``trak_basic``):

``rademacher`` / ``gaussian`` with ``projection_seeding: per_tensor`` (default)
    ``R`` is the row-wise concatenation of one block ``R_p ∈ ℝ^{P_p×d}`` per parameter tensor,
    so the result is independent of parameter order and the flat ``P``-vector is never built.
    ``R_p`` is generated tile by tile: column block ``b`` (``block_size`` columns, the last one
    narrower) of row block ``r`` (``input_block_size`` rows, the last one shorter) is drawn by
    ``torch.Generator("cpu").manual_seed(s)`` with ``s = derive(seed, name_p, b)`` for ``r = 0``
    (the spec's rule; every tensor of at most ``input_block_size`` elements has only ``r = 0``)
    and ``s = derive(seed, name_p, b, r)`` for ``r ≥ 1``. Entries are
    ``2·randint(0, 2) − 1`` (Rademacher) or ``randn`` (Gaussian), float32, row-major in the tile.
    Streaming over the tiles bounds memory by one tile; a tensor's whole ``R_p`` is cached when
    it fits in ``projector_cache_bytes``. Generation is on the CPU whatever the device, so the
    matrix does not depend on the device.

``rademacher`` / ``gaussian`` with ``projection_seeding: trak_basic``
    Follows the spec's text for TRAK's ``BasicProjector``: the flat gradient (tensors
    concatenated in the given order) times blocks ``P×min(d, block_size)`` filled in one call by
    a ``torch.Generator`` on the projection device, in ``projection_input_dtype``, seeded with
    ``seed + 1000·b + 100000·model_id`` (``bernoulli_(0.5)·2 − 1`` or ``normal_``); output
    columns ``[b·bs, min((b+1)·bs, d))`` use the block's first columns; each given batch is
    projected in one product per block. On the CPU this is bit-identical to the ``traker``
    package's ``BasicProjector`` (float32 and float16, Rademacher and Gaussian; tested against
    the installed package in ``tests/test_trak_compat.py``). The full ``P×block_size`` block is
    materialised.

``sjlt`` (sparse JL / CountSketch, Kane–Nelson)
    Each coordinate ``q`` of tensor ``p`` gets ``s = sjlt_nnz`` buckets, one in each of ``s``
    equal slices of ``[0, d)`` (the block construction, so ``d`` must be divisible by ``s``),
    and independent signs: ``φ_{h_j(q)} += ξ_j(q)·g_q``. Per row block ``r`` the generator is
    seeded with ``derive(seed, name_p)`` (``r = 0``) or ``derive(seed, name_p, r)`` and draws
    ``randint(0, d/s, (s, rows))`` (bucket within slice ``j``) then ``randint(0, 2, (s, rows))``
    (sign bit, ``ξ = 2·bit − 1``).

Factorised (LoGra) projections use :func:`factor_matrix`: ``P ∈ ℝ^{k×n}``, Gaussian (or
Rademacher), seeded by ``derive(seed, module_name, "in"|"out")``, identity when ``n ≤ k``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from dataflex_core import ComponentContext, ConfigError, config_to_dict, derive, parse_config

__all__ = [
    "SPEC_VERSION",
    "ProjectorConfig",
    "Projector",
    "DenseProjector",
    "SparseProjector",
    "SparseProjectorConfig",
    "make_projector",
    "factor_matrix",
    "sjlt_scatter",
]

#: Version of the projector definition; stored in every spec so features made by a changed
#: definition are never compared with old ones.
SPEC_VERSION = 1

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class ProjectorConfig:
    """Hyperparameters of a projector; the key names are the spec's (§1.5, §2.5).

    Attributes:
        projector: ``rademacher`` (default), ``gaussian`` or ``sjlt``.
        proj_dim: Output dimension ``d``.
        seed: Projector seed (LESS uses 0).
        projection_seeding: ``per_tensor`` (fast, order independent) or ``trak_basic``.
        model_id: TRAK's model id (``trak_basic`` only).
        block_size: Columns per generated block (TRAK uses ``min(d, block_size)``).
        input_block_size: Rows of a generated tile (``per_tensor``, ``sjlt``); part of the
            matrix's definition, so it is stored in the spec.
        sjlt_nnz: Nonzeros per input coordinate ``s`` of the sparse transform.
        scale: Divide by ``√d`` (dense) or ``√s`` (sparse).
        projection_input_dtype: Dtype the gradients are cast to before projection
            (official LESS: float16).
        output_dtype: Dtype of the result.
        projection_batch_size: Samples projected at a time (``sjlt``; ``trak_basic`` projects
            each given batch in one product, like TRAK).
        projector_cache_bytes: Budget for cached ``R_p`` blocks / sparse hashes.
    """

    projector: Literal["rademacher", "gaussian", "sjlt"] = "rademacher"
    proj_dim: int = 8192
    seed: int = 0
    projection_seeding: Literal["per_tensor", "trak_basic"] = "per_tensor"
    model_id: int = 0
    block_size: int = 128
    input_block_size: int = 65536
    sjlt_nnz: int = 1
    scale: bool = False
    projection_input_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    output_dtype: Literal["float32", "float16"] = "float32"
    projection_batch_size: int = 16
    projector_cache_bytes: int = 512 * 2**20

    def __post_init__(self) -> None:
        for key in (
            "proj_dim",
            "block_size",
            "input_block_size",
            "sjlt_nnz",
            "projection_batch_size",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}.")
        if self.projector_cache_bytes < 0:
            raise ConfigError("projector_cache_bytes must be >= 0.")
        if self.projector == "sjlt":
            if self.proj_dim % self.sjlt_nnz:
                raise ConfigError(
                    f"sjlt needs proj_dim divisible by sjlt_nnz (one bucket per slice of "
                    f"[0, d)); got proj_dim={self.proj_dim}, sjlt_nnz={self.sjlt_nnz}."
                )
            if self.projection_seeding != "per_tensor":
                raise ConfigError(
                    "projection_seeding 'trak_basic' applies to dense projectors only; use "
                    "projector 'rademacher' or 'gaussian'."
                )


class Projector:
    """Base class: ``project`` maps per-sample gradients ``{name: [B, ...]}`` to ``[B, d]``.

    Args:
        config: A :class:`ProjectorConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts (unused).
    """

    config_class = ProjectorConfig

    def __init__(
        self,
        config: ProjectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        cls = type(self).config_class
        if isinstance(config, ProjectorConfig) and not isinstance(config, cls):
            config = config_to_dict(config)
        self.config: ProjectorConfig = parse_config(
            cls, config, where=f"projector {type(self).__name__}"
        )
        self.context = context if context is not None else ComponentContext()
        self._cache: dict[tuple[str, int], Any] = {}
        self._cache_used = 0

    # ------------------------------------------------------------------ public

    @property
    def dim(self) -> int:
        """Output dimension ``d``."""
        return self.config.proj_dim

    def spec(self) -> dict[str, Any]:
        """JSON-safe identity of the matrix: store it with the features and compare it.

        Memory-only knobs (batch size, cache budget) are not part of it.
        """
        c = self.config
        spec: dict[str, Any] = {
            "version": SPEC_VERSION,
            "type": c.projector,
            "proj_dim": c.proj_dim,
            "seed": c.seed,
            "seeding": c.projection_seeding,
            "scale": c.scale,
            "input_dtype": c.projection_input_dtype,
        }
        if c.projector == "sjlt":
            spec.update(sjlt_nnz=c.sjlt_nnz, input_block_size=c.input_block_size)
        elif c.projection_seeding == "trak_basic":
            spec.update(block_size=min(c.proj_dim, c.block_size), model_id=c.model_id)
        else:
            spec.update(block_size=c.block_size, input_block_size=c.input_block_size)
        return spec

    def project(
        self, grads: Mapping[str, torch.Tensor] | torch.Tensor, name: str = "flat"
    ) -> torch.Tensor:
        """Project a batch of per-sample gradients.

        Args:
            grads: ``{canonical_name: [B, *shape]}`` (one entry per parameter tensor, in
                parameter order), or a ``[B, P]`` tensor treated as one tensor called ``name``.
            name: The tensor name used for seeding when ``grads`` is a tensor.

        Returns:
            ``[B, d]`` in ``output_dtype``, on the gradients' device.

        Raises:
            ConfigError: when ``proj_dim`` exceeds the gradient dimension ``P``.
        """
        items = _as_items(grads, name)
        total = sum(g.shape[1] for _, g in items)
        if total < self.config.proj_dim:
            names = ", ".join(n for n, _ in items[:3]) + (" ..." if len(items) > 3 else "")
            raise ConfigError(
                f"proj_dim = {self.config.proj_dim} is larger than the gradient it projects "
                f"(P = {total:,} values over {len(items)} tensor(s): {names}); a random "
                f"projection must reduce the dimension. Set proj_dim <= {total:,}, or drop the "
                "projector and use the gradients as they are."
            )
        out = self._project(items)
        if self.config.scale:
            out = out / self._scale_divisor()
        return out.to(_DTYPES[self.config.output_dtype])

    __call__ = project

    def matrix(self, name: str, numel: int) -> torch.Tensor:
        """The dense ``[numel, d]`` block ``R_p`` of one tensor (tests and small inputs only;
        ``numel < d`` is allowed here)."""
        eye = torch.eye(numel, dtype=torch.float32)
        return self._project([(name, eye)])

    # ------------------------------------------------------------------ internals

    def _scale_divisor(self) -> float:
        return math.sqrt(self.config.proj_dim)

    def _project(self, items: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
        raise NotImplementedError

    def _cache_put(self, key: tuple[str, int], value: Any, nbytes: int) -> None:
        if self._cache_used + nbytes <= self.config.projector_cache_bytes:
            self._cache[key] = value
            self._cache_used += nbytes


def _as_items(
    grads: Mapping[str, torch.Tensor] | torch.Tensor, name: str
) -> list[tuple[str, torch.Tensor]]:
    if isinstance(grads, torch.Tensor):
        if grads.dim() < 2:
            raise ValueError(f"expected per-sample gradients [B, P], got {tuple(grads.shape)}.")
        return [(name, grads.reshape(grads.shape[0], -1))]
    items = [(n, g.reshape(g.shape[0], -1)) for n, g in grads.items()]
    if not items:
        raise ValueError("nothing to project: the gradient mapping is empty.")
    batch = {g.shape[0] for _, g in items}
    if len(batch) != 1:
        raise ValueError(f"all tensors need the same batch size, got {sorted(batch)}.")
    return items


def _tile_seed(seed: int, name: str, col_block: int, row_block: int) -> int:
    if row_block == 0:
        return derive(seed, name, col_block)
    return derive(seed, name, col_block, row_block)


class DenseProjector(Projector):
    """Dense Rademacher or Gaussian projection (``per_tensor`` or ``trak_basic`` seeding)."""

    def __init__(
        self,
        config: ProjectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        if self.config.projector == "sjlt":
            raise ConfigError("DenseProjector needs projector 'rademacher' or 'gaussian'.")

    def _tile(self, name: str, numel: int, b: int, r: int) -> torch.Tensor:
        c = self.config
        rows = min(c.input_block_size, numel - r * c.input_block_size)
        width = min(c.block_size, c.proj_dim - b * c.block_size)
        gen = torch.Generator().manual_seed(_tile_seed(c.seed, name, b, r))
        if c.projector == "rademacher":
            tile = torch.randint(0, 2, (rows, width), generator=gen, dtype=torch.int8)
            return tile.to(torch.float32).mul_(2.0).sub_(1.0)
        return torch.randn(rows, width, generator=gen, dtype=torch.float32)

    def _full_block(self, name: str, numel: int) -> torch.Tensor:
        """``R_p`` as one float32 ``[numel, d]`` tensor (from the cache when possible)."""
        c = self.config
        n_rows = math.ceil(numel / c.input_block_size)
        n_cols = math.ceil(c.proj_dim / c.block_size)
        rows = [
            torch.cat([self._tile(name, numel, b, r) for b in range(n_cols)], dim=1)
            for r in range(n_rows)
        ]
        return torch.cat(rows, dim=0)

    def _project(self, items: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
        if self.config.projection_seeding == "trak_basic":
            return self._project_trak(items)
        c = self.config
        dtype = _DTYPES[c.projection_input_dtype]
        first = items[0][1]
        device = first.device
        out = torch.zeros(first.shape[0], c.proj_dim, dtype=torch.float32, device=device)
        n_cols = math.ceil(c.proj_dim / c.block_size)
        for name, g in items:
            numel = g.shape[1]
            g = g.to(dtype)
            key = (name, numel)
            cached = self._cache.get(key)
            if (
                cached is None
                and numel * c.proj_dim * 4 <= c.projector_cache_bytes - self._cache_used
            ):
                cached = self._full_block(name, numel).to(device=device, dtype=dtype)
                self._cache_put(key, cached, cached.numel() * cached.element_size())
            if cached is not None:
                out += (g @ cached.to(device=device, dtype=dtype)).float()
                continue
            for r in range(math.ceil(numel / c.input_block_size)):
                r0 = r * c.input_block_size
                gr = g[:, r0 : r0 + c.input_block_size]
                for b in range(n_cols):
                    b0 = b * c.block_size
                    tile = self._tile(name, numel, b, r).to(device=device, dtype=dtype)
                    out[:, b0 : b0 + tile.shape[1]] += (gr @ tile).float()
        return out

    def _project_trak(self, items: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
        c = self.config
        dtype = _DTYPES[c.projection_input_dtype]
        flat = torch.cat([g for _, g in items], dim=1) if len(items) > 1 else items[0][1]
        device = flat.device
        grad_dim = flat.shape[1]
        bs = min(c.proj_dim, c.block_size)
        n_blocks = math.ceil(c.proj_dim / bs)
        out = torch.zeros(flat.shape[0], c.proj_dim, dtype=torch.float32, device=device)
        block = torch.empty(grad_dim, bs, dtype=dtype, device=device)
        gen = torch.Generator(device=device)
        for b in range(n_blocks):
            gen.manual_seed(c.seed + 1000 * b + 100000 * c.model_id)
            if c.projector == "gaussian":
                block.normal_(generator=gen)
            else:
                block.bernoulli_(p=0.5, generator=gen)
                block *= 2.0
                block -= 1.0
            st, ed = b * bs, min((b + 1) * bs, c.proj_dim)
            # the whole batch in one product, as TRAK does: BLAS results can depend on the
            # number of rows, and bit-compatibility needs the same batch composition
            out[:, st:ed] = (flat.to(dtype) @ block[:, : ed - st]).float()
        return out


def sjlt_scatter(
    g: torch.Tensor, buckets: torch.Tensor, signs: torch.Tensor, dim: int
) -> torch.Tensor:
    """``φ[:, h_j(q)] += ξ_j(q)·g[:, q]`` for every ``j`` and ``q``.

    Args:
        g: ``[B, n]`` input rows.
        buckets: ``[s, n]`` int64 buckets in ``[0, dim)``.
        signs: ``[s, n]`` ±1 signs.
        dim: Output dimension.

    Returns:
        ``[B, dim]`` float32.
    """
    g32 = g.to(torch.float32)
    out = torch.zeros(g.shape[0], dim, dtype=torch.float32, device=g.device)
    for j in range(buckets.shape[0]):
        out.index_add_(
            1, buckets[j].to(g.device), g32 * signs[j].to(device=g.device, dtype=torch.float32)
        )
    return out


@dataclass(frozen=True)
class SparseProjectorConfig(ProjectorConfig):
    """:class:`ProjectorConfig` whose ``projector`` defaults to ``sjlt``."""

    projector: Literal["rademacher", "gaussian", "sjlt"] = "sjlt"


class SparseProjector(Projector):
    """Sparse JL / CountSketch (``projector: sjlt``), ``s = sjlt_nnz`` nonzeros per coordinate."""

    config_class = SparseProjectorConfig

    def __init__(
        self,
        config: ProjectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        if self.config.projector != "sjlt":
            raise ConfigError("SparseProjector needs projector 'sjlt'.")

    def _scale_divisor(self) -> float:
        return math.sqrt(self.config.sjlt_nnz)

    def hashes(
        self, name: str, numel: int, row_block: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(buckets [s, rows], signs [s, rows])`` of one row block of a tensor."""
        c = self.config
        rows = min(c.input_block_size, numel - row_block * c.input_block_size)
        seed = derive(c.seed, name) if row_block == 0 else derive(c.seed, name, row_block)
        gen = torch.Generator().manual_seed(seed)
        width = c.proj_dim // c.sjlt_nnz
        local = torch.randint(0, width, (c.sjlt_nnz, rows), generator=gen)
        offsets = torch.arange(c.sjlt_nnz).mul_(width)[:, None]
        bits = torch.randint(0, 2, (c.sjlt_nnz, rows), generator=gen, dtype=torch.int8)
        return local + offsets, bits.mul_(2).sub_(1)

    def _project(self, items: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
        c = self.config
        dtype = _DTYPES[c.projection_input_dtype]
        first = items[0][1]
        out = torch.zeros(first.shape[0], c.proj_dim, dtype=torch.float32, device=first.device)
        for name, g in items:
            numel = g.shape[1]
            g = g.to(dtype)
            n_rows = math.ceil(numel / c.input_block_size)
            for r in range(n_rows):
                key = (f"{name}#{r}", numel)
                hashed = self._cache.get(key)
                if hashed is None:
                    hashed = self.hashes(name, numel, r)
                    hashed = (hashed[0].to(first.device), hashed[1].to(first.device))
                    self._cache_put(key, hashed, hashed[0].numel() * 9)
                r0 = r * c.input_block_size
                for s0 in range(0, g.shape[0], c.projection_batch_size):
                    chunk = g[s0 : s0 + c.projection_batch_size, r0 : r0 + c.input_block_size]
                    out[s0 : s0 + chunk.shape[0]] += sjlt_scatter(chunk, *hashed, c.proj_dim)
        return out


def make_projector(
    config: ProjectorConfig | Mapping[str, Any] | None = None,
    context: ComponentContext | None = None,
) -> Projector:
    """Build the projector that ``config["projector"]`` names (dense or sparse)."""
    cfg = parse_config(ProjectorConfig, config, where="projector")
    if cfg.projector == "sjlt":
        return SparseProjector(cfg, context)
    return DenseProjector(cfg, context)


def factor_matrix(
    seed: int,
    module_name: str,
    side: Literal["in", "out"],
    n: int,
    k: int,
    kind: Literal["gaussian", "rademacher"] = "gaussian",
) -> torch.Tensor | None:
    """LoGra's one-sided projection ``P ∈ ℝ^{k×n}`` (float32, CPU), or None for the identity.

    Seeded by ``derive(seed, module_name, side)``; a side with ``n ≤ k`` is not projected.
    """
    if side not in ("in", "out"):
        raise ValueError(f"side must be 'in' or 'out', got {side!r}.")
    if n <= k:
        return None
    gen = torch.Generator().manual_seed(derive(seed, module_name, side))
    if kind == "rademacher":
        return torch.randint(0, 2, (k, n), generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)
    if kind != "gaussian":
        raise ConfigError(f"factor projection must be 'gaussian' or 'rademacher', got {kind!r}.")
    return torch.randn(k, n, generator=gen, dtype=torch.float32)
