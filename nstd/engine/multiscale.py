"""Coarse to fine: optimise small, upsample the result as the next scale's start.

The style's texture is set where VGG's receptive fields see it at the scale the
painting was made for; each finer scale then adds detail in far fewer iterations.
Every scale is an ordinary batch, so same-size jobs stay batched throughout, and each
scale's style targets are computed at that scale.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from nstd.engine.switches import Switches
from nstd.engine.layers import halo
from nstd.engine.sizes import Scale
from nstd.engine.targets import GramCache
from nstd.engine import tiles, transfer
from nstd.engine.memory import TILE, Footprint, batch_bytes, photo_state_bytes, read_scale, regions_of
from nstd.engine.resize import long_side_size, padded_size, resize_long_side, upsample
from nstd.engine.switches import resolve
from nstd.engine.session import Collect, Drop, Outcome, Session, Verdict
from nstd.engine.types import BatchSettings, Progress, RunStats, TransferJob, TransferResult
from nstd.engine.vgg import VGGFeatures


def run_scales(model: VGGFeatures, jobs: list[TransferJob], scales: list[Scale], settings: BatchSettings,
               cache: GramCache | None = None, progress: Progress | None = None,
               switches: Switches | None = None, free: Callable[[], int | None] | None = None) -> list[TransferResult]:
    """Every scale run to its end, the results in the order of `jobs` (see `run`)."""
    session = Collect(on_progress=progress)
    run(model, session, [replace(j, id=i) for i, j in enumerate(jobs)], scales, settings, cache, switches, free)
    return [session.results[i] for i in range(len(jobs))]


def run(model: VGGFeatures, session: Session, jobs: list[TransferJob], scales: list[Scale],
        settings: BatchSettings, cache: GramCache | None = None, switches: Switches | None = None,
        free: Callable[[], int | None] | None = None, measured: Measured | None = None) -> Outcome:
    """Run every scale of `scales` on same-size jobs (contents at any one size).

    Histories run on across scales: each record gains a "scale" (its long side) and
    iterations count from the first scale's start. Progress counts the same way. Each
    result's `runs` has one entry per scale. A newcomer cannot join a schedule half done,
    so several scales take none, and each result reaches the session after the last scale.
    """
    cache = cache if cache is not None else GramCache()
    tilings = [_tiling(model, jobs, scale, settings, switches, free, measured) for scale in scales]
    if len(scales) == 1 and tilings[0] is None:
        scale = scales[0]
        return transfer.run(model, _OneScale(session, scale), _sized(jobs, scale), _settings(settings, scale),
                            cache, _at(switches, scale), free)
    return _scales(model, session, jobs, list(zip(scales, tilings)), settings, cache, switches, free)


# The peak an image of h x w of a footprint was measured to take (MemoryPlanner's), or None.
Measured = Callable[[Footprint, int, int], "int | None"]


def _tiling(model: VGGFeatures, jobs: list[TransferJob], scale: Scale, settings: BatchSettings,
            switches: Switches | None, free: Callable[[], int | None] | None,
            measured: Measured | None = None) -> tiles.Tiling | None:
    """How a scale's images run where even one does not fit the memory the device (or
    worker.max_memory) leaves: as tiles; None where they run whole, or nothing is known.
    An image's need is its measured peak where batches of its kind have run, else the
    estimate."""
    room = None if free is None else free()
    if room is None:
        return None
    s = _at(switches, scale) or Switches()
    h, w = long_side_size(*jobs[0].content.shape[-2:], scale.long_side)
    # The whole image may recompute its blocks before it tiles; the tiles, as is cheaper.
    whole = _footprint(settings, scale, s, model, jobs, checkpoint=s.checkpoint is not False)
    choices = [s.checkpoint] if s.checkpoint is not None else [False, True]
    plans = {c: _plan(h, w, whole, replace(whole, checkpoint=c), settings, s, room, model, measured) for c in choices}
    return tiles.cheaper(h, w, plans)


def _footprint(settings: BatchSettings, scale: Scale, s: Switches, model: VGGFeatures, jobs: list[TransferJob],
               checkpoint: bool) -> Footprint:
    return Footprint(settings.layers, settings.optimizer, scale.lbfgs_history,
                     precision=resolve(s, model.mean.device).precision, checkpoint=checkpoint,
                     history_precision=s.history_precision, regions=regions_of(jobs))


def _plan(h: int, w: int, whole: Footprint, tiled: Footprint, settings: BatchSettings, s: Switches, room: int,
          model: VGGFeatures, measured: Measured | None) -> tiles.Tiling | None:
    """The tiles of an h x w scale whose image (of footprint `whole`) does not fit alone,
    their passes of footprint `tiled`."""

    def fits(th: int, tw: int, count: int, reserved: int = 0, tile: bool = False) -> bool:
        ph, pw = padded_size(th, tw)
        kind = replace(tiled, optimizer=TILE) if tile else whole
        # A tile's kind not yet measured: its whole kind's measured peak, state and all.
        per = None if measured is None else measured(kind, ph, pw) or (measured(tiled, ph, pw) if tile else None)
        need = batch_bytes(count, ph, pw, kind) if per is None else count * per  # a measured peak has the workspace
        return need + reserved <= room * s.memory_budget

    state = photo_state_bytes(*padded_size(h, w), whole, settings.content_layers)
    return tiles.plan(h, w, fits, halo(settings.layers), state, int(room * s.memory_budget),
                      offload=model.mean.device.type != "cpu", read_scale=read_scale(tiled))


def _settings(settings: BatchSettings, scale: Scale) -> BatchSettings:
    return replace(settings, iterations=scale.iterations, lbfgs_history=scale.lbfgs_history)


def _sized(jobs: list[TransferJob], scale: Scale) -> list[TransferJob]:
    return [replace(j, content=resize_long_side(j.content, scale.long_side)) for j in jobs]


class _OneScale:
    """A single scale's session: newcomers resized to it, records marked with it."""

    def __init__(self, session: Session, scale: Scale):
        self.session, self.scale = session, scale

    def take(self, n: int) -> list[TransferJob]:
        return _sized(self.session.take(n), self.scale)

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        return self.session.progress(iteration, losses)

    def finished(self, job: TransferJob, result: TransferResult) -> None:
        result.history = [rec | {"scale": self.scale.long_side} for rec in result.history]
        self.session.finished(job, result)

    def refused(self, job: TransferJob, reason: str) -> None:
        self.session.refused(job, reason)


def _at(switches: Switches | None, scale: Scale) -> Switches | None:
    """The run's switches with the scale's own precision, where it has one."""
    return switches if scale.precision is None else replace(switches or Switches(), precision=scale.precision)


class _Step:
    """One scale of several: its results kept for the next scale, its progress counted on
    from the scales before it."""

    def __init__(self, session: Session, offset: int):
        self.session, self.offset = session, offset
        self.results: dict[int, TransferResult] = {}

    def take(self, n: int) -> list[TransferJob]:
        return []

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        return self.session.progress(self.offset + iteration, None if losses is None else
                                     [r | {"iteration": self.offset + r["iteration"]} for r in losses])

    def finished(self, job: TransferJob, result: TransferResult) -> None:
        self.results[job.id] = result

    def refused(self, job: TransferJob, reason: str) -> None:
        raise AssertionError("a scale's batch refuses nothing: the engine above it does")


def _scales(model: VGGFeatures, session: Session, jobs: list[TransferJob], scales: list[tuple[Scale, tiles.Tiling | None]],
            settings: BatchSettings, cache: GramCache, switches: Switches | None,
            free: Callable[[], int | None] | None) -> Outcome:
    starts: dict[int, torch.Tensor] = {}
    histories: dict[int, list[dict]] = {j.id: [] for j in jobs}
    runs: dict[int, list[RunStats]] = {j.id: [] for j in jobs}
    done = 0
    step = _Step(session, 0)
    for scale, tiling in scales:
        h, w = jobs[0].content.shape[-2:]
        size = long_side_size(h, w, scale.long_side)
        scaled = [replace(job, content=resize_long_side(job.content, scale.long_side),
                          init_image=upsample(starts[job.id], size) if starts else None) for job in jobs]
        step = _Step(session, done)
        args = (model, step, scaled, _settings(settings, scale), cache, _at(switches, scale), free)
        if (transfer.run(*args) if tiling is None else _tiled(*args, tiling)) is Outcome.STOPPED:
            return Outcome.STOPPED
        for job_id, r in step.results.items():
            # The end of one scale and the start of the next are the same iteration; each
            # image counts its own, which are fewer than the scale's where it stopped early.
            skip, before = (1, histories[job_id][-1]["iteration"]) if histories[job_id] else (0, 0)
            histories[job_id] += [rec | {"iteration": before + rec["iteration"], "scale": scale.long_side}
                                  for rec in r.history[skip:]]
            runs[job_id] += r.runs
        jobs = [j for j in jobs if j.id in step.results]  # a dropped job goes no further
        if not jobs:
            return Outcome.COMPLETE
        starts = {job_id: r.image for job_id, r in step.results.items()}
        done += max(r.runs[-1].iterations for r in step.results.values())  # short where all stopped early
    for job in jobs:
        result = step.results[job.id]
        result.history, result.runs = histories[job.id], runs[job.id]
        session.finished(job, result)
    return Outcome.COMPLETE


def _tiled(model: VGGFeatures, step: "_Step", jobs: list[TransferJob], settings: BatchSettings, cache: GramCache,
           switches: Switches | None, free, tiling: tiles.Tiling) -> Outcome:
    """A scale too large to run whole: each photo in turn, a tile at a time."""
    turn = _InTurn(step, len(jobs), settings.iterations)
    for k, job in enumerate(jobs):
        if job.id in turn.dropped:
            continue  # cancelled while it waited its turn
        turn.before = k
        if tiles.run(model, turn, job, settings, cache, switches, free, tiling) is Outcome.STOPPED:
            return Outcome.STOPPED
    return Outcome.COMPLETE


class _InTurn:
    """A scale's photos run one after another: each photo's iterations count for its share
    of the scale, after the photos before it, so progress only goes forward; a cancel of
    a photo still waiting its turn is remembered, so that it never runs."""

    def __init__(self, step: _Step, count: int, iterations: int):
        self.step, self.count, self.iterations = step, count, iterations
        self.before = 0  # photos done before this one
        self.dropped: set[int] = set()

    def take(self, n: int) -> list[TransferJob]:
        return []

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        at = round((self.before * self.iterations + iteration) / self.count)
        answer = self.step.progress(at, None if losses is None else [r | {"iteration": at} for r in losses])
        if isinstance(answer, Drop):
            self.dropped |= answer.ids
        return answer

    def finished(self, job: TransferJob, result: TransferResult) -> None:
        self.step.finished(job, result)

    def refused(self, job: TransferJob, reason: str) -> None:
        self.step.refused(job, reason)
