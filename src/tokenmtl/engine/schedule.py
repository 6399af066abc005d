"""Learning-rate schedules stepped per iteration (the InvPT/DTME polynomial schedule by default)."""
from __future__ import annotations

import math
from typing import Callable


def lr_factor(kind: str, total: int, power: float = 0.9, warmup: int = 0) -> Callable[[int], float]:
    """Multiplier of the base LR at iteration `it` of `total`.

    poly: (1 - it/total)^power (InvPT `PolynomialLR`, min_lr 0); cosine: 0.5(1+cos(pi it/total));
    constant: 1. A linear warm-up over `warmup` iterations multiplies any of them.
    """
    if total <= 0:
        raise ValueError(f"a schedule needs total > 0 iterations, got {total}")

    def factor(it: int) -> float:
        frac = min(max(it, 0), total) / total
        if kind == "poly":
            value = (1.0 - frac) ** power
        elif kind == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * frac))
        elif kind == "constant":
            value = 1.0
        else:
            raise ValueError(f"unknown lr schedule {kind!r}; available: poly, cosine, constant")
        if warmup > 0 and it < warmup:
            value *= (it + 1) / warmup
        return value

    return factor
