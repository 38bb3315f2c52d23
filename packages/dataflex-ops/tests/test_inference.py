"""Batched generation and scoring on one process (dataflex_ops.inference): equality with
``transformers``' own ``generate``, seeding, hand-computed log-likelihoods, reward models,
per-domain losses, the hooks, and bad input."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dataflex_core import ConfigError, DataError, Registry
from dataflex_ops import (
    Generation,
    RewardModelScorer,
    SequenceLogprob,
    TokenizerMismatch,
    domain_eval_losses,
    generate,
    generate_sequences,
    score,
    score_sequences,
)


def _load_worker() -> ModuleType:
    path = Path(__file__).with_name("inference_worker.py")
    spec = importlib.util.spec_from_file_location("dataflex_ops_inference_worker", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


W = _load_worker()
PROMPTS = W.PROMPTS
RESPONSES = W.RESPONSES


@pytest.fixture(scope="module")
def tok():
    return W.build_tokenizer()


@pytest.fixture(scope="module")
def model():
    m = W.build_model()
    m.train()  # the ops switch to eval themselves and restore this
    return m


# --------------------------------------------------------------------------- generation


def test_greedy_equals_transformers_generate(model, tok) -> None:
    out = generate_sequences(
        model, tok, PROMPTS, {"max_new_tokens": 10, "batch_size": 3, "progress": False}
    )
    assert model.training and tok.padding_side == "right"  # both left as found
    for i, prompt in enumerate(PROMPTS):
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            model.eval()
            ref = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=0)
            model.train()
        expected = ref[0, enc["input_ids"].shape[1] :].tolist()
        assert out.token_ids[i][0] == expected, i
        assert out.prompt_token_ids[i] == enc["input_ids"][0].tolist()
        assert out.texts[i][0] == tok.decode(expected, skip_special_tokens=True)
    # a left-padded batched HF call agrees as well
    tok.padding_side = "left"
    try:
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "right"
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=0)
    width = enc["input_ids"].shape[1]
    assert [r[width:].tolist() for r in ref] == [t[0] for t in out.token_ids]
    # the convenience wrapper returns the texts
    texts = generate(model, tok, PROMPTS[:2], max_new_tokens=10, progress=False)
    assert texts == out.texts[:2]


def test_sampling_is_seeded_batch_invariant_and_leaves_global_rngs(model, tok) -> None:
    cfg = {"max_new_tokens": 8, "do_sample": True, "num_return_sequences": 3, "progress": False}
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    a = generate_sequences(model, tok, PROMPTS, {**cfg, "seed": 1, "batch_size": 4})
    b = generate_sequences(model, tok, PROMPTS, {**cfg, "seed": 1, "batch_size": 1})
    c = generate_sequences(model, tok, PROMPTS, {**cfg, "seed": 2, "batch_size": 4})
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert a.token_ids == b.token_ids  # per-row generators: the batching does not matter
    assert a.token_ids != c.token_ids
    assert all(len(samples) == 3 for samples in a.texts)
    assert len({tuple(t) for t in a.token_ids[2]}) > 1  # the rollouts differ from each other
    # per-prompt seeds (NICE: derive(seed, "nice_gen", c, idx(x))) decide each prompt alone
    d = generate_sequences(model, tok, PROMPTS[:3], cfg, seeds=[7, 8, 9])
    e = generate_sequences(model, tok, PROMPTS[1:3], cfg, seeds=[8, 9])
    assert d.token_ids[1:] == e.token_ids
    # top_k = 1 sampling is greedy
    greedy = generate(model, tok, PROMPTS, max_new_tokens=8, progress=False)
    top1 = generate(model, tok, PROMPTS, max_new_tokens=8, do_sample=True, top_k=1, seed=3)
    assert top1 == greedy


def test_top_p_keeps_the_nucleus() -> None:
    from dataflex_ops.inference import GenerateConfig, _next_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    nucleus = GenerateConfig(do_sample=True, top_p=0.7)
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        seen.add(int(_next_tokens(logits, nucleus, [g])[0]))
    assert seen == {0, 1}  # 0.5 + 0.3 >= 0.7: tokens 2 and 3 are never drawn
    top2 = GenerateConfig(do_sample=True, top_k=3)
    assert {int(_next_tokens(logits, top2, [g])[0]) for _ in range(200)} == {0, 1, 2}


def test_stop_strings_cut_the_text(model, tok) -> None:
    full = generate_sequences(model, tok, PROMPTS[:1], {"max_new_tokens": 10, "progress": False})
    words = full.texts[0][0].split()
    stop = words[3]
    cut = generate_sequences(
        model, tok, PROMPTS[:1], {"max_new_tokens": 10, "stop_strings": [stop], "progress": False}
    )
    assert cut.finish_reasons[0][0] == "stop"
    assert cut.texts[0][0] == full.texts[0][0][: full.texts[0][0].find(stop)]
    assert len(cut.token_ids[0][0]) <= 4
    assert full.finish_reasons[0][0] == "length"


# --------------------------------------------------------------------------- scoring


def _hand_logprob(model, tok, prompt: str, response: str) -> tuple[float, int]:
    p = tok(prompt)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    logp = F.log_softmax(logits.double(), dim=-1)
    total = sum(float(logp[len(p) + t - 1, r[t]]) for t in range(len(r)))
    return total, len(r)


def test_score_equals_hand_computed_log_likelihood(model, tok) -> None:
    was = model.training
    sums = score(model, tok, PROMPTS, RESPONSES, batch_size=3, progress=False)
    means = score(model, tok, PROMPTS, RESPONSES, reduction="mean", batch_size=2, progress=False)
    assert model.training == was
    model.eval()
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        total, n = _hand_logprob(model, tok, prompt, response)
        assert sums[i] == pytest.approx(total, abs=1e-5), i
        if n:
            assert means[i] == pytest.approx(total / n, abs=1e-5), i
        else:  # an empty response: log-probability of nothing, and no mean
            assert sums[i] == 0.0 and math.isnan(means[i])
    model.train()
    # token ids score the same as their texts
    p_ids = [tok(p)["input_ids"] for p in PROMPTS]
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] for r in RESPONSES]
    by_ids = score_sequences(model, tok, p_ids, r_ids, {"progress": False})
    assert by_ids["sum"] == pytest.approx(sums, abs=1e-6)
    assert by_ids["token_counts"] == [len(r) for r in r_ids]


# --------------------------------------------------------------------------- reward models


def test_reward_classifier_matches_unpadded_forward(tok, tmp_path: Path) -> None:
    classifier = W.build_model(seed=3, classifier=True)
    scorer = RewardModelScorer(
        classifier, tok, {"template": "{prompt} {response}", "batch_size": 3, "progress": False}
    )
    assert scorer.head == "classification"
    got = scorer.score(PROMPTS, RESPONSES)
    classifier.eval()
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        ids = tok(f"{p} {r}", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = float(classifier(input_ids=ids).logits[0, 0])
        assert got[i] == pytest.approx(expected, abs=1e-5), i
    sig = RewardModelScorer(
        classifier, tok, {"template": "{prompt} {response}", "transform": "sigmoid"}
    )
    assert sig.score(PROMPTS[:2], RESPONSES[:2]) == pytest.approx(
        [1 / (1 + math.exp(-v)) for v in got[:2]], abs=1e-6
    )
    with pytest.raises(ConfigError, match="softmax_last"):
        RewardModelScorer(classifier, tok, {"transform": "softmax_last"}).score(["w5"], ["w6"])
    # loaded from a path (tokenizer included) it scores the same
    classifier.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = RewardModelScorer(
        str(tmp_path), config={"template": "{prompt} {response}", "progress": False}
    )
    assert loaded.score(PROMPTS, RESPONSES) == pytest.approx(got, abs=1e-5)


def test_reward_logprob_head(model, tok) -> None:
    plain = RewardModelScorer(model, tok, {"head": "logprob", "progress": False})
    assert plain.head == "logprob"
    expected = score(model, tok, PROMPTS, RESPONSES, reduction="mean", progress=False)
    got = plain.score(PROMPTS, RESPONSES)
    assert [x for x in got if not math.isnan(x)] == pytest.approx(
        [x for x in expected if not math.isnan(x)]
    )
    judge = RewardModelScorer(
        model,
        tok,
        {"target": " {reference}", "template": "{prompt} {response}", "reduction": "sum"},
        policy_tokenizer=tok,
    )
    refs = ["w60"] * len(PROMPTS)
    rendered = [f"{p} {r}" for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert judge.score(PROMPTS, RESPONSES, refs) == pytest.approx(
        score(model, tok, rendered, [" w60"] * len(PROMPTS), progress=False), abs=1e-6
    )


def test_reward_tokenizer_checks_name_both(model, tok) -> None:
    other = W.build_tokenizer(vocab_size=48)  # another vocabulary
    with pytest.raises(TokenizerMismatch, match=r"policy tokenizer .*64 tokens.*reward tok"):
        RewardModelScorer(model, other, {"head": "logprob"}, policy_tokenizer=tok)
    big = W.build_tokenizer(vocab_size=80)  # ids beyond the model's 64 embedding rows
    with pytest.raises(TokenizerMismatch, match=r"80 tokens.*64"):
        RewardModelScorer(model, big)
    with pytest.raises(ConfigError, match="tokenizer"):
        RewardModelScorer(model)
    with pytest.raises(ConfigError, match="ForSequenceClassification"):
        RewardModelScorer(model, tok, {"head": "classification"})
    with pytest.raises(ConfigError, match="prompt"):
        RewardModelScorer(model, tok, {"template": "{prompt}{answer}"})


# --------------------------------------------------------------------------- evaluation


def test_domain_eval_losses_are_token_means(model) -> None:
    domains = W.eval_domains()
    got = domain_eval_losses(model, domains, batch_size=2, progress=False)
    assert list(got) == ["a", "b"]
    model.eval()
    for name, rows in domains.items():
        total, tokens = 0.0, 0
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            with torch.no_grad():
                loss = model(input_ids=ids, labels=labels).loss  # token mean of this row
            n = int((labels[0, 1:] != -100).sum())
            total, tokens = total + float(loss) * n, tokens + n
        assert got[name] == pytest.approx(total / tokens, abs=1e-5)
    model.train()
    with pytest.raises(DataError, match="'empty'"):
        domain_eval_losses(model, {"empty": []}, progress=False)


# --------------------------------------------------------------------------- hooks


def test_featurizers_registered_and_computed(fresh_plugin_manager, model, tok) -> None:
    registry = Registry(fresh_plugin_manager)
    assert {"generation", "sequence_logprob"} <= set(registry.names("featurizer"))
    assert isinstance(registry.create("featurizer", "generation", max_new_tokens=4), Generation)
    assert isinstance(registry.create("featurizer", "sequence_logprob"), SequenceLogprob)
    hook = fresh_plugin_manager.hook.dataflex_compute_features
    gen = hook(
        model=model,
        batch={"prompts": PROMPTS, "tokenizer": tok},
        kind="generation",
        options={"max_new_tokens": 5, "progress": False},
    )
    assert gen["values"] == generate(model, tok, PROMPTS, max_new_tokens=5, progress=False)
    assert gen["valid"].tolist() == [True] * len(PROMPTS)
    assert len(gen["token_ids"]) == len(gen["finish_reasons"]) == len(PROMPTS)
    lp = hook(
        model=model,
        batch={"prompts": PROMPTS, "responses": RESPONSES, "tokenizer": tok},
        kind="sequence_logprob",
        options={"reduction": "mean", "progress": False},
    )
    assert lp["valid"].tolist() == [bool(r) for r in RESPONSES]
    assert lp["token_counts"].tolist() == [len(r.split()) for r in RESPONSES]
    with pytest.raises(ConfigError, match="max_new_tokens"):
        hook(
            model=model,
            batch={"prompts": PROMPTS, "tokenizer": tok},
            kind="generation",
            options={"max_new_token": 5},
        )
    with pytest.raises(DataError, match="responses"):
        hook(
            model=model,
            batch={"prompts": PROMPTS, "tokenizer": tok},
            kind="sequence_logprob",
            options={},
        )


# --------------------------------------------------------------------------- bad input


def test_bad_input(model, tok) -> None:
    long_prompt = " ".join(f"w{4 + i % 60}" for i in range(60))  # 61 tokens with <s>
    with pytest.raises(DataError, match=r"prompt 1 has 61 tokens.*limit of 56"):
        generate(model, tok, ["w5", long_prompt], max_new_tokens=8, progress=False)
    with pytest.raises(DataError, match=r"prompt 1 with its response has 65 tokens.*64"):
        score(model, tok, ["w5", long_prompt], ["w6", "w7 w8 w9 w10"], progress=False)
    for empty in ("", "   "):
        with pytest.raises(DataError, match="prompt 0 is empty"):
            generate(model, tok, [empty, "w5"], progress=False)
    with pytest.raises(DataError, match="no token ids"):
        generate(model, tok, [[]], progress=False)
    with pytest.raises(DataError, match="single string"):
        generate(model, tok, "w5 w6", progress=False)
    for temperature in (0.0, -1.0):
        with pytest.raises(ConfigError, match="temperature"):
            generate(model, tok, ["w5"], do_sample=True, temperature=temperature)
    with pytest.raises(ConfigError, match="do_sample"):
        generate(model, tok, ["w5"], num_return_sequences=2)
    with pytest.raises(ConfigError, match="top_p"):
        generate(model, tok, ["w5"], do_sample=True, top_p=0.0)
    with pytest.raises(ConfigError, match="torch.distributed is not initialised"):
        generate(model, tok, ["w5"], distributed=True)
    with pytest.raises(DataError, match="2 responses"):
        score(model, tok, ["w5"], ["w6", "w7"])
    with pytest.raises(DataError, match="one seed per prompt"):
        generate(model, tok, ["w5", "w6"], seeds=[1])
    assert generate(model, tok, [], progress=False) == []
