"""A batch of same-size jobs in, stylized images and loss histories out."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from nstd.engine import color
from nstd.engine.device import PeakMemory
from nstd.engine.switches import Switches, Resolved, autocast, resolve, running
from nstd.engine.loop import histories, optimise
from nstd.engine.memory import batch_bytes
from nstd.engine.resize import crop, pad, pool_padding
from nstd.engine.guides import blend_keep, fit, pixel_guides
from nstd.engine.objective import ContentLoss, GuidedStyleLoss, Objective, StyleLoss
from nstd.engine.optim import make_optimizer
from nstd.engine.targets import GramCache, content_targets, region_targets, style_sets, style_targets
from nstd.engine.types import INITS, BatchSettings, Progress, RunStats, TransferJob, TransferResult
from nstd.engine.vgg import VGGFeatures


def run_batch(model: VGGFeatures, jobs: list[TransferJob], settings: BatchSettings,
              cache: GramCache | None = None, progress: Progress | None = None,
              switches: Switches | None = None, free: Callable[[], int | None] | None = None) -> list[TransferResult]:
    """Optimise a batch of same-size jobs together; each image keeps its own state.

    `free` tells how many bytes the device has free, for the switches left on auto;
    without it, memory decides nothing."""
    check_batch(model, jobs, settings)
    h, w = jobs[0].content.shape[-2:]
    margin = pool_padding(h, w)
    ph, pw = h + margin[2] + margin[3], w + margin[0] + margin[1]

    def need(precision: str, checkpoint: bool) -> int:
        return batch_bytes(len(jobs), ph, pw, settings.layers, settings.optimizer, settings.lbfgs_history,
                           precision, checkpoint)

    r = resolve(switches, model.mean.device, need, None if free is None else free())
    peak = PeakMemory(r.device)
    started = time.perf_counter()
    with running(r):
        results = _run(model, [_padded(color.prepare(j), margin) for j in jobs], settings,
                       cache if cache is not None else GramCache(), progress, r, max(h, w))
    stats = RunStats((h, w), len(jobs), settings.iterations, round(time.perf_counter() - started, 3),
                     **r.describe(), **peak.read())
    for job, result in zip(jobs, results):
        result.image = crop(result.image, margin)
        result.snapshots = [(k, crop(snap, margin)) for k, snap in result.snapshots]
        color.finish(job, result)
        result.image = blend_keep(job, result.image)
        result.snapshots = [(k, blend_keep(job, snap)) for k, snap in result.snapshots]
        result.runs = [stats]
    return results


def _padded(job: TransferJob, margin: tuple[int, int, int, int]) -> TransferJob:
    """The job mirrored outward to a size VGG's pools divide evenly; its masks with it."""
    if not any(margin):
        return job
    size = tuple(job.content.shape[-2:])
    regions = tuple(replace(g, mask=pad(fit(g.mask, size), margin)) for g in job.regions)
    init = None if job.init_image is None else pad(job.init_image, margin)
    return replace(job, content=pad(job.content, margin), init_image=init, regions=regions)


def _run(model: VGGFeatures, jobs: list[TransferJob], settings: BatchSettings, cache: GramCache,
         progress: Progress | None, r: Resolved, long_side: int) -> list[TransferResult]:
    if r.channels_last:
        model.to(memory_format=torch.channels_last)  # once per model; a no-op after

    def features(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(r):
            return model(x, channels_last=r.channels_last, checkpoint=r.checkpoint)

    content = torch.stack([j.content for j in jobs]).to(r.device, torch.float32)
    problems = [_Problem.build(model, features, [jobs[i] for i in group], settings, content[group], cache, r,
                               long_side) for group in _groups(len(jobs), r.reproducible)]

    def iteration() -> torch.Tensor:
        return _rows([p.iteration(features) for p in problems])

    def pixels() -> torch.Tensor:
        return torch.cat([p.x.detach() for p in problems])

    trace = optimise(iteration, pixels, settings, r.cuda_graph, progress)
    with torch.no_grad():
        row = _rows([p.objective(p.x, features(p.x))[1] for p in problems])
    trace.records.append((settings.iterations, row))
    images = pixels().clamp(0, 1).cpu()
    rows = histories(trace.records, settings.style_names, len(jobs))
    for job, history in zip(jobs, rows):
        _name_regions(job, history)
    return [TransferResult(images[i], rows[i], [(k, s[i]) for k, s in trace.snapshots])
            for i in range(len(jobs))]


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
        x = _init(jobs, content).requires_grad_(True)
        return cls(x, objective, make_optimizer(settings.optimizer, x, settings.lr, settings.lbfgs_history))

    def iteration(self, features) -> torch.Tensor:
        self.x.grad = None
        total, row = self.objective(self.x, features(self.x))
        total.sum().backward()
        self.opt.step(total.detach())
        return row


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
        style = GuidedStyleLoss(region_targets(jobs, s_targets, guides.shape[1]), guides, layer_w)
    else:
        style = StyleLoss(s_targets)
    return Objective([ContentLoss(n, t) for n, t in c_targets.items()], style, layer_w, weights)


def check_batch(model: VGGFeatures, jobs: list[TransferJob], settings: BatchSettings) -> None:
    """Refuse a batch the loop cannot run, with a reason (a caller's bug, not a user's)."""
    if not jobs:
        raise ValueError("a batch needs at least one job")
    shapes = {tuple(j.content.shape) for j in jobs}
    if len(shapes) != 1:
        raise ValueError(f"a batch must be one size, got {sorted(shapes)}")
    c, h, w = next(iter(shapes))
    if c != 3 or min(h, w) < 16:
        raise ValueError(f"content must be RGB and at least 16 px on each side, got {c}x{h}x{w}")
    missing = settings.layers - model.layers
    if missing:
        raise ValueError(f"model lacks layer(s) {sorted(missing)}")
    for j in jobs:
        if not j.styles:
            raise ValueError("every job needs at least one style")
        if j.regions and not j.styled_regions:
            raise ValueError("a job with regions needs at least one region with a style")
        if any(r.mask.dim() != 2 for r in j.regions):
            raise ValueError("a region's mask must be (height, width)")
        if j.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {j.init!r}")
        if j.init_image is not None and j.init_image.shape != j.content.shape:
            raise ValueError(f"init_image must match the content's shape {tuple(j.content.shape)}")
        if j.preserve_color not in color.MODES:
            raise ValueError(f"preserve_color must be one of {', '.join(color.MODES)}, not {j.preserve_color!r}")
    if settings.iterations < 0 or settings.log_every < 1:
        raise ValueError("iterations must be >= 0 and log_every >= 1")


def _init(jobs: list[TransferJob], content: torch.Tensor) -> torch.Tensor:
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
