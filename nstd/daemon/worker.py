"""One worker per device: claims batches and runs them through the pipeline, loading
from the spool and publishing to the outbox and the journal."""

from __future__ import annotations

import contextlib
import threading
import time
from functools import partial
from typing import Callable

import torch

from nstd import faults
from nstd.config import Config
from nstd.daemon import folders, gallery, outbox
from nstd.daemon.database import Unavailable
from nstd.daemon.journal import Job, Journal, WorkerInfo, WorkerState
from nstd.daemon.lease import LeaseKeeper, owner_id
from nstd.daemon.loader import Loader
from nstd.daemon.outage import PatientJournal, patiently
from nstd.daemon.prefetch import Prefetch
from nstd.daemon.scheduler import Scheduler
from nstd.daemon.styles import StyleBook
from nstd.engine.device import describe, free_memory, total_memory
from nstd.engine.memory import MemoryPlanner
from nstd.engine import speed
from nstd.engine.resize import long_side_size
from nstd.engine.runner import Engine
from nstd.engine.types import TransferResult
from nstd.engine.vgg import VGGFeatures
from nstd.faces import FaceFinder
from nstd.fsutil import is_share_error, own_litter
from nstd.log import get
from nstd.params import TransferParams, from_dict
from nstd.guide import GuideSpec, styled_regions
from nstd.pipeline import Pipeline, Task, output_exif
from nstd.weights import WeightInfo

log = get("nstd.worker")
PROBE_EVERY = 5.0  # seconds between checks that the outbox can be written
BEAT_EVERY = 15.0  # seconds between an idle worker's heartbeats in the journal
PREFETCH = 4  # newcomers kept claimed and loaded ahead of a running batch, at most


class StopBatch(Exception):
    """Raised from the progress callback when a stop's grace period has run out."""


class ClaimLost(Exception):
    """Raised from the progress callback when the batch's lease was lost to another worker."""


class Worker(threading.Thread):
    def __init__(self, cfg: Config, styles: Callable[[], StyleBook],
                 load_weights: Callable[[str], tuple[dict, WeightInfo]], device: torch.device,
                 stopping, deadline: Callable[[], float | None] | None = None):
        super().__init__(name=f"worker-{device}", daemon=True)
        self.cfg, self.styles, self.device, self.stopping = cfg, styles, device, stopping
        self.load_weights = load_weights
        self.deadline: float | None = None  # set by a stop: finish the batch by then
        self._deadline_source = deadline  # or read from here (a worker process's shared value)
        self._models: dict[tuple, tuple[VGGFeatures, WeightInfo]] = {}
        # The configured switches; the engine decides what is left on auto per scale.
        switches = cfg.worker.switches
        self.planner = MemoryPlanner(device, switches, partial(free_memory, device))
        self.pipeline = Pipeline(Engine(self.planner, switches), self._model,
                                 style_for=lambda name: self.styles().get(name))
        self.info = WorkerInfo(owner_id(cfg.host, device), cfg.host, describe(device), total_memory(device))
        self.error: BaseException | None = None
        self.paused: str | None = None  # why no work is taken now (the outbox cannot be written)
        self._probed = float("-inf")
        self.loader = Loader(cfg.max_pixels, FaceFinder())  # its face detector loaded when first asked
        self._mounts = folders.mounts_of({"outbox": cfg.outbox, "spool": cfg.spool_dir})
        # Times a batch's progress: the wall clock, as the time left is written as a moment
        # that nstd status, on any host, reads against its own.
        self.clock: Callable[[], float] = time.time

    def run(self) -> None:
        try:
            journal = PatientJournal(Journal(self.cfg.journal_target), self._give_up, self.stopping.wait)
            journal.beat(self.info, "starting", time.time())
        except BaseException as e:  # noqa: BLE001 - reported by the health loop, as below
            self.error = e
            log.error("worker_crashed", error=f"{type(e).__name__}: {e}")
            return
        self._say_speed(journal.raw)
        try:
            self._loop(journal)
            journal.raw.leave(self.info.owner)
        except Unavailable:
            log.info("worker_stopped", device=str(self.device), note="without the database")
        except BaseException as e:  # noqa: BLE001 - reported by the health loop, which restarts us
            self.error = e
            log.error("worker_crashed", error=f"{type(e).__name__}: {e}")
        finally:
            journal.raw.close()

    def _loop(self, journal: PatientJournal) -> None:
        scheduler = Scheduler(journal, self.cfg.worker.batch_window, self.max_batch_for, owner=self.info.owner,
                              lease=self.cfg.worker.lease)
        beaten = float("-inf")
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - beaten >= BEAT_EVERY:
                beaten = now
                journal.beat(self.info, WorkerState.PAUSED if self.paused else WorkerState.IDLE, time.time(),
                             self.paused)
            # Only with work waiting: an idle worker has no reason to write to a share.
            was_paused = self.paused is not None
            if journal.oldest_queued(time.time()) is not None and self._outbox_unwritable(now):
                self.stopping.wait(1.0)
                continue
            if was_paused and self.paused is None:  # between batches: none of its writes is under way
                for path in own_litter(self.cfg.outbox):
                    path.unlink(missing_ok=True)
            batch = scheduler.next_batch()
            if not batch:
                self.stopping.wait(0.2)
                continue
            journal.beat(self.info, "working", time.time())
            self.process(journal, batch)
            beaten = float("-inf")  # say it is idle again at once

    def _give_up(self) -> bool:
        """Stop waiting for the database: stopping with no batch, or the stop's grace is over."""
        if not self.stopping.is_set():
            return False
        deadline = self.deadline if self._deadline_source is None else self._deadline_source()
        return not deadline or time.time() > deadline

    def _say_speed(self, journal: Journal | None = None) -> None:
        """Log how long a photo will take here at the configured settings: on a CPU it is
        minutes, and a user should hear that before waiting for the first one. The rate goes
        into the journal too: nstd check quotes it rather than measure on a busy device."""
        p = self.cfg.transfer
        try:
            model, _ = self._model(p)
            rate = speed.measure(model, self.cfg.worker.switches).flops_per_second
        except Exception as e:  # noqa: BLE001 - an estimate is worth a line, not the worker
            log.warning("expected_speed_unknown", device=str(self.device), error=f"{type(e).__name__}: {e}")
            return
        seconds = speed.photo_seconds(rate, p.typical_scales(), p.settings().layers)
        log.info("expected_speed", device=str(self.device), per_photo_and_style=speed.say(seconds),
                 size=p.size, iterations=p.iterations, gflops=round(rate / 1e9, 1))
        if journal is not None:
            try:
                journal.note_speed(self.info.owner, rate, time.time())
            except Unavailable:
                pass  # nstd check measures for itself then

    def _outbox_unwritable(self, now: float) -> bool:
        """Take no work while the outbox cannot be written or the spool read (a share that
        is away): the photos would only fail. The supervisor warns of it, once."""
        if self.paused is None and now - self._probed < PROBE_EVERY:
            return False
        self._probed = now
        trouble = folders.paused_now({"outbox": self.cfg.outbox, "spool": self.cfg.spool_dir},
                                     {"outbox": self.cfg.outbox}, self._mounts)
        reason = trouble and trouble.reason
        if reason != self.paused:
            if reason:
                log.info("worker_paused", reason=reason, device=str(self.device))
            else:
                log.info("worker_resumed", device=str(self.device))
            self.paused = reason
        return reason is not None

    def max_batch_for(self, job: Job) -> int:
        if self.cfg.worker.max_batch is not None:
            return self.cfg.worker.max_batch
        p = from_dict(job.params)
        finest = p.scales(max(job.height, job.width))[-1].lbfgs_history
        regions = styled_regions(GuideSpec.from_dict(job.params.get("guide")), p.protect)
        return self.planner.max_batch(job.height, job.width, p.settings(), finest, regions)

    def process(self, journal: Journal, batch: list[Job]) -> None:
        keeper = LeaseKeeper(self.cfg.journal_target, batch[0].batch_id, self.info, self.cfg.worker.lease)
        keeper.start()
        try:
            tasks = self._load(journal, batch)
            if tasks:
                self._run(journal, batch, tasks, keeper)
        finally:
            keeper.stop()

    def _load(self, journal: Journal, batch: list[Job]) -> list[Task]:
        """The load stage (see loader.py), and each failure told to the journal here, on the
        caller's thread and connection."""
        read = self.loader.read_batch(self.styles(), batch)
        tasks = []
        for job in batch:
            outcome = read[job.id]
            if isinstance(outcome, Task):
                tasks.append(outcome)
            elif outcome.share:
                journal.defer(job.id, outcome.error, self.cfg.worker.retry_backoff, job.batch_id)
                self._probed = float("-inf")  # look at the folders before the next claim
            elif outcome.transient:
                self._transient(journal, job, outcome.error)
            else:
                journal.fail(job.id, outcome.error, job.batch_id)
        return tasks

    def _run(self, journal: Journal, batch: list[Job], tasks: list[Task], keeper: LeaseKeeper) -> None:
        sink = _Outbox(self, journal, {j.id: j for j in batch})
        p = tasks[0].params
        long_side = max(batch[0].height, batch[0].width)
        total = p.total_iterations(long_side)
        scales = [(*long_side_size(batch[0].height, batch[0].width, s.long_side), s.iterations)
                  for s in p.scales(long_side)]
        token = batch[0].batch_id
        running = _Running({int(t.job_id): 0 for t in tasks})
        ahead = Prefetch(partial(self._fetch, batch[0], sink), partial(Journal, self.cfg.journal_target),
                         min(len(tasks), PREFETCH)) if self.cfg.worker.refill else None
        try:
            with ahead or contextlib.nullcontext():
                more = None if ahead is None else self._more(journal, batch[0], sink, running, ahead)
                progress = self._progress(journal, running, total, keeper, scales, p.settings().layers)
                self.pipeline.run(tasks, sink, progress, more)
        except StopBatch:
            ids = [i for i in running.joined if i not in sink.ended]
            journal.requeue(ids, token)
            log.info("batch_requeued", jobs=ids, reason="stopping")
            return
        except ClaimLost:
            return  # the jobs are another worker's now; nothing of ours is recorded
        except Exception as e:  # noqa: BLE001 - a deterministic engine error fails what it had not published
            error = f"{type(e).__name__}: {e}"
            for job_id in running.joined:
                if job_id not in sink.ended:
                    journal.fail(job_id, error, token)
            log.error("batch_failed", jobs=list(running.joined), error=error)
            return
        finally:
            if ahead is not None and (back := [job.id for job, _ in ahead.leftover()]):
                journal.requeue(back, token)  # claimed ahead, never started: as if never claimed
        self._update_gallery(journal)

    def _more(self, journal: Journal, head: Job, sink: "_Outbox", running: "_Running", ahead: Prefetch):
        """Continuous batching: queued jobs of the running batch's key take the places of
        finished photos, under the batch's claim: prefetched ones first, else claimed and
        loaded here. Never while stopping or paused (see `_fetch` for the rest)."""
        def more(n: int) -> list[Task]:
            if not self._refilling(sink) or self._outbox_unwritable(time.monotonic()):
                return []
            got = ahead.take(n)
            if len(got) < n:
                try:
                    got += self._fetch(head, sink, journal, n - len(got))
                except Unavailable:  # a database outage must not hold the batch up
                    pass
            sink.jobs.update({job.id: job for job, _ in got})
            running.joined.update({job.id: running.iteration for job, _ in got})
            if got:
                log.info("joined_batch", batch=head.batch_id, jobs=[job.id for job, _ in got])
            return [task for _, task in got]

        return more

    def _refilling(self, sink: "_Outbox") -> bool:
        """Whether a running batch may take newcomers: not while stopping, and not once it
        met the outbox's trouble."""
        return not (self.stopping.is_set() or self.deadline is not None or sink.troubled)

    def _fetch(self, head: Job, sink: "_Outbox", journal: Journal, n: int) -> list[tuple[Job, Task]]:
        """Up to n queued jobs of the batch's key, claimed under its token and loaded. Only
        while that key's job is the oldest waiting, so other sizes keep their turn; not
        while stopping, and not once this batch met the outbox's trouble: the photo it put
        off would only come straight back."""
        if not self._refilling(sink) or self.paused:  # paused: as the loop last saw the outbox
            return []
        now = time.time()
        raw = getattr(journal, "raw", journal)  # an outage is the caller's to ride out, not to wait for
        oldest = raw.oldest_queued(now)
        if oldest is None or oldest.batch_key != head.batch_key:
            return []
        jobs = {j.id: j for j in raw.claim(head.batch_key, n, head.batch_id, now, self.info.owner,
                                           self.cfg.worker.lease)}
        if jobs and not self._refilling(sink):  # trouble met while claiming: the put-off photo may be among them
            raw.requeue(list(jobs), head.batch_id)
            return []
        tasks = self._load(journal, list(jobs.values()))
        guided = [int(t.job_id) for t in tasks if t.guide is not None]
        if guided:  # queued before guided jobs had their own key: they run in a batch of their own
            raw.requeue(guided, head.batch_id)
        return [(jobs[int(t.job_id)], t) for t in tasks if t.guide is None]

    def _update_gallery(self, journal: Journal) -> None:
        try:
            gallery.write(self.cfg.outbox, journal)
        except OSError as e:  # the page is a convenience; the outputs are what matter
            # A share that is away is said once by the supervisor, not at each write.
            (log.info if is_share_error(e) else log.warning)("gallery_not_written", error=str(e))

    def _transient(self, journal: Journal, job: Job, error: str, final: bool = False) -> None:
        fresh = journal.get_jobs([job.id])[0]
        if final or fresh.attempts >= self.cfg.worker.max_attempts:
            journal.fail(job.id, f"{error} (after {fresh.attempts} attempts)", job.batch_id)
            log.warning("failed", job=job.id, input=job.relpath, error=error, attempts=fresh.attempts)
        else:
            delay = self.cfg.worker.retry_backoff * 2 ** (fresh.attempts - 1)
            journal.retry(job.id, error, delay, job.batch_id)
            log.warning("retry_later", job=job.id, input=job.relpath, error=error, in_seconds=delay)

    def _progress(self, journal: Journal, running: "_Running", total: int, keeper: LeaseKeeper,
                  scales: list[tuple[int, int, int]] | None = None, layers: frozenset[str] | None = None):
        """The batch's progress callback: stops, lost claims, the loss log, and the journal's
        progress, reported on the clock (see speed.Pace) rather than at each logged loss."""
        pace = speed.Pace(total, scales, layers, self.clock)

        def update(iteration: int, losses: list | None) -> None:
            running.iteration = iteration
            if keeper.lost:
                raise ClaimLost()
            deadline = self.deadline
            if deadline is None and self._deadline_source is not None:
                deadline = self._deadline_source()
            if deadline is not None and time.time() > deadline:
                raise StopBatch()
            if losses is not None:
                log.info("progress", jobs=list(running.joined), iteration=losses[0]["iteration"], of=total,
                         loss=[round(r["total"], 5) for r in losses])
            if pace.due(iteration):
                now, rate = pace.last, pace.rate(iteration)
                try:  # for nstd status only: not worth holding the batch for the database
                    for joined, ids in running.by_start().items():
                        done = min(iteration - joined, total)
                        left = pace.left(done)
                        getattr(journal, "raw", journal).progress(ids, done, total, rate,
                                                                  None if left is None else now + left)
                except Unavailable:
                    pass

        return update

    def _model(self, p: TransferParams) -> tuple[VGGFeatures, WeightInfo]:
        key = (p.model, p.pooling, p.settings().layers)
        if key not in self._models:
            sd, info = self.load_weights(p.model)
            model = VGGFeatures(sd, info.preprocessing, p.settings().layers, p.pooling, info.model_id)
            self._models[key] = (model.to(self.device), info)
        return self._models[key]


class _Running:
    """A running batch's jobs and the loop iteration each joined at."""

    def __init__(self, joined: dict[int, int]):
        self.joined = joined
        self.iteration = 0

    def by_start(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for job_id, start in self.joined.items():
            out.setdefault(start, []).append(job_id)
        return out


class _Outbox:
    """The daemon's sink: outputs into the outbox, outcomes into the journal."""

    def __init__(self, worker: Worker, journal: Journal, jobs: dict[int, Job]):
        self.worker, self.jobs = worker, jobs
        self._home = journal  # the batch's thread's
        self._local = threading.local()
        self.ended: set[int] = set()
        self.troubled = False  # an output was put off for the outbox's sake

    @property
    def journal(self) -> Journal:
        """This thread's journal: a connection belongs to the thread that opened it."""
        return getattr(self._local, "journal", None) or self._home

    @contextlib.contextmanager
    def on_thread(self):
        """The publisher thread's own connection, opened (and used) through an outage."""
        w = self.worker
        raw = patiently(lambda: Journal(w.cfg.journal_target), "open the journal", w._give_up, w.stopping.wait)
        self._local.journal = PatientJournal(raw, w._give_up, w.stopping.wait)
        try:
            yield
        finally:
            raw.close()

    def publish(self, task: Task, result: TransferResult, entry: dict) -> None:
        job = self.jobs[int(task.job_id)]
        self.ended.add(job.id)
        outbox_dir = self.worker.cfg.outbox
        if not self.journal.holds(job.id, job.batch_id):
            # Our lease ran out (a long cut from the database) and another worker has the
            # job: its output is the one that counts, so ours is not written over it.
            log.warning("not_published", job=job.id, input=job.relpath, reason="claim lost to another worker")
            return
        try:
            path = outbox.write(outbox_dir, job, result.image, entry, result.snapshots,
                                output_exif(task.photo, task.style), task.photo.bits)
        except ValueError as e:  # a name that would leave the outbox
            self.journal.fail(job.id, f"refused output path: {e}", job.batch_id)
            return
        except OSError as e:
            if outbox.destination_trouble(e):  # the outbox's trouble, not the photo's
                delay = self.worker.cfg.worker.retry_backoff
                # Troubled before the job is queued again: the batch's refills, on other
                # threads, must not take it back into this batch past its delay.
                self.troubled = True
                self.journal.defer(job.id, f"cannot write output: {e.strerror}", delay, job.batch_id)
                self.worker._probed = float("-inf")  # look at the outbox before the next claim
                (log.info if is_share_error(e) else log.warning)(
                    "output_deferred", job=job.id, input=job.relpath, error=e.strerror, in_seconds=delay)
            else:
                self.journal.fail(job.id, f"cannot write output: {e}", job.batch_id)
            return
        if not self.journal.finish(job.id, str(path.relative_to(outbox_dir)), job.batch_id):
            log.warning("finish_refused", job=job.id, input=job.relpath, reason="claim lost to another worker")
            return
        faults.point("after_finish")
        gallery.job_done(outbox_dir, job.id, job.input_sha256, task.photo.pixels, task.style, result.image,
                         task.guide)
        log.info("done", job=job.id, input=job.relpath, style=job.style, output=str(path),
                 seconds=entry["timings"]["seconds"], batch=entry["batch"]["size"])

    def refuse(self, task: Task, reason: str) -> None:
        job = self.jobs[int(task.job_id)]
        self.ended.add(job.id)
        self.worker._transient(self.journal, job, reason, final=True)
