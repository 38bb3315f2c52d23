"""Every hook of DataFlex.

Three families:

* **Registration hooks** (collect-all) return lists of :class:`~dataflex_core.specs.ComponentSpec`.
  They are called once when a registry is built. A spec's factory is a lazy ``"module:Class"``
  string, so discovery imports neither torch nor faiss.
* **Capability hooks** (first result wins) pick an implementation by what it can handle. Return
  None to pass. Implementations that handle everything mark themselves ``trylast``.
* **Event hooks** (collect-all, return values ignored) let loggers and dashboards observe runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataflex_core.markers import hookspec
from dataflex_core.specs import ComponentSpec

# --------------------------------------------------------------------------- registration


@hookspec
def dataflex_register_selectors() -> list[ComponentSpec]:
    """Return the selectors this plugin provides (specs with ``kind="selector"``).

    Called once per registry build. Collect-all: every plugin's list is merged; two plugins
    registering the same name is an error naming both.
    """


@hookspec
def dataflex_register_mixers() -> list[ComponentSpec]:
    """Return the mixers this plugin provides (specs with ``kind="mixer"``).

    Called once per registry build. Collect-all.
    """


@hookspec
def dataflex_register_weighters() -> list[ComponentSpec]:
    """Return the sample weighters this plugin provides (specs with ``kind="weighter"``).

    Called once per registry build. Collect-all.
    """


@hookspec
def dataflex_register_featurizers() -> list[ComponentSpec]:
    """Return the featurizers (per-sample loss, embeddings, gradients) this plugin provides.

    Specs have ``kind="featurizer"``. Called once per registry build. Collect-all.
    """


@hookspec
def dataflex_register_index_backends() -> list[ComponentSpec]:
    """Return the nearest-neighbour index backends this plugin provides (``kind="index"``).

    Called once per registry build. Collect-all.
    """


@hookspec
def dataflex_register_reward_backends() -> list[ComponentSpec]:
    """Return the reward backends (NICE ``reward.backend``) this plugin provides (``kind="reward"``).

    A backend is built as ``factory(config, context)`` and scores a batch with
    ``backend.score(prompts, responses, references, metas) -> list[float]``. Called once per
    registry build. Collect-all.
    """


# --------------------------------------------------------------------------- capability


@hookspec(firstresult=True)
def dataflex_make_featurizer(model: Any, kind: str, context: Mapping[str, Any]) -> Any | None:
    """Return a featurizer of ``kind`` (e.g. ``"per_sample_loss"``) able to run on ``model``.

    First result wins. An implementation for partitioned models (DeepSpeed ZeRO-3, FSDP) answers
    only for such models and returns None otherwise; the plain implementation is ``trylast``.
    ``context`` holds options such as the parameter filter or the device.
    """


@hookspec(firstresult=True)
def dataflex_compute_features(
    model: Any, batch: Any, kind: str, options: Mapping[str, Any]
) -> Any | None:
    """Compute features of ``kind`` for ``batch`` under ``model`` and return them.

    First result wins; return None when this plugin cannot compute ``kind`` for this model.
    This is how selectors and weighters obtain per-sample losses, embeddings or gradient
    features without importing ``dataflex_ops``. The result is a mapping with at least
    ``"values"`` (one row per sample) and ``"valid"`` (a boolean mask).
    """


# --------------------------------------------------------------------------- events


@hookspec
def dataflex_on_train_begin(run: Mapping[str, Any]) -> None:
    """Called once on every rank before the first training step.

    ``run`` holds ``output_dir``, ``train_type``, ``component``, ``domains``, ``seed``,
    ``max_steps``, ``rank`` and ``world_size``.
    """


@hookspec
def dataflex_on_step_end(step: int, run: Mapping[str, Any]) -> None:
    """Called on every rank after each optimizer step; ``step`` counts completed steps."""


@hookspec
def dataflex_on_update(step: int, kind: str, component: str, decision: Mapping[str, Any]) -> None:
    """Called on every rank after a component made a decision.

    ``decision`` is JSON-safe: ``{"proportions": [...]}`` for mixers, ``{"num_selected": n,
    "by_domain": {...}}`` for selectors, weight statistics for weighters.
    """


@hookspec
def dataflex_on_save(step: int, checkpoint_dir: str, state: Mapping[str, Any]) -> None:
    """Called on rank 0 after ``dataflex_state.json`` was written into ``checkpoint_dir``."""


@hookspec
def dataflex_on_train_end(step: int, run: Mapping[str, Any]) -> None:
    """Called once on every rank after the last training step."""
