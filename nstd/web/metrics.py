"""What /metrics reports, read from the journal (so every host's work is there on a shared
journal) and from this daemon's own state at each scrape. Labels are bounded: host,
device, style and state, never a photo's name."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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
                 outages: Callable[[], int], pauses: Callable[[], int] = lambda: 0,
                 expiries: Callable[[], int] = lambda: 0):
        self.paused, self.settling, self.outages = paused, settling, outages
        self.pauses, self.expiries = pauses, expiries


class JournalCollector(Collector):
    def __init__(self, reader: Reader, live: Live, clock: Callable[[], float] = time.time):
        self.reader, self.live, self.clock = reader, live, clock

    def collect(self):
        counts, inputs, by_style, workers = self.reader.read(
            lambda j: (j.counts(), j.input_counts(), j.counts_by_style(), j.workers()))
        yield from self._jobs(counts, inputs, by_style)
        yield from self._workers(workers, self.clock())
        yield from self.reader.read(lambda j: list(_queue(j)) + list(_spans(j)) + list(_slots(j, workers)))
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
        yield CounterMetricFamily("nstd_outbox_pauses", "Times this daemon paused new work for a folder it "
                                  "could not use (an outbox full, read-only or away)", value=self.live.pauses())
        yield CounterMetricFamily("nstd_lease_expiries", "Times this daemon gave back another worker's jobs "
                                  "whose lease had run out", value=self.live.expiries())


# Upper bounds, in seconds, of the duration histograms: a small photo on a GPU takes
# seconds, a print-size one on a CPU an hour; a backlog can keep a photo a day.
COMPUTE_BOUNDS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_BOUNDS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)
GROUPS = 10  # label values listed for the queue's sizes and priorities; the rest are "other"


def _queue(journal: Journal):
    for column, what in (("size", "working size, WxH"), ("priority", "priority")):
        family = GaugeMetricFamily(f"nstd_queued_by_{column}", f"Queued jobs by {what}, the largest "
                                   f"{GROUPS} groups (the rest as other), on every host", labels=[column])
        for value, n in journal.queued_by(column, GROUPS):
            family.add_metric([value], n)
        yield family
    yield CounterMetricFamily("nstd_job_takeovers", "Times a running job was taken back from a worker that died "
                              "or outlived its lease, on every host", value=journal.takeovers())


def _spans(journal: Journal):
    for span, bounds, what in (("compute", COMPUTE_BOUNDS, "Seconds a finished job's last run took, from its "
                                "claim to its output"),
                               ("drop_to_output", WAIT_BOUNDS, "Seconds from a photo's drop to its output")):
        spread = journal.spread(span, bounds)
        buckets = [(str(float(b)), n) for b, n in spread.buckets] + [("+Inf", spread.count)]
        yield HistogramMetricFamily(f"nstd_job_{span}_seconds", what + ", on every host", buckets=buckets,
                                    sum_value=spread.total)


def _slots(journal: Journal, workers: list):
    where = {w.owner: (w.host, w.device) for w in workers}
    in_use = GaugeMetricFamily("nstd_worker_slots_in_use", "Photos in each worker's running batch",
                               labels=["host", "device"])
    rate = GaugeMetricFamily("nstd_worker_iterations_per_second", "Each running batch's iterations per second, "
                             "as its worker last reported", labels=["host", "device"])
    for s in journal.slots():
        host, device = where.get(s.owner, (s.owner.split(":")[0], "unknown"))
        in_use.add_metric([host, device], s.in_use)
        if s.rate is not None:
            rate.add_metric([host, device], s.rate)
    yield from (in_use, rate)


def registry(reader: Reader, live: Live) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(JournalCollector(reader, live))
    return reg
