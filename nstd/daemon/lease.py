"""A running batch's claim kept alive: its lease renewed on a connection of its own, and
the id its worker's claims are recorded under."""

from __future__ import annotations

import os
import threading
import time

import torch

from nstd.daemon.journal import LEASE_SECONDS, Journal, WorkerInfo, WorkerState
from nstd.errors import NstdError
from nstd.log import get

log = get("nstd.worker")


class LeaseKeeper(threading.Thread):
    """Renews a running batch's lease, on its own connection, whatever the iterations'
    pace. A renewal that finds the jobs gone means another worker has them now."""

    def __init__(self, target, batch_id: str, worker: WorkerInfo | None = None, lease: float = LEASE_SECONDS):
        super().__init__(name=f"lease-{batch_id}", daemon=True)
        self.target, self.batch_id, self.worker, self.lease = target, batch_id, worker, lease
        self.every = lease / 4  # three renewals may fail before the lease runs out
        self.done = threading.Event()
        self.lost = False

    def run(self) -> None:
        journal = None
        while not self.done.wait(self.every):
            try:
                journal = journal or Journal(self.target)
                if self.worker is not None:
                    journal.beat(self.worker, WorkerState.WORKING, time.time())
                if journal.renew(self.batch_id, time.time(), self.lease) == 0:
                    self.lost = True
                    log.error("claim_lost", batch=self.batch_id,
                              meaning="its lease ran out and another worker took the jobs; not publishing")
                    return
            except NstdError as e:  # the database is away: keep working, renew when it is back
                log.warning("lease_not_renewed", batch=self.batch_id, error=str(e))
                journal = None
        if journal is not None:
            journal.close()

    def stop(self) -> None:
        self.done.set()


def owner_id(host: str, device: torch.device | str, pid: int | None = None) -> str:
    """What a worker's claims are recorded under: host (config `host`), process and device."""
    return f"{host}:{pid or os.getpid()}:{device}"
