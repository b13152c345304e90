import threading

from nstd.daemon.database import Unavailable
from nstd.daemon.prefetch import Prefetch

WAIT = 60  # seconds; only ever reached when the code under test is broken


class Source:
    """A queue of numbered jobs behind a journal that can be made to be away."""

    def __init__(self, jobs: int, away: int = 0, broken: bool = False):
        self.left = list(range(jobs))
        self.away, self.broken = away, broken
        self.opened, self.asked = 0, []
        self.changed = threading.Condition()

    def open(self):
        self.opened += 1
        return self

    def close(self):
        pass

    def fetch(self, journal, n):
        with self.changed:
            self.asked.append(n)
            self.changed.notify_all()
        if self.broken:
            raise KeyError("a bug")
        if self.away:
            self.away -= 1
            raise Unavailable("journal: cannot connect")
        got, self.left = self.left[:n], self.left[n:]
        return got

    def until(self, ready, pre: Prefetch) -> None:
        with pre._cond:
            assert pre._cond.wait_for(lambda: ready(pre._ready), timeout=WAIT)


def test_keeps_a_few_ready_oldest_first_and_fetches_more_as_they_are_taken():
    src = Source(10)
    with Prefetch(src.fetch, src.open, depth=3, poll=0) as pre:
        src.until(lambda r: len(r) == 3, pre)
        assert pre.take(2) == [0, 1]
        src.until(lambda r: len(r) == 3, pre)
        assert pre.take(5) == [2, 3, 4]
        src.until(lambda r: len(r) == 3, pre)
    assert pre.leftover() == [5, 6, 7]  # fetched, never taken: the caller gives them back
    assert max(src.asked) <= 3 and src.opened == 1


def test_a_database_that_is_away_is_tried_again_on_a_new_connection():
    src = Source(2, away=2)
    with Prefetch(src.fetch, src.open, depth=2, poll=0) as pre:
        src.until(lambda r: len(r) == 2, pre)
        assert pre.take(2) == [0, 1]
    assert src.opened == 3


def test_an_empty_queue_is_looked_at_again_until_the_end():
    src = Source(0)
    with Prefetch(src.fetch, src.open, depth=2, poll=0) as pre:
        with src.changed:
            assert src.changed.wait_for(lambda: len(src.asked) >= 3, timeout=WAIT)
        assert pre.take(1) == []
    assert pre.leftover() == []


def test_a_failing_fetch_ends_prefetching_but_not_the_batch():
    src = Source(3, broken=True)
    with Prefetch(src.fetch, src.open, depth=2, poll=0) as pre:
        with src.changed:
            assert src.changed.wait_for(lambda: src.asked, timeout=WAIT)
        assert pre.take(2) == []
    assert pre.leftover() == [] and not pre._thread.is_alive()
