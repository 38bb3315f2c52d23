"""``less``: LESS, gradient-feature influence selection (algorithms spec §2.5).

Reference: Xia, Malladi, Gururangan, Arora, Chen, "LESS: Selecting Influential Data for Targeted
Instruction Tuning", ICML 2024, arXiv 2402.04333.

The math, for checkpoints ``c = 1..C`` with weights ``η̄_c`` (renormalised to sum 1):

* ``φ_c(z)``: the ℓ₂-normalised projected Adam feature of training example ``z`` (``gradient_type:
  adam``), ``ψ_c(z′)``: the normalised projected SGD gradient of target example ``z′``; one random
  projection ``R`` for every checkpoint and both sides;
* ``S(z, z′) = Σ_c η̄_c ⟨φ_c(z), ψ_c(z′)⟩`` (cosine; ``similarity: inner_product`` skips the
  normalisation);
* ``Inf(z) = max_j mean_{z′∈T_j} S(z, z′)`` (``max_of_means``) or the mean over all ``z′``
  (``mean``), with explicit subtask labels (unequal sizes allowed);
* select ``top_k(Inf, n)``; training rows with NaN features are never chosen.

:func:`less_influence` is the pure numpy core. Because ``S`` is linear in ``ψ``, the subtask
means are taken on the target side first (``ψ̄_{c,j} = mean_{z′∈T_j} ψ_c(z′)``), so the cost is
``O(N·k·J)`` and no ``N×M`` matrix is ever formed; training rows are processed in float64 blocks.

:class:`LessSelector` is the stateful shell. It never runs a model: :meth:`~LessSelector.signals`
says which features the integration must compute (see :class:`LessSelector`), and the selector
scores what it is given.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataError,
    SelectRequest,
    SignalRequest,
    StateError,
)
from numpy.typing import ArrayLike, NDArray

from dataflex_select.base import ScoredSelector, ScoredSelectorConfig, signal_rows
from dataflex_select.primitives import top_k

__all__ = [
    "LessSelectorConfig",
    "LessSelector",
    "less_influence",
    "normalize_rows",
    "checkpoint_weights",
    "TARGET_SUBTASK",
]

log = logging.getLogger(__name__)

#: Name of the ``subtask`` signal of the target split.
TARGET_SUBTASK = "target_subtask"

_EPS = 1e-12


# --------------------------------------------------------------------------- pure core


def normalize_rows(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``x / max(‖x‖₂, 1e-12)`` row by row (zero rows stay zero; NaN rows stay NaN)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPS)


def checkpoint_weights(weights: ArrayLike, what: str = "checkpoint weights") -> NDArray[np.float64]:
    """Renormalise checkpoint weights ``η̄`` to sum 1 (float64).

    Raises:
        DataError: when a weight is negative or non-finite, or all are zero.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size == 0:
        raise DataError(f"{what}: no weights (no checkpoint).")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise DataError(
            f"{what} must be finite, >= 0 and not all zero, got {w.tolist()}; with "
            "`checkpoint_weights: auto` this means the learning rate was 0 or not logged over "
            "every checkpoint interval: give explicit `checkpoint_weights`."
        )
    return w / w.sum()


def _as_2d(x: Any, what: str) -> NDArray[Any]:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-D [rows, dim] array, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def less_influence(
    train_feats: Sequence[ArrayLike],
    target_feats: Sequence[ArrayLike],
    weights: ArrayLike | None = None,
    subtasks: ArrayLike | None = None,
    *,
    aggregation: Literal["max_of_means", "mean"] = "max_of_means",
    similarity: Literal["cosine", "inner_product"] = "cosine",
    invalid_targets: Literal["drop", "zero"] = "drop",
    block_rows: int | None = None,
) -> NDArray[np.float64]:
    """LESS influence ``Inf(z)`` of every training row (spec §2.5, steps 2-4).

    Args:
        train_feats: One ``[N, k_c]`` array per checkpoint (any float dtype; torch tensors
            work too). Rows are the training examples, in the same order for every checkpoint.
        target_feats: One ``[M, k_c]`` array per checkpoint; rows are the target examples,
            in the same order for every checkpoint.
        weights: Checkpoint weights (renormalised to sum 1); None means equal weights.
        subtasks: ``[M]`` subtask labels (any hashable values); None means one subtask.
        aggregation: ``max_of_means`` (max over subtasks of the mean score) or ``mean`` (mean
            over every target row).
        similarity: ``cosine`` normalises every row first (zero rows stay zero);
            ``inner_product`` uses the features as they are.
        invalid_targets: Target rows with a non-finite entry (at any checkpoint) are dropped
            with a warning (``drop``, LESS) or count as zero vectors (``zero``, NICE: a prompt
            without a usable estimate contributes score 0).
        block_rows: Training rows converted to float64 at a time; None sizes blocks to about
            64 MiB of float64 features (``2**23 // k`` rows).

    Returns:
        ``[N]`` float64 influences; NaN for training rows with a non-finite feature entry at
        any checkpoint (such rows are never selected by ``top_k``).

    Raises:
        DataError: on mismatched checkpoint counts, row counts or feature dimensions (the
            message names both dimensions), an empty target set, or bad weights.
    """
    if aggregation not in ("max_of_means", "mean"):
        raise ConfigError(f"aggregation must be 'max_of_means' or 'mean', got {aggregation!r}.")
    if similarity not in ("cosine", "inner_product"):
        raise ConfigError(f"similarity must be 'cosine' or 'inner_product', got {similarity!r}.")
    if invalid_targets not in ("drop", "zero"):
        raise ConfigError(f"invalid_targets must be 'drop' or 'zero', got {invalid_targets!r}.")
    if block_rows is not None and block_rows < 1:
        raise ConfigError(f"block_rows must be >= 1, got {block_rows}.")
    n_ck = len(train_feats)
    if n_ck == 0:
        raise DataError("less_influence: no checkpoint features were given.")
    if len(target_feats) != n_ck:
        raise DataError(
            f"less_influence: {n_ck} training feature set(s) but {len(target_feats)} target "
            "feature set(s); give one of each per checkpoint."
        )
    w = checkpoint_weights(np.ones(n_ck) if weights is None else weights)
    if w.size != n_ck:
        raise DataError(f"less_influence: {n_ck} checkpoint(s) but {w.size} checkpoint weight(s).")
    trains = [_as_2d(x, f"training features of checkpoint {c}") for c, x in enumerate(train_feats)]
    targets = [
        _as_2d(x, f"target features of checkpoint {c}").astype(np.float64, copy=False)
        for c, x in enumerate(target_feats)
    ]
    n = trains[0].shape[0]
    m = targets[0].shape[0]
    for c in range(n_ck):
        if trains[c].shape[0] != n:
            raise DataError(
                f"less_influence: checkpoint {c} has {trains[c].shape[0]} training rows, "
                f"checkpoint 0 has {n}; every checkpoint must cover the same rows."
            )
        if targets[c].shape[0] != m:
            raise DataError(
                f"less_influence: checkpoint {c} has {targets[c].shape[0]} target rows, "
                f"checkpoint 0 has {m}; every checkpoint must cover the same target rows."
            )
        if trains[c].shape[1] != targets[c].shape[1]:
            raise DataError(
                f"feature dimension mismatch at checkpoint {c}: training features have dim "
                f"{trains[c].shape[1]} but target features have dim {targets[c].shape[1]}; both "
                "sides must come from the same projector (proj_dim)."
            )
    if m == 0:
        raise DataError(
            "the target set has no rows: LESS needs at least one target example (check "
            "target_dataset and its filtering)."
        )
    labels = np.zeros(m, dtype=np.int64) if subtasks is None else np.asarray(subtasks).reshape(-1)
    if labels.shape[0] != m:
        raise DataError(
            f"{labels.shape[0]} subtask labels for {m} target rows; give one label per row."
        )

    finite = np.ones(m, dtype=bool)
    for t in targets:
        finite &= np.all(np.isfinite(t), axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        if invalid_targets == "drop":
            log.warning(
                "LESS: %d of %d target rows have non-finite features (no supervised token?) "
                "and are left out of the subtask means.",
                bad,
                m,
            )
            if bad == m:
                raise DataError(
                    f"all {m} target rows have non-finite features; every target example needs "
                    "at least one supervised token."
                )
            targets = [t[finite] for t in targets]
            labels = labels[finite]
        else:
            targets = [np.where(finite[:, None], t, 0.0) for t in targets]

    if aggregation == "mean":
        inverse = np.zeros(labels.shape[0], dtype=np.int64)
        n_groups = 1
    else:
        _, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(-1)
        n_groups = int(inverse.max()) + 1
    counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    # ψ̄_{c,j}: the (normalised) target features averaged per subtask, [J, k_c]
    means: list[NDArray[np.float64]] = []
    for t in targets:
        tt = normalize_rows(t) if similarity == "cosine" else t
        acc = np.zeros((n_groups, tt.shape[1]), dtype=np.float64)
        np.add.at(acc, inverse, tt)
        means.append(acc / counts[:, None])

    if block_rows is None:
        block_rows = max(1, 2**23 // max(1, max(t.shape[1] for t in trains)))
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        acc = np.zeros((stop - start, n_groups), dtype=np.float64)
        bad_rows = np.zeros(stop - start, dtype=bool)
        for c in range(n_ck):
            x = np.asarray(trains[c][start:stop], dtype=np.float64)
            rows_bad = ~np.all(np.isfinite(x), axis=1)
            if rows_bad.any():
                bad_rows |= rows_bad
                x = np.where(rows_bad[:, None], 0.0, x)
            if similarity == "cosine":
                x = normalize_rows(x)
            acc += w[c] * (x @ means[c].T)
        block = acc.max(axis=1)
        block[bad_rows] = np.nan
        out[start:stop] = block
    return out


# --------------------------------------------------------------------------- artefacts


def _dir_for(config: Any, context: ComponentContext, name: str) -> str | None:
    """The selector's cache folder: ``cache_dir``, else ``<output_dir>/dataflex/<name>``."""
    if config.cache_dir:
        return str(config.cache_dir)
    if context.output_dir:
        return os.path.join(str(context.output_dir), "dataflex", context.name or name)
    return None


def _array_hash(arr: NDArray[Any]) -> str:
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


class _Artefacts:
    """Large state arrays, content-addressed ``.npy`` files beside the run (or inline JSON).

    The saved state keeps each array's path and checksum (architecture §5: large artefacts live
    beside the state, not inside it). Without a folder (no ``cache_dir`` and no
    ``context.output_dir``: standalone use) the array is stored inline in the state instead, with
    NaN written as null, so a resume is always exact.
    """

    def __init__(self, directory: str | None, what: str) -> None:
        self.directory = None if directory is None else os.path.join(directory, "state")
        self.what = what

    def put(self, arr: NDArray[Any]) -> dict[str, Any]:
        arr = np.ascontiguousarray(arr)
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
            arr = arr.copy()
            arr[np.isnan(arr)] = np.nan  # one NaN bit pattern, so the checksum survives JSON
        digest = _array_hash(arr)
        entry: dict[str, Any] = {
            "sha256": digest,
            "dtype": arr.dtype.str,
            "shape": [int(s) for s in arr.shape],
        }
        if self.directory is None:
            if np.issubdtype(arr.dtype, np.floating):
                obj = arr.astype(np.float64).astype(object)
                obj[~np.isfinite(arr)] = None  # JSON has no NaN
                entry["inline"] = obj.tolist()
            else:
                entry["inline"] = arr.tolist()
            return entry
        path = os.path.join(self.directory, f"{digest}.npy")
        if not os.path.exists(path):
            os.makedirs(self.directory, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        entry["path"] = path
        return entry

    def get(self, entry: Mapping[str, Any]) -> NDArray[Any]:
        try:
            dtype = np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            digest = str(entry["sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"{self.what}: malformed array entry in the saved state: {exc}"
            ) from exc
        if "inline" in entry:
            arr = np.array(entry["inline"], dtype=np.float64 if dtype.kind == "f" else dtype)
            arr = arr.astype(dtype).reshape(shape)
        else:
            path = str(entry.get("path", ""))
            if not os.path.exists(path):
                raise StateError(
                    f"{self.what}: the saved state refers to {path!r}, which does not exist; "
                    "restore that file (it lives in the selector's cache_dir) or resume with a "
                    "config that does not need it."
                )
            arr = np.load(path, allow_pickle=False)
        if arr.dtype != dtype or arr.shape != shape or _array_hash(arr) != digest:
            raise StateError(
                f"{self.what}: a saved array does not match its checksum "
                f"({entry.get('path', 'inline')}); the file was changed or belongs to another run."
            )
        return arr


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LessSelectorConfig(ScoredSelectorConfig):
    """Config of the ``less`` selector (spec §2.5 key table, §2.0 shell keys).

    ``seed`` is the **projector** seed (0, as in LESS), not a draw seed: LESS picks a
    deterministic ``top_k``, and the few draws of the shell (the warmup draw, the seeded
    ``candidate_subsample``, pool-window permutations) use the run seed (``context.seed``).

    Attributes:
        gradient_type: Training-side features: ``adam`` (the Adam update direction, §1.4) or
            ``sgd`` (the raw gradient). The target side is always ``sgd``.
        adam_variant: ``paper`` (bias-corrected, ε outside the root) or ``official``; null
            follows ``official_compat``.
        adam_betas: ``(β₁, β₂)``; null reads them from the optimizer's param group.
        adam_eps: ``ε``; null reads it from the optimizer's param group.
        proj_dim: Projection dimension ``d`` (paper 8192; predecessor YAML 4096).
        projector: ``rademacher``, ``gaussian`` or ``sjlt``.
        projection_seeding: ``per_tensor`` or ``trak`` (TRAK ``BasicProjector``-compatible);
            null follows ``official_compat``.
        seed: Projector seed.
        model_id: TRAK model id (``trak`` seeding).
        block_size: Projection column block size.
        projection_batch_size: Samples projected at a time (deprecated alias ``save_interval``).
        projection_input_dtype: Dtype gradients are cast to before projection (``float32``,
            ``float16``, ``bfloat16``); null follows ``official_compat``.
        grad_strategy: Per-sample gradient strategy (§1.3): ``auto``, ``vmap``, ``loop``,
            ``hooks`` or ``factorized`` (``sgd`` only).
        loss_reduction: Per-sample loss: ``mean`` (token mean) or ``sum``.
        similarity: ``cosine`` or ``inner_product``.
        aggregation: ``max_of_means`` or ``mean``.
        checkpoints: ``current`` (the live model at each update) or a list of checkpoint
            folders (offline, the paper pipeline).
        checkpoint_weights: ``auto`` (mean learning rate per checkpoint interval) or one weight
            per checkpoint (per history round, oldest first, with ``checkpoints: current``).
        history: With ``checkpoints: current``: combine the last ``H`` update rounds.
        feature_dtype: Dtype of stored features (and of the kept history rounds).
        cache_dir: Feature cache folder; null is ``<output_dir>/dataflex/<component_name>``.
        official_compat: Implies ``adam_variant: official``, ``projection_seeding: trak`` and
            ``projection_input_dtype: float16``; explicit keys win.
    """

    __aliases__: ClassVar[dict[str, str]] = {"save_interval": "projection_batch_size"}

    seed: int = 0  # type: ignore[assignment]  # the projector seed, never null
    gradient_type: Literal["adam", "sgd"] = "adam"
    adam_variant: Literal["paper", "official"] | None = None
    adam_betas: tuple[float, float] | None = None
    adam_eps: float | None = None
    proj_dim: int = 8192
    projector: Literal["rademacher", "gaussian", "sjlt"] = "rademacher"
    projection_seeding: Literal["per_tensor", "trak"] | None = None
    model_id: int = 0
    block_size: int = 128
    projection_batch_size: int = 16
    projection_input_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    grad_strategy: Literal["auto", "vmap", "loop", "hooks", "factorized"] = "auto"
    loss_reduction: Literal["mean", "sum"] = "mean"
    similarity: Literal["cosine", "inner_product"] = "cosine"
    aggregation: Literal["max_of_means", "mean"] = "max_of_means"
    checkpoints: str | tuple[str, ...] = "current"
    checkpoint_weights: str | tuple[float, ...] = "auto"
    history: int = 1
    feature_dtype: Literal["float16", "float32"] = "float16"
    cache_dir: str | None = None
    official_compat: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        off = self.official_compat
        if self.adam_variant is None:
            object.__setattr__(self, "adam_variant", "official" if off else "paper")
        if self.projection_seeding is None:
            object.__setattr__(self, "projection_seeding", "trak" if off else "per_tensor")
        if self.projection_input_dtype is None:
            object.__setattr__(self, "projection_input_dtype", "float16" if off else "float32")
        if self.seed < 0:
            raise ConfigError(f"seed (the projector seed) must be >= 0, got {self.seed}.")
        for key in ("proj_dim", "block_size", "projection_batch_size", "history"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}.")
        if self.model_id < 0:
            raise ConfigError(f"model_id must be >= 0, got {self.model_id}.")
        if self.adam_betas is not None and not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}.")
        if self.adam_eps is not None and not self.adam_eps > 0:
            raise ConfigError(f"adam_eps must be > 0, got {self.adam_eps!r}.")
        if self.grad_strategy == "factorized" and self.gradient_type == "adam":
            raise ConfigError(
                "grad_strategy 'factorized' gives projected features only, and the Adam transform "
                "needs the exact per-parameter gradient (spec §1.5.4); use gradient_type 'sgd' "
                "or another grad_strategy."
            )
        if self.projector == "sjlt" and self.projection_seeding == "trak":
            raise ConfigError(
                "projection_seeding 'trak' applies to dense projectors; use projector "
                "'rademacher' or 'gaussian' (official_compat implies trak seeding)."
            )
        ck = self.checkpoints
        if isinstance(ck, str):
            if ck != "current":
                raise ConfigError(
                    f"checkpoints must be 'current' or a list of checkpoint folders, got {ck!r}; "
                    f"write a single folder as [{ck!r}]."
                )
        else:
            if not ck:
                raise ConfigError("checkpoints is an empty list; give folders or 'current'.")
            if any(not p or p == "current" for p in ck):
                raise ConfigError(
                    f"checkpoints {list(ck)!r}: every entry must be a checkpoint folder "
                    "('current' stands alone)."
                )
            if len(set(ck)) != len(ck):
                raise ConfigError(f"checkpoints {list(ck)!r} lists a folder twice.")
        if self.history > 1:
            if ck != "current":
                raise ConfigError(
                    "history > 1 combines the rounds of an online run; it needs "
                    "`checkpoints: current` (a list of checkpoints is combined already)."
                )
            if self.candidate_subsample is not None:
                raise ConfigError(
                    f"history = {self.history} needs candidate_subsample: null (every round must "
                    "score the same rows to be combined); drop candidate_subsample or set "
                    "history: 1."
                )
        cw = self.checkpoint_weights
        if isinstance(cw, str):
            if cw != "auto":
                raise ConfigError(
                    f"checkpoint_weights must be 'auto' or a list of numbers, got {cw!r}."
                )
        else:
            expected = self.history if ck == "current" else len(ck)
            if len(cw) != expected:
                what = f"history = {self.history}" if ck == "current" else f"{len(ck)} checkpoints"
                raise ConfigError(
                    f"checkpoint_weights has {len(cw)} entries but there are {what}; give one "
                    "weight per checkpoint (per history round, oldest first) or 'auto'."
                )
            if not all(math.isfinite(x) and x >= 0 for x in cw) or not sum(cw) > 0:
                raise ConfigError(
                    f"checkpoint_weights {list(cw)!r} must be finite, >= 0 and not all zero."
                )

    @property
    def checkpoint_list(self) -> tuple[str | None, ...]:
        """``(None,)`` for the live model, else the checkpoint folders."""
        if isinstance(self.checkpoints, str):
            return (None,)
        return tuple(self.checkpoints)


def projector_spec(config: LessSelectorConfig) -> dict[str, Any]:
    """The identity of the projection ``R`` (what must match for features to be compared)."""
    c = config
    return {
        "projector": c.projector,
        "proj_dim": c.proj_dim,
        "seed": c.seed,
        "projection_seeding": c.projection_seeding,
        "model_id": c.model_id,
        "block_size": c.block_size,
        "projection_input_dtype": c.projection_input_dtype,
    }


def _label(checkpoint: str | None) -> str:
    return "current" if checkpoint is None else checkpoint


# --------------------------------------------------------------------------- selector


class LessSelector(ScoredSelector):
    """LESS (spec §2.5) on the :class:`~dataflex_select.base.ScoredSelector` shell.

    **Signals** (:meth:`signals`), per checkpoint ``c`` (``current`` or each folder; ``@c`` is
    ``@current`` or ``@<folder>``):

    * ``train_grad@c`` (``grad_feature``, train split, the candidates, or the whole pool with
      ``history > 1``): training-side features with ``gradient_type`` (``adam`` by default),
      ``checkpoint`` (null = the live model and optimizer, else the folder) and every
      projector/Adam key (see :meth:`feature_options`);
    * ``target_grad@c`` (``grad_feature``, target split, all rows): ``gradient_type: sgd``;
    * ``target_subtask`` (``subtask``, target split): one label per target row;
    * ``lr_weight@c`` (``lr_weight``), only with ``checkpoint_weights: auto`` and more than one
      checkpoint or history round.

    The options also carry ``featurizer_config``: the same settings as a mapping for
    ``dataflex_ops.PerSampleGrad`` (with ``projection_seeding: trak`` spelled ``trak_basic``), so
    the integration builds the featurizer without translating keys.

    **Seeds.** ``config.seed`` is the projector seed (spec table). The shell's draws (warmup,
    ``candidate_subsample``, pool windows) use the run seed ``context.seed``; the scores
    themselves are deterministic.

    **History** (``checkpoints: current``, ``history: H > 1``): the features of the last ``H``
    scored rounds (training features of the whole pool, target features and labels, and the
    round's ``lr_weight``), cast to ``feature_dtype``, are kept in memory and combined with
    ``η̄`` renormalised over the rounds kept (explicit ``checkpoint_weights``: the last entries,
    oldest first). The saved state records each round's step and weight, and the arrays as
    content-addressed ``.npy`` files under ``<cache_dir>/state/`` (path + sha256 in the state;
    written when the state is saved). Without any folder (no ``cache_dir``, no
    ``context.output_dir``) they are stored inline in the state. A resume therefore restores the
    same rounds; a missing or altered file is a :class:`~dataflex_core.StateError`.

    Args:
        config: A :class:`LessSelectorConfig`, a mapping of its keys, or None for defaults.
        context: Runtime facts: the run seed, ``output_dir`` (cache folder), ``name``.
    """

    config_class: ClassVar[type] = LessSelectorConfig
    name: ClassVar[str] = "less"
    #: How target rows with non-finite features are treated (see :func:`less_influence`).
    invalid_targets: ClassVar[str] = "drop"
    #: Kind of the target-side feature signal.
    target_kind: ClassVar[str] = "grad_feature"
    target_prefix: ClassVar[str] = "target_grad"

    def __init__(
        self,
        config: LessSelectorConfig | Mapping[str, Any] | None = None,
        context: ComponentContext | None = None,
    ) -> None:
        super().__init__(config, context)
        # the config's `seed` is the projector seed; the shell's draws take the run seed
        self.seed = int(self.context.seed)
        self.config: LessSelectorConfig
        self._artefacts = _Artefacts(_dir_for(self.config, self.context, self.name), self.what)
        #: kept rounds (history > 1): dicts with step, weight, train, targets, subtasks
        self._history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ options

    @property
    def cache_dir(self) -> str | None:
        """The resolved feature cache folder (None when neither cache_dir nor output_dir)."""
        return _dir_for(self.config, self.context, self.name)

    def projector_config(self) -> dict[str, Any]:
        """Projector keys in ``dataflex_ops.ProjectorConfig`` vocabulary."""
        c = self.config
        return {
            "projector": c.projector,
            "proj_dim": c.proj_dim,
            "seed": c.seed,
            "projection_seeding": "trak_basic" if c.projection_seeding == "trak" else "per_tensor",
            "model_id": c.model_id,
            "block_size": c.block_size,
            "projection_input_dtype": c.projection_input_dtype,
            "projection_batch_size": c.projection_batch_size,
        }

    def feature_options(self, checkpoint: str | None, gradient_type: str) -> dict[str, Any]:
        """Options of a ``grad_feature`` signal (JSON-safe)."""
        c = self.config
        adam = gradient_type == "adam"
        featurizer: dict[str, Any] = {
            "strategy": c.grad_strategy,
            "loss_reduction": c.loss_reduction,
            "gradient_type": gradient_type,
            "projector": self.projector_config(),
            "normalize": True,
        }
        if adam:
            featurizer.update(
                adam_variant=c.adam_variant,
                adam_checkpoint=checkpoint,
                adam_betas=None if c.adam_betas is None else list(c.adam_betas),
                adam_eps=c.adam_eps,
            )
        return {
            "gradient_type": gradient_type,
            "checkpoint": checkpoint,
            "adam_variant": c.adam_variant if adam else None,
            "adam_betas": None if (c.adam_betas is None or not adam) else list(c.adam_betas),
            "adam_eps": c.adam_eps if adam else None,
            **projector_spec(c),
            "projection_batch_size": c.projection_batch_size,
            "grad_strategy": c.grad_strategy,
            "loss_reduction": c.loss_reduction,
            "feature_dtype": c.feature_dtype,
            "cache_dir": self.cache_dir,
            "normalize": True,
            "featurizer_config": featurizer,
        }

    def target_options(self, checkpoint: str | None) -> dict[str, Any]:
        """Options of the target-side feature signal of ``checkpoint``."""
        return self.feature_options(checkpoint, "sgd")

    def _weights_needed(self) -> bool:
        c = self.config
        return c.checkpoint_weights == "auto" and (len(c.checkpoint_list) > 1 or c.history > 1)

    # ------------------------------------------------------------------ hooks of subclasses

    def _train_indices(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> tuple[int, ...] | None:
        """Rows of the training-side feature signals."""
        if self.config.history > 1:
            return None  # rounds are combined over the whole pool
        return self.rows_of(candidates, request.num_samples)

    def _unit_features(
        self, request: SelectRequest, candidates: NDArray[np.int64], label: str
    ) -> NDArray[Any]:
        """Training-side features of the scoring units (LESS: rows of the train signal)."""
        name = f"train_grad@{label}"
        rows = request.num_samples if self.config.history > 1 else len(candidates)
        return _as_2d(signal_rows(request, name, rows, self.what), f"signal {name!r}")

    def _candidate_scores(
        self, unit_scores: NDArray[np.float64], candidates: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """Scores of the candidates from the scores of the units."""
        if self.config.history > 1:
            return unit_scores[candidates]
        return unit_scores

    def _order(
        self, scores: NDArray[np.float64], candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        """Positions (into ``candidates``) of the ``n`` picks."""
        finite = int(np.isfinite(scores).sum())
        if n > finite:
            raise DataError(
                f"{self.what}: asked for {n} rows but only {finite} of {len(scores)} candidates "
                "have a finite score; the others have NaN features (no supervised token, or "
                "unscored). Lower the window/budget or fix the data."
            )
        return top_k(scores, n)

    # ------------------------------------------------------------------ shell hooks

    def _signals(
        self, request: SelectRequest, candidates: NDArray[np.int64]
    ) -> list[SignalRequest]:
        train_rows = self._train_indices(request, candidates)
        out: list[SignalRequest] = []
        for ck in self.config.checkpoint_list:
            label = _label(ck)
            out.append(
                SignalRequest(
                    name=f"train_grad@{label}",
                    kind="grad_feature",
                    split="train",
                    indices=train_rows,
                    options=self.feature_options(ck, self.config.gradient_type),
                )
            )
            out.append(
                SignalRequest(
                    name=f"{self.target_prefix}@{label}",
                    kind=self.target_kind,
                    split="target",
                    options=self.target_options(ck),
                )
            )
            if self._weights_needed():
                out.append(
                    SignalRequest(
                        name=f"lr_weight@{label}",
                        kind="lr_weight",
                        split="train",
                        options={"checkpoint": ck},
                    )
                )
        out.append(SignalRequest(name=TARGET_SUBTASK, kind="subtask", split="target"))
        return out

    def _lr_weight(self, request: SelectRequest, label: str) -> float:
        name = f"lr_weight@{label}"
        if name not in request.extras:
            raise DataError(
                f"{self.what}: the signal {name!r} is missing from request.extras; compute every "
                "signal returned by selector.signals(request) before select(request)."
            )
        value = request.extras[name]
        try:
            w = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
        except (TypeError, ValueError, IndexError) as exc:
            raise DataError(
                f"{self.what}: signal {name!r} must be one number, got {value!r}."
            ) from exc
        if not math.isfinite(w) or w < 0:
            raise DataError(f"{self.what}: signal {name!r} = {w!r}; a learning rate is >= 0.")
        return w

    def _round(self, request: SelectRequest, candidates: NDArray[np.int64]) -> dict[str, Any]:
        """This update's features: units × checkpoints, targets, labels, weights."""
        trains, targets, weights = [], [], []
        for ck in self.config.checkpoint_list:
            label = _label(ck)
            trains.append(self._unit_features(request, candidates, label))
            tname = f"{self.target_prefix}@{label}"
            if tname not in request.extras:
                raise DataError(
                    f"{self.what}: the signal {tname!r} is missing from request.extras; compute "
                    "every signal returned by selector.signals(request) before select(request)."
                )
            targets.append(_as_2d(request.extras[tname], f"signal {tname!r}"))
            weights.append(self._lr_weight(request, label) if self._weights_needed() else None)
        if TARGET_SUBTASK not in request.extras:
            raise DataError(
                f"{self.what}: the signal {TARGET_SUBTASK!r} is missing from request.extras."
            )
        subtasks = np.asarray(request.extras[TARGET_SUBTASK]).reshape(-1)
        m = targets[0].shape[0]
        if m == 0:
            raise DataError(
                f"{self.what}: the target set has no rows; set target_dataset to a non-empty "
                "dataset (LESS scores training rows against it)."
            )
        if subtasks.shape[0] != m:
            raise DataError(f"{self.what}: {subtasks.shape[0]} subtask labels for {m} target rows.")
        return {
            "step": int(request.step),
            "trains": trains,
            "targets": targets,
            "subtasks": subtasks,
            "weights": weights,
        }

    def _combined(
        self, rnd: dict[str, Any]
    ) -> tuple[list[Any], list[Any], NDArray[np.float64], Any]:
        """Checkpoint features and ``η̄`` to score with (one round, or the kept history)."""
        c = self.config
        if c.history <= 1:
            if isinstance(c.checkpoint_weights, tuple):
                w = np.asarray(c.checkpoint_weights, dtype=np.float64)
            elif len(rnd["weights"]) > 1:
                w = np.asarray(rnd["weights"], dtype=np.float64)
            else:
                w = np.ones(1)
            return rnd["trains"], rnd["targets"], checkpoint_weights(w), rnd["subtasks"]
        dtype = np.dtype(c.feature_dtype)
        kept = {
            "step": rnd["step"],
            "weight": rnd["weights"][0],
            "train": np.asarray(rnd["trains"][0], dtype=dtype),
            "target": np.asarray(rnd["targets"][0], dtype=dtype),
            "subtasks": rnd["subtasks"],
        }
        self._history = [h for h in self._history if h["step"] != kept["step"]]
        self._history.append(kept)
        self._history = self._history[-c.history :]
        m = {h["target"].shape[0] for h in self._history}
        if len(m) != 1 or {h["train"].shape for h in self._history} != {kept["train"].shape}:
            raise DataError(
                f"{self.what}: the kept history rounds cover different pools or target sets "
                "(row counts differ); history > 1 needs a fixed pool and target set."
            )
        if isinstance(c.checkpoint_weights, tuple):
            w = np.asarray(c.checkpoint_weights[-len(self._history) :], dtype=np.float64)
        else:
            w = np.asarray([h["weight"] for h in self._history], dtype=np.float64)
        return (
            [h["train"] for h in self._history],
            [h["target"] for h in self._history],
            checkpoint_weights(w, f"{self.what}: history round weights"),
            kept["subtasks"],
        )

    def _choose(
        self, request: SelectRequest, candidates: NDArray[np.int64], n: int
    ) -> NDArray[np.int64]:
        rnd = self._round(request, candidates)
        trains, targets, weights, subtasks = self._combined(rnd)
        unit_scores = less_influence(
            trains,
            targets,
            weights,
            subtasks,
            aggregation=self.config.aggregation,
            similarity=self.config.similarity,
            invalid_targets=self.invalid_targets,  # type: ignore[arg-type]
        )
        scores = self._candidate_scores(unit_scores, candidates)
        self.last_scores = (candidates, scores)
        return candidates[self._order(scores, candidates, n)]

    # ------------------------------------------------------------------ state

    def _extra_state(self) -> dict[str, Any]:
        rounds = []
        for h in self._history:
            if "entries" not in h:  # hash (and write) each kept round once
                h["entries"] = (self._artefacts.put(h["train"]), self._artefacts.put(h["target"]))
            rounds.append(
                {
                    "step": h["step"],
                    "weight": h["weight"],
                    "train": h["entries"][0],
                    "target": h["entries"][1],
                    "subtasks": np.asarray(h["subtasks"]).tolist(),
                }
            )
        return {"projector": projector_spec(self.config), "history": rounds}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("projector")
        if saved is not None and dict(saved) != projector_spec(self.config):
            raise StateError(
                f"{self.what}: the saved state was made with projector {dict(saved)} but this "
                f"config has {projector_spec(self.config)}; features of different projections "
                "are never combined. Resume with the same projector keys."
            )
        history = []
        for h in state.get("history", []) or []:
            try:
                history.append(
                    {
                        "step": int(h["step"]),
                        "weight": None if h["weight"] is None else float(h["weight"]),
                        "train": self._artefacts.get(h["train"]),
                        "target": self._artefacts.get(h["target"]),
                        "subtasks": np.asarray(h["subtasks"]),
                    }
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise StateError(
                    f"{self.what}: malformed history round in the saved state: {exc}"
                ) from exc
        self._history = history
