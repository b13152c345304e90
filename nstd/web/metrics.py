"""What /metrics reports, read from the journal (so every host's work is there on a shared
journal) and from this daemon's own state at each scrape. Labels are bounded: host,
device, style and state, never a photo's name."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from nstd.daemon.journal import Journal, State


T = TypeVar("T")


class Reader:
    """One read-only journal connection for the endpoint's threads, taken in turns. Opened
    once, not per request: opening a SQLite journal checks the whole file (quick_check),
    which is no work for every scrape and probe. A read that fails drops the connection,
    and the next one opens it again (after a database restart, say)."""

    def __init__(self, target):
        self.target = target
        self._lock = threading.Lock()
        self._journal: Journal | None = None

    def read(self, query: Callable[[Journal], T]) -> T:
        with self._lock:
            if self._journal is None:
                self._journal = Journal(self.target, readonly=True)
            try:
                return query(self._journal)
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._journal is not None:
            journal, self._journal = self._journal, None
            try:
                journal.close()
            except Exception:  # noqa: BLE001 - a connection already lost
                pass


class Live:
    """This daemon's own state, read at each scrape; each field a callable."""

    def __init__(self, paused: Callable[[], str | None], settling: Callable[[], int],
                 outages: Callable[[], int]):
        self.paused, self.settling, self.outages = paused, settling, outages


class JournalCollector(Collector):
    def __init__(self, reader: Reader, live: Live, clock: Callable[[], float] = time.time):
        self.reader, self.live, self.clock = reader, live, clock

    def collect(self):
        counts, inputs, by_style, workers = self.reader.read(
            lambda j: (j.counts(), j.input_counts(), j.counts_by_style(), j.workers()))
        yield from self._jobs(counts, inputs, by_style)
        yield from self._workers(workers, self.clock())
        yield from self._daemon()

    def _jobs(self, counts: dict, input_counts: dict, by_style: dict):
        jobs = GaugeMetricFamily("nstd_jobs", "Jobs (photo x style) by state, on every host", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n)
        inputs = GaugeMetricFamily("nstd_inputs", "Photos by state, on every host", labels=["state"])
        for state, n in input_counts.items():
            inputs.add_metric([state], n)
        finished = CounterMetricFamily("nstd_jobs_finished", "Jobs published, by style", labels=["style"])
        failed = CounterMetricFamily("nstd_jobs_failed", "Jobs set aside in failed/, by style", labels=["style"])
        cancelled = CounterMetricFamily("nstd_jobs_cancelled", "Jobs cancelled (nstd cancel), by style",
                                        labels=["style"])
        ended = {State.DONE.value: finished, State.FAILED.value: failed, State.CANCELLED.value: cancelled}
        for (style, state), n in sorted(by_style.items()):
            if state in ended:
                ended[state].add_metric([style], n)
        yield from (jobs, inputs, finished, failed, cancelled)

    def _workers(self, workers: list, now: float):
        up = GaugeMetricFamily("nstd_worker_state", "Each worker's state (1 for the state it is in)",
                               labels=["host", "device", "state"])
        age = GaugeMetricFamily("nstd_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat",
                                labels=["host", "device"])
        for w in workers:
            up.add_metric([w.host, w.device, str(w.state)], 1)
            age.add_metric([w.host, w.device], max(0.0, now - w.heartbeat))
        yield from (up, age)

    def _daemon(self):
        paused = self.live.paused()
        yield GaugeMetricFamily("nstd_paused", "1 while this daemon takes no new work: a folder or share that "
                                "cannot be used (see nstd status for why)", value=1 if paused else 0)
        yield GaugeMetricFamily("nstd_inbox_settling", "Files in this daemon's inbox waiting to hold still",
                                value=self.live.settling())
        yield CounterMetricFamily("nstd_database_outages", "Times this daemon lost its journal's database",
                                  value=self.live.outages())


def registry(reader: Reader, live: Live) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(JournalCollector(reader, live))
    return reg
