"""A batch of same-size jobs in, stylized images and loss histories out."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from nstd.engine import color
from nstd.engine.device import PeakMemory, is_oom
from nstd.engine.switches import Switches, Resolved, autocast, resolve, running
from nstd.engine.loop import Ended, histories, optimise
from nstd.engine.session import Collect, Drop, Outcome, Session, Verdict
from nstd.engine.memory import Footprint, batch_bytes, regions_of
from nstd.engine.resize import crop, pad, padded_size, pool_padding
from nstd.engine.guides import blend_keep, content_maps, fit, pixel_guides, resample
from nstd.engine.objective import ContentLoss, GuidedStyleLoss, Objective, StyleLoss
from nstd.engine.optim import make_optimizer
from nstd.engine.targets import GramCache, content_targets, region_targets, style_sets, style_targets
from nstd.engine.checks import check_batch, check_job
from nstd.engine.types import BatchSettings, Progress, RunStats, TransferJob, TransferResult
from nstd.engine.vgg import VGGFeatures

_log = logging.getLogger("nstd.engine")


def run_batch(model: VGGFeatures, jobs: list[TransferJob], settings: BatchSettings,
              cache: GramCache | None = None, progress: Progress | None = None,
              switches: Switches | None = None, free: Callable[[], int | None] | None = None) -> list[TransferResult]:
    """A batch run to its end, the results in the order of `jobs` (see `run`)."""
    session = Collect(on_progress=progress)
    run(model, session, [replace(j, id=i) for i, j in enumerate(jobs)], settings, cache, switches, free)
    return [session.results[i] for i in range(len(jobs))]


def run(model: VGGFeatures, session: Session, jobs: list[TransferJob], settings: BatchSettings,
        cache: GramCache | None = None, switches: Switches | None = None,
        free: Callable[[], int | None] | None = None) -> Outcome:
    """Optimise a batch of same-size jobs together, each image with its own state, each
    result handed to the session as its image finishes. As places come free, the session
    is asked for newcomers of the same size (not in a batch with regions). `free` tells
    how many bytes the device has free, for the switches left on auto; without it, memory
    decides nothing."""
    check_batch(model, jobs, settings)
    h, w = jobs[0].content.shape[-2:]
    margin = pool_padding(h, w)
    ph, pw = padded_size(h, w)
    footprint = Footprint(settings.layers, settings.optimizer, settings.lbfgs_history,
                          history_precision=(switches or Switches()).history_precision, regions=regions_of(jobs))

    def need(precision: str, checkpoint: bool) -> int:
        return batch_bytes(len(jobs), ph, pw, replace(footprint, precision=precision, checkpoint=checkpoint))

    r = resolve(switches, model.mean.device, need, None if free is None else free())
    peak = PeakMemory(r.device)
    with running(r):
        return _run(model, session, jobs, settings, cache if cache is not None else GramCache(), r, margin, peak)


def padded(job: TransferJob, margin: tuple[int, int, int, int]) -> TransferJob:
    """The job mirrored outward to a size VGG's pools divide evenly; its masks with it."""
    if not any(margin):
        return job
    size = tuple(job.content.shape[-2:])
    regions = tuple(replace(g, mask=pad(fit(g.mask, size), margin)) for g in job.regions)
    init = None if job.init_image is None else pad(job.init_image, margin)
    cmap = None if job.content_map is None else pad(resample(job.content_map, size), margin)
    return replace(job, content=pad(job.content, margin), init_image=init, regions=regions, content_map=cmap)


def _run(model: VGGFeatures, session: Session, jobs: list[TransferJob], settings: BatchSettings,
         cache: GramCache, r: Resolved, margin: tuple[int, int, int, int], peak: PeakMemory) -> Outcome:
    if r.channels_last:
        model.to(memory_format=torch.channels_last)  # once per model; a no-op after
    h, w = jobs[0].content.shape[-2:]
    ready = [padded(color.prepare(j), margin) for j in jobs]
    features = partial(activations, model, r=r)
    content = torch.stack([j.content for j in ready]).to(r.device, torch.float32)
    long_side = max(h, w)
    build = partial(_Problem.build, model, features, settings=settings, cache=cache, r=r, long_side=long_side)
    problems = [build([ready[i] for i in group], content=content[group])
                for group in _groups(len(jobs), r.reproducible)]
    eager = partial(_loss, model, r=r)
    loss = _Fused(partial(compiled_loss(), model, r=r), eager) if r.compile else eager
    # Not while compiling: each narrower batch would be a new shape to compile.
    batch = _Batch(problems, features, loss, skip_parked=not r.cuda_graph, narrow=not r.compile)
    fitting = Fitting(model, features, settings, cache, r, margin, len(jobs), peak)
    return optimise(batch, settings, r.cuda_graph, Occupants(session, batch, list(jobs), fitting))


@dataclass
class Fitting:
    """What a job needs to enter the batch, and its image to leave it: the batch's margin,
    device, targets and the run's description."""

    model: VGGFeatures
    features: Callable
    settings: BatchSettings
    cache: GramCache
    r: Resolved
    margin: tuple[int, int, int, int]
    size: int  # the batch's places
    peak: PeakMemory  # since the batch began
    tiles: dict | None = None  # a tiled scale's tiles (engine/tiles.py), as the loss log describes them

    def enter(self, batch: "_Batch", k: int, job: TransferJob) -> None:
        h, w = job.content.shape[-2:]
        job = padded(color.prepare(job), self.margin)
        one = job.content[None].to(self.r.device, torch.float32)
        with torch.no_grad():
            objective = _objective(self.model, self.features, [job], self.settings, one, self.cache, self.r,
                                   max(h, w))
        batch.load(k, objective, starts([job], one))

    def leave(self, job: TransferJob, end: Ended) -> TransferResult:
        """The image out of the batch: cropped, its colour and kept regions restored, its
        losses named and its run described."""
        history = histories(end.records, self.settings.style_names)
        _name_regions(job, history)
        if self.tiles is not None:
            history = [rec | {"tiled": True} for rec in history]
        m = self.margin
        image = crop(end.image.clamp(0, 1).cpu(), m)
        h, w = image.shape[-2:]
        result = TransferResult(image, history, [(k, crop(snap, m)) for k, snap in end.snapshots])
        color.finish(job, result)
        result.image = blend_keep(job, result.image)
        result.snapshots = [(k, blend_keep(job, snap)) for k, snap in result.snapshots]
        result.runs = [RunStats((h, w), self.size, end.iterations, end.seconds, **self.r.describe(),
                                **self.peak.read(), slot=end.slot, tiles=self.tiles)]
        return result


class Occupants:
    """Which job each slot holds: the only book of positions between the caller and the
    loop. Images leave to the session, newcomers come from it."""

    def __init__(self, session: Session, batch, jobs: list[TransferJob], fitting: Fitting, refill: bool = True):
        self.session, self.batch, self.fitting = session, batch, fitting
        self.held = jobs  # slot k holds held[k]
        self.shape = tuple(jobs[0].content.shape)
        self.refillable = refill and not any(j.guided for j in jobs)
        self.leaving: list[int] = []  # slots whose jobs were dropped

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict:
        answer = self.session.progress(iteration, losses)
        if isinstance(answer, Drop):
            self.leaving += [k for k, job in enumerate(self.held) if job.id in answer.ids]
            return Verdict.GO
        return answer

    def dropped(self) -> list[int]:
        out, self.leaving = self.leaving, []
        return out

    def leave(self, end: Ended) -> None:
        job = self.held[end.slot]
        self.session.finished(job, self.fitting.leave(job, end))

    def join(self, free: list[int]) -> list[int]:
        new = self.session.take(len(free)) if self.refillable else []
        for k, job in zip(free, new):
            check_job(job, self.shape)
            if job.guided:
                raise ValueError("a job with regions or a content map cannot take a place in a running batch")
            self.fitting.enter(self.batch, k, job)
            self.held[k] = job
        return free[:len(new)]


def _rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """The problems' loss rows as one; an image run alone without regions has fewer columns."""
    width = max(r.shape[1] for r in rows)
    return torch.cat([F.pad(r, (0, width - r.shape[1])) for r in rows])


def _name_regions(job: TransferJob, history: list[dict]) -> None:
    """Give a job's records its regions' style losses by name (and drop them for a job
    without regions, which then logs exactly what it would alone)."""
    for rec in history:
        values = rec.pop("style_by_region", [])
        if job.regions:
            rec["style_by_region"] = {r.name: v for r, v in zip(job.styled_regions, values)}


def _groups(n: int, reproducible: bool) -> list[list[int]]:
    """Which images share a pass through the network: all of them, or each alone."""
    return [[i] for i in range(n)] if reproducible else [list(range(n))]


class _Batch:
    """A batch's problems seen as slots, slot k being image k of the batch. A parked slot's
    problem is not stepped when it is alone in it and the loop runs eagerly; a problem
    whose images are half done goes on with the working ones only (see `park`)."""

    def __init__(self, problems: list["_Problem"], features, loss, skip_parked: bool, narrow: bool = True):
        self.problems, self.features, self.loss, self.skip_parked = problems, features, loss, skip_parked
        self.narrow = narrow
        self.where: list[tuple[int, int | None]] = [(p, i) for p, prob in enumerate(problems)
                                                    for i in range(prob.x.shape[0])]
        self.slots_of = [[k for k, (q, _) in enumerate(self.where) if q == p] for p in range(len(problems))]
        self.size = len(self.where)
        self.parked: set[int] = set()
        self.last: list[torch.Tensor | None] = [None] * len(problems)
        # A narrowed problem's rows, placed back among its slots: the positions of its working
        # slots, and its slots' rows and pixels as they were when it was narrowed.
        self.spread: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(problems)

    def iteration(self) -> torch.Tensor:
        for p, prob in enumerate(self.problems):
            idle = self.parked.issuperset(self.slots_of[p])
            if not (self.skip_parked and idle and self.last[p] is not None):
                rows = prob.iteration(self.loss)
                self.last[p] = rows if self.spread[p] is None else \
                    self.spread[p][1].index_copy(0, self.spread[p][0], rows)
        return _rows(self.last)

    def pixels(self) -> torch.Tensor:
        return torch.cat([self._pixels(p) for p in range(len(self.problems))])

    def _pixels(self, p: int) -> torch.Tensor:
        x = self.problems[p].x.detach()
        return x if self.spread[p] is None else self.spread[p][2].index_copy(0, self.spread[p][0], x)

    @torch.no_grad()
    def rows_now(self, slots: list[int]) -> list[torch.Tensor]:
        rows: dict[int, torch.Tensor] = {}
        for p, _ in (self.where[k] for k in slots):
            if p not in rows:
                prob = self.problems[p]
                rows[p] = prob.objective(prob.x, self.features(prob.x))[1]
        return [rows[p][i] for p, i in (self.where[k] for k in slots)]

    def park(self, slots: list[int]) -> bool:
        """These slots have nothing more to do. A problem with no more than half of its
        images still working goes on with those only: the batch's shapes changed (True),
        and a captured graph must be captured again. A parked slot is never refilled, so
        nothing is lost with it."""
        self.parked.update(slots)
        narrowed = False
        for p in sorted({self.where[k][0] for k in slots}):
            prob = self.problems[p]
            working = [s for s in self.slots_of[p] if s not in self.parked and self.where[s][1] is not None]
            if self.narrow and working and 2 * len(working) <= prob.x.shape[0] and \
                    isinstance(prob.objective.style, StyleLoss):
                self._narrow(p, working)
                narrowed = True
        return narrowed

    @torch.no_grad()
    def _narrow(self, p: int, working: list[int]) -> None:
        prob = self.problems[p]
        rows = torch.tensor([self.where[s][1] for s in working], device=prob.x.device)
        spread = (torch.tensor([self.slots_of[p].index(s) for s in working], device=prob.x.device),
                  self.last[p].detach().clone(), self._pixels(p).clone())
        x = prob.x.detach()[rows].clone().requires_grad_(True)
        self.problems[p] = _Problem(x, prob.objective.select(rows), prob.opt.select(rows, x))
        self.spread[p] = spread
        for s in self.slots_of[p]:
            self.where[s] = (p, working.index(s) if s in working else None)

    @torch.no_grad()
    def load(self, k: int, objective: Objective, start: torch.Tensor) -> None:
        """A new image in slot k: its targets, its start, and a fresh optimiser state."""
        p, i = self.where[k]
        prob = self.problems[p]
        prob.objective.load(i, objective)
        prob.x[i] = start[0]
        prob.opt.reset(i)
        self.parked.discard(k)


@dataclass
class _Problem:
    """Some of a batch's images, their objective and optimiser: one forward and backward
    pass per iteration. A reproducible batch is one problem per image, so each image
    meets exactly the arithmetic it would alone."""

    x: torch.Tensor
    objective: Objective
    opt: object

    @classmethod
    def build(cls, model: VGGFeatures, features, jobs: list[TransferJob], settings: BatchSettings,
              content: torch.Tensor, cache: GramCache, r: Resolved, long_side: int) -> "_Problem":
        with torch.no_grad():
            objective = _objective(model, features, jobs, settings, content, cache, r, long_side)
        x = starts(jobs, content).requires_grad_(True)
        opt = make_optimizer(settings.optimizer, x, settings.lr, settings.lbfgs_history, r.history_dtype)
        return cls(x, objective, opt)

    def iteration(self, loss) -> torch.Tensor:
        self.x.grad = None
        total, row = loss(self.objective, self.x)
        total.sum().backward()
        self.opt.step(total.detach())
        return row


def activations(model: VGGFeatures, x: torch.Tensor, r: Resolved) -> dict[str, torch.Tensor]:
    with autocast(r):
        return model(x, channels_last=r.channels_last, checkpoint=r.checkpoint)


def _loss(model: VGGFeatures, objective: Objective, x: torch.Tensor, r: Resolved) -> tuple[torch.Tensor, torch.Tensor]:
    """One evaluation of the objective: eagerly, or compiled whole (compiled batches never
    checkpoint, see `resolve`)."""
    return objective(x, activations(model, x, r))


class _Fused:
    """The compiled loss, or the eager one for the rest of the batch where compiling fails
    (a host without a C compiler, an op the compiler cannot take): slower, not broken."""

    def __init__(self, compiled, eager):
        self.compiled, self.eager = compiled, eager
        self.failed = False

    def __call__(self, objective: Objective, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.failed:
            try:
                return self.compiled(objective, x)
            except Exception as e:  # noqa: BLE001 - out of memory goes on up; anything else falls back
                if is_oom(e):
                    raise
                _log.warning("torch.compile failed, running eagerly: %s", str(e).splitlines()[0][:300])
                self.failed = True
        return self.eager(objective, x)


@functools.cache
def compiled_loss():
    """`_loss` compiled once per process. Its guards are on shapes and flags, not on the
    objective's identity, so every batch of a shape reuses the first one's code."""
    return torch.compile(_loss)


def _objective(model: VGGFeatures, features, jobs: list[TransferJob], settings: BatchSettings,
               content: torch.Tensor, cache: GramCache, r: Resolved, long_side: int) -> Objective:
    """`long_side`: the photo's, before any margin: the style's size follows it."""
    names = settings.style_names
    c_targets = content_targets(features, content, settings.content_layers)
    s_targets = style_targets(features, r.device, style_sets(jobs), names, long_side, cache,
                              (model.model_id, model.pooling, tuple(names), r.precision))
    layer_w = torch.tensor([w for _, w in settings.style_layers], device=r.device)
    weights = torch.tensor([[j.content_weight, j.style_weight, j.tv_weight] for j in jobs], device=r.device)
    if any(j.regions for j in jobs):
        guides = pixel_guides(jobs, tuple(content.shape[-2:]), r.device)
        targets = region_targets(jobs, s_targets, guides.shape[1])
        style = GuidedStyleLoss(targets, guides, layer_w)
    else:
        style = StyleLoss(s_targets)
    cmaps = content_maps(jobs, tuple(content.shape[-2:]), r.device)
    return Objective([ContentLoss(n, t, cmaps) for n, t in c_targets.items()], style, layer_w, weights)


def starts(jobs: list[TransferJob], content: torch.Tensor) -> torch.Tensor:
    """Each image's starting pixels: the photo, seeded noise, the style, or a given image."""
    starts = []
    _, h, w = content.shape[1:]
    for i, job in enumerate(jobs):
        if job.init_image is not None:
            starts.append(job.init_image.to(content.device, torch.float32))
        elif job.init == "content":
            starts.append(content[i].clone())
        elif job.init == "noise":
            gen = torch.Generator().manual_seed(job.seed)
            starts.append(torch.rand(content.shape[1:], generator=gen).to(content.device))
        else:
            style = job.styles[0].image.to(content.device, torch.float32)
            starts.append(F.interpolate(style[None], size=(h, w), mode="bicubic",
                                        align_corners=False)[0].clamp(0, 1))
    return torch.stack(starts).contiguous()
