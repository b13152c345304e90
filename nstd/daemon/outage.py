"""Riding out a shared journal's outage (PostgreSQL restarted, the network cut).

While the database is away a host keeps computing its running batch, takes no new
work, and says so in the log and in systemd's STATUS. The worker's outcomes wait for
the database (`PatientJournal`); the supervisor notes the outage once (`Outage`) and,
once the database is back, gives the other hosts time to renew their leases before it
takes any as expired: nobody could renew while it was down.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from nstd.daemon.database import Unavailable
from nstd.daemon.notify import notify
from nstd.log import get

log = get("nstd.outage")
RETRY_SECONDS = 5.0
T = TypeVar("T")


class PatientJournal:
    """A journal whose calls wait out an outage instead of failing, until `give_up`
    says the wait is no longer worth it (a stop whose grace has run out). `raw` is the
    journal itself, for calls that may simply be skipped."""

    def __init__(self, journal, give_up: Callable[[], bool], wait: Callable[[float], object]):
        self.raw, self._give_up, self._wait = journal, give_up, wait

    def __getattr__(self, name: str):
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: patiently(lambda: attr(*args, **kwargs), name, self._give_up, self._wait)


def patiently(call: Callable[[], T], name: str, give_up: Callable[[], bool], wait: Callable[[float], object]) -> T:
    """`call()`, tried again every few seconds while the database is away, until `give_up`."""
    said = False
    while True:
        try:
            result = call()
        except Unavailable as e:
            if give_up():
                raise
            if not said:
                log.warning("database_unavailable", waiting_to=name, error=str(e),
                            meaning="a running batch goes on; no new work until it is back")
                said = True
            wait(RETRY_SECONDS)
            continue
        if said:
            log.info("database_back", done=name)
        return result


class Outage:
    """The supervisor's view of the database: down since when, and whether it has been
    back long enough to judge other hosts' leases (`settled`)."""

    def __init__(self, renew_every: float):
        self.grace = 2 * renew_every  # every live host has renewed at least once by then
        self.down_since: float | None = None
        self.back_at: float | None = None

    def down(self, error: str, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
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
