"""The daemon's batch session (pipeline.Work): one claimed batch as the engine drives it.
It hands over newcomers from the refill, hears each iteration (the stop's grace, a lost
claim, the loss log, the journal's progress) and passes the outcomes on."""

from __future__ import annotations

import time
from enum import Enum
from typing import Callable

from nstd.daemon.database import Unavailable
from nstd.daemon.journal import Job, Journal
from nstd.daemon.lease import LeaseKeeper
from nstd.daemon.outcomes import Outcomes
from nstd.daemon.refill import Refill
from nstd.engine import speed
from nstd.engine.resize import long_side_size
from nstd.engine.session import Drop, Verdict
from nstd.engine.types import TransferResult
from nstd.log import get
from nstd.params import TransferParams
from nstd.pipeline import Task

log = get("nstd.worker")
CANCEL_LOOK = 1.0  # seconds between looks for cancelled jobs in the journal


class Stop(Enum):
    """Why a batch stopped before its end."""

    DEADLINE = "stopping"  # the stop's grace ran out: what had not finished is queued again
    CLAIM_LOST = "claim lost"  # another worker has the jobs now: nothing of ours is recorded


class DaemonBatch:
    def __init__(self, journal: Journal, outcomes: Outcomes, refill: Refill | None, keeper: LeaseKeeper,
                 pace: speed.Pace, deadline: Callable[[], float | None]):
        self.journal, self.outcomes, self.refill, self.keeper = journal, outcomes, refill, keeper
        self.pace, self.deadline = pace, deadline
        self.looked = float("-inf")  # when cancels were last looked for, by the pace's clock
        self.joined = {job_id: 0 for job_id in outcomes.jobs}  # each job's loop iteration at joining
        self.iteration = 0
        self.stopped: Stop | None = None

    def unfinished(self) -> list[int]:
        """The jobs that joined and have no outcome."""
        return [i for i in self.joined if i not in self.outcomes.ended]

    def take(self, n: int) -> list[Task]:
        got = [] if self.refill is None else self.refill.take(self.journal, n)
        for job, _ in got:
            self.outcomes.jobs[job.id] = job
            self.joined[job.id] = self.iteration
        return [task for _, task in got]

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        self.iteration = iteration
        self.stopped = self._stop()
        if self.stopped is not None:
            return Verdict.STOP
        if losses is not None:
            log.info("progress", jobs=list(self.joined), iteration=losses[0]["iteration"], of=self.pace.total,
                     loss=[round(r["total"], 5) for r in losses])
        if self.pace.due(iteration):
            self._report(iteration)
        cancelled = self._cancelled()
        return Drop(frozenset(cancelled)) if cancelled else Verdict.GO

    def _cancelled(self) -> set[int]:
        """The running jobs cancelled since the last look (nstd cancel, from any host):
        they leave the batch, nothing of them published, and their places are refilled."""
        now = self.pace.clock()
        if now - self.looked < CANCEL_LOOK:
            return set()
        self.looked = now
        try:
            found = getattr(self.journal, "raw", self.journal).cancelled_among(self.unfinished())
        except Unavailable:
            return set()  # looked for again once the database is back
        for job_id in sorted(found):
            self.outcomes.ended.add(job_id)
            job = self.outcomes.jobs[job_id]
            log.info("cancelled", job=job_id, input=job.relpath, style=job.style, batch=job.batch_id)
        return found

    def _stop(self) -> Stop | None:
        if self.keeper.lost:
            return Stop.CLAIM_LOST
        deadline = self.deadline()
        return Stop.DEADLINE if deadline is not None and time.time() > deadline else None

    def _report(self, iteration: int) -> None:
        """Each job's progress and time left into the journal, for nstd status on any host;
        not worth holding the batch for a database that is away."""
        now, rate, total = self.pace.last, self.pace.rate(iteration), self.pace.total
        raw = getattr(self.journal, "raw", self.journal)
        try:
            for joined, ids in self._by_start().items():
                done = min(iteration - joined, total)
                left = self.pace.left(done)
                raw.progress(ids, done, total, rate, None if left is None else now + left)
        except Unavailable:
            pass

    def _by_start(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for job_id, start in self.joined.items():
            out.setdefault(start, []).append(job_id)
        return out

    def publish(self, task: Task, result: TransferResult, log_entry: dict) -> None:
        self.outcomes.publish(task, result, log_entry)

    def refuse(self, task: Task, reason: str) -> None:
        self.outcomes.refuse(task, reason)

    def on_thread(self):
        return self.outcomes.on_thread()



def pace_for(head: Job, p: TransferParams, clock: Callable[[], float]) -> speed.Pace:
    """A batch's pace, its later scales' iterations counted dearer."""
    long_side = max(head.height, head.width)
    scales = [(*long_side_size(head.height, head.width, s.long_side), s.iterations) for s in p.scales(long_side)]
    return speed.Pace(p.total_iterations(long_side), scales, p.settings().layers, clock)
