"""One pipeline for the daemon's worker and `nstd stylize`: load, run, publish.

Both build `Task`s, hand them to `Pipeline.run` with a `Sink` that knows where outputs
go and what to record, and get the same pixels for the same photo, style and settings.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from nstd import images, losslog
from nstd.engine.device import describe
from nstd.engine.memory import Footprint, least_bytes
from nstd.engine.resize import POOLED, long_side_size, resize_photo
from nstd.engine.runner import Engine
from nstd.engine.types import Progress, TransferJob, TransferResult
from nstd.engine.vgg import VGGFeatures
from nstd.errors import ImageError
from nstd.guide import Guide, GuideSpec, engine_regions, load, protect_faces
from nstd.faces import FaceFinder
from nstd.handoff import Handoff
from nstd.params import TransferParams
from nstd.style import Style
from nstd.weights import WeightInfo

MIN_SIDE = POOLED  # VGG19 pools four times before relu5_1


@dataclass(frozen=True)
class Photo:
    """A photo at its working size; its EXIF and bit depth travel with the pixels."""

    pixels: torch.Tensor  # (3, H, W) RGB in [0, 1]
    exif: bytes | None = None
    bits: int = 8


def working_size(name: str, h: int, w: int, params: TransferParams, max_pixels: int) -> tuple[int, int]:
    """(height, width) a photo of h x w is stylized at, or an ImageError naming it."""
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{name}: {w}x{h} is too small to stylize (under {MIN_SIDE} px on a side)")
    long_side = params.long_side(h, w)
    size = long_side_size(h, w, long_side)
    first = long_side_size(h, w, params.scales(long_side)[0].long_side)
    if min(size) < MIN_SIDE:
        raise ImageError(f"{name}: {w}x{h} is too narrow to stylize at size {params.size} "
                         f"(short side under {MIN_SIDE} px)")
    if min(first) < MIN_SIDE:  # coarse to fine's first scale, not the output, is too narrow
        raise ImageError(f"{name}: its first scale (multiscale_start {params.multiscale_start}) would be "
                         f"{first[1]}x{first[0]}, under {MIN_SIDE} px on its short side; raise multiscale_start")
    if size[0] * size[1] > max_pixels:  # a size setting far above the photo's own
        raise ImageError(f"{name}: size {params.size} makes it {size[1]}x{size[0]}, {size[0] * size[1]:,} "
                         f"pixels, over the limit of {max_pixels:,} (max_pixels)")
    return size


def check_fits(name: str, size: tuple[int, int], params: TransferParams, memory: int | None,
               regions: int = 0, history_precision: str = "fp32") -> None:
    """An ImageError naming the photo when even alone, in bf16 with checkpointing, it
    needs more than `memory` bytes (the largest device's); None says nothing is known.
    `regions`: the styled regions of its mask or region map (guide.styled_regions);
    `history_precision`: how the workers store the L-BFGS history (worker.history_precision)."""
    if memory is None:
        return
    h, w = size
    settings = params.settings()
    history = params.scales(max(h, w))[-1].lbfgs_history
    need = least_bytes(h, w, Footprint(settings.layers, settings.optimizer, history, regions=regions,
                                       history_precision=history_precision))
    if need > memory:
        raise ImageError(f"{name}: at {w}x{h} one image needs about {need / 2**30:.1f} GiB, more than the "
                         f"largest device has ({memory / 2**30:.1f} GiB); lower its size")


# Photos decoded at once, side by side: a 50-megapixel one holds 600 MB of pixels while it
# is resized, so a few, not one per core.
LOADERS = min(4, os.cpu_count() or 1)


def load_photo(decoded: images.Decoded, size: tuple[int, int]) -> Photo:
    """A decoded photo at exactly `size`: the load stage."""
    return Photo(resize_photo(decoded.pixels, size), decoded.exif, decoded.bits)


def load_guide(spec: GuideSpec | None, data: bytes | None, decoded: images.Decoded, params: TransferParams,
               max_pixels: int, finder: FaceFinder, sha256: str | None = None, name: str = "photo") -> Guide | None:
    """The photo's mask or region map, and its faces when asked to keep them: the load
    stage's other half. An ImageError names a bad mask file."""
    guide = None if spec is None else load(spec, data, tuple(decoded.pixels.shape[-2:]), max_pixels)
    if params.protect == "faces":
        guide = protect_faces(guide, decoded.pixels, finder, sha256, name)
    return guide


@dataclass(frozen=True)
class Task:
    """One output to make: a photo in one style, with the parameters that shape it."""

    photo: Photo
    style: Style
    params: TransferParams
    input_path: str  # as the loss log names it
    input_sha256: str
    job_id: str | None = None
    queued: float | None = None
    batch_id: str | None = None  # the claim's, in the daemon; else one is made per batch
    guide: Guide | None = None  # masks: which parts take which style, and which keep the photo


class Sink(Protocol):
    """Where a pipeline's outcomes go: the daemon's outbox and journal, or a folder."""

    def publish(self, task: Task, result: TransferResult, log: dict) -> None: ...

    def refuse(self, task: Task, reason: str) -> None: ...


class Pipeline:
    def __init__(self, engine: Engine, model: Callable[[TransferParams], tuple[VGGFeatures, WeightInfo]],
                 clock: Callable[[], float] = time.time, style_for: Callable[[str], Style] | None = None):
        self.engine, self.model, self.clock = engine, model, clock
        self.style_for = style_for  # the styles a region map's colours may name

    def run(self, tasks: list[Task], sink: Sink, progress: Progress | None = None,
            more: Callable[[int], list[Task]] | None = None) -> None:
        """Run same-size tasks that share their batch settings as one batch. `more(n)` may
        give up to n tasks of the same size and settings to take the places of finished
        images: continuous batching, as a server of language models batches requests.
        Outcomes reach `sink` on a thread of its own (see handoff), all of them by the
        time this returns."""
        tasks = list(tasks)
        params = tasks[0].params
        model, info = self.model(params)
        long_side = max(tasks[0].photo.pixels.shape[-2:])
        size = tuple(tasks[0].photo.pixels.shape[-2:])
        started = [self.clock()] * len(tasks)  # each task's, for its loss log's timings
        batch_id = tasks[0].batch_id or uuid.uuid4().hex[:12]

        def job(t: Task) -> TransferJob:
            return t.params.job(t.photo.pixels, t.style.style_images(t.params),
                                engine_regions(t.guide, t.style, self.style_for, t.params, size))

        def refill(n: int) -> list[TransferJob]:
            new = more(n)
            tasks.extend(new)
            started.extend([self.clock()] * len(new))
            return [job(t) for t in new]

        with Handoff(sink) as out:
            def done(positions: list[int], results: list[TransferResult]) -> None:
                finished = self.clock()
                for i, result in zip(positions, results):
                    run = result.runs[-1]
                    log = self._log(tasks[i], result, info, batch_id, (run.batch, run.slot), (started[i], finished))
                    out.publish(tasks[i], result, log)

            def refused(positions: list[int], reason: str) -> None:
                for i in positions:
                    out.refuse(tasks[i], reason)

            self.engine.run(model, [job(t) for t in tasks], params.scales(long_side), params.settings(), done,
                            refused, progress, None if more is None else refill)

    def _log(self, task: Task, result: TransferResult, info: WeightInfo, batch_id: str,
             batch: tuple[int, int], times: tuple[float, float]) -> dict:
        started, finished = times
        h, w = result.image.shape[-2:]
        return losslog.loss_log(
            job_id=task.job_id, input_path=task.input_path, input_sha256=task.input_sha256,
            styles=task.style.describe(), params=task.params, weights=info,
            device=describe(self.engine.device), batch_id=batch_id, batch_size=batch[0],
            batch_index=batch[1], output={"width": w, "height": h},
            timings=({} if task.queued is None else {"queued": losslog.iso_time(task.queued)}) |
                    {"started": losslog.iso_time(started), "finished": losslog.iso_time(finished),
                     "seconds": round(finished - started, 3)},
            history=result.history, runs=[r.as_dict() for r in result.runs],
            guide=None if task.guide is None else task.guide.log)


def output_exif(photo: Photo, style: Style) -> bytes | None:
    """The photo's EXIF, saying what made the output."""
    return images.output_exif(photo.exif, losslog.software(), losslog.description([p.name for p in style.parts]))
