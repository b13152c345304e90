"""One pipeline for the daemon's worker and `nstd stylize`: load, run, publish.

Both build `Task`s and hand them to `Pipeline.run` with their `Work`, which gives more
tasks as places come free, hears the progress and takes the outcomes; both get the same
pixels for the same photo, style and settings.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import torch

from nstd import images, losslog
from nstd.engine.device import describe
from nstd.engine.memory import TILE, Footprint, least_bytes
from nstd.engine.resize import POOLED, long_side_size, resize_photo
from nstd.engine.runner import Engine
from nstd.engine.layers import halo
from nstd.engine.tiles import least_side
from nstd.engine.session import Drop, Outcome, Verdict
from nstd.engine.types import TransferJob, TransferResult
from nstd.engine.vgg import VGGFeatures
from nstd.errors import ImageError
from nstd.guide import Guide, GuideSpec, content_map, engine_regions, load, protect_faces
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
               regions: int = 0) -> None:
    """An ImageError naming the photo when even its smallest useful tile, alone, in bf16
    with checkpointing, needs more than `memory` bytes (the largest device's); None says
    nothing is known. A photo too large to hold whole runs as tiles (engine/tiles.py), its
    own state in host memory where the device is small, so this refuses only a device too
    small for any photo. `regions`: the styled regions of its mask or region map."""
    if memory is None:
        return
    settings = params.settings()
    h, w = (min(side, least_side(halo(settings.layers))) for side in size)
    need = least_bytes(h, w, Footprint(settings.layers, TILE, regions=regions))
    if need > memory:
        raise ImageError(f"{name}: even a {w}x{h} tile of it needs about {need / 2**30:.1f} GiB, more than the "
                         f"largest device has ({memory / 2**30:.1f} GiB)")


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
        guide = protect_faces(guide, decoded.pixels, finder, params.protect_strength, sha256, name)
    return guide


@dataclass(frozen=True)
class Task:
    """One output to make: a photo in one style, with the parameters that shape it."""

    photo: Photo
    style: Style
    params: TransferParams
    input_path: str  # as the loss log names it
    input_sha256: str
    job_id: int | None = None  # the journal's, in the daemon
    queued: float | None = None
    batch_id: str | None = None  # the claim's, in the daemon; else one is made per batch
    guide: Guide | None = None  # masks: which parts take which style, and which keep the photo


class Work(Protocol):
    """A batch as its owner sees it, in tasks: the daemon's worker (its claims, the outbox
    and the journal) or `nstd stylize` (a queue and a folder). The pipeline turns it into
    the engine's session (see engine/session.py)."""

    def take(self, n: int) -> list[Task]:
        """Up to n tasks of the batch's size and settings for places that came free."""

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        """Each iteration's progress; the answer says whether to go on, or which tasks
        (by job_id) leave the batch unfinished."""

    def publish(self, task: Task, result: TransferResult, log: dict) -> None:
        """A finished task, on the publisher's thread (see handoff)."""

    def refuse(self, task: Task, reason: str) -> None:
        """A task the engine could not run, on the publisher's thread."""


class Pipeline:
    def __init__(self, engine: Engine, model: Callable[[TransferParams], tuple[VGGFeatures, WeightInfo]],
                 clock: Callable[[], float] = time.time, style_for: Callable[[str], Style] | None = None):
        self.engine, self.model, self.clock = engine, model, clock
        self.style_for = style_for  # the styles a region map's colours may name

    def run(self, tasks: list[Task], work: Work) -> Outcome:
        """Run same-size tasks that share their batch settings as one batch. As images
        finish, `work` is asked for more tasks of the same size and settings to take their
        places: continuous batching, as a server of language models batches requests.
        Outcomes reach `work` on a thread of its own (see handoff), all of them by the
        time this returns."""
        params = tasks[0].params
        model, info = self.model(params)
        size = tuple(tasks[0].photo.pixels.shape[-2:])
        with Handoff(work) as out:
            session = _Session(self, work, out, info, size, tasks[0].batch_id or uuid.uuid4().hex[:12])
            return self.engine.run(model, session, session.jobs(tasks), params.scales(max(size)), params.settings())

    def log(self, task: Task, result: TransferResult, info: WeightInfo, batch_id: str,
            batch: tuple[int, int], times: tuple[float, float]) -> dict:
        """The task's loss log."""
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


class _Session:
    """The engine's session over a Work: tasks become the engine's jobs, numbered here,
    and results become loss logs, handed to the publisher's thread."""

    def __init__(self, pipeline: Pipeline, work: Work, out: Handoff, info: WeightInfo, size: tuple[int, int],
                 batch_id: str):
        self.pipeline, self.work, self.out, self.info, self.size = pipeline, work, out, info, size
        self.batch_id = batch_id
        self.tasks: dict[int, tuple[Task, float]] = {}  # by the engine job's id: the task, and when it began

    def jobs(self, tasks: list[Task]) -> list[TransferJob]:
        out = []
        now = self.pipeline.clock()
        for t in tasks:
            number = len(self.tasks)
            self.tasks[number] = (t, now)
            regions = engine_regions(t.guide, t.style, self.pipeline.style_for, t.params, self.size)
            job = t.params.job(t.photo.pixels, t.style.style_images(t.params), regions, content_map(t.guide, self.size))
            out.append(replace(job, id=number))
        return out

    def take(self, n: int) -> list[TransferJob]:
        return self.jobs(self.work.take(n))

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        answer = self.work.progress(iteration, losses)
        if not isinstance(answer, Drop):
            return answer
        leaving = frozenset(i for i, (task, _) in self.tasks.items() if task.job_id in answer.ids)
        for i in leaving:
            del self.tasks[i]
        return Drop(leaving)

    def finished(self, job: TransferJob, result: TransferResult) -> None:
        task, started = self.tasks.pop(job.id)
        run = result.runs[-1]
        log = self.pipeline.log(task, result, self.info, self.batch_id, (run.batch, run.slot),
                                (started, self.pipeline.clock()))
        self.out.publish(task, result, log)

    def refused(self, job: TransferJob, reason: str) -> None:
        self.out.refuse(self.tasks.pop(job.id)[0], reason)


def output_exif(photo: Photo, style: Style) -> bytes | None:
    """The photo's EXIF, saying what made the output."""
    return images.output_exif(photo.exif, losslog.software(), losslog.description([p.name for p in style.parts]))
