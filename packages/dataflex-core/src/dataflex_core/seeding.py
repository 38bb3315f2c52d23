"""Seed derivation (algorithms spec §5.4).

All randomness in DataFlex comes from generators seeded by :func:`derive`; nothing touches the
global RNGs.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive"]

_MASK63 = (1 << 63) - 1


def derive(base: int | str, *labels: object) -> int:
    """Derive a 63-bit seed from a base seed and labels.

    ``SHA-256(utf8("|".join(str(x) for x in (base, *labels))))``, first 8 bytes little-endian,
    ANDed with ``2**63 - 1``. Feed the result to ``numpy.random.Generator(PCG64(seed))`` or
    ``torch.Generator().manual_seed(seed)``.

    Args:
        base: The base seed (the run seed unless a component overrides it).
        *labels: Purpose labels: component name, purpose, epoch, step, ...

    Returns:
        A non-negative integer below ``2**63``.
    """
    text = "|".join(str(x) for x in (base, *labels))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & _MASK63
