"""Online data mixing in a plain numpy loop: no torch, no trainer, no LLaMA-Factory.

Four synthetic domains learn at different speeds: each sample's "loss" follows its domain's
learning curve ``floor + (start - floor)·exp(-seen / tau)`` plus noise, where ``seen`` is the
number of samples of that domain trained so far. Every step draws 32 rows with
``MixtureSampler`` in the current proportions, computes the per-sample losses, and hands them,
with each sample's own domain id, to the ``odm`` mixer, which moves sampling toward the domains
whose loss is still high.

Run it from the repository root::

    python examples/standalone_mix.py
"""

from __future__ import annotations

import time

import numpy as np
from dataflex_core import ComponentContext
from dataflex_mix import MixtureSampler, OdmMixer, feedback_from_samples

DOMAINS = ("easy", "medium", "hard", "noisy")
START = np.array([3.0, 4.0, 5.0, 3.5])  # loss before training
FLOOR = np.array([0.5, 1.0, 2.0, 2.5])  # loss the domain converges to
TAU = np.array([150.0, 400.0, 1200.0, 300.0])  # samples to learn ~63% of the gap
NOISE = np.array([0.05, 0.1, 0.1, 0.6])
SIZES = [2000, 2000, 2000, 2000]
STEPS, BATCH, SEED = 200, 32, 0


def main() -> None:
    t0 = time.perf_counter()
    mixer = OdmMixer(
        # Ordinary mixed batches: every domain is pulled every step, so no 1/π importance
        # weight (spec §3.4); reward_scale makes loss differences visible in the policy.
        {"arm_unit": "mixed", "importance_weighting": False, "reward_scale": 15.0},
        ComponentContext(domains=DOMAINS, seed=SEED),
    )
    sampler = MixtureSampler(
        SIZES,
        samples_per_step=BATCH,
        total_steps=STEPS,
        window_starts=range(STEPS),  # a new window, hence new proportions, every step
        proportions_for=lambda u: mixer.proportions,
        seed=SEED,
    )
    offsets = np.cumsum([0, *SIZES[:-1]])
    rng = np.random.Generator(np.random.PCG64(SEED))
    seen = np.zeros(len(DOMAINS))
    rows = iter(sampler)
    print("step  " + "  ".join(f"{d:>7}" for d in DOMAINS) + "   (proportions)")
    for step in range(STEPS):
        batch = np.fromiter((next(rows) for _ in range(BATCH)), dtype=np.int64, count=BATCH)
        domains = np.searchsorted(offsets, batch, side="right") - 1
        curve = FLOOR + (START - FLOOR) * np.exp(-seen / TAU)
        losses = curve[domains] + rng.normal(0.0, NOISE[domains])
        seen += np.bincount(domains, minlength=len(DOMAINS))
        mixer.step(feedback_from_samples(step + 1, losses, domains, len(DOMAINS)))
        if step % 25 == 0 or step == STEPS - 1:
            print(f"{step + 1:4d}  " + "  ".join(f"{p:7.3f}" for p in mixer.proportions))
    print(
        "final proportions:",
        dict(zip(DOMAINS, np.round(mixer.proportions, 3).tolist(), strict=True)),
    )
    print(f"samples seen per domain: {seen.astype(int).tolist()}")
    print(f"done in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
