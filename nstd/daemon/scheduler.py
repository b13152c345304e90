"""Queued jobs into same-size batches: oldest first, with a short wait for company."""

from __future__ import annotations

import time
import uuid
from typing import Callable

from nstd import faults
from nstd.daemon.journal import LEASE_SECONDS, Job, Journal


class Scheduler:
    def __init__(self, journal: Journal, window: float, max_batch_for: Callable[[Job], int],
                 clock: Callable[[], float] = time.time, owner: str | None = None, lease: float = LEASE_SECONDS):
        self.journal, self.window, self.max_batch_for, self.clock = journal, window, max_batch_for, clock
        self.owner = owner  # recorded on each claim, so a dead worker's jobs can be handed back
        self.lease = lease

    def next_batch(self) -> list[Job]:
        """Claim the next batch, or return [] to be asked again shortly.

        The oldest queued job always leads, so a lone odd-sized photo waits at most
        `window` seconds for others of its size and is never starved by busier sizes.
        """
        now = self.clock()
        head = self.journal.oldest_queued(now)
        if head is None:
            return []
        limit = max(1, self.max_batch_for(head))
        waiting = self.journal.count_queued(head.batch_key, now)
        if waiting < limit and now - head.queued < self.window:
            return []
        batch = self.journal.claim(head.batch_key, limit, uuid.uuid4().hex[:12], now, self.owner, self.lease)
        faults.point("after_claim")
        return batch
