"""What /metrics reports, read from the journal (so every host's work is there on a shared
journal) and from this daemon's own state at each scrape. Labels are bounded: host,
device, style and state, never a photo's name."""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from nstd.daemon.journal import Journal, State


class Live:
    """This daemon's own state, read at each scrape; each field a callable."""

    def __init__(self, paused: Callable[[], str | None], settling: Callable[[], int],
                 outages: Callable[[], int]):
        self.paused, self.settling, self.outages = paused, settling, outages


class JournalCollector(Collector):
    def __init__(self, target, live: Live, clock: Callable[[], float] = time.time):
        self.target, self.live, self.clock = target, live, clock

    def collect(self):
        journal = Journal(self.target, readonly=True)  # a connection of its own, on the server's thread
        try:
            yield from self._jobs(journal)
            yield from self._workers(journal, self.clock())
        finally:
            journal.close()
        yield from self._daemon()

    def _jobs(self, journal: Journal):
        jobs = GaugeMetricFamily("nstd_jobs", "Jobs (photo x style) by state, on every host", labels=["state"])
        for state, n in journal.counts().items():
            jobs.add_metric([state], n)
        inputs = GaugeMetricFamily("nstd_inputs", "Photos by state, on every host", labels=["state"])
        for state, n in journal.input_counts().items():
            inputs.add_metric([state], n)
        finished = CounterMetricFamily("nstd_jobs_finished", "Jobs published, by style", labels=["style"])
        failed = CounterMetricFamily("nstd_jobs_failed", "Jobs set aside in failed/, by style", labels=["style"])
        for (style, state), n in sorted(journal.counts_by_style().items()):
            if state == State.DONE.value:
                finished.add_metric([style], n)
            elif state == State.FAILED.value:
                failed.add_metric([style], n)
        yield from (jobs, inputs, finished, failed)

    def _workers(self, journal: Journal, now: float):
        up = GaugeMetricFamily("nstd_worker_state", "Each worker's state (1 for the state it is in)",
                               labels=["host", "device", "state"])
        age = GaugeMetricFamily("nstd_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat",
                                labels=["host", "device"])
        for w in journal.workers():
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


def registry(target, live: Live) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(JournalCollector(target, live))
    return reg
