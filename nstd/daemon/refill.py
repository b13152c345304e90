"""Continuous batching in the daemon: queued jobs of a running batch's key take the
places of its finished photos, under the batch's claim. Prefetched newcomers go first
(see prefetch), else they are claimed and loaded when asked."""

from __future__ import annotations

import time
from functools import partial
from typing import Callable

from nstd.config import Config
from nstd.daemon.database import Unavailable
from nstd.daemon.journal import Job, Journal
from nstd.daemon.prefetch import Prefetch
from nstd.log import get
from nstd.pipeline import Task

log = get("nstd.worker")
PREFETCH = 4  # newcomers kept claimed and loaded ahead of a running batch, at most

Load = Callable[[Journal, list[Job]], list[Task]]  # the load stage, failures told to the journal
# Whether the batch may take newcomers now: not while stopping, not once it met the
# outbox's trouble, not while the outbox is paused. `look` (True only on the batch's own
# thread) lets it look at the outbox again rather than go by what was last seen.
Admits = Callable[[bool], bool]


class Refill:
    def __init__(self, cfg: Config, head: Job, owner: str, load: Load, admits: Admits, places: int):
        self.cfg, self.head, self.owner, self.load, self.admits = cfg, head, owner, load, admits
        self.ahead = Prefetch(self.fetch, partial(Journal, cfg.journal_target), min(places, PREFETCH))

    def __enter__(self) -> "Refill":
        self.ahead.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.ahead.__exit__(*exc)

    def take(self, journal: Journal, n: int) -> list[tuple[Job, Task]]:
        """Up to n newcomers, each with its task: prefetched ones first."""
        if not self.admits(True):
            return []
        got = self.ahead.take(n)
        if len(got) < n:
            try:
                got += self.fetch(journal, n - len(got))
            except Unavailable:  # a database outage must not hold the batch up
                pass
        if got:
            log.info("joined_batch", batch=self.head.batch_id, jobs=[job.id for job, _ in got])
        return got

    def fetch(self, journal: Journal, n: int) -> list[tuple[Job, Task]]:
        """Up to n queued jobs of the batch's key, claimed under its token and loaded. Only
        while that key's job is the oldest waiting, so other sizes keep their turn; never
        where the batch admits none: a photo it put off would only come straight back."""
        if not self.admits(False):
            return []
        now = time.time()
        raw = getattr(journal, "raw", journal)  # an outage is the caller's to ride out, not to wait for
        oldest = raw.oldest_queued(now)
        head = self.head
        if oldest is None or oldest.batch_key != head.batch_key:
            return []
        jobs = {j.id: j for j in raw.claim(head.batch_key, n, head.batch_id, now, self.owner, self.cfg.worker.lease)}
        if jobs and not self.admits(False):  # trouble met while claiming: the put-off photo may be among them
            raw.requeue(list(jobs), head.batch_id)
            return []
        tasks = self.load(journal, list(jobs.values()))
        guided = [t.job_id for t in tasks if t.guide is not None]
        if guided:  # queued before guided jobs had their own key: they run in a batch of their own
            raw.requeue(guided, head.batch_id)
        return [(jobs[t.job_id], t) for t in tasks if t.guide is None]

    def give_back(self, journal: Journal) -> None:
        """What was claimed ahead and never started goes back to the queue, as if never claimed."""
        back = [job.id for job, _ in self.ahead.leftover()]
        if back:
            journal.requeue(back, self.head.batch_id)
