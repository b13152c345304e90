"""Print size on any device: a scale too large to optimise whole runs as overlapping tiles.

Each round cuts the image into tiles of one size on a grid that moves from round to
round, so that no boundary stays in one place (the shifted tiles sketched in
crowsonkb/style_transfer's issue 10). The tiles of a round are jobs for the ordinary
engine, with the photo's content under them and the painting's style targets sized to
the photo rather than the tile, each moved by the tile's difference from the whole
photo (engine/tilegrams.py), so that the tiles together give the whole photo the
painting's statistics. Their results are put back with weights that fall towards a
tile's edges, so neighbours cross-fade over their overlap.

L-BFGS keeps curvature pairs of one tile's pixels; when the grid moves, a tile holds
other pixels and those pairs no longer describe it, and keeping every tile's pairs
between rounds would hold memory in proportion to the photo. Each round therefore
starts its optimisers afresh, from the stitched image, and the scale's iterations are
shared among the rounds: a few long rounds rather than many short ones, since every
start spends its first iterations rebuilding curvature (see docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from nstd.engine import color, tilegrams, transfer
from nstd.engine.guides import blend_keep, fit, resample
from nstd.engine.resize import POOLED
from nstd.engine.session import Collect, Drop, Outcome, Verdict
from nstd.engine.switches import resolve
from nstd.engine.types import TransferJob, TransferResult

ROUNDS = 5  # grid positions per tiled scale...
LEAST_ROUND = 10  # ...of at least this many iterations: each round restarts L-BFGS
OVERLAP = 0.25  # of a tile's side, shared with each neighbour...
# ...up to this: what a tile's edge does to VGG's features reaches a fixed distance in
# pixels, not a share of the tile, and a print-size tile thousands of pixels wide would
# otherwise spend a third of its pixels on overlaps.
MOST_OVERLAP = 128
# Each tile's stitching weight is its distance from its own edge (over the overlap) to this
# power: above 1, the seam narrows to the middle of each overlap, where both tiles are
# farthest from their borders, rather than averaging two textures across all of it.
BLEND_POWER = 1.0
LEAST_SIDE = 4 * POOLED  # a tile smaller than this sees too little of the painting's texture


@dataclass(frozen=True)
class Tiling:
    side: int  # a tile's height and width
    overlap: int  # pixels a tile shares with its neighbour
    rounds: int  # grid positions
    per_batch: int  # tiles optimised at once

    def corners(self, h: int, w: int, round_: int) -> list[tuple[int, int]]:
        """The tiles' top-left corners at one round: every pixel covered, as many tiles
        every round, the inner boundaries moved from round to round."""
        return [(y, x) for y in self._starts(h, round_) for x in self._starts(w, round_)]

    def _starts(self, n: int, round_: int) -> list[int]:
        """Starts along an axis of n pixels: as few tiles as cover it, evenly spaced, the
        first at 0 and the last at the end; the inner ones shift together by up to the
        room their overlap leaves (down to half of it), a different shift each round.
        Clamping a shifted grid at both ends instead would add a row and a column of
        near-duplicate tiles. An axis of two tiles has no inner start, and its one
        boundary stays: a third tile to move it would cost half as much again."""
        side = self.side
        if side >= n:
            return [0]
        count = -(-(n - side) // (side - self.overlap)) + 1
        gap = (n - side) / (count - 1)
        room = max(0.0, side - self.overlap / 2 - gap)  # how far an inner start may move
        shift = 0.0 if self.rounds == 1 else room * (2 * round_ / (self.rounds - 1) - 1)
        starts = [0] + [round(i * gap + shift) for i in range(1, count - 1)] + [n - side]
        return sorted({min(max(p, 0), n - side) for p in starts})


Fits = Callable[[int, int, int], bool]  # whether `count` images of h x w fit the device at once


def plan(h: int, w: int, fits: Fits, rounds: int | None = None) -> Tiling | None:
    """How a scale of h x w runs: None where the whole image fits alone; else the largest
    square tile that fits, and as many of them at once as fit (at most a round's)."""
    if fits(h, w, 1):
        return None
    side = min(_largest(fits), max(h, w))
    if side < LEAST_SIDE:
        return None  # no useful tile fits: run whole, and out of memory says so
    overlap = max(POOLED, min(MOST_OVERLAP, int(side * OVERLAP)) // POOLED * POOLED)
    tiling = Tiling(side, overlap, rounds or ROUNDS, 1)  # ROUNDS read now: a benchmark may change it
    count = len(tiling.corners(h, w, 0))
    per_batch = max(n for n in range(1, count + 1) if n == 1 or fits(side, side, n))
    return replace(tiling, per_batch=per_batch)


def _largest(fits: Fits) -> int:
    """The largest square tile (a multiple of the pools' 16) that fits alone."""
    low, high = 0, 1 << 14
    while high - low > POOLED:
        mid = (low + high) // 2 // POOLED * POOLED
        low, high = (mid, high) if fits(mid, mid, 1) else (low, mid)
    return low


def feather(h: int, w: int, overlap: int) -> torch.Tensor:
    """(h, w) weights rising from the edges over the overlap: neighbours cross-fade."""
    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32) + 0.5
        return torch.clamp(torch.minimum(i, n - i) / max(overlap, 1), max=1.0)

    return (ramp(h)[:, None] * ramp(w)[None, :]) ** BLEND_POWER


class Round:
    """One round's tiles of one photo, as jobs for the engine and back into the image."""

    def __init__(self, job: TransferJob, image: torch.Tensor, tiling: Tiling, round_: int):
        self.job, self.image, self.tiling = job, image, tiling
        h, w = job.content.shape[-2:]
        self.corners = tiling.corners(h, w, round_)
        self.masks = [fit(r.mask, (h, w)) for r in job.regions]
        self.content_map = None if job.content_map is None else resample(job.content_map, (h, w))

    @property
    def shape(self) -> tuple[int, int]:
        """A tile's (height, width): the side, or the image's where it is narrower."""
        h, w = self.job.content.shape[-2:]
        return min(self.tiling.side, h), min(self.tiling.side, w)

    def jobs(self) -> list[TransferJob]:
        (th, tw), long_side = self.shape, max(self.job.content.shape[-2:])
        out = []
        for k, (y, x) in enumerate(self.corners):
            regions = tuple(replace(r, mask=m[y:y + th, x:x + tw]) for r, m in zip(self.job.regions, self.masks))
            cmap = None if self.content_map is None else self.content_map[y:y + th, x:x + tw]
            out.append(replace(self.job, content=self.job.content[:, y:y + th, x:x + tw],
                               init_image=self.image[:, y:y + th, x:x + tw], regions=regions, content_map=cmap,
                               preserve_color="none", style_side=long_side, style_window=self.tiling.side, id=k))
        return out

    def owners(self) -> list[torch.Tensor]:
        """Each tile's (h, w) share of the stitched image under it: the shares of a pixel
        sum to 1."""
        th, tw = self.shape
        weight = feather(th, tw, self.tiling.overlap)
        weights = torch.zeros(self.image.shape[-2:])
        for y, x in self.corners:
            weights[y:y + th, x:x + tw] += weight
        return [weight / weights[y:y + th, x:x + tw] for y, x in self.corners]

    def stitch(self, results: dict[int, TransferResult]) -> torch.Tensor:
        """The tiles' results put back, each weighted by its feather; pixels no tile
        finished (a cancel mid-round) keep the image as it was."""
        th, tw = self.shape
        weight = feather(th, tw, self.tiling.overlap)
        total = torch.zeros_like(self.image)
        weights = torch.zeros(self.image.shape[-2:])
        for k, (y, x) in enumerate(self.corners):
            if k in results:
                total[:, y:y + th, x:x + tw] += results[k].image * weight
                weights[y:y + th, x:x + tw] += weight
        covered = weights > 0
        out = self.image.clone()
        out[:, covered] = total[:, covered] / weights[covered]
        return out


class TileSession(Collect):
    """A round's tiles as a session: their results kept, and the photo's progress passed
    on to the caller's session as the scale's iterations. A round of `its` iterations
    runs its tiles a part at a time, so a part's iterations count for its share of the
    round's tiles, after the parts before it (see `part`)."""

    def __init__(self, outer, photo_id: int, offset: int):
        super().__init__()
        self.outer, self.photo_id, self.offset = outer, photo_id, offset
        self.share = 1.0
        self.dropped = False

    def part(self, offset: float, share: float) -> None:
        """The next part starts at scale iteration `offset` and is `share` of the round."""
        self.offset, self.share = offset, share

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        at = round(self.offset + iteration * self.share)
        answer = self.outer.progress(at, None if losses is None else [r | {"iteration": at} for r in losses])
        if isinstance(answer, Drop):
            if self.photo_id not in answer.ids:
                return Verdict.GO
            self.dropped = True
            return Verdict.STOP
        return answer


def prepared(job: TransferJob) -> TransferJob:
    """The photo as its tiles see it: colour preservation applied to the whole photo, so
    every tile's luminance is matched to the same statistics."""
    return color.prepare(job)


def finished(job: TransferJob, image: torch.Tensor, history: list[dict],
             snapshots: list[tuple[int, torch.Tensor]]) -> TransferResult:
    """The stitched image as the photo's result, and its snapshots: their colour and kept
    regions restored."""
    result = TransferResult(image.clamp(0, 1), history, snapshots)
    color.finish(job, result)
    result.image = blend_keep(job, result.image)
    result.snapshots = [(k, blend_keep(job, snap)) for k, snap in result.snapshots]
    return result


def snapshot_due(every: int, before: int, after: int) -> bool:
    """Whether a round that took the scale from iteration `before` to `after` passed a
    multiple of `every`: a tiled scale's snapshot is the stitched image at that round's
    end (its tiles, each in its own batch, take none)."""
    return every > 0 and after // every > before // every


def round_history(results: dict[int, TransferResult], start: int, round_: int) -> list[dict]:
    """A round's loss records for the photo: each logged iteration's losses averaged over
    the tiles (every tile logs at the same iterations), counted from `start`."""
    histories = [r.history for r in results.values()]
    if not histories:
        return []
    out = []
    for records in zip(*histories):
        first = records[0]
        rec = {k: sum(r[k] for r in records) / len(records) for k in ("total", "content", "style", "tv")}
        for part in ("style_by_layer", "style_by_region"):
            if part in first:
                rec[part] = {name: sum(r[part][name] for r in records) / len(records) for name in first[part]}
        out.append({"iteration": start + first["iteration"], **rec, "tiled": True, "round": round_})
    return out


def chunks(jobs: list[TransferJob], size: int) -> list[list[TransferJob]]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def start_image(job: TransferJob) -> torch.Tensor:
    """Where a tiled scale starts: the coarser scale's result, or the job's own start."""
    if job.init_image is not None:
        return job.init_image.float()
    if job.init == "content":
        return job.content.float().clone()
    if job.init == "noise":
        gen = torch.Generator().manual_seed(job.seed)
        return torch.rand(job.content.shape, generator=gen)
    style = job.styles[0].image.float()
    return torch.nn.functional.interpolate(style[None], size=tuple(job.content.shape[-2:]), mode="bicubic",
                                           align_corners=False)[0].clamp(0, 1)


@dataclass
class Tiled:
    """What a tiled scale gave: the photo's result, or why there is none."""

    result: TransferResult | None
    stopped: bool = False  # the caller's session said stop
    dropped: bool = False  # the photo was dropped (cancelled)


def run_scale(model, session, job: TransferJob, settings, cache, switches, free, tiling: Tiling,
              offset: int) -> Tiled:
    """One scale of one photo as rounds of tiles; progress reaches `session` counted from
    `offset`. The result's history has one record per logged iteration, averaged over
    the tiles and marked "tiled"."""
    whole = prepared(job)
    image = start_image(whole)
    resolved = resolve(switches, model.mean.device)
    tiling = replace(tiling, rounds=rounds_for(tiling.rounds, settings.iterations))
    per_round = max(1, settings.iterations // tiling.rounds)
    history: list[dict] = []
    snapshots: list[tuple[int, torch.Tensor]] = []
    runs = []
    done = offset
    for r in range(tiling.rounds):
        its = per_round if r < tiling.rounds - 1 else max(1, settings.iterations - per_round * r)
        rnd = Round(whole, image, tiling, r)
        tiles_session = TileSession(session, job.id, done)
        image = _round(model, tiles_session, rnd, replace(settings, iterations=its, snapshot_every=0), cache,
                       switches, free, resolved)
        if isinstance(image, Tiled):
            return image
        history += round_history(tiles_session.results, done, r)
        runs += [res.runs[-1] for res in tiles_session.results.values()]
        done += its
        if r < tiling.rounds - 1 and snapshot_due(settings.snapshot_every, done - its - offset, done - offset):
            snapshots.append((done - offset, image.clamp(0, 1).clone()))
    result = finished(job, image, history, snapshots)
    result.runs = [_summary(runs, tuple(job.content.shape[-2:]), done - offset, tiling)]
    return Tiled(result)


def rounds_for(rounds: int, iterations: int) -> int:
    """The rounds a tiled scale of `iterations` runs: no more than give each LEAST_ROUND."""
    return max(1, min(rounds, iterations // LEAST_ROUND))


def _round(model, session: TileSession, rnd: Round, settings, cache, switches, free,
           resolved) -> torch.Tensor | Tiled:
    """A round's tiles, as many at once as fit: the stitched image, or a Tiled where the
    caller's session stopped or dropped the photo."""
    start, count = session.offset, len(rnd.corners)
    names, per_batch = settings.style_names, rnd.tiling.per_batch
    jobs = rnd.jobs()
    photo = tilegrams.whole(model, jobs, rnd.owners(), names, resolved, per_batch)
    for part in chunks(jobs, per_batch):
        shares = tilegrams.offsets(model, part, photo, names, resolved)
        part = [replace(job, gram_offset=share) for job, share in zip(part, shares)]
        session.part(start + settings.iterations * len(session.results) / count, len(part) / count)
        outcome = transfer.run(model, session, part, settings, cache, switches, free)
        if session.dropped:
            return Tiled(None, dropped=True)
        if outcome is Outcome.STOPPED:
            return Tiled(None, stopped=True)
    return rnd.stitch(session.results)


def _summary(runs, size: tuple[int, int], iterations: int, tiling: Tiling):
    """The scale's one entry in the loss log's runs: its tiles' runs, summed."""
    first = runs[0]
    peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
    return replace(first, size=size, batch=1, iterations=iterations,
                   seconds=round(sum(r.seconds for r in runs) / max(1, tiling.per_batch), 3),
                   peak_bytes=max(peaks) if peaks else None, slot=0,
                   tiles={"side": tiling.side, "overlap": tiling.overlap, "rounds": tiling.rounds,
                          "at_once": tiling.per_batch})
