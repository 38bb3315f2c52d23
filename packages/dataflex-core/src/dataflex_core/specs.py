"""Component specs, runtime context, and the data that flows between trainers and components.

Everything here is plain Python: arrays may be numpy arrays or torch tensors, but core never
imports either.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataflex_core.errors import PluginError

__all__ = [
    "KINDS",
    "ComponentSpec",
    "ComponentContext",
    "MixFeedback",
    "MixDecision",
    "SelectRequest",
    "SignalRequest",
    "SIGNAL_KINDS",
    "WeightFeedback",
]

#: The kinds of component a plugin may register.
KINDS: tuple[str, ...] = ("selector", "mixer", "weighter", "featurizer", "index", "reward")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ComponentSpec:
    """What a plugin registers: a named, lazily built component.

    Attributes:
        kind: One of :data:`KINDS`.
        name: The name users write in configs (``"random"``, ``"doremi"``).
        factory: ``"package.module:Class"`` (imported only when the component is created, so
            discovery never imports torch or faiss) or the class itself. It is called as
            ``factory(config, context)``.
        config: The config dataclass, as a class or a ``"package.module:Class"`` string. None
            means the factory's ``config_class`` attribute.
        summary: One line shown by ``dataflex-cli components``.
        paper: Reference (arXiv id or URL), empty when there is none.
        source: Filled in by the registry: the plugin (and distribution) that registered it.
    """

    kind: str
    name: str
    factory: str | Callable[..., Any]
    config: str | type | None = None
    summary: str = ""
    paper: str = ""
    source: str = ""

    def validate(self, plugin: str) -> None:
        """Raise :class:`PluginError` naming ``plugin`` when the spec is malformed."""
        if self.kind not in KINDS:
            raise PluginError(
                f"plugin {plugin!r} registers {self.name!r} with unknown kind {self.kind!r}; "
                f"valid kinds are {', '.join(KINDS)}. Fix the plugin's ComponentSpec(kind=...)."
            )
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise PluginError(
                f"plugin {plugin!r} registers a {self.kind} with invalid name {self.name!r}; "
                "names start with a letter or '_' and contain letters, digits, '_', '-', '.'."
            )
        if isinstance(self.factory, str) and ":" not in self.factory:
            raise PluginError(
                f"plugin {plugin!r}: {self.kind} {self.name!r} has factory {self.factory!r}; "
                "write it as 'package.module:ClassName'."
            )
        if not isinstance(self.factory, str) and not callable(self.factory):
            raise PluginError(
                f"plugin {plugin!r}: {self.kind} {self.name!r} factory must be a "
                f"'module:Class' string or a callable, got {self.factory!r}."
            )

    def with_source(self, source: str) -> ComponentSpec:
        """Return a copy with ``source`` set."""
        return dataclasses.replace(self, source=source)

    @property
    def factory_path(self) -> str:
        """The factory as a ``module:qualname`` string."""
        if isinstance(self.factory, str):
            return self.factory
        return f"{self.factory.__module__}:{self.factory.__qualname__}"


@dataclass(frozen=True)
class ComponentContext:
    """Runtime facts a component needs besides its hyperparameters.

    Runtime objects never enter the config namespace (spec §5.2); they come here.

    Attributes:
        name: The entry name the component was created under (``"loss_high"``).
        seed: The run's base seed; a component's own ``seed`` key overrides it.
        domains: Domain names in config order (mixers, per-domain statistics).
        num_samples: Size ``N`` of the training pool (selectors).
        output_dir: Where the run writes (caches default below it).
        rank: This process's rank.
        world_size: Number of processes.
        extras: Anything else an integration wants to hand over (read-only).
    """

    name: str = ""
    seed: int = 0
    domains: tuple[str, ...] = ()
    num_samples: int | None = None
    output_dir: str | None = None
    rank: int = 0
    world_size: int = 1
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MixFeedback:
    """Per-domain training signals since the last update, already all-reduced over ranks.

    Sequences have one entry per domain, in config order:

    * ``loss_sum[k]``: sum over supervised tokens of domain ``k`` of the token cross-entropy;
    * ``token_count[k]``: number of those tokens; ``sample_count[k]``: number of samples;
    * ``sample_loss_sum[k]``: sum of the per-sample token-mean losses ``l_i`` of domain ``k``;
    * ``excess_loss_sum[k]``: DoReMi's sum over tokens of ``max(l_t - l_ref_t, 0)``;
    * ``eval_loss[k]``: token-mean loss on domain ``k``'s fixed eval set (Aioli), if measured.

    Per-sample fields are optional and, if given, cover the whole global batch (gathered), with
    ``sample_domains[i]`` the domain of sample ``i`` (never the batch's first sample's domain).
    ``extras`` carries model-specific signals by name (e.g. ``"gate_loads"`` for dynamic_moe).
    """

    step: int
    loss_sum: Sequence[float]
    token_count: Sequence[float]
    sample_count: Sequence[float]
    sample_loss_sum: Sequence[float] | None = None
    excess_loss_sum: Sequence[float] | None = None
    sample_losses: Sequence[float] | None = None
    sample_domains: Sequence[int] | None = None
    eval_loss: Sequence[float] | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MixDecision:
    """A mixer's decision: domain proportions (on the simplex) and optional loss weights."""

    proportions: tuple[float, ...]
    loss_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SelectRequest:
    """What a trainer asks a selector for at an update (spec §2.0, §5.1).

    Attributes:
        step: Completed optimizer steps ``s``.
        epoch: Flex epoch ``e``.
        update: Index of this update within the epoch (0-based); -1 for the warmup draw.
        n: Number of indices wanted (``G * update_step``).
        num_samples: Pool size ``N``.
        warmup: True for the warmup draw of an epoch.
        extras: Signals for model-in-the-loop selectors (losses, features), by name.
    """

    step: int
    epoch: int
    update: int
    n: int
    num_samples: int
    warmup: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict)


#: Signals a selector may ask the trainer integration for (spec §2, §5.1). Each result lands in
#: ``SelectRequest.extras[signal.name]``, one row per requested index (``indices`` order):
#:
#: * ``loss``: float64 ``[n]`` token-mean loss ``ℓ_i`` under the current model (NaN = invalid).
#: * ``embedding``: float32 ``[n, d]`` ℓ₂-normalised pooled hidden states (NaN row = invalid).
#:   Options: ``model`` (null = the model being trained, or a path), ``layer``, ``pooling``.
#: * ``grad_feature``: float32 ``[n, k]`` ℓ₂-normalised projected gradient features (§1.3–1.5).
#:   Options: ``gradient_type`` (``adam``/``sgd``; the target split is always ``sgd``),
#:   ``checkpoint`` (null = the live model and optimizer, or a checkpoint folder), and the
#:   projector/Adam keys of the LESS table (``proj_dim``, ``projection_seeding``, ...).
#: * ``nice_feature``: float32 ``[n, k]``: NICE target features ``normalise(Rᵀ ĝ(x))`` (§2.7).
#: * ``text``: ``list[str]``: the raw example rendered as prompt + response.
#: * ``subtask``: int64 ``[n]``: subtask label of each target row (``subtask_by``).
#: * ``lr_weight``: float: the mean learning rate over the optimizer steps of a checkpoint
#:   interval (``checkpoint`` option; null = since the previous update of this run).
SIGNAL_KINDS: tuple[str, ...] = (
    "loss",
    "embedding",
    "grad_feature",
    "nice_feature",
    "text",
    "subtask",
    "lr_weight",
)


@dataclass(frozen=True)
class SignalRequest:
    """A signal a selector needs before it can answer a :class:`SelectRequest`.

    Selectors that read model or data signals implement ``signals(request) ->
    list[SignalRequest]``; the integration computes each one and passes the results in
    ``request.extras[name]`` to ``select``. Selectors never run models themselves.

    Attributes:
        name: Key of the result in ``SelectRequest.extras``.
        kind: One of :data:`SIGNAL_KINDS`.
        split: ``"train"`` (the pool) or ``"target"`` (the target set).
        indices: Rows of the split to compute, in order; None means every row.
        options: Kind-specific options (JSON-safe).
    """

    name: str
    kind: str
    split: str = "train"
    indices: tuple[int, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SIGNAL_KINDS:
            raise PluginError(
                f"signal {self.name!r}: unknown kind {self.kind!r}; valid kinds: "
                f"{', '.join(SIGNAL_KINDS)}."
            )
        if self.split not in ("train", "target"):
            raise PluginError(
                f"signal {self.name!r}: split must be 'train' or 'target', got {self.split!r}."
            )
        if self.indices is not None and not isinstance(self.indices, tuple):
            object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))


@dataclass(frozen=True)
class WeightFeedback:
    """Per-sample signals of one micro-batch for a weighter (spec §4.0).

    Local fields describe this rank's micro-batch; ``losses`` keeps its type (numpy array or a
    torch tensor on the loss's device, possibly with grad: weighters must not backpropagate
    through their weights). Global fields describe the global micro-batch ``B_mu`` (all ranks,
    gathered, detached); this rank's samples are ``global_*[local_offset : local_offset + n]``.
    With one process the global fields may be None and mean "same as local".

    A weighter returns detached local weights of the same type and length as ``losses``.
    """

    step: int
    losses: Any
    token_counts: Any = None
    domains: Any = None
    valid: Any = None
    global_losses: Any = None
    global_valid: Any = None
    global_token_counts: Any = None
    local_offset: int = 0
    world_size: int = 1
    embeddings: Any = None
