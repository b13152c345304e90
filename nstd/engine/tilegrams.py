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

from dataclasses import dataclass, replace

import torch

from nstd.engine.guides import at_layer, fit, pixel_guides
from nstd.engine.layers import feature_size
from nstd.engine.resize import pad, pool_padding
from nstd.engine.switches import Resolved, autocast
from nstd.engine.types import TransferJob
from nstd.engine.vgg import VGGFeatures


@dataclass
class _Sums:
    """One layer's weighted sums for a batch of tiles: the activations' outer products
    and the weights, per styled region, over each tile and as the stitch owns them."""

    tile: torch.Tensor  # (N, R, C, C)
    tile_weight: torch.Tensor  # (N, R)
    owned: torch.Tensor  # (N, R, C, C)
    owned_weight: torch.Tensor  # (N, R)


def offsets(model: VGGFeatures, tiles: list[TransferJob], owners: list[torch.Tensor], names: list[str],
            r: Resolved, per_batch: int) -> list[dict[str, torch.Tensor]]:
    """Per tile, per style layer, (R, C, C): each styled region's Gram in the tile now
    (its `init_image`) minus the whole photo's. `owners`: each tile's (h, w) share of the
    stitched image (the shares of a pixel sum to 1)."""
    parts = [_sums(model, tiles[i:i + per_batch], owners[i:i + per_batch], names, r)
             for i in range(0, len(tiles), per_batch)]
    whole = {}
    for n in names:
        products = sum(p[n].owned.sum(0) for p in parts)  # (R, C, C) over the photo
        weights = sum(p[n].owned_weight.sum(0) for p in parts)  # (R,)
        whole[n] = products / weights.clamp_min(1e-6)[:, None, None]
    return [{n: _offset(p[n].tile[k], p[n].tile_weight[k], whole[n]) for n in names}
            for p in parts for k in range(len(p[names[0]].tile))]


def _offset(tile: torch.Tensor, weight: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """A tile's Grams minus the whole's, per region; none where a region is not in it."""
    present = (weight > 1e-6)[:, None, None]
    return torch.where(present, tile / weight.clamp_min(1e-6)[:, None, None] - whole, torch.zeros_like(whole))


@torch.no_grad()
def _sums(model: VGGFeatures, tiles: list[TransferJob], owners: list[torch.Tensor], names: list[str],
          r: Resolved) -> dict[str, _Sums]:
    """Per layer, the sums of these same-size tiles, at each tile's pixels as its own
    objective sees them (mirrored out to the pools' multiple, as the engine pads a job)."""
    h, w = tiles[0].content.shape[-2:]
    margin = pool_padding(h, w)
    x = torch.stack([pad(t.init_image, margin) for t in tiles]).to(r.device, torch.float32)
    size = tuple(x.shape[-2:])
    padded = [t if not t.regions else _padded_regions(t, margin) for t in tiles]
    guides = pixel_guides(padded, size, r.device)  # (N, R, H, W)
    share = torch.stack([torch.nn.functional.pad(o, margin) for o in owners])[:, None].to(r.device)
    with autocast(r):
        feats = model(x, channels_last=r.channels_last)
    out = {}
    for n in names:
        at = feature_size(n, *size)
        g = at_layer(guides, at)
        both = torch.cat([g, g * at_layer(share, at)], 1)
        products = _weighted_products(feats[n], both)
        weights = both.flatten(2).sum(2)
        k = g.shape[1]
        out[n] = _Sums(products[:, :k], weights[:, :k], products[:, k:], weights[:, k:])
    return out


def _padded_regions(job: TransferJob, margin: tuple[int, int, int, int]) -> TransferJob:
    """The job's masks cut to its tile and mirrored out with it."""
    size = tuple(job.content.shape[-2:])
    return replace(job, regions=tuple(replace(g, mask=pad(fit(g.mask, size), margin)) for g in job.regions))


# Positions weighed at once: a print-size tile's first layer has tens of millions, and a
# weighted fp32 copy of all of them would cost as much as the tile's own optimisation.
SLICE = 1 << 18


def _weighted_products(features: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) activations, (N, K, H, W) weights -> (N, K, C, C): per weight map, the
    weighted sum of the activations' outer products, in fp32, a slice of positions at a
    time."""
    n, c, h, w = features.shape
    k = guides.shape[1]
    f = features.reshape(n, c, h * w)
    g = guides.reshape(n, k, 1, h * w)
    out = torch.zeros(n, k * c, c, device=features.device, dtype=torch.float32)
    for lo in range(0, h * w, SLICE):
        part = f[:, :, lo:lo + SLICE].float()
        weighted = (part[:, None] * g[..., lo:lo + SLICE]).reshape(n, k * c, -1)
        out += torch.bmm(weighted, part.transpose(1, 2))
    return out.reshape(n, k, c, c)
