"""Loss-based sample reweighting in a plain PyTorch loop (no trainer, no LLaMA-Factory).

A tiny classifier learns from noisy labels. Each micro-batch's per-sample losses go to the
``loss`` weighter of ``dataflex-weight``; its ``objective`` is the weighted loss to backpropagate.
With gradient accumulation the objective is divided by the number of accumulated micro-batches,
and under DDP it would be multiplied by the world size (1 here), so the applied gradient is the
gradient of ``J = (1/GA) sum_mu J_mu`` (see docs/weighters/accumulation.md).

Run it with ``python examples/standalone_weight_torch.py``; it takes a few seconds on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dataflex_core import WeightFeedback
from dataflex_weight import LossWeighter

STEPS = 30  # optimizer steps
GA = 2  # micro-batches per optimizer step
BATCH = 16  # samples per micro-batch
WARMUP_STEP = 5  # plain mean loss before this step (the burn-in)
WORLD_SIZE = 1  # under DDP: torch.distributed.get_world_size()


def make_data(gen: torch.Generator, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in 8 dimensions, 20% of the labels flipped."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 8, generator=gen) + 1.5 * (2 * y[:, None] - 1)
    flip = torch.rand(n, generator=gen) < 0.2
    return x, torch.where(flip, 1 - y, y)


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = make_data(gen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    with torch.no_grad():  # seeded init without touching the global RNG
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    # `quadratic` (the official configs' `mid`) down-weights both the easiest and the hardest
    # samples of each micro-batch; flipped labels are among the hardest.
    weighter = LossWeighter({"strategy": "quadratic", "temperature": 0.5})

    for step in range(STEPS):
        optimizer.zero_grad()
        stats = []
        for _ in range(GA):
            idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
            losses = F.cross_entropy(model(x[idx]), y[idx], reduction="none")  # l_i, with grad
            if step < WARMUP_STEP:
                loss = losses.mean()  # the standard loss during the burn-in
            else:
                feedback = WeightFeedback(step=step, losses=losses)
                weights = weighter.weigh(feedback)  # detached, sum to 1 over the micro-batch
                loss = weighter.objective(feedback, weights) * WORLD_SIZE
                stats.append(weights)
            (loss / GA).backward()
        optimizer.step()
        if stats and (step % 5 == 0 or step == STEPS - 1):
            w = torch.cat(stats)
            ess = (1.0 / (torch.stack(stats) ** 2).sum(dim=1)).mean()  # effective sample size
            print(
                f"step {step:2d}  weights min {w.min():.4f} max {w.max():.4f} "
                f"mean {w.mean():.4f}  effective samples {ess:.1f}/{BATCH}"
            )

    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    print(f"final accuracy on the noisy labels: {accuracy:.3f}")


if __name__ == "__main__":
    main()
