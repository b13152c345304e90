"""Resizing images for the engine: to a long side, or to an exact size."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def long_side_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(height, width) scaled so the longer side is `long_side`, keeping aspect."""
    scale = long_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_long_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """Resize (C, H, W) or (N, C, H, W) so the longer side is `long_side`, keeping aspect."""
    batched = image.dim() == 4
    x = image if batched else image[None]
    h, w = x.shape[-2:]
    size = long_side_size(h, w, long_side)
    scale = long_side / max(h, w)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=scale < 1, align_corners=False)
        x = x.clamp(0.0, 1.0)
    return x if batched else x[0]


def resize_photo(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A decoded photo (3, H, W) at exactly `size`, as every photo enters a batch."""
    return F.interpolate(pixels[None], size=size, mode="bicubic", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def upsample(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One scale's result as the start of the next, finer one."""
    return F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)
