"""The outcome policy of the daemon's jobs: publish a finished one to the outbox and the
journal; try one again later, defer it while its destination mends, or set it aside in
failed. Outcomes are told to the journal by the thread that has them."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Callable

from nstd import faults
from nstd.config import Config, WorkerConfig
from nstd.daemon import gallery, outbox
from nstd.daemon.journal import Job, Journal, State
from nstd.daemon.loader import Unread
from nstd.daemon.outage import PatientJournal, patiently
from nstd.engine.types import TransferResult
from nstd.fsutil import is_share_error
from nstd.log import get
from nstd.pipeline import Task, output_exif

log = get("nstd.worker")


def retry_or_fail(journal: Journal, job: Job, error: str, policy: WorkerConfig, final: bool = False) -> None:
    """A job that did not come out: queued again after a growing delay, or, at its last
    attempt (or `final`), failed for good."""
    fresh = journal.get_jobs([job.id])[0]
    if final or fresh.attempts >= policy.max_attempts:
        journal.fail(job.id, f"{error} (after {fresh.attempts} attempts)", job.batch_id)
        log.warning("failed", job=job.id, input=job.relpath, error=error, attempts=fresh.attempts)
    else:
        delay = policy.retry_backoff * 2 ** (fresh.attempts - 1)
        journal.retry(job.id, error, delay, job.batch_id)
        log.warning("retry_later", job=job.id, input=job.relpath, error=error, in_seconds=delay)


def unread(journal: Journal, job: Job, why: Unread, policy: WorkerConfig) -> None:
    """A job whose input could not be loaded: it waits for a share that is away without
    spending an attempt, is tried again where that may help, else fails."""
    if why.share:
        journal.defer(job.id, why.error, policy.retry_backoff, job.batch_id)
    elif why.transient:
        retry_or_fail(journal, job, why.error, policy)
    else:
        journal.fail(job.id, why.error, job.batch_id)


def update_gallery(outbox_dir: Path, journal: Journal) -> bool:
    """The gallery page after a batch; a convenience, so its trouble fails nothing.
    Whether it was written (a write cut short may leave a temporary file behind)."""
    try:
        gallery.write(outbox_dir, journal)
    except OSError as e:
        # A share that is away is said once by the supervisor, not at each write.
        (log.info if is_share_error(e) else log.warning)("gallery_not_written", error=str(e))
        return False
    return True


class Outcomes:
    """A batch's finished and refused jobs, on the publisher's thread (see handoff): the
    outputs into the outbox, the outcomes into the journal."""

    def __init__(self, cfg: Config, journal: Journal, jobs: dict[int, Job], give_up: Callable[[], bool],
                 wait: Callable[[float], object]):
        self.cfg, self.jobs = cfg, jobs
        self.give_up, self.wait = give_up, wait
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
        raw = patiently(lambda: Journal(self.cfg.journal_target), "open the journal", self.give_up, self.wait)
        self._local.journal = PatientJournal(raw, self.give_up, self.wait)
        try:
            yield
        finally:
            raw.close()

    def publish(self, task: Task, result: TransferResult, entry: dict) -> None:
        job = self.jobs[task.job_id]
        self.ended.add(job.id)
        if not self.journal.holds(job.id, job.batch_id):
            # Cancelled, or our lease ran out (a long cut from the database) and another
            # worker has the job: its output is the one that counts, so ours is not
            # written over it.
            self._not_held(job, "not_published")
            return
        try:
            path = outbox.write(self.cfg.outbox, job, result.image, entry, result.snapshots,
                                output_exif(task.photo, task.style), task.photo.bits)
        except ValueError as e:  # a name that would leave the outbox
            self.journal.fail(job.id, f"refused output path: {e}", job.batch_id)
            return
        except OSError as e:
            self._unwritten(job, e)
            return
        if not self.journal.finish(job.id, str(path.relative_to(self.cfg.outbox)), job.batch_id):
            if self._not_held(job, "finish_refused"):
                outbox.withdraw(self.cfg.outbox, job)  # cancelled while it was being written
            return
        faults.point("after_finish")
        gallery.job_done(self.cfg.outbox, job.id, job.input_sha256, task.photo.pixels, task.style, result.image,
                         task.guide)
        log.info("done", job=job.id, input=job.relpath, style=job.style, output=str(path),
                 seconds=entry["timings"]["seconds"], batch=entry["batch"]["size"])

    def _not_held(self, job: Job, event: str) -> bool:
        """Log why a job's outcome is not ours to record; True where it was cancelled."""
        [now] = self.journal.get_jobs([job.id])
        if now.state is State.CANCELLED:
            log.info(event, job=job.id, input=job.relpath, reason=now.error)
            return True
        log.warning(event, job=job.id, input=job.relpath, reason="claim lost to another worker")
        return False

    def _unwritten(self, job: Job, e: OSError) -> None:
        """An output that could not be written: deferred where the outbox is the trouble
        (full, read-only, a share away), else failed."""
        if not outbox.destination_trouble(e):
            self.journal.fail(job.id, f"cannot write output: {e}", job.batch_id)
            return
        delay = self.cfg.worker.retry_backoff
        # Troubled before the job is queued again: the batch's refills, on other threads,
        # must not take it back into this batch past its delay.
        self.troubled = True
        self.journal.defer(job.id, f"cannot write output: {e.strerror}", delay, job.batch_id)
        (log.info if is_share_error(e) else log.warning)(
            "output_deferred", job=job.id, input=job.relpath, error=e.strerror, in_seconds=delay)

    def refuse(self, task: Task, reason: str) -> None:
        job = self.jobs[task.job_id]
        self.ended.add(job.id)
        retry_or_fail(self.journal, job, reason, self.cfg.worker, final=True)
