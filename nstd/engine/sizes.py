"""Sizes: how large a photo runs at each scale of coarse to fine, and the least size
VGG19 takes. Plain arithmetic, no torch, so a config is checked without loading PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POOLED = 16  # VGG19 halves an image four times before relu5_1


def long_side_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(height, width) scaled so the longer side is `long_side`, keeping aspect."""
    scale = long_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def least_long_side(h: int, w: int) -> int:
    """The shortest long side at which an h x w image keeps POOLED px on its short side."""
    return math.ceil(POOLED * max(h, w) / min(h, w))


@dataclass(frozen=True)
class Scale:
    long_side: int
    iterations: int
    lbfgs_history: int
    precision: str | None = None  # the convolutions' for this scale; None: the run's switches


def schedule(long_side: int, start: int, factor: float, iterations: int,
             later: tuple[int, ...], lbfgs_history: int) -> list[Scale]:
    """Scales from `start` up to `long_side`, each `factor` larger than the last.

    The first runs `iterations`; the next ones take `later` in turn (its last value
    repeating). L-BFGS history shrinks with the pixel count, so its memory stays that of
    the first scale: at 6000 px a full history would need tens of gigabytes.
    """
    if long_side <= start or factor <= 1:
        return [Scale(long_side, iterations, lbfgs_history)]
    sides = [start]
    while sides[-1] * factor < long_side:
        sides.append(round(sides[-1] * factor))
    sides.append(long_side)
    out = [Scale(start, iterations, lbfgs_history)]
    for k, side in enumerate(sides[1:]):
        its = later[min(k, len(later) - 1)] if later else iterations
        history = max(5, min(lbfgs_history, round(lbfgs_history * (start / side) ** 2)))
        out.append(Scale(side, its, history))
    return out
