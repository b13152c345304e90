"""What the optimisation aims at: content features and style Grams, with a Gram cache."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from nstd.engine.layers import LAYER_INDEX, LAYERS, halo
from nstd.engine.losses import gram
from nstd.engine.resize import POOLED, resize_long_side
from nstd.engine.sizes import least_long_side
from nstd.engine.types import StyleImage, TransferJob

Features = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class GramCache:
    """Style Gram targets by (style key, style size, model, pooling, layers), LRU-bounded."""

    def __init__(self, maxsize: int = 64):
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = compute()
        self._items[key] = value
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value


def content_targets(features: Features, content: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per layer, the (N, C, H, W) activations of the photos."""
    feats = features(content)
    return {n: feats[n].detach() for n in layers}


def style_targets(features: Features, device: torch.device, sets: list[tuple[StyleImage, ...]], names: list[str],
                  long_side: int, cache: GramCache, cache_key: tuple,
                  window: int | None = None) -> dict[str, torch.Tensor]:
    """Per layer, a (K, C, C) stack with one (weighted, blended) Gram target per style set.

    `cache_key` names what else shapes a Gram (model, pooling, layers, precision);
    `window`, the largest side a painting goes through the network at (see `painting_grams`)."""
    per_set = []
    for styles in sets:
        total_w = sum(s.weight for s in styles)
        blended: dict[str, torch.Tensor] = {}
        for style in styles:
            # Its share of the photo's size, but never so small that its short side
            # vanishes in VGG's pools (a wide painting at a small style_scale).
            size = max(least_long_side(*style.image.shape[-2:]), round(long_side * style.scale))

            def compute(style=style, size=size):
                image = resize_long_side(style.image.to(device, torch.float32), size)
                return painting_grams(features, image, names, window)

            grams = cache.get((style.key, size) + cache_key, compute) if style.key is not None else compute()
            # A weighted mean of Grams has the same gradient as the weighted sum of the
            # per-style losses, so a blend costs no more than one style.
            for n in names:
                part = grams[n] * (style.weight / total_w)
                blended[n] = part if n not in blended else blended[n] + part
        per_set.append(blended)
    return {n: torch.stack([b[n] for b in per_set]) for n in names}


def painting_grams(features: Features, image: torch.Tensor, names: list[str],
                   window: int | None) -> dict[str, torch.Tensor]:
    """The Grams of a (3, h, w) image. Where it is larger than `window`, it goes through the
    network a window at a time (a tiled photo's painting is sized to the whole photo, and
    whole it would need more than a tile): each window's core, with the context its
    deepest layer sees (layers.halo), gives its positions' outer products, summed over the
    cores, which share the image out exactly."""
    h, w = image.shape[-2:]
    if window is None or max(h, w) <= window:
        f = features(image[None])
        return {n: gram(f[n])[0] for n in names}
    margin = halo(names)
    core = max(POOLED, (window - 2 * margin) // POOLED * POOLED)
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    for y0 in range(0, h, core):
        for x0 in range(0, w, core):
            y1, x1, wy, wx = min(y0 + core, h), min(x0 + core, w), max(0, y0 - margin), max(0, x0 - margin)
            f = features(image[None, :, wy:min(h, y1 + margin), wx:min(w, x1 + margin)])
            for n in names:
                stride = LAYERS[LAYER_INDEX[n]].scale  # window and core edges are its multiples
                part = f[n][0, :, (y0 - wy) // stride:(y1 - wy) // stride, (x0 - wx) // stride:(x1 - wx) // stride]
                part = part.float().reshape(part.shape[0], -1)
                sums[n] = part @ part.T + sums.get(n, 0)
                counts[n] += part.shape[1]
    return {n: sums[n] / max(counts[n], 1) for n in names}


def region_targets(jobs: list[TransferJob], targets: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Targets of `style_sets(jobs)` laid out as (N, count, C, C), zeros where a job has
    fewer styled regions than the batch's most."""
    out = {}
    for n, stacked in targets.items():
        c = stacked.shape[-1]
        grid = stacked.new_zeros(len(jobs), count, c, c)
        k = 0
        for i, job in enumerate(jobs):
            m = max(len(job.styled_regions), 1)
            grid[i, :m] = stacked[k:k + m]
            k += m
        out[n] = grid
    return out


def style_sets(jobs: list[TransferJob]) -> list[tuple[StyleImage, ...]]:
    """Each job's styles, or each styled region's, in order: what the targets are made of."""
    return [s for j in jobs for s in ([r.styles for r in j.styled_regions] if j.regions else [j.styles])]
