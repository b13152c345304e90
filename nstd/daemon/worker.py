"""One worker per device: claims batches and runs them through the pipeline, loading
from the spool and publishing to the outbox and the journal."""

from __future__ import annotations

import contextlib
import threading
import time
from functools import partial
from typing import Callable

import torch

from nstd.config import Config
from nstd.daemon import expected, folders, outcomes
from nstd.daemon.batch import DaemonBatch, Stop, pace_for
from nstd.daemon.database import Unavailable
from nstd.daemon.journal import Job, Journal, WorkerInfo, WorkerState
from nstd.daemon.lease import LeaseKeeper, owner_id
from nstd.daemon.loader import Loader, Unread
from nstd.daemon.outage import PatientJournal
from nstd.daemon.outcomes import Outcomes
from nstd.daemon.refill import Refill
from nstd.daemon.scheduler import Scheduler
from nstd.daemon.styles import StyleBook
from nstd.engine.device import describe, free_memory, total_memory
from nstd.engine.memory import MemoryPlanner
from nstd.engine.runner import Engine
from nstd.engine.session import Outcome
from nstd.engine.vgg import VGGFeatures
from nstd.faces import FaceFinder
from nstd.fsutil import clear_own_litter
from nstd.guide import GuideSpec, styled_regions
from nstd.log import get
from nstd.params import TransferParams, from_dict
from nstd.pipeline import Pipeline, Task
from nstd.weights import WeightInfo

log = get("nstd.worker")
PROBE_EVERY = 5.0  # seconds between checks that the outbox can be written
BEAT_EVERY = 15.0  # seconds between an idle worker's heartbeats in the journal


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
        self.planner = MemoryPlanner(device, switches, partial(free_memory, device), limit=cfg.worker.max_memory)
        self.pipeline = Pipeline(Engine(self.planner, switches), self._model,
                                 style_for=lambda name: self.styles().get(name))
        self.info = WorkerInfo(owner_id(cfg.host, device), cfg.host, describe(device), total_memory(device))
        self.error: BaseException | None = None
        self.paused: str | None = None  # why no work is taken now (the outbox cannot be written)
        self.held: str | None = None  # an operator's pause (nstd pause), as its reason says it
        self.littered = False  # a write to the outbox failed: its temporary file may be left
        self._probed = float("-inf")
        self.loader = Loader(cfg.max_pixels, FaceFinder())  # its face detector loaded when first asked
        self._mounts = folders.mounts_of({"outbox": cfg.outbox, "spool": cfg.spool_dir})
        # Times a batch's progress: the wall clock, as the time left is written as a moment
        # that nstd status, on any host, reads against its own.
        self.clock: Callable[[], float] = time.time

    def run(self) -> None:
        try:
            journal = PatientJournal(Journal(self.cfg.journal_target), self._give_up, self.stopping.wait)
            journal.beat(self.info, WorkerState.STARTING, time.time())
        except BaseException as e:  # noqa: BLE001 - reported by the health loop, as below
            self.error = e
            log.error("worker_crashed", error=f"{type(e).__name__}: {e}")
            return
        if self.cfg.worker.measure_speed:
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
            if self._held_now(journal) or now - beaten >= BEAT_EVERY:
                beaten = now
                reason = self.held or self.paused
                journal.beat(self.info, WorkerState.PAUSED if reason else WorkerState.IDLE, time.time(), reason)
            if self.held:
                self.stopping.wait(1.0)
                continue
            # Only with work waiting: an idle worker has no reason to write to a share.
            self.littered |= self.paused is not None
            if journal.oldest_queued(time.time()) is not None and self._outbox_unwritable(now):
                self.stopping.wait(1.0)
                continue
            self._tidy()
            batch = scheduler.next_batch()
            if not batch:
                self.stopping.wait(0.2)
                continue
            journal.beat(self.info, WorkerState.WORKING, time.time())
            self.process(journal, batch)
            beaten = float("-inf")  # say it is idle again at once

    def _tidy(self) -> None:
        """Between batches, so none of its writes is under way, and once the outbox is back:
        the temporary files of writes an outage cut short."""
        if self.littered and self.paused is None:
            self.littered = not clear_own_litter(self.cfg.outbox)

    def _held_now(self, journal: PatientJournal) -> bool:
        """Look for an operator's pause of this worker (nstd pause); True when that changed."""
        pause = journal.pause_of(self.cfg.host, str(self.device))
        held = None if pause is None else pause.reason
        if held == self.held:
            return False
        log.info("worker_held" if held else "worker_released", device=str(self.device), reason=held)
        self.held = held
        return True

    def _give_up(self) -> bool:
        """Stop waiting for the database: stopping with no batch, or the stop's grace is over."""
        if not self.stopping.is_set():
            return False
        deadline = self.deadline if self._deadline_source is None else self._deadline_source()
        return not deadline or time.time() > deadline

    def _say_speed(self, journal: Journal | None = None) -> None:
        try:
            model, _ = self._model(self.cfg.transfer)
        except Exception as e:  # noqa: BLE001 - an estimate is worth a line, not the worker
            log.warning("expected_speed_unknown", device=str(self.device), error=f"{type(e).__name__}: {e}")
            return
        expected.say_speed(self.cfg, model, str(self.device), self.info.owner, journal)

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
        """The load stage (see loader.py), each failure told to the journal here, on the
        caller's thread and connection."""
        read = self.loader.read_batch(self.styles(), batch)
        for job in batch:
            if isinstance(why := read[job.id], Unread):
                outcomes.unread(journal, job, why, self.cfg.worker)
                if why.share:
                    self._probed = float("-inf")  # look at the folders before the next claim
        return [t for t in read.values() if isinstance(t, Task)]

    def _run(self, journal: Journal, batch: list[Job], tasks: list[Task], keeper: LeaseKeeper) -> None:
        done = Outcomes(self.cfg, journal, {j.id: j for j in batch}, self._give_up, self.stopping.wait)
        refill = Refill(self.cfg, batch[0], self.info.owner, self._load, partial(self._admits, done),
                        len(tasks)) if self.cfg.worker.refill else None
        session = DaemonBatch(journal, done, refill, keeper, pace_for(batch[0], tasks[0].params, self.clock),
                              self._deadline_now)
        try:
            with refill or contextlib.nullcontext():
                outcome = self.pipeline.run(tasks, session)
        except Exception as e:  # noqa: BLE001 - a deterministic engine error fails what it had not published
            error = f"{type(e).__name__}: {e}"
            for job_id in session.unfinished():
                journal.fail(job_id, error, batch[0].batch_id)
            log.error("batch_failed", jobs=list(session.joined), error=error)
            return
        finally:
            if refill is not None:
                refill.give_back(journal)
            if done.troubled:
                self._probed = float("-inf")  # look at the outbox before the next claim
                self.littered = True
        if session.stopped is Stop.DEADLINE:
            ids = session.unfinished()
            journal.requeue(ids, batch[0].batch_id)
            log.info("batch_requeued", jobs=ids, reason="stopping")
        elif outcome is Outcome.COMPLETE:
            self.littered |= not outcomes.update_gallery(self.cfg.outbox, journal)
        # A lost claim leaves the jobs to the worker that has them: nothing of ours is recorded.

    def _deadline_now(self) -> float | None:
        """The moment a stop's grace runs out, or None while not stopping."""
        if self.deadline is None and self._deadline_source is not None:
            return self._deadline_source()
        return self.deadline

    def _admits(self, done: Outcomes, look: bool) -> bool:
        """Whether the running batch may take newcomers (see refill.Admits)."""
        if self.stopping.is_set() or self.deadline is not None or done.troubled or self.held:
            return False
        return not (self._outbox_unwritable(time.monotonic()) if look else self.paused)

    def _model(self, p: TransferParams) -> tuple[VGGFeatures, WeightInfo]:
        key = (p.model, p.pooling, p.settings().layers)
        if key not in self._models:
            sd, info = self.load_weights(p.model)
            model = VGGFeatures(sd, info.preprocessing, p.settings().layers, p.pooling, info.model_id)
            self._models[key] = (model.to(self.device), info)
        return self._models[key]
