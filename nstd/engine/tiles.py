"""Print size on any device: a scale too large to optimise whole, a tile at a time.

The photo keeps one optimiser over all of its pixels, and its objective is the whole
photo's, exactly as an untiled run has it: the painting's Grams against the whole photo's
Grams, the photo's features, total variation. Only the network's passes are cut up. Each
tile is a window of the photo that answers for its core, the positions it owns, and
reads `halo` pixels of context around it, so that the core's activations are the ones
the whole image would give. One pass of the tiles sums the whole photo's Grams; a
second pass hands each tile the gradient of the whole objective at its core's
activations (the Gram's gradient is (G - A) f at each position, once G is known), and
its backward pass gives the photo's gradient there. Then one optimiser step moves the
whole photo.

So nothing is stitched and nothing is seen by one tile only: the tiles' edges are where
the passes were cut, not where the picture was. L-BFGS keeps its curvature pairs over
the whole photo, as it would untiled; at the finest scales its history is a few pairs
(engine/sizes.py), and where that does not fit the device beside the tiles it is kept in
host memory. The price is one more forward pass of the network per iteration, without a
gradient and so in larger windows (the reads), and each tile's halo passed twice
(docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch

from nstd.engine import color, transfer
from nstd.engine.checks import check_batch
from nstd.engine.device import PeakMemory
from nstd.engine.guides import SLICE, at_layer, content_maps, pixel_guides, weighted_products
from nstd.engine.layers import LAYER_INDEX, LAYERS, feature_size
from nstd.engine.loop import optimise
from nstd.engine.losses import tv_loss
from nstd.engine.memory import TILE, Footprint, batch_bytes, photo_state_bytes, regions_of
from nstd.engine.objective import mean_square
from nstd.engine.optim import make_optimizer
from nstd.engine.resize import POOLED, padded_size, pool_padding
from nstd.engine.session import Outcome
from nstd.engine.switches import Switches, resolve, running
from nstd.engine.targets import GramCache, region_targets, style_sets, style_targets
from nstd.engine.types import BatchSettings, TransferJob

LEAST_SIDE = 4 * POOLED  # no tile is smaller; nor is its core smaller than its halo


def least_side(halo: int) -> int:
    return max(LEAST_SIDE, 3 * halo)


@dataclass(frozen=True)
class Tiling:
    """How a scale runs tiled, as the planner chose: the largest square that fits, and how
    many of the tiles go through the network at once."""

    side: int  # the planner's largest tile; a tile's window is at most this on each side
    per_batch: int  # tiles through the network at once
    # Context around each core: layers.halo, so that the core's activations are exactly the
    # whole image's. Less is no cheap approximation: the optimiser's curvature pairs are
    # gradients a hundredth apart, and a halo short of relu5_1's reach changes them by a
    # tenth (docs/performance.md), which sends L-BFGS's second step far uphill.
    halo: int
    state_on_device: bool = True  # the photo, its gradient and its optimiser; else host memory
    # The passes without a gradient (the photo's Grams and content, the painting's Grams)
    # keep nothing for a backward pass: in the memory a batch of tiles takes, their windows
    # are larger, a whole photo where it fits, and fewer halos are passed. 0: the tiles' side.
    read_side: int = 0
    # Whether the tiles' passes recompute VGG's blocks: None, as the switches and the
    # memory decide; else the plan's choice (`cheaper`).
    checkpoint: bool | None = None

    def reads(self) -> "Tiling":
        """The tiling of the passes without a gradient: a window at a time."""
        return replace(self, side=max(self.side, self.read_side), per_batch=1)


@dataclass(frozen=True)
class Tile:
    """A window of the (padded) photo and the core it answers for, in photo pixels; every
    edge a multiple of 16, so the window's activations line up with the photo's."""

    top: int
    left: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1

    def cells(self, stride: int) -> tuple[slice, slice]:
        """The core's positions in the window's activations at `stride`."""
        y0, y1, x0, x1 = self.core
        return (slice((y0 - self.top) // stride, (y1 - self.top) // stride),
                slice((x0 - self.left) // stride, (x1 - self.left) // stride))

    def photo_cells(self, stride: int) -> tuple[slice, slice]:
        """The core's positions in the whole photo's activations at `stride`."""
        y0, y1, x0, x1 = self.core
        return slice(y0 // stride, y1 // stride), slice(x0 // stride, x1 // stride)


def _axis(n: int, side: int, halo: int) -> tuple[int, list[tuple[int, int]]]:
    """An axis of n px (a multiple of 16) cut for windows of at most `side`: the window's
    length, and the cores, which share the axis out. Inner cores are the window less
    a halo each side; the two outer ones reach the photo's edge and need one halo only."""
    if n <= side:
        return n, [(0, n)]
    count = 2
    while _round_up(-(-(n - 2 * halo) // count)) + 2 * halo > side:
        count += 1
    core = _round_up(-(-(n - 2 * halo) // count))
    window = min(n, core + 2 * halo)
    bounds = [0] + [min(n, core + halo + i * core) for i in range(count - 1)] + [n]
    return window, [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _round_up(v: int) -> int:
    return max(POOLED, -(-v // POOLED) * POOLED)


def grid(h: int, w: int, tiling: Tiling) -> tuple[tuple[int, int], list[Tile]]:
    """The window size and the tiles of an h x w photo (multiples of 16): the cores cover
    it exactly once, each window holds its core with the halo around it where the photo
    goes on."""
    if tiling.side < least_side(tiling.halo):
        raise ValueError(f"a tile of {tiling.side} px has too little room inside its {tiling.halo} px halo")
    wh, rows = _axis(h, tiling.side, tiling.halo)
    ww, cols = _axis(w, tiling.side, tiling.halo)
    return (wh, ww), [Tile(min(max(0, y0 - tiling.halo), h - wh), min(max(0, x0 - tiling.halo), w - ww),
                           (y0, y1, x0, x1)) for y0, y1 in rows for x0, x1 in cols]


# fits(h, w, count, reserved=0, tile=False): whether `count` images of h x w fit the device at
# once beside `reserved` bytes: whole images, or tiles (whose optimiser state is the photo's).
Fits = Callable[..., bool]


def plan(h: int, w: int, fits: Fits, halo: int, state: int = 0, room: int | None = None,
         offload: bool = False, read_scale: float = 1.0) -> Tiling | None:
    """How a scale of h x w runs: None where the whole image fits alone; else the largest
    square tile that fits, and as many tiles at once as fit (at most the photo's); and
    the reads' windows, `read_scale` times the pixels of a batch of tiles
    (memory.read_scale), so that they take no more than it.

    The photo's own state (`state` bytes) takes its share of the device's `room`, and the
    tiles the rest; with `offload` (a device beside host memory) it goes to host memory
    instead where it would take more than a quarter of the room, as a print-size photo's
    does, so that the tiles stay large: every tile's halo is passed again; and there as
    well where beside it no useful tile would fit."""
    if fits(h, w, 1):
        return None
    on_device = not offload or (room is not None and 4 * state <= room)
    side = _side(h, w, fits, state if on_device else 0)
    if on_device and offload and side < least_side(halo):
        on_device, side = False, _side(h, w, fits, 0)
    if side < least_side(halo):
        return None  # no useful tile fits: run whole, and out of memory says so
    tiling = Tiling(side, 1, halo, on_device)
    ph, pw = padded_size(h, w)
    (wh, ww), tiles_ = grid(ph, pw, tiling)
    reserved = state if on_device else 0
    per_batch = max(n for n in range(1, len(tiles_) + 1) if n == 1 or fits(wh, ww, n, reserved, tile=True))
    budget = read_scale * per_batch * wh * ww  # the reads' pixels at once
    read_side = max(ph, pw) if ph * pw <= budget else min(max(math.isqrt(int(budget)) // POOLED * POOLED, side),
                                                          max(ph, pw))
    return replace(tiling, per_batch=per_batch, read_side=read_side)


def passes(h: int, w: int, tiling: Tiling, checkpoint: bool) -> float:
    """A tiled iteration's work, in passes of the whole photo through the network: the
    reads', and the tiles' forward and backward passes (a backward pass without the
    weights' gradients costs about a forward one), with a forward pass more where their
    blocks are recomputed."""
    size = padded_size(h, w)
    (wh, ww), tiles_ = grid(*size, tiling)
    (rh, rw), reads = grid(*size, tiling.reads())
    return (len(reads) * rh * rw + (3 if checkpoint else 2) * len(tiles_) * wh * ww) / (size[0] * size[1])


def cheaper(h: int, w: int, plans: dict[bool, Tiling | None]) -> Tiling | None:
    """Of the plans with and without recomputing the blocks, the one that passes the
    network least: recomputing buys larger tiles, and so fewer halos, for a third more
    work; at print size the halos are the cheaper (docs/performance.md)."""
    found = {checkpoint: replace(t, checkpoint=checkpoint) for checkpoint, t in plans.items() if t is not None}
    if not found:
        return None
    return min(found.values(), key=lambda t: passes(h, w, t, bool(t.checkpoint)))


def _side(h: int, w: int, fits: Fits, reserved: int) -> int:
    """The largest square tile that fits beside `reserved` bytes, no larger than the photo."""
    return min(_largest(lambda th, tw, n: fits(th, tw, n, reserved, tile=True)), _round_up(max(h, w)))


def _largest(fits: Fits) -> int:
    """The largest square tile (a multiple of the pools' 16) that fits alone."""
    low, high = 0, 1 << 14
    while high - low > POOLED:
        mid = (low + high) // 2 // POOLED * POOLED
        low, high = (mid, high) if fits(mid, mid, 1) else (low, mid)
    return low


def _stride(name: str) -> int:
    return LAYERS[LAYER_INDEX[name]].scale


class Photo:
    """One photo's whole objective, evaluated a tile at a time.

    `job` is the photo as the engine runs it (colour prepared, mirrored out to a multiple
    of 16); `features(x)` runs the network on a batch of windows on the compute device;
    `home` is where the photo's state lives. The loss row is an untiled batch's: total,
    content, style, tv, each style layer, then each styled region's style loss."""

    def __init__(self, job: TransferJob, features, settings: BatchSettings, tiling: Tiling, compute: torch.device,
                 home: torch.device, style: dict[str, torch.Tensor]):
        self.features, self.compute, self.home = features, compute, home
        self.names, self.content_layers = settings.style_names, settings.content_layers
        self.layer_weights = [w for _, w in settings.style_layers]
        self.weights = (job.content_weight, job.style_weight, job.tv_weight)
        self.size = tuple(job.content.shape[-2:])
        self.window, self.tiles = grid(*self.size, tiling)
        self.per_batch = tiling.per_batch
        self.read_window, self.reads = grid(*self.size, tiling.reads())
        self.regions = bool(job.regions)
        guides = pixel_guides([job], self.size, home)[0] if self.regions else None  # (R, H, W)
        self.guides = {n: None if guides is None else at_layer(guides, self._cells(n)) for n in self.names}
        self.area = torch.ones(1, device=compute) if guides is None else guides.flatten(1).mean(1).to(compute)
        self.count = {n: (torch.full((1,), float(self._cells(n)[0] * self._cells(n)[1]), device=compute)
                          if guides is None else self.guides[n].flatten(1).sum(1).clamp_min(1e-6).to(compute))
                      for n in self.names}
        self.targets = style  # per layer (R, C, C)
        self.style_norm = {n: mean_square(t) for n, t in style.items()}
        maps = content_maps([job], self.size, home)
        self.content_weights = {n: None if maps is None else at_layer(maps, self._cells(n))[0, 0]
                                for n in self.content_layers}
        self.content = self._content_features(job.content)
        self.content_norm = {n: (torch.linalg.vector_norm(t, dtype=torch.float32) ** 2 / t.numel()).clamp_min(1e-12)
                             .to(compute) for n, t in self.content.items()}

    def _cells(self, name: str) -> tuple[int, int]:
        return feature_size(name, *self.size)

    def _batches(self) -> list[list[Tile]]:
        return [self.tiles[i:i + self.per_batch] for i in range(0, len(self.tiles), self.per_batch)]

    def _windows(self, image: torch.Tensor, tiles: list[Tile], window: tuple[int, int]) -> torch.Tensor:
        wh, ww = window
        return torch.stack([image[:, t.top:t.top + wh, t.left:t.left + ww] for t in tiles]).to(
            self.compute, torch.float32)

    @torch.no_grad()
    def _passes(self, image: torch.Tensor):
        """Each read of `image`, as a batch of one window, with its activations: no gradient."""
        for read in self.reads:
            yield [read], self.features(self._windows(image, [read], self.read_window))

    @torch.no_grad()
    def _content_features(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """The photo's activations at the content layers, assembled from the tiles' cores."""
        out: dict[str, torch.Tensor] = {}
        for tiles, feats in self._passes(content):
            for n in self.content_layers:
                f = feats[n]
                if n not in out:
                    out[n] = torch.empty(f.shape[1], *self._cells(n), dtype=f.dtype, device=self.home)
                for k, t in enumerate(tiles):
                    out[n][(slice(None),) + t.photo_cells(_stride(n))] = f[k][(slice(None),) + t.cells(_stride(n))]
        return out

    @torch.no_grad()
    def _grams(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per style layer, (R, C, C): each styled region's Gram over the whole photo."""
        sums: dict[str, torch.Tensor] = {}
        for tiles, feats in self._passes(image):
            for n in self.names:
                for k, t in enumerate(tiles):
                    core = feats[n][k:k + 1][(slice(None), slice(None)) + t.cells(_stride(n))]
                    if self.regions:
                        part = weighted_products(core, self._guide(n, t))[0]
                    else:
                        f = core[0].reshape(core.shape[1], -1).float()
                        part = (f @ f.T)[None]
                    sums[n] = part + sums.get(n, 0)
        return {n: sums[n] / self.count[n][:, None, None] for n in self.names}

    def _guide(self, name: str, tile: Tile) -> torch.Tensor:
        """(1, R, h, w): the regions' weights over a tile's core at a layer (ones: no regions)."""
        cy, cx = tile.photo_cells(_stride(name))
        if self.guides[name] is None:
            return torch.ones(1, 1, cy.stop - cy.start, cx.stop - cx.start, device=self.compute)
        return self.guides[name][None, :, cy, cx].to(self.compute)

    def evaluate(self, x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole objective at x (1, 3, H, W), a leaf on `home`: its total (1,) and loss
        row (1, columns); with `grad`, x.grad holds its gradient."""
        cw, sw, tw = self.weights
        grams = self._grams(x.detach()[0])
        per_region = {n: (grams[n] - self.targets[n]).pow(2).flatten(1).mean(1) / self.style_norm[n]
                      for n in self.names}  # (R,) each
        by_layer = torch.stack([(per_region[n] * self.area).sum() for n in self.names])
        style = (by_layer * torch.tensor(self.layer_weights, device=self.compute)).sum()
        content = torch.zeros((), device=self.compute)
        if grad:
            x.grad = torch.zeros_like(x)
        pull = self._pull(grams)
        for tiles in self._batches():
            content = content + self._tiles(x, tiles, pull, cw, grad)
        with torch.set_grad_enabled(grad):
            tv = tv_loss(x)
            if grad:
                (tw * tv).sum().backward()
        tv = tv.detach().to(self.compute)[0]
        total = cw * content + sw * style + tw * tv
        regions = [sum(lw * per_region[n] for n, lw in zip(self.names, self.layer_weights))] if self.regions else []
        row = torch.cat([torch.stack([total, content, style, tv]), by_layer] + regions)
        return total.reshape(1).to(self.home), row[None]

    def _pull(self, grams: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per style layer, (R, C, C): the total's derivative by each region's Gram, over
        the region's weight. A position's activations f, weighed g in a region, take
        2 g D f of the gradient from it (see `_gradients`)."""
        sw = self.weights[1]
        out = {}
        for n, lw in zip(self.names, self.layer_weights):
            scale = sw * lw * 2 / grams[n].shape[-1] ** 2 * self.area / self.count[n] / self.style_norm[n]
            out[n] = scale[:, None, None] * (grams[n] - self.targets[n])
        return out

    def _tiles(self, x: torch.Tensor, tiles: list[Tile], pull: dict[str, torch.Tensor], cw: float,
               grad: bool) -> torch.Tensor:
        """One batch of tiles: their share of the content loss; with `grad`, their share of
        the photo's gradient added to x.grad."""
        windows = self._windows(x.detach()[0], tiles, self.window).requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            feats = self.features(windows)
        content, grads = self._gradients(feats, tiles, pull, cw, grad)
        if grad:
            names = list(grads)
            torch.autograd.backward([feats[n] for n in names], [grads[n] for n in names])
            wh, ww = self.window
            with torch.no_grad():
                for k, t in enumerate(tiles):
                    x.grad[0, :, t.top:t.top + wh, t.left:t.left + ww] += windows.grad[k].to(self.home)
        return content

    @torch.no_grad()
    def _gradients(self, feats: dict[str, torch.Tensor], tiles: list[Tile], pull: dict[str, torch.Tensor],
                   cw: float, grad: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tiles' content loss, and the whole objective's gradient at their activations
        (in their dtype), zero outside each core: another tile answers for those positions."""
        content = torch.zeros((), device=self.compute)
        grads = {n: torch.zeros_like(feats[n]) for n in dict.fromkeys(self.content_layers + tuple(self.names))} \
            if grad else {}
        for n in self.content_layers:
            for k, t in enumerate(tiles):
                content = content + self._content(n, feats[n][k], t, cw, grads[n][k] if grad else None)
        for n in self.names if grad else ():
            for k, t in enumerate(tiles):
                self._style(n, feats[n][k], t, pull[n], grads[n][k])
        return content, grads

    def _content(self, name: str, f: torch.Tensor, tile: Tile, cw: float, out: torch.Tensor | None) -> torch.Tensor:
        """One tile's content loss at a layer; its gradient added to `out` (C, h, w) where given."""
        s, target, norm = _stride(name), self.content[name], self.content_norm[name]
        (cy, cx), (py, px) = tile.cells(s), tile.photo_cells(s)
        diff = f[:, cy, cx].float() - target[:, py, px].to(self.compute).float()
        weight = None if self.content_weights[name] is None else self.content_weights[name][py, px].to(self.compute)
        weighted = diff if weight is None else diff * weight
        if out is not None:
            out[:, cy, cx] += ((2 * cw / (target.numel() * norm)) * weighted).to(out.dtype)
        return (weighted * diff).sum() / (target.numel() * norm)

    def _style(self, name: str, f: torch.Tensor, tile: Tile, pull: torch.Tensor, out: torch.Tensor) -> None:
        """One tile's style gradient at a layer, 2 g D f at each core position, added to `out`
        (C, h, w): in fp32 a few rows at a time, so no fp32 copy of a whole layer is made."""
        cy, cx = tile.cells(_stride(name))
        core, target = f[:, cy, cx], out[:, cy, cx]
        c, h, w = core.shape
        guide = self._guide(name, tile)[0] if self.regions else None  # (R, h, w)
        rows = max(1, SLICE // max(w, 1))
        for r0 in range(0, h, rows):
            part = core[:, r0:r0 + rows].float().reshape(c, -1)
            pushed = torch.einsum("rij,jp->rip", pull, part)  # (R, C, positions)
            if guide is not None:
                pushed = pushed * guide[:, None, r0:r0 + rows].reshape(guide.shape[0], 1, -1)
            target[:, r0:r0 + rows] += (2 * pushed.sum(0)).reshape(c, -1, w).to(target.dtype)


def style_grams(model, features, job: TransferJob, long_side: int, settings: BatchSettings, cache: GramCache, r,
                tiling: Tiling) -> dict[str, torch.Tensor]:
    """Per style layer, (R, C, C): each styled region's painting Gram at the size of a
    photo of `long_side`, the painting passed a tile-sized window at a time where it is
    larger."""
    names = settings.style_names
    grams = style_targets(features, r.device, style_sets([job]), names, long_side, cache,
                          (model.model_id, model.pooling, tuple(names), r.precision), tiling.reads().side)
    count = max(len(job.styled_regions), 1) if job.regions else 1
    return {n: t[0] for n, t in region_targets([job], grams, count).items()}


class _Whole:
    """The photo as the loop's batch of one image: each iteration the whole objective's
    gradient, tile by tile, and one step of the photo's optimiser."""

    size = 1

    def __init__(self, photo: Photo, x: torch.Tensor, opt):
        self.photo, self.x, self.opt = photo, x, opt

    def iteration(self) -> torch.Tensor:
        total, row = self.photo.evaluate(self.x, grad=True)
        self.opt.step(total)
        return row

    def pixels(self) -> torch.Tensor:
        return self.x.detach()

    def rows_now(self, slots: list[int]) -> list[torch.Tensor]:
        return [self.photo.evaluate(self.x, grad=False)[1][0]]

    def park(self, slots: list[int]) -> bool:
        return False


def run(model, session, job: TransferJob, settings: BatchSettings, cache: GramCache, switches, free,
        tiling: Tiling) -> Outcome:
    """One photo's scale, tiled: its result reaches `session` as any batch's does, its
    history marked "tiled" and its run describing the tiles."""
    check_batch(model, [job], settings)
    h, w = job.content.shape[-2:]
    margin, size = pool_padding(h, w), padded_size(h, w)
    (wh, ww), tiles_ = grid(*size, tiling)
    read_window, reads = grid(*size, tiling.reads())
    fp = Footprint(settings.layers, settings.optimizer, settings.lbfgs_history,
                   history_precision=(switches or Switches()).history_precision, regions=regions_of([job]))

    def need(precision: str, checkpoint: bool) -> int:
        return batch_bytes(tiling.per_batch, wh, ww, replace(fp, optimizer=TILE, precision=precision,
                                                             checkpoint=checkpoint))

    room = None if free is None else free()
    if room is not None and tiling.state_on_device:
        room -= photo_state_bytes(*size, fp, settings.content_layers)
    # Host loops between the passes: no graph to capture, nothing to compile.
    if tiling.checkpoint is not None:
        switches = replace(switches or Switches(), checkpoint=tiling.checkpoint)
    r = replace(resolve(switches, model.mean.device, need, room), cuda_graph=False, compile=False)
    peak = PeakMemory(r.device)
    home = r.device if tiling.state_on_device else torch.device("cpu")
    described = {"side": tiling.side, "window": [wh, ww], "halo": tiling.halo, "tiles": len(tiles_),
                 "at_once": tiling.per_batch, "state": "device" if home == r.device else "host",
                 "read_window": list(read_window), "reads": len(reads)}
    with running(r):
        if r.channels_last:
            model.to(memory_format=torch.channels_last)
        ready = transfer.padded(color.prepare(job), margin)  # colour matched over the whole photo
        features = partial(transfer.activations, model, r=r)
        with torch.no_grad():
            photo = Photo(ready, features, settings, tiling, r.device, home,
                          style_grams(model, features, ready, max(h, w), settings, cache, r, tiling))
        x = transfer.starts([ready], ready.content[None].to(home, torch.float32)).requires_grad_(True)
        opt = make_optimizer(settings.optimizer, x, settings.lr, settings.lbfgs_history, r.history_dtype)
        fitting = transfer.Fitting(model, features, settings, cache, r, margin, 1, peak, tiles=described)
        batch = _Whole(photo, x, opt)
        return optimise(batch, settings, False, transfer.Occupants(session, batch, [job], fitting, refill=False))
