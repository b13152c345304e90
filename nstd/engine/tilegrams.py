"""A tiled photo's style statistics: the whole image's Grams, and each tile's offset from them.

A tile optimised against the painting's Grams alone must hold every texture of the
painting by itself: a tile of sky is pushed to grow the village's statistics too, and
the stitched photo scores worse than its tiles did (docs/performance.md). The whole
photo's Gram is the mean of its tiles' Grams, each position weighted by the share of it
its tile owns in the stitch. So each tile aims at the painting's Gram plus its own
present difference from the whole: the tiles together move the whole to the painting's
statistics, while each keeps what sets it apart, and at a round's start a tile's style
gradient is the whole photo's.
"""

from __future__ import annotations

import torch

from nstd.engine import transfer
from nstd.engine.guides import at_layer, pixel_guides, weighted_products
from nstd.engine.layers import feature_size
from nstd.engine.resize import pool_padding
from nstd.engine.switches import Resolved, autocast
from nstd.engine.types import TransferJob
from nstd.engine.vgg import VGGFeatures


def whole(model: VGGFeatures, tiles: list[TransferJob], owners: list[torch.Tensor], names: list[str],
          r: Resolved, per_batch: int) -> dict[str, torch.Tensor]:
    """Per style layer, (R, C, C): each styled region's Gram over the whole photo now (the
    tiles' `init_image`), each pixel weighted by its tile's share of it in the stitch
    (`owners`: each tile's (h, w) share; the shares of a pixel sum to 1). One pass over the
    tiles, `per_batch` at a time, keeping only running sums."""
    products: dict[str, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    for i in range(0, len(tiles), per_batch):
        share = owners[i:i + per_batch]
        for n, (p, w) in _sums(model, tiles[i:i + per_batch], names, r, share).items():
            products[n] = p.sum(0) + products.get(n, 0)
            weights[n] = w.sum(0) + weights.get(n, 0)
    return {n: products[n] / weights[n].clamp_min(1e-6)[:, None, None] for n in names}


def offsets(model: VGGFeatures, tiles: list[TransferJob], whole_: dict[str, torch.Tensor], names: list[str],
            r: Resolved) -> list[dict[str, torch.Tensor]]:
    """Per tile of these same-size tiles, per style layer, (R, C, C): each styled region's
    Gram in the tile now minus the whole photo's (`whole`). Taken just before the tiles
    run, a batch at a time: a Gram offset is megabytes, and a photo has hundreds of tiles."""
    sums = _sums(model, tiles, names, r)
    return [{n: _offset(sums[n][0][k], sums[n][1][k], whole_[n]) for n in names} for k in range(len(tiles))]


def _offset(tile: torch.Tensor, weight: torch.Tensor, whole_: torch.Tensor) -> torch.Tensor:
    """A tile's Grams minus the whole's, per region; none where a region is not in it."""
    present = (weight > 1e-6)[:, None, None]
    return torch.where(present, tile / weight.clamp_min(1e-6)[:, None, None] - whole_, torch.zeros_like(whole_))


@torch.no_grad()
def _sums(model: VGGFeatures, tiles: list[TransferJob], names: list[str], r: Resolved,
          owners: list[torch.Tensor] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, for these same-size tiles: each styled region's weighted sum of the
    activations' outer products (N, R, C, C) and of its weights (N, R), over the tile, or
    as the stitch owns it where `owners` are given; at each tile's pixels as its own
    objective sees them (mirrored out to the pools' multiple, as the engine pads a job)."""
    h, w = tiles[0].content.shape[-2:]
    margin = pool_padding(h, w)
    padded = [transfer.padded(t, margin) for t in tiles]
    x = torch.stack([t.init_image for t in padded]).to(r.device, torch.float32)
    size = tuple(x.shape[-2:])
    guides = pixel_guides(padded, size, r.device)  # (N, R, H, W)
    if owners is not None:
        guides = guides * torch.stack([torch.nn.functional.pad(o, margin) for o in owners])[:, None].to(r.device)
    with autocast(r):
        feats = model(x, channels_last=r.channels_last)
    out = {}
    for n in names:
        g = at_layer(guides, feature_size(n, *size))
        out[n] = (weighted_products(feats[n], g), g.flatten(2).sum(2))
    return out
