"""Resizing images for the engine: to a long side, or to an exact size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nstd.engine.sizes import POOLED, long_side_size


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
    """One scale's result as the start of the next, finer one (or the same size, as is)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.clamp(0, 1)
    return F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def pool_padding(h: int, w: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) that make h x w divide evenly through VGG's pools.

    A pool drops the last row or column of an odd size, so without padding the last row
    and column get far less of the deep layers' gradient than the first ones, and stay
    sharp (benchmarks/edges.py). Split between both sides; none at a multiple of 16."""
    dh, dw = -h % POOLED, -w % POOLED
    return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2


def padded_size(h: int, w: int) -> tuple[int, int]:
    """The (height, width) h x w runs at once `pool_padding` has mirrored it out."""
    return h + -h % POOLED, w + -w % POOLED


def pad(image: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """(C, H, W) or (H, W) mirrored outward by `padding`, so the margin has the image's texture."""
    if not any(padding):
        return image
    x = image[None] if image.dim() == 3 else image[None, None]
    x = F.pad(x, padding, mode="reflect")
    return x[0] if image.dim() == 3 else x[0, 0]


def crop(image: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """The inverse of `pad`."""
    left, right, top, bottom = padding
    return image[..., top:image.shape[-2] - bottom, left:image.shape[-1] - right]
