"""One worker per device: claims batches, runs the engine, writes results, records the outcome."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from nstd import images, report
from nstd.config import Config
from nstd.daemon import gallery, outbox
from nstd.daemon.journal import Job, Journal
from nstd.daemon.scheduler import Scheduler
from nstd.daemon.styles import StyleBook
from nstd.engine.device import describe, free_memory, is_oom, release_cache
from nstd.engine.fastpath import FastPath, resolve
from nstd.engine.memory import MeasuredMemory, after_oom, auto_batch
from nstd.engine.multiscale import run_scales
from nstd.engine.transfer import GramCache
from nstd.engine.vgg import VGGFeatures
from nstd.errors import ImageError
from nstd.log import get
from nstd.params import from_dict
from nstd.weights import WeightInfo

log = get("nstd.worker")
TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.ESTALE, errno.ETIMEDOUT,
                    errno.EAGAIN, errno.EHOSTDOWN, errno.ENOTCONN}


class StopBatch(Exception):
    """Raised from the progress callback when a stop's grace period has run out."""


def _finest_history(job: Job, p) -> int:
    """The L-BFGS history of a job's finest (largest) scale: the one that sets its memory."""
    return p.scales(max(job.height, job.width))[-1].lbfgs_history


class Worker(threading.Thread):
    def __init__(self, cfg: Config, styles: Callable[[], StyleBook],
                 load_weights: Callable[[str], tuple[dict, WeightInfo]], device: torch.device,
                 stopping: threading.Event):
        super().__init__(name=f"worker-{device}", daemon=True)
        self.cfg, self.styles, self.device, self.stopping = cfg, styles, device, stopping
        self.load_weights = load_weights
        self.deadline: float | None = None  # set by a stop: finish the batch by then
        self._models: dict[tuple, tuple[VGGFeatures, WeightInfo]] = {}
        self.cache = GramCache()
        self.measured = MeasuredMemory()
        self.precision = resolve(FastPath(cfg.worker.precision), device).precision
        self._source: dict[int, tuple[bytes | None, int]] = {}  # job id -> (EXIF, bits per channel)
        self.current: list[Job] = []
        self.error: BaseException | None = None

    # --- thread -----------------------------------------------------------------------

    def run(self) -> None:
        journal = Journal(self.cfg.state_dir / "journal.sqlite3")
        scheduler = Scheduler(journal, self.cfg.worker.batch_window, self.max_batch_for)
        try:
            while not self.stopping.is_set():
                batch = scheduler.next_batch()
                if not batch:
                    self.stopping.wait(0.2)
                    continue
                self.process(journal, batch)
        except BaseException as e:  # noqa: BLE001 - reported by the health loop, which restarts us
            self.error = e
            log.error("worker_crashed", error=f"{type(e).__name__}: {e}")
        finally:
            journal.close()

    def max_batch_for(self, job: Job) -> int:
        if self.cfg.worker.max_batch is not None:
            return self.cfg.worker.max_batch
        p = from_dict(job.params)
        free = free_memory(self.device)
        return auto_batch(2 << 30 if free is None else free, job.height, job.width, p.settings().layers,
                          p.optimizer, _finest_history(job, p), self.cfg.worker.memory_budget,
                          cap=16 if self.device.type == "cpu" else 64, measured=self.measured,
                          key=self._memory_key(job, p, False), precision=self.precision)

    def _memory_key(self, job: Job, p, checkpoint: bool) -> tuple:
        return (p.settings().layers, p.optimizer, _finest_history(job, p), self.precision, checkpoint)

    def fast_path(self, checkpoint: bool | None = None) -> FastPath:
        """The configured switches; the engine decides what is left on auto per scale."""
        w = self.cfg.worker
        return FastPath(w.precision, cuda_graph=w.cuda_graphs,
                        checkpoint=w.checkpoint if checkpoint is None else checkpoint,
                        memory_budget=w.memory_budget)

    # --- one batch --------------------------------------------------------------------

    def process(self, journal: Journal, batch: list[Job]) -> None:
        self.current = batch
        self._run(journal, batch)
        self.current = []  # left set if the thread dies, so the health loop can requeue them

    def _run(self, journal: Journal, batch: list[Job]) -> None:
        self._source.clear()  # entries of jobs that failed or were requeued in an earlier batch
        ready: list[tuple[Job, torch.Tensor]] = []
        for job in batch:
            try:
                ready.append((job, self._content(job)))
            except ImageError as e:
                journal.fail(job.id, str(e))
            except OSError as e:
                self._transient(journal, job, f"cannot read spooled input: {e}")
        if not ready:
            return
        try:
            self._compute(journal, ready)
        except StopBatch:
            journal.requeue([job.id for job, _ in ready])
            log.info("batch_requeued", jobs=[job.id for job, _ in ready], reason="stopping")
            return
        self._update_gallery(journal)

    def _update_gallery(self, journal: Journal) -> None:
        try:
            gallery.write(self.cfg.outbox, journal)
        except OSError as e:  # the page is a convenience; the outputs are what matter
            log.warning("gallery_not_written", error=str(e))

    def _compute(self, journal: Journal, ready: list[tuple[Job, torch.Tensor]],
                 checkpoint: bool | None = None) -> None:
        book = self.styles()
        for job, _ in ready:
            if not book.has(job.style):
                journal.fail(job.id, f"style '{job.style}' is no longer configured")
        ready = [(j, c) for j, c in ready if book.has(j.style)]
        if not ready:
            return
        jobs = [job for job, _ in ready]
        contents = [content for _, content in ready]
        params = [from_dict(job.params) for job in jobs]
        model, info = self._model(params[0])
        transfer_jobs = []
        for (job, content), p in zip(ready, params):
            transfer_jobs.append(p.job(content, book.get(job.style).style_images(p)))
        started = time.time()
        try:
            long_side = max(jobs[0].height, jobs[0].width)
            results = run_scales(model, transfer_jobs, params[0].scales(long_side), params[0].settings(),
                                 self.cache, self._progress(jobs, params[0].total_iterations(long_side)),
                                 self.fast_path(checkpoint))
        except StopBatch:
            raise
        except Exception as e:  # noqa: BLE001 - sorted into OOM, transient and deterministic below
            if is_oom(e):
                release_cache(self.device)
                step = after_oom(len(ready), checkpoint, may_checkpoint=self.cfg.worker.checkpoint is None)
                if step == "split":
                    half = len(ready) // 2
                    log.warning("out_of_memory_halving", jobs=[j.id for j in jobs], batch=len(ready))
                    self._compute(journal, ready[:half])
                    self._compute(journal, ready[half:])
                elif step == "checkpoint":
                    # The estimate said it fits and it did not: recompute activations instead.
                    log.warning("out_of_memory_checkpointing", job=jobs[0].id)
                    self._compute(journal, ready, checkpoint=True)
                else:
                    self._transient(journal, jobs[0], "out of memory even alone", final=True)
                return
            for job in jobs:
                journal.fail(job.id, f"{type(e).__name__}: {e}")
            log.error("batch_failed", jobs=[j.id for j in jobs], error=f"{type(e).__name__}: {e}")
            return
        finished = time.time()
        self._record_memory(jobs[0], params[0], results[0].runs)
        device = describe(self.device)
        for i, (job, p, result) in enumerate(zip(jobs, params, results)):
            style = book.get(job.style)
            h, w = result.image.shape[-2:]
            entry = report.loss_log(
                job_id=str(job.id), input_path=job.relpath, input_sha256=job.input_sha256,
                styles=[{"name": part.name, "path": str(part.path), "sha256": part.sha256,
                         "weight": part.weight} for part in style.parts],
                params=p, weights=info, device=device, batch_id=job.batch_id or "",
                batch_size=len(jobs), batch_index=i,
                output={"format": job.params["format"].lower(), "width": w, "height": h},
                timings={"queued": report.iso_time(job.queued), "started": report.iso_time(started),
                         "finished": report.iso_time(finished), "seconds": round(finished - started, 3)},
                history=result.history, runs=result.runs)
            try:
                source_exif, bits = self._source.pop(job.id, (None, 8))
                exif = images.output_exif(source_exif, report.software(),
                                          report.description([part.name for part in style.parts]))
                path = outbox.write(self.cfg.outbox, job, result.image, entry, result.snapshots, exif, bits)
            except ValueError as e:  # a name that would leave the outbox
                journal.fail(job.id, f"refused output path: {e}")
                continue
            except OSError as e:
                if e.errno in TRANSIENT_ERRNOS:
                    self._transient(journal, job, f"cannot write output: {e.strerror}")
                    continue
                journal.fail(job.id, f"cannot write output: {e}")
                continue
            journal.finish(job.id, str(path.relative_to(self.cfg.outbox)))
            self._thumbs(job, contents[i], style, result.image)
            log.info("done", job=job.id, input=job.relpath, style=job.style, output=str(path),
                     seconds=round(finished - started, 2), batch=len(jobs))

    def _record_memory(self, job: Job, p, runs: list[dict]) -> None:
        """Learn the batch's peak per pixel of its finest scale, for sizing the next ones."""
        peaks = [r["peak_bytes"] for r in runs if r.get("peak_bytes") is not None]
        if peaks:
            finest = runs[-1]
            self.measured.record(self._memory_key(job, p, finest["checkpoint"]), max(peaks), finest["batch"],
                                 *finest["size"])

    def _thumbs(self, job: Job, content: torch.Tensor, style, image: torch.Tensor) -> None:
        try:
            gallery.save_thumb(self.cfg.outbox, gallery.photo_thumb(job.input_sha256), content)
            gallery.save_thumb(self.cfg.outbox, gallery.style_thumb(style.sha256), style.parts[0].pixels)
            gallery.save_thumb(self.cfg.outbox, gallery.result_thumb(job.id), image)
        except OSError as e:
            log.warning("gallery_thumbnail_not_written", job=job.id, error=str(e))

    def _transient(self, journal: Journal, job: Job, error: str, final: bool = False) -> None:
        fresh = journal.get_jobs([job.id])[0]
        if final or fresh.attempts >= self.cfg.worker.max_attempts:
            journal.fail(job.id, f"{error} (after {fresh.attempts} attempts)")
            log.warning("failed", job=job.id, input=job.relpath, error=error, attempts=fresh.attempts)
        else:
            delay = self.cfg.worker.retry_backoff * 2 ** (fresh.attempts - 1)
            journal.retry(job.id, error, delay)
            log.warning("retry_later", job=job.id, input=job.relpath, error=error, in_seconds=delay)

    def _progress(self, jobs: list[Job], total: int):
        ids = [j.id for j in jobs]

        def update(iteration: int, losses: list | None) -> None:
            if self.deadline is not None and time.time() > self.deadline:
                raise StopBatch()
            if losses is not None:
                log.info("progress", jobs=ids, iteration=losses[0]["iteration"], of=total,
                         loss=[round(r["total"], 5) for r in losses])

        return update

    def _content(self, job: Job) -> torch.Tensor:
        data = Path(job.spool).read_bytes()
        decoded = images.decode(data, job.relpath, self.cfg.max_pixels)
        pixels = decoded.pixels
        self._source[job.id] = (decoded.exif, decoded.bits)  # for the output; popped when written
        # Exactly the size intake recorded, so every job of a batch matches.
        return F.interpolate(pixels[None], size=(job.height, job.width), mode="bicubic",
                             antialias=True, align_corners=False)[0].clamp(0, 1)

    def _model(self, p) -> tuple[VGGFeatures, WeightInfo]:
        key = (p.model, p.pooling, p.settings().layers)
        if key not in self._models:
            sd, info = self.load_weights(p.model)
            model = VGGFeatures(sd, info.preprocessing, p.settings().layers, p.pooling, info.model_id)
            self._models[key] = (model.to(self.device), info)
        return self._models[key]

