"""A batch of same-size jobs in, stylized images and loss histories out."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from nstd.engine import color
from nstd.engine.device import free_memory
from nstd.engine.fastpath import FastPath, Resolved, autocast, resolve, running
from nstd.engine.losses import content_loss, gram, style_loss, tv_loss
from nstd.engine.memory import batch_bytes
from nstd.engine.optim import make_optimizer
from nstd.engine.vgg import VGGFeatures

DEFAULT_STYLE_LAYERS = (("relu1_1", 0.2), ("relu2_1", 0.2), ("relu3_1", 0.2),
                        ("relu4_1", 0.2), ("relu5_1", 0.2))
DEFAULT_CONTENT_LAYERS = ("relu4_2",)
INITS = ("content", "noise", "style")
_log = logging.getLogger("nstd.engine")


@dataclass(frozen=True)
class BatchSettings:
    """What every job of one batch must share: it shapes the model and the loop."""

    iterations: int = 500
    optimizer: str = "lbfgs"
    lr: float | None = None  # None: 1.0 for L-BFGS, 0.02 for Adam
    lbfgs_history: int = 100
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[tuple[str, float], ...] = DEFAULT_STYLE_LAYERS
    pooling: str = "max"
    log_every: int = 50
    snapshot_every: int = 0

    @property
    def layers(self) -> frozenset[str]:
        return frozenset(self.content_layers) | {name for name, _ in self.style_layers}


@dataclass(frozen=True)
class StyleImage:
    """One style of a job. `key` identifies the image (its file hash) for the Gram cache."""

    image: torch.Tensor  # (3, h, w) RGB in [0, 1]
    key: str | None = None
    weight: float = 1.0
    scale: float = 1.0  # style size relative to the content's long side


@dataclass(frozen=True)
class TransferJob:
    content: torch.Tensor  # (3, H, W) RGB in [0, 1]
    styles: tuple[StyleImage, ...]
    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 5.0
    init: str = "content"
    seed: int = 0
    preserve_color: str = "none"  # none | luminance | histogram
    init_image: torch.Tensor | None = None  # (3, H, W): start here instead of `init`


@dataclass
class TransferResult:
    image: torch.Tensor  # (3, H, W) on the CPU, clamped to [0, 1]
    history: list[dict]
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    # How each optimisation ran (one per scale): size, time, switches, peak memory.
    runs: list[dict] = field(default_factory=list)


Progress = Callable[[int, "list[dict] | None"], None]


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


def run_batch(model: VGGFeatures, jobs: list[TransferJob], settings: BatchSettings,
              cache: GramCache | None = None, progress: Progress | None = None,
              fast: FastPath | None = None) -> list[TransferResult]:
    """Optimise a batch of same-size jobs together; each image keeps its own state."""
    _check(model, jobs, settings)
    device = model.mean.device
    h, w = jobs[0].content.shape[-2:]

    def need(precision: str, checkpoint: bool) -> int:
        return batch_bytes(len(jobs), h, w, settings.layers, settings.optimizer, settings.lbfgs_history,
                           precision, checkpoint)

    r = resolve(fast, device, need, free_memory(device))
    peak = _PeakMemory(device)
    started = time.perf_counter()
    with running(r):
        results = _run(model, [_colour_in(j) for j in jobs], settings,
                       cache if cache is not None else GramCache(), progress, r)
    run = {"size": [h, w], "batch": len(jobs), "iterations": settings.iterations,
           "seconds": round(time.perf_counter() - started, 3), **r.describe(), **peak.read()}
    for job, result in zip(jobs, results):
        if job.preserve_color == "luminance":
            result.image = color.recombine(result.image, job.content.cpu().float())
            result.snapshots = [(k, color.recombine(s, job.content.cpu().float())) for k, s in result.snapshots]
        result.runs = [dict(run)]
    return results


class _PeakMemory:
    """The most device memory a run allocated beyond what was held when it began (CUDA only)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)

    def read(self) -> dict:
        if not self.cuda:
            return {"peak_bytes": None}
        return {"peak_bytes": torch.cuda.max_memory_allocated(self.device) - self.base,
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device)}


def _colour_in(job: TransferJob) -> TransferJob:
    """The job as the optimiser sees it under colour preservation. Its style targets then
    depend on the photo, so they bypass the Gram cache (key None)."""
    if job.preserve_color == "luminance":
        styles = tuple(StyleImage(color.gray(color.match_luminance(s.image, job.content)), None, s.weight, s.scale)
                       for s in job.styles)
        init = None if job.init_image is None else color.gray(color.luminance(job.init_image))
        return replace(job, content=color.gray(color.luminance(job.content)), styles=styles, init_image=init)
    if job.preserve_color == "histogram":
        styles = tuple(StyleImage(color.match_histogram(s.image, job.content), None, s.weight, s.scale)
                       for s in job.styles)
        return replace(job, styles=styles)
    return job


def _run(model: VGGFeatures, jobs: list[TransferJob], settings: BatchSettings, cache: GramCache,
         progress: Progress | None, r: Resolved) -> list[TransferResult]:
    device = r.device
    if r.channels_last:
        model.to(memory_format=torch.channels_last)  # once per model; a no-op after

    def features(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(r):
            return model(x, channels_last=r.channels_last, checkpoint=r.checkpoint)

    content = torch.stack([j.content for j in jobs]).to(device, torch.float32)
    style_names = [name for name, _ in settings.style_layers]
    layer_w = torch.tensor([w for _, w in settings.style_layers], device=device)

    with torch.no_grad():
        feats = features(content)
        content_targets = {n: feats[n].detach() for n in settings.content_layers}
        del feats
        # Each layer's loss is divided by its target's mean square, so the weights mean the
        # same for every weight set (Caffe's 0-255 input makes Grams ~1e4 times larger)
        # and no layer dominates by the size of its activations alone.
        content_norm = {n: _mean_square(t) for n, t in content_targets.items()}
        style_targets = _style_targets(model, features, jobs, style_names, max(content.shape[-2:]),
                                       cache, r.precision)
        style_norm = torch.stack([_mean_square(style_targets[n]) for n in style_names], 1)

    cw = torch.tensor([j.content_weight for j in jobs], device=device)
    sw = torch.tensor([j.style_weight for j in jobs], device=device)
    tw = torch.tensor([j.tv_weight for j in jobs], device=device)

    def losses(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = features(x)
        c = sum(content_loss(f[n], content_targets[n]) / content_norm[n] for n in settings.content_layers)
        s_layers = torch.stack([style_loss(f[n], style_targets[n]) for n in style_names], 1) / style_norm
        del f
        s = (s_layers * layer_w).sum(1)
        tv = tv_loss(x)
        total = cw * c + sw * s + tw * tv
        # One row per image: total, content, style, tv, then each style layer (unweighted).
        return total, torch.cat([torch.stack([total, c, s, tv], 1), s_layers], 1)

    x = _init(jobs, content).requires_grad_(True)
    opt = make_optimizer(settings.optimizer, x, settings.lr, settings.lbfgs_history)

    def iteration() -> torch.Tensor:
        x.grad = None
        total, row = losses(x)
        total.sum().backward()
        opt.step(total.detach())
        return row

    step = _Stepper(iteration, r.cuda_graph)
    records: list[tuple[int, torch.Tensor]] = []
    snapshots: list[tuple[int, torch.Tensor]] = []
    reporter = _LossReporter(style_names, device)
    for it in range(settings.iterations):
        row = step()
        if it % settings.log_every == 0:
            records.append((it, row.detach().clone()))
            reporter.push(it, records[-1][1])
        done = it + 1
        if settings.snapshot_every and done % settings.snapshot_every == 0 and done < settings.iterations:
            snapshots.append((done, x.detach().clamp(0, 1).cpu()))
        if progress is not None:
            progress(done, reporter.ready())
    del step  # frees a captured graph's memory pool

    with torch.no_grad():
        _, row = losses(x)
    records.append((settings.iterations, row))
    images = x.detach().clamp(0, 1).cpu()
    histories = _histories(records, style_names, len(jobs))
    return [TransferResult(images[i], histories[i], [(k, s[i]) for k, s in snapshots])
            for i in range(len(jobs))]


class _Stepper:
    """Runs the iteration eagerly, or replays it as a CUDA graph once warm.

    The graph removes the launch cost of several hundred small kernels per iteration,
    which dominates at small batches. Capture needs a few eager iterations first (cuDNN
    autotuning, the optimiser's first step); if capture fails, the loop stays eager.
    """

    WARMUP = 3

    def __init__(self, iteration: Callable[[], torch.Tensor], use_graph: bool):
        self.iteration = iteration
        self.use_graph = use_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self.side: torch.cuda.Stream | None = None  # one warm-up stream for the run
        self.count = 0

    def __call__(self) -> torch.Tensor:
        self.count += 1
        if self.graph is not None:
            self.graph.replay()
            return self.out
        if not self.use_graph or self.count <= self.WARMUP:
            if self.use_graph:
                # Warm-up on a side stream, as capture requires.
                self.side = self.side or torch.cuda.Stream()
                side = self.side
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = self.iteration()
                torch.cuda.current_stream().wait_stream(side)
                return out
            return self.iteration()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.iteration()
        except RuntimeError as e:
            _log.warning("CUDA graph capture failed, running eagerly: %s", e)
            self.use_graph = False
            torch.cuda.synchronize()
            return self.iteration()
        self.graph, self.out = graph, out
        graph.replay()  # capture records the work; the replay does it
        return out


class _LossReporter:
    """Hands logged losses to the progress callback without stalling the device.

    Each logged row is copied to pinned host memory asynchronously and delivered at
    the next logged iteration, when the copy has long finished.
    """

    def __init__(self, style_names: list[str], device: torch.device):
        self.style_names = style_names
        self.async_copy = device.type == "cuda"
        self.pending: tuple[int, torch.Tensor, object] | None = None
        self.delivered: tuple[int, torch.Tensor, object] | None = None

    def push(self, it: int, row: torch.Tensor) -> None:
        if self.async_copy:
            host = torch.empty(row.shape, dtype=row.dtype, pin_memory=True)
            host.copy_(row, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.delivered, self.pending = self.pending, (it, host, event)
        else:
            self.delivered = (it, row, None)

    def ready(self) -> list[dict] | None:
        if self.delivered is None:
            return None
        it, host, event = self.delivered
        self.delivered = None
        if event is not None:
            event.synchronize()  # long done: recorded one log interval ago
        return [_record(it, v, self.style_names) for v in host.tolist()]


def _check(model: VGGFeatures, jobs: list[TransferJob], settings: BatchSettings) -> None:
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
        if j.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {j.init!r}")
        if j.init_image is not None and j.init_image.shape != j.content.shape:
            raise ValueError(f"init_image must match the content's shape {tuple(j.content.shape)}")
        if j.preserve_color not in color.MODES:
            raise ValueError(f"preserve_color must be one of {', '.join(color.MODES)}, not {j.preserve_color!r}")
    if settings.iterations < 0 or settings.log_every < 1:
        raise ValueError("iterations must be >= 0 and log_every >= 1")


def _style_targets(model: VGGFeatures, features, jobs: list[TransferJob], names: list[str],
                   long_side: int, cache: GramCache, precision: str) -> dict[str, torch.Tensor]:
    """Per layer, an (N, C, C) stack of each job's (weighted, blended) Gram target."""
    device = model.mean.device
    per_job = []
    for job in jobs:
        total_w = sum(s.weight for s in job.styles)
        blended: dict[str, torch.Tensor] = {}
        for style in job.styles:
            size = max(16, round(long_side * style.scale))
            key = (style.key, size, model.model_id, model.pooling, tuple(names), precision)

            def compute(style=style, size=size):
                img = resize_long_side(style.image.to(device, torch.float32), size)
                f = features(img[None])
                return {n: gram(f[n])[0] for n in names}

            grams = cache.get(key, compute) if style.key is not None else compute()
            # A weighted mean of Grams has the same gradient as the weighted sum of the
            # per-style losses, so a blend costs no more than one style.
            for n in names:
                part = grams[n] * (style.weight / total_w)
                blended[n] = part if n not in blended else blended[n] + part
        per_job.append(blended)
    return {n: torch.stack([b[n] for b in per_job]) for n in names}


def _mean_square(t: torch.Tensor) -> torch.Tensor:
    return t.float().pow(2).flatten(1).mean(1).clamp_min(1e-12)


def _init(jobs: list[TransferJob], content: torch.Tensor) -> torch.Tensor:
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


def _record(it: int, v: list[float], style_names: list[str]) -> dict:
    return {"iteration": it, "total": v[0], "content": v[1], "style": v[2], "tv": v[3],
            "style_by_layer": dict(zip(style_names, v[4:]))}


def _histories(records, style_names, n) -> list[list[dict]]:
    host = torch.stack([r for _, r in records]).cpu().tolist()  # one sync for the whole run
    return [[_record(it, host[k][i], style_names) for k, (it, _) in enumerate(records)]
            for i in range(n)]
