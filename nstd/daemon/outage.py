"""Riding out a shared journal's outage (PostgreSQL restarted, the network cut).

While the database is away a host keeps computing its running batch, takes no new
work, and says so in the log and in systemd's STATUS. The worker's outcomes wait for
the database and its claims of new work do not (`PatientJournal`); the supervisor
notes the outage once (`Outage`) and, once the database is back, gives the other
hosts time to renew their leases before it takes any as expired: nobody could renew
while it was down.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from nstd.daemon.database import Unavailable
from nstd.daemon.journal import LEASE_SECONDS, Failure, Job, Journal, Pause, WorkerInfo, WorkerState
from nstd.daemon.notify import notify
from nstd.log import get

log = get("nstd.outage")
RETRY_SECONDS = 2.0
T = TypeVar("T")


class Notice:
    """Says once that the database is away, and once that it is back."""

    def __init__(self) -> None:
        self.away = False

    def down(self, doing: str, error: Unavailable) -> None:
        if not self.away:
            log.warning("database_unavailable", waiting_to=doing, error=str(error),
                        meaning="a running batch goes on; no new work until it is back")
            self.away = True

    def up(self, doing: str) -> None:
        if self.away:
            log.info("database_back", done=doing)
            self.away = False


def patiently(call: Callable[[], T], name: str, give_up: Callable[[], bool], wait: Callable[[float], object],
              notice: Notice | None = None) -> T:
    """`call()`, tried again every few seconds while the database is away, until `give_up`."""
    notice = notice or Notice()
    while True:
        try:
            result = call()
        except Unavailable as e:
            if give_up():
                raise
            notice.down(name, e)
            wait(RETRY_SECONDS)
            continue
        notice.up(name)
        return result


class PatientJournal:
    """The journal as a worker uses it, each verb deciding what an outage means for it.

    Patient: the outcomes of jobs the worker holds (`finish`, `fail`, `retry`, `defer`,
    `requeue`) and the reads they depend on (`holds` before an output is written,
    `get_jobs` for the attempts that choose retry or fail). Their work is done and
    paid for; given up, it would be computed again once the lease ran out, so they
    wait for the database, until `give_up` says the wait is no longer worth it (a stop
    whose grace has run out). So do `recent_done` and `recent_failures`: the gallery
    page is written whole from them after a batch, and an empty answer would blank it.

    Fail fast, answering "nothing" at once: taking new work (`oldest_queued`,
    `count_queued`, `claim`) and reports that the next round says again (`beat`,
    `progress`, `note_speed`). A worker waiting on a claim could not see a stop, a
    paused outbox or its own heartbeat, and holds nothing the wait would save; it takes
    nothing now and asks again on its next round. An operator's pause (`pause_of`) is
    read the same way. The verbs of new work pause
    RETRY_SECONDS first (`wait`, which a stop cuts short), so that round keeps to the
    outage's pace rather than asking the server many times a second.

    `raw` is the journal itself, for what the worker does outside these (opening,
    leaving, closing). A lease is renewed by `LeaseKeeper` on its own connection and
    clock, retried at its next renewal: not here. The outage is said once, and its end.
    """

    def __init__(self, journal: Journal, give_up: Callable[[], bool], wait: Callable[[float], object]):
        self.raw, self._give_up, self._wait = journal, give_up, wait
        self._notice = Notice()

    def _patiently(self, name: str, call: Callable[[], T]) -> T:
        return patiently(call, name, self._give_up, self._wait, self._notice)

    def _or_nothing(self, name: str, call: Callable[[], T], nothing: T, pause: bool = False) -> T:
        try:
            result = call()
        except Unavailable as e:
            self._notice.down(name, e)
            if pause:
                self._wait(RETRY_SECONDS)
            return nothing
        self._notice.up(name)
        return result

    # --- patient: outcomes of held jobs, and what they read ---------------------------

    def finish(self, job_id: int, output: str, token: str | None = None) -> bool:
        return self._patiently("finish", lambda: self.raw.finish(job_id, output, token))

    def fail(self, job_id: int, error: str, token: str | None = None) -> bool:
        return self._patiently("fail", lambda: self.raw.fail(job_id, error, token))

    def retry(self, job_id: int, error: str, delay: float, token: str | None = None) -> bool:
        return self._patiently("retry", lambda: self.raw.retry(job_id, error, delay, token))

    def defer(self, job_id: int, error: str, delay: float, token: str | None = None) -> bool:
        return self._patiently("defer", lambda: self.raw.defer(job_id, error, delay, token))

    def requeue(self, job_ids: list[int], token: str | None = None) -> int:
        return self._patiently("requeue", lambda: self.raw.requeue(job_ids, token))

    def holds(self, job_id: int, batch_id: str) -> bool:
        return self._patiently("holds", lambda: self.raw.holds(job_id, batch_id))

    def get_jobs(self, ids: list[int]) -> list[Job]:
        return self._patiently("get_jobs", lambda: self.raw.get_jobs(ids))

    def recent_done(self, limit: int = 200) -> list[Job]:
        return self._patiently("recent_done", lambda: self.raw.recent_done(limit))

    def recent_failures(self, limit: int = 10) -> list[Failure]:
        return self._patiently("recent_failures", lambda: self.raw.recent_failures(limit))

    # --- fail fast: new work, and reports said again next round -----------------------

    def oldest_queued(self, now: float) -> Job | None:
        return self._or_nothing("oldest_queued", lambda: self.raw.oldest_queued(now), None, pause=True)

    def count_queued(self, batch_key: str, now: float) -> int:
        return self._or_nothing("count_queued", lambda: self.raw.count_queued(batch_key, now), 0, pause=True)

    def claim(self, batch_key: str, limit: int, batch_id: str, now: float, owner: str | None = None,
              lease: float = LEASE_SECONDS) -> list[Job]:
        return self._or_nothing("claim", lambda: self.raw.claim(batch_key, limit, batch_id, now, owner, lease), [],
                                pause=True)

    def beat(self, worker: WorkerInfo, state: WorkerState, now: float, reason: str | None = None) -> None:
        self._or_nothing("beat", lambda: self.raw.beat(worker, state, now, reason), None)

    def progress(self, job_ids: list[int], iteration: int, total: int, rate: float | None = None,
                 eta: float | None = None) -> None:
        self._or_nothing("progress", lambda: self.raw.progress(job_ids, iteration, total, rate, eta), None)

    def note_speed(self, owner: str, flops_per_second: float, now: float) -> None:
        self._or_nothing("note_speed", lambda: self.raw.note_speed(owner, flops_per_second, now), None)

    def pause_of(self, host: str, device: str) -> Pause | None:
        """Fail fast too: with the database away no work is claimed anyway."""
        return self._or_nothing("pause_of", lambda: self.raw.pause_of(host, device), None)


class Outage:
    """The supervisor's view of the database: down since when, and whether it has been
    back long enough to judge other hosts' leases (`settled`)."""

    def __init__(self, renew_every: float):
        self.grace = 2 * renew_every  # every live host has renewed at least once by then
        self.down_since: float | None = None
        self.back_at: float | None = None
        self.count = 0  # outages since the daemon started, for /metrics

    def down(self, error: str, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
            self.count += 1
            log.error("database_unavailable", error=error,
                      meaning="running batches go on; no new photos are taken in or started until it is back")
        # The watchdog is kept: the daemon is alive, only waiting.
        notify(f"STATUS=database unavailable for {now - self.down_since:.0f} s: {error}; running batches go on, "
               "no new work until it is back\nWATCHDOG=1")

    def up(self, now: float) -> None:
        if self.down_since is not None:
            log.info("database_back", after_seconds=round(now - self.down_since, 1))
            self.down_since, self.back_at = None, now

    def settled(self, now: float) -> bool:
        return self.down_since is None and (self.back_at is None or now - self.back_at >= self.grace)
