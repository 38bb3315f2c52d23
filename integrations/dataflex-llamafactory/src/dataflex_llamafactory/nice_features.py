"""NICE target features (spec §2.7): rollouts, rewards, one backward per prompt, projection.

For target prompt ``x`` (row ``j`` of the target set) at the current model:

1. the prompt is the row's unsupervised prefix (``labels == -100``), decoded only to check it
   is not empty (the predecessor's validation prompts were) and to show it to the reward
   backend; the reference answer ``y*`` is the supervised part;
2. ``M = mc_samples`` completions are drawn from the model (temperature, ``top_p = 1``,
   ``top_k = 0``), each seeded by ``derive(seed, "nice_gen", checkpoint, row)`` and the sample
   index (online the checkpoint is ``current@<step>``); ``policy_model_path`` generates from a
   separate policy instead;
3. the reward backend scores them (and ``y*`` when the policy needs ``R(x, y*)``);
4. ``dataflex_select.nice.nice_coefficients`` turns rewards into per-generation coefficients;
5. ``ĝ(x) = ∇ Σ_m coef_m · NLL(y_m | x)`` is one backward per prompt
   (``dataflex_ops.grouped_grads``), projected with the same projector as the training
   features and ℓ₂-normalised (a zero vector stays zero).

Every rank computes every prompt (generation is sharded and gathered inside ``dataflex_ops``),
so the features are identical on all ranks without a broadcast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from dataflex_core import ConfigError, DataError, derive

__all__ = ["nice_target_features", "split_prompt"]

_PROMPT_CHUNK = 4


def split_prompt(row: Mapping[str, Any], ignore_index: int = -100) -> tuple[list[int], list[int]]:
    """``(prompt ids, reference answer ids)`` of a tokenised sft row."""
    ids = list(row["input_ids"])
    labels = list(row.get("labels") or [])
    if len(labels) != len(ids):
        raise DataError(
            "NICE needs supervised target rows (stage: sft) whose labels mark the answer; this "
            "target row has no labels aligned with its input_ids."
        )
    first = next((i for i, lab in enumerate(labels) if lab != ignore_index), len(ids))
    return ids[:first], [t for t, lab in zip(ids, labels, strict=True) if lab != ignore_index]


def _reward_backend(provider: Any, config: Mapping[str, Any]) -> Any:
    if provider.reward_backend is None:
        from dataflex_select.rewards import make_reward_backend

        provider.reward_backend = make_reward_backend(dict(config))
    return provider.reward_backend


def _projector(options: Mapping[str, Any]) -> Any:
    """The projector of the training features (``projector_config`` in ops vocabulary)."""
    from dataflex_ops.projection import ProjectorConfig, make_projector

    from dataflex_llamafactory.selection import _grad_options

    given = options.get("projector_config")
    if isinstance(given, Mapping):
        proj = {k: v for k, v in given.items() if v is not None}
    else:
        proj = _grad_options(options, "target")["projector"]
    return make_projector(ProjectorConfig(**proj))


def nice_target_features(
    provider: Any, sig: Any, model: Any, rows: Any, step: int = 0
) -> np.ndarray:
    """``[len(rows), k]`` float32 NICE target features for the target rows ``rows``."""
    from dataflex_ops.grouped_grads import grouped_sequence_grads
    from dataflex_ops.inference import generate_sequences
    from dataflex_select.nice import nice_coefficients

    opts = dict(sig.options)
    tok = provider.tokenizer
    m = int(opts.get("mc_samples", 20))
    policy = str(opts.get("policy", "vanilla"))
    needs_ref = policy == "hard_rejection" or bool(opts.get("worst_case_protect", False))
    max_prompt = int(opts.get("max_prompt_length", 4096))
    seed = int(opts.get("generation_seed", 0))
    # ``derive(seed, "nice_gen", c, row)`` per prompt, sample m then ``derive(·, m)``; online,
    # the checkpoint is the live model at this step.
    label = str(opts.get("checkpoint_label") or "current")
    if label == "current":
        label = f"current@{step}"
    reward_cfg = opts.get("reward")
    if not isinstance(reward_cfg, Mapping):
        raise ConfigError(
            "NICE needs a `reward:` mapping with a `backend` (rule, local_model or http)."
        )
    backend = _reward_backend(provider, reward_cfg)
    projector = _projector(opts)
    params = opts.get("params", "trainable")
    reduction = str(opts.get("nll_reduction") or ("mean" if opts.get("nll_normalize") else "sum"))
    if opts.get("generation_backend", "hf") != "hf":
        raise ConfigError("generation_backend must be 'hf' in this build (vllm is not supported).")
    ckpt = opts.get("checkpoint")
    policy_path = opts.get("policy_model_path")
    if ckpt:
        model = provider._model_for(str(ckpt), model)
    gen_model = provider._model_for(str(policy_path), model) if policy_path else model
    device = next(model.parameters()).device

    prompts, refs, prompt_texts, ref_texts = [], [], [], []
    for j in range(len(rows)):
        p_ids, r_ids = split_prompt(rows[j])
        text = tok.decode(p_ids, skip_special_tokens=True)
        if not p_ids or not text.strip():
            raise DataError(
                f"target row {j} renders to an empty prompt (no non-template token); NICE needs "
                "real prompts: check the target dataset's prompt column and the template."
            )
        if needs_ref and not r_ids:
            raise DataError(
                f"policy {policy!r} / worst_case_protect needs a reference answer, but target row "
                f"{j} has none."
            )
        prompts.append(p_ids[-max_prompt:])
        refs.append(r_ids)
        prompt_texts.append(text)
        ref_texts.append(tok.decode(r_ids, skip_special_tokens=True))

    was_training = model.training
    model.eval()
    gen_model.eval()
    try:
        gens = generate_sequences(
            gen_model,
            tok,
            prompts,
            {
                "max_new_tokens": int(opts.get("max_new_tokens", 512)),
                "do_sample": True,
                "temperature": float(
                    opts.get("temperature", opts.get("generation_temperature", 1.0))
                ),
                "top_p": 1.0,
                "top_k": 0,
                "num_return_sequences": m,
                "batch_size": provider.batch_size,
                "add_special_tokens": False,
            },
            seeds=[derive(seed, "nice_gen", label, rows.indices[j]) for j in range(len(prompts))],
        )
        features = []
        for lo in range(0, len(prompts), _PROMPT_CHUNK):
            chunk = range(lo, min(lo + _PROMPT_CHUNK, len(prompts)))
            seqs, coefs, groups = [], [], []
            for g, j in enumerate(chunk):
                texts = gens.texts[j]
                rewards = np.asarray(
                    backend.score([prompt_texts[j]] * m, texts, [ref_texts[j]] * m, None),
                    dtype=np.float64,
                )
                ref_reward = (
                    float(backend.score([prompt_texts[j]], [ref_texts[j]], [ref_texts[j]], None)[0])
                    if needs_ref
                    else None
                )
                c, ref_coef = nice_coefficients(
                    rewards,
                    policy=policy,
                    topk=int(opts.get("topk", 10)),
                    ref_reward=ref_reward,
                    worst_case_protect=bool(opts.get("worst_case_protect", False)),
                )
                for k in range(m):
                    if c[k] != 0 and gens.token_ids[j][k]:
                        seqs.append((prompts[j], list(gens.token_ids[j][k])))
                        coefs.append(float(c[k]))
                        groups.append(g)
                if ref_coef:
                    seqs.append((prompts[j], refs[j]))
                    coefs.append(float(ref_coef))
                    groups.append(g)
            if not seqs:
                features.append(np.zeros((len(chunk), projector.dim), dtype=np.float32))
                continue
            batch = _pad(seqs, tok, device)
            grads = grouped_sequence_grads(
                model,
                batch,
                torch.tensor(coefs, dtype=torch.float32, device=device),
                torch.tensor(groups, dtype=torch.long, device=device),
                len(chunk),
                params=params,
                reduction=reduction,
            )
            proj = projector.project(grads).float()
            norms = proj.norm(dim=1, keepdim=True)
            proj = torch.where(norms > 0, proj / norms.clamp_min(1e-12), torch.zeros_like(proj))
            features.append(proj.detach().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(features).astype(np.float32)


def _pad(seqs: list[tuple[list[int], list[int]]], tok: Any, device: Any) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` (prompt tokens masked)."""
    length = max(len(p) + len(r) for p, r in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    labels = torch.full((len(seqs), length), -100, dtype=torch.long)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(r)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }
