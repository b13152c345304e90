"""Newcomers for a running batch, claimed and loaded ahead on a thread of their own.

A photo that takes a finished photo's place has to be claimed, read from the spool,
decoded and resized first: tens of milliseconds for a small photo, most of a second for
a camera's 24 megapixels, and the device would wait for all of it. `Prefetch` keeps a
few newcomers ready instead. They are claimed under the running batch's token, so its
lease covers them and a crash gives them back with the batch; the ones the batch has
not taken when it ends go back to the queue untouched (see `leftover`).
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

from nstd.daemon.database import Unavailable
from nstd.log import get

log = get("nstd.prefetch")
T = TypeVar("T")
POLL_SECONDS = 1.0  # how often an empty queue is looked at again


class Prefetch(Generic[T]):
    """Keeps up to `depth` items from `fetch(journal, n)` ready for `take`, fetching on
    its own thread over a journal from `open_journal` (a connection belongs to one thread).
    A database that is away is simply tried again later: a refill never waits for it."""

    def __init__(self, fetch: Callable[[object, int], list[T]], open_journal: Callable[[], object], depth: int,
                 poll: float = POLL_SECONDS):
        self.fetch, self.open_journal, self.depth, self.poll = fetch, open_journal, depth, poll
        self._ready: list[T] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)

    def __enter__(self) -> "Prefetch[T]":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    def take(self, n: int) -> list[T]:
        """Up to n ready items, oldest first; the thread then fetches more."""
        with self._cond:
            out, self._ready = self._ready[:n], self._ready[n:]
            self._cond.notify_all()
        return out

    def leftover(self) -> list[T]:
        """After the block: what was fetched and never taken."""
        with self._cond:
            out, self._ready = self._ready, []
        return out

    def _run(self) -> None:
        journal, away = None, False
        try:
            while (want := self._wanted()) > 0:
                try:
                    journal = journal or self.open_journal()
                    got = self.fetch(journal, want)
                    away = False
                except Unavailable as e:
                    if not away:  # once per outage: the supervisor has its own say about it
                        log.info("prefetch_waiting", error=str(e))
                    journal, got, away = _closed(journal), [], True
                with self._cond:
                    self._ready.extend(got)
                    self._cond.notify_all()
                    if not got:
                        self._cond.wait_for(lambda: self._stopped, timeout=self.poll)
        except Exception as e:  # noqa: BLE001 - prefetching is a speed-up; the batch refills inline
            log.warning("prefetch_stopped", error=f"{type(e).__name__}: {e}")
        finally:
            _closed(journal)

    def _wanted(self) -> int:
        """How many to fetch, once there is room; 0 once stopped."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or len(self._ready) < self.depth)
            return 0 if self._stopped else self.depth - len(self._ready)


def _closed(journal) -> None:
    if journal is not None:
        try:
            journal.close()
        except Exception:  # noqa: BLE001 - a broken connection is being dropped anyway
            pass
    return None
