"""What the journal's rows hold, as values: the states, a job, an input, a worker, a
batch's progress; and their decoding from rows by column name, never by position."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, NamedTuple

Row = dict[str, Any]  # one row, by column name
LEASE_SECONDS = 120.0  # a claim (of jobs, or of an input to move) lasts this long unless renewed


class State(str, Enum):
    """Where a job or an input stands. A str, so it binds to SQL and compares with text."""

    QUEUED = "queued"
    RUNNING = "running"  # jobs only
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # jobs only: by `nstd cancel`; its input goes to failed/ for it


INPUT_STATES = (State.QUEUED, State.DONE, State.FAILED)  # an input is never running: its jobs are
WAITING = (State.QUEUED, State.RUNNING)  # a job not through yet
ENDED_BADLY = (State.FAILED, State.CANCELLED)  # a job whose input goes to failed/; dropped again, it starts afresh


LEGACY_PAUSE_SEPARATOR = ": "  # "paused: why", one text, before schema 5


class WorkerState(str, Enum):
    """What a worker is doing, as its heartbeat says. A pause's reason is a field of its own."""

    STARTING = "starting"  # measuring its device before it takes work
    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"  # taking no work: the outbox or the spool cannot be reached

    def __str__(self) -> str:
        return self.value  # its value in an f-string on every Python, not WorkerState.IDLE

    @classmethod
    def read(cls, text: str, reason: str | None = None) -> tuple[WorkerState, str | None]:
        """A state as a row holds it, with its reason. Before schema 5 a pause was one
        text, "paused: why", and an older daemon on a shared journal may still write it so."""
        state, said, why = text.partition(LEGACY_PAUSE_SEPARATOR)
        if reason is None and said:
            reason = why
        return cls(state), reason


@dataclass(frozen=True)
class JobSpec:
    style: str
    params_hash: str
    params: dict
    width: int
    height: int
    batch_key: str
    priority: int = 0


@dataclass(frozen=True)
class Job:
    id: int
    input_sha256: str
    style: str
    params_hash: str
    relpath: str
    spool: str
    width: int
    height: int
    batch_key: str
    params: dict
    state: State
    attempts: int
    queued: float
    error: str | None = None
    output: str | None = None
    batch_id: str | None = None
    finished: float | None = None
    priority: int = 0  # higher first; then the oldest
    cancelled_by: str | None = None  # who, as user@host, and when
    cancelled_at: float | None = None


@dataclass(frozen=True)
class Input:
    id: int
    relpath: str
    sha256: str
    spool: str | None
    state: State
    error: str | None
    finished: float | None = None  # when it was closed, done or failed


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as the journal lists it, for nstd status and the intake's size check."""

    owner: str
    host: str
    device: str
    memory: int | None
    state: WorkerState = WorkerState.IDLE
    started: float = 0.0
    heartbeat: float = 0.0
    speed: float | None = None  # FLOP/s it measured when it started, and when
    speed_at: float | None = None
    reason: str | None = None  # why it is paused

    @property
    def doing(self) -> str:
        """Its state in words, as nstd status prints it: idle, working, or paused: why."""
        return self.state.value if self.reason is None else f"{self.state.value}: {self.reason}"


@dataclass(frozen=True)
class Pause:
    """An operator's pause of workers: of one host (or every host, "*"), of one device of
    it (or every device, "*"). It lives in the journal, so it outlasts a restart."""

    host: str
    device: str
    by_whom: str | None
    since: float

    def covers(self, host: str, device: str) -> bool:
        return self.host in (ANY, host) and self.device in (ANY, device)

    @property
    def reason(self) -> str:
        who = f" by {self.by_whom}" if self.by_whom else ""
        return f"paused{who} (nstd resume)"


ANY = "*"  # every host, or every device


class BatchProgress(NamedTuple):
    """How far a running batch has come, as its worker last reported: iterations done
    and of how many, iterations per second, and when it expects to be through (None
    until it has timed enough to say)."""

    done: int
    total: int
    rate: float | None = None
    eta: float | None = None


class Failure(NamedTuple):
    """An input refused or failed, for nstd status and the gallery."""

    relpath: str
    error: str | None
    finished: float | None


JOB_FIELDS = tuple(f.name for f in fields(Job))
INPUT_COLUMNS = ", ".join(f.name for f in fields(Input))
WORKER_COLUMNS = tuple(f.name for f in fields(WorkerInfo))
PROGRESS_COLUMNS = ("progress", "progress_total", "progress_rate", "progress_eta")


def named(cursor) -> list[Row]:
    """A cursor's rows as mappings from its columns' names (sqlite3 and psycopg alike)."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


def job_from(row: Row) -> Job:
    return Job(**{**row, "params": json.loads(row["params"]), "state": State(row["state"])})


def input_from(row: Row) -> Input:
    return Input(**{**row, "state": State(row["state"])})


def worker_from(row: Row) -> WorkerInfo:
    """A worker's row, from whichever columns its journal's schema has."""
    state, reason = WorkerState.read(row["state"], row.get("reason"))
    return WorkerInfo(**{**row, "state": state, "reason": reason})
