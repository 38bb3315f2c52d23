"""A weight function for the ``custom`` weighter (``examples/weight/custom.yaml``).

DataFlex calls it with keyword arguments (see docs/weighters/custom.md) and the entries of
``params``; it returns one weight ``>= 0`` per local sample.
"""

from __future__ import annotations

import numpy as np


def focal_weights(losses_local, gamma: float = 1.0, **_: object) -> np.ndarray:
    """Focal-style weights ``(1 - exp(-l_i)) ** gamma``: the model's probability of the sample's
    tokens is about ``exp(-l_i)``, so well-predicted samples count less. Non-finite losses get 0
    (DataFlex zeroes invalid samples anyway)."""
    losses = np.asarray(
        losses_local.detach().float().cpu() if hasattr(losses_local, "detach") else losses_local,
        dtype=np.float64,
    )
    w = (1.0 - np.exp(-np.clip(losses, 0.0, None))) ** gamma
    return np.where(np.isfinite(w), w, 0.0)
