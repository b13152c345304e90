"""The batch session: the engine's one interface to whoever gave it a batch.

The engine drives a session through four verbs and holds the batch's slots itself:
the caller keeps no positions. `take` hands over newcomers for places that came free,
`progress` hears each iteration and answers whether to go on, or which jobs leave
(stopping is a value the engine returns, not an exception), and each job comes back once, `finished` with its
result or `refused` with a reason. A job is known by its `id`, which the caller chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from nstd.engine.types import Progress, TransferJob, TransferResult


class Verdict(Enum):
    """The session's answer to each iteration's progress."""

    GO = "go"
    STOP = "stop"  # leave now: what has not finished is neither finished nor refused


class Outcome(Enum):
    """How a batch ended."""

    COMPLETE = "complete"  # every job came back, finished or refused
    STOPPED = "stopped"  # the session said stop; the jobs that had not come back are the caller's


@dataclass(frozen=True)
class Drop:
    """The session's answer when jobs must leave now, unfinished (a cancel): they never
    come back, finished or refused, and their places are free for newcomers."""

    ids: frozenset[int]


class Session(Protocol):
    def take(self, n: int) -> list[TransferJob]:
        """Up to n newcomers of the batch's size and settings, for places that came free;
        [] when there are none. Not asked of a batch that cannot take newcomers."""

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        """After each loop iteration, with the iterations done so far and, at logged
        iterations (one interval late on CUDA), one loss record per slot."""

    def finished(self, job: TransferJob, result: TransferResult) -> None:
        """A job's image, as it finishes."""

    def refused(self, job: TransferJob, reason: str) -> None:
        """A job that cannot run here (out of memory even alone, a loss gone NaN)."""


@dataclass
class Queued:
    """The take and progress of a session that never stops a batch: `queue` handed out
    as places come free, each iteration told to `on_progress`."""

    queue: list = field(default_factory=list)
    on_progress: Progress | None = None

    def take(self, n: int) -> list:
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict:
        if self.on_progress is not None:
            self.on_progress(iteration, losses)
        return Verdict.GO


@dataclass
class Collect(Queued):
    """A session that keeps what comes back: a batch run to its end by a test, a benchmark
    or the speed probe."""

    results: dict[int, TransferResult] = field(default_factory=dict)
    refusals: dict[int, str] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # job ids, in the order they came back

    def finished(self, job: TransferJob, result: TransferResult) -> None:
        self.results[job.id] = result
        self.order.append(job.id)

    def refused(self, job: TransferJob, reason: str) -> None:
        self.refusals[job.id] = reason
        self.order.append(job.id)
