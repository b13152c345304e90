"""The job store. Every state change is a committed row before its side effect.

An *input* is one version (sha256) of one file in the inbox. A *job* is one photo
(by content) x one style x parameters; the same photo dropped twice links to the
same jobs, so it is never computed twice. A running job is held by a claim: its batch
id is the claim's token, and its lease runs out unless the worker renews it.

The statements are written once for both engines (`database.py`): SQLite in the state
folder for one host, PostgreSQL for several.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from nstd.daemon.database import SqliteDatabase, Unavailable, connect
from nstd.errors import JournalError
from nstd.log import get

log = get("nstd.journal")


class State(str, Enum):
    """Where a job or an input stands. A str, so it binds to SQL and compares with text."""

    QUEUED = "queued"
    RUNNING = "running"  # jobs only
    DONE = "done"
    FAILED = "failed"

SCHEMA_VERSION = 4  # 2: leases and claims; 3: the workers table; 4: rates, time left and measured speeds
SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    id {pk},
    relpath TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    spool TEXT,
    state TEXT NOT NULL,            -- queued | done | failed
    error TEXT,
    disposer TEXT,                  -- the host moving it out of the inbox, until dispose_until
    dispose_until {real},
    created {real} NOT NULL,
    finished {real},
    UNIQUE (relpath, sha256)
);
CREATE TABLE IF NOT EXISTS jobs (
    id {pk},
    input_sha256 TEXT NOT NULL,
    style TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    relpath TEXT NOT NULL,          -- of the input that first brought it: names the output
    spool TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    batch_key TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,            -- queued | running | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    output TEXT,
    batch_id TEXT,
    claimed_by TEXT,                -- the worker running it: host, pid and device
    crashes INTEGER NOT NULL DEFAULT 0,  -- times its worker died under it
    progress INTEGER,               -- iterations done by the running batch, and of how many
    progress_total INTEGER,
    progress_rate {real},           -- iterations per second over the batch so far
    progress_eta {real},            -- when the job is expected through, by the worker's clock
    lease_until {real},             -- a running job whose lease has passed is free to take again
    created {real} NOT NULL,
    queued {real} NOT NULL,
    not_before {real} NOT NULL DEFAULT 0,
    started {real},
    finished {real},
    UNIQUE (input_sha256, style, params_hash)
);
CREATE TABLE IF NOT EXISTS input_jobs (
    input_id INTEGER NOT NULL REFERENCES inputs(id),
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    PRIMARY KEY (input_id, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, batch_key, queued);
CREATE INDEX IF NOT EXISTS inputs_state ON inputs (state);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    owner TEXT PRIMARY KEY,         -- as its claims carry it: host, pid and device
    host TEXT NOT NULL,
    device TEXT NOT NULL,           -- as the log names it, e.g. cuda:0 (NVIDIA H100 80GB HBM3)
    memory BIGINT,                  -- the device's total bytes: the most one image can ever have
    state TEXT NOT NULL,            -- idle | working | paused: why
    started {real} NOT NULL,
    heartbeat {real} NOT NULL,
    speed {real},                   -- FLOP/s the worker measured when it started, and when
    speed_at {real}
)
"""
# Columns added since version 1, for journals made before them.
ADDED_COLUMNS = {"jobs": (("claimed_by", "TEXT"), ("crashes", "INTEGER NOT NULL DEFAULT 0"), ("progress", "INTEGER"),
                          ("progress_total", "INTEGER"), ("lease_until", "{real}"), ("progress_rate", "{real}"),
                          ("progress_eta", "{real}")),
                 "inputs": (("disposer", "TEXT"), ("dispose_until", "{real}")),
                 "workers": (("speed", "{real}"), ("speed_at", "{real}"))}
LESS_ONE = "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"  # an attempt given back
LEASE_SECONDS = 120.0
SILENT_SECONDS = 3600.0  # a worker row with no heartbeat for this long is forgotten


@dataclass(frozen=True)
class JobSpec:
    style: str
    params_hash: str
    params: dict
    width: int
    height: int
    batch_key: str


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


@dataclass(frozen=True)
class Input:
    id: int
    relpath: str
    sha256: str
    spool: str | None
    state: State
    error: str | None


_JOB_COLS = ("id, input_sha256, style, params_hash, relpath, spool, width, height, batch_key, params, "
             "state, attempts, queued, error, output, batch_id, finished")
_JOB_COLS_J = ", ".join("j." + c.strip() for c in _JOB_COLS.split(","))  # for joins


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as the journal lists it, for nstd status and the intake's size check."""

    owner: str
    host: str
    device: str
    memory: int | None
    state: str = "idle"
    started: float = 0.0
    heartbeat: float = 0.0
    speed: float | None = None  # FLOP/s it measured when it started, and when
    speed_at: float | None = None


class BatchProgress(NamedTuple):
    """How far a running batch has come, as its worker last reported: iterations done
    and of how many, iterations per second, and when it expects to be through (None
    until it has timed enough to say)."""

    done: int
    total: int
    rate: float | None = None
    eta: float | None = None


def _job(row) -> Job:
    values = list(row)
    values[9] = json.loads(values[9])
    values[10] = State(values[10])
    return Job(*values)


def _input(row) -> Input:
    values = list(row)
    values[4] = State(values[4])
    return Input(*values)


class Journal:
    """The job store on SQLite (a path) or PostgreSQL (a postgresql:// URL)."""

    def __init__(self, target: Path | str, readonly: bool = False):
        self.path = target
        if isinstance(target, Path) and not readonly and target.exists() and target.stat().st_size == 0:
            log.warning("journal_empty_file", path=str(target), meaning="starting with no history")
        self.db = connect(target, readonly)
        self.shared = not isinstance(self.db, SqliteDatabase)  # several hosts may use it
        try:
            self._check()
            if not readonly:
                self._create()
        except Unavailable:
            self.db.close()
            raise
        except self.db.errors as e:
            self.db.close()
            raise _damaged(target, str(e)) from None

    def _check(self) -> None:
        """Refuse a damaged file before anything reads or writes it."""
        if self.shared:
            return  # the server checks its own pages
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            self.db.close()
            raise _damaged(self.path, problems[0])

    def _create(self) -> None:
        """The schema, made or brought up to date, with its version recorded. A journal
        already at this version (or a newer one) is left as it is: no write on open."""
        if not self.shared:
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives a power cut, not just a crash of nstd.
            self.db.execute("PRAGMA synchronous=FULL")
        if (self.schema_version() or 0) >= SCHEMA_VERSION:
            return
        with self._tx():
            if self.shared:  # one host at a time creates or migrates
                self.db.execute("SELECT pg_advisory_xact_lock(7346110)")
            for statement in SCHEMA.format(pk=self.db.pk, real=self.db.real).split(";"):
                self.db.execute(statement)
            for table, added in ADDED_COLUMNS.items():
                columns = self._columns(table)
                for name, kind in added:
                    if name not in columns:
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind.format(real=self.db.real)}")
            self.db.execute("DELETE FROM schema_version WHERE version < ?", (SCHEMA_VERSION,))
            if self.schema_version() is None:
                self.db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def _columns(self, table: str) -> set[str]:
        if self.shared:
            rows = self.db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                   "AND table_schema = current_schema()", (table,))
            return {r[0] for r in rows}
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def schema_version(self) -> int | None:
        """The schema's version, or None where nstd has not made its tables yet."""
        try:
            row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        except self.db.no_table:
            return None
        return row[0] if row else None

    def server_time(self) -> float:
        """The database's clock (the host's own for SQLite), in Unix seconds."""
        if not self.shared:
            return time.time()
        return float(self.db.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        return _Transaction(self.db)

    # --- inputs -----------------------------------------------------------------------

    def find_input(self, relpath: str, sha256: str) -> Input | None:
        row = self.db.execute("SELECT id, relpath, sha256, spool, state, error FROM inputs "
                              "WHERE relpath = ? AND sha256 = ?", (relpath, sha256)).fetchone()
        return _input(row) if row else None

    def add_input(self, relpath: str, sha256: str, spool: str | None, specs: list[JobSpec],
                  now: float | None = None) -> Input:
        """Record an accepted input and queue its jobs. Jobs that exist are linked, and
        failed ones start again: dropping a photo again is asking for another try."""
        now = time.time() if now is None else now
        with self._tx():
            self.db.execute("INSERT INTO inputs (relpath, sha256, spool, state, created) "
                            "VALUES (?, ?, ?, 'queued', ?) ON CONFLICT DO NOTHING", (relpath, sha256, spool, now))
            self.db.execute("UPDATE inputs SET state = 'queued', error = NULL, finished = NULL, spool = ? "
                            "WHERE relpath = ? AND sha256 = ?", (spool, relpath, sha256))
            input_id = self.db.execute("SELECT id FROM inputs WHERE relpath = ? AND sha256 = ?",
                                       (relpath, sha256)).fetchone()[0]
            for s in specs:
                self.db.execute(
                    "INSERT INTO jobs (input_sha256, style, params_hash, relpath, spool, width, "
                    "height, batch_key, params, state, created, queued) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?) ON CONFLICT DO NOTHING",
                    (sha256, s.style, s.params_hash, relpath, spool, s.width, s.height, s.batch_key,
                     json.dumps(s.params, sort_keys=True), now, now))
                job_id = self.db.execute("SELECT id FROM jobs WHERE input_sha256 = ? AND style = ? AND "
                                         "params_hash = ?", (sha256, s.style, s.params_hash)).fetchone()[0]
                self.db.execute("UPDATE jobs SET state = 'queued', attempts = 0, crashes = 0, error = NULL, "
                                "not_before = 0, queued = ?, spool = ? WHERE id = ? AND state = 'failed'",
                                (now, spool, job_id))
                self.db.execute("INSERT INTO input_jobs VALUES (?, ?) ON CONFLICT DO NOTHING", (input_id, job_id))
        return self.find_input(relpath, sha256)

    def fail_input(self, relpath: str, sha256: str, error: str, now: float | None = None) -> None:
        """An input refused at intake (undecodable, unknown style folder): no jobs."""
        now = time.time() if now is None else now
        with self._tx():
            self.db.execute("INSERT INTO inputs (relpath, sha256, state, created) "
                            "VALUES (?, ?, 'failed', ?) ON CONFLICT DO NOTHING", (relpath, sha256, now))
            self.db.execute("UPDATE inputs SET state = 'failed', error = ?, finished = ? "
                            "WHERE relpath = ? AND sha256 = ?", (error, now, relpath, sha256))

    def inputs_settled(self) -> list[tuple[Input, list[Job]]]:
        """Queued inputs none of whose jobs is still queued or running."""
        rows = self.db.execute(
            "SELECT i.id, i.relpath, i.sha256, i.spool, i.state, i.error FROM inputs i WHERE i.state = "
            "'queued' AND NOT EXISTS (SELECT 1 FROM input_jobs l JOIN jobs j ON j.id = l.job_id WHERE "
            "l.input_id = i.id AND j.state IN ('queued', 'running'))").fetchall()
        return [(_input(r), self.jobs_of(r[0])) for r in rows]

    def had_jobs(self, input_id: int) -> bool:
        """Whether an input got as far as jobs (else intake refused it for what it is)."""
        return self.db.execute("SELECT 1 FROM input_jobs WHERE input_id = ? LIMIT 1", (input_id,)).fetchone() \
            is not None

    def jobs_of(self, input_id: int) -> list[Job]:
        rows = self.db.execute(f"SELECT {_JOB_COLS_J} "
                               "FROM jobs j JOIN input_jobs l ON l.job_id = j.id WHERE l.input_id = ? "
                               "ORDER BY j.id", (input_id,)).fetchall()
        return [_job(r) for r in rows]

    def claim_disposal(self, input_id: int, host: str, now: float, lease: float = LEASE_SECONDS) -> bool:
        """Whether `host` may move a settled input out of the inbox: one host at a time, so
        a photo is moved once however many hosts watch the inbox. A host that dies
        mid-move loses the claim when its lease runs out."""
        return self.db.execute("UPDATE inputs SET disposer = ?, dispose_until = ? WHERE id = ? AND state = "
                               "'queued' AND (disposer IS NULL OR disposer = ? OR dispose_until < ?)",
                               (host, now + lease, input_id, host, now)).rowcount == 1

    def close_input(self, input_id: int, state: State, error: str | None = None) -> None:
        self.db.execute("UPDATE inputs SET state = ?, error = ?, finished = ? WHERE id = ?",
                        (State(state).value, error, time.time(), input_id))

    def spools_in_use(self) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT spool FROM jobs WHERE state IN ('queued', 'running')")
        return {r[0] for r in rows}

    def spool_in_use(self, spool: str) -> bool:
        return self.db.execute("SELECT 1 FROM jobs WHERE spool = ? AND state IN ('queued', 'running') "
                               "LIMIT 1", (spool,)).fetchone() is not None

    # --- jobs -------------------------------------------------------------------------

    def recover(self, host: str | None = None) -> int:
        """After a crash or stop: running jobs go back to the queue; with `host`, only those
        this host's workers held (on a shared journal the others are still running). A run
        that a kill cut short is not one of the job's attempts: those count its own outcomes."""
        where, params = ("", ()) if host is None else (" AND substr(claimed_by, 1, ?) = ?",
                                                       (len(host) + 1, host + ":"))
        with self._tx():
            cur = self.db.execute("UPDATE jobs SET state = 'queued', attempts = " + LESS_ONE + ", "
                                  "batch_id = NULL, lease_until = NULL WHERE state = 'running'" + where, params)
        return cur.rowcount

    def oldest_queued(self, now: float) -> Job | None:
        row = self.db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE state = 'queued' AND not_before <= ? "
                              "ORDER BY queued, id LIMIT 1", (now,)).fetchone()
        return _job(row) if row else None

    def count_queued(self, batch_key: str, now: float) -> int:
        return self.db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND batch_key = ? AND "
                               "not_before <= ?", (batch_key, now)).fetchone()[0]

    def claim(self, batch_key: str, limit: int, batch_id: str, now: float, owner: str | None = None,
              lease: float = LEASE_SECONDS) -> list[Job]:
        """Mark the oldest `limit` queued jobs of one batch key as running by `owner`, in one
        statement. On PostgreSQL, rows another host is claiming are skipped, not waited on.
        `batch_id` is the claim's token; the lease runs `lease` seconds from `now`."""
        with self._tx():
            ids = [r[0] for r in self.db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ?, batch_id = ?, "
                "claimed_by = ?, lease_until = ?, progress = NULL, progress_total = NULL, progress_rate = NULL, "
                "progress_eta = NULL WHERE id IN "
                "(SELECT id FROM jobs WHERE state = 'queued' AND batch_key = ? AND not_before <= ? "
                "ORDER BY queued, id LIMIT ?" + self.db.lock_rows + ") RETURNING id",
                (now, batch_id, owner, now + lease, batch_key, now, limit)).fetchall()]
        return self.get_jobs(ids)

    def renew(self, batch_id: str, now: float, lease: float = LEASE_SECONDS) -> int:
        """Extend a running batch's lease; returns how many of its jobs it still holds."""
        return self.db.execute("UPDATE jobs SET lease_until = ? WHERE batch_id = ? AND state = 'running'",
                               (now + lease, batch_id)).rowcount

    def holds(self, job_id: int, batch_id: str) -> bool:
        """Whether the claim `batch_id` still holds the job (its lease was not lost to another)."""
        return self.db.execute("SELECT 1 FROM jobs WHERE id = ? AND batch_id = ? AND state = 'running'",
                               (job_id, batch_id)).fetchone() is not None

    def get_jobs(self, ids: list[int]) -> list[Job]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id IN ({marks}) ORDER BY queued, id",
                               ids).fetchall()
        return [_job(r) for r in rows]

    def queued_jobs(self) -> list[Job]:
        rows = self.db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE state = 'queued'").fetchall()
        return [_job(r) for r in rows]

    def _settle(self, job_id: int, token: str | None, sets: str, params: tuple) -> bool:
        """Apply a running job's outcome, only while `token` (its batch id) still holds it.
        Returns False for a stale claim: its lease ran out and another worker has the job."""
        if token is None:
            cur = self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", params + (job_id,))
        else:
            cur = self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND batch_id = ? AND state = 'running'",
                                  params + (job_id, token))
        return cur.rowcount == 1

    def finish(self, job_id: int, output: str, token: str | None = None) -> bool:
        return self._settle(job_id, token, "state = 'done', output = ?, error = NULL, finished = ?, "
                            "lease_until = NULL", (output, time.time()))

    def adopt(self, job_id: int, output: str) -> bool:
        """A queued job whose outputs a run completed before a crash could record it: done,
        and that run counted."""
        return self.db.execute("UPDATE jobs SET state = 'done', output = ?, error = NULL, finished = ?, "
                               "attempts = attempts + 1 WHERE id = ? AND state = 'queued'",
                               (output, time.time(), job_id)).rowcount == 1

    def fail(self, job_id: int, error: str, token: str | None = None) -> bool:
        return self._settle(job_id, token, "state = 'failed', error = ?, finished = ?, lease_until = NULL",
                            (error, time.time()))

    def retry(self, job_id: int, error: str, delay: float, token: str | None = None) -> bool:
        return self._settle(job_id, token, "state = 'queued', error = ?, not_before = ?, batch_id = NULL, "
                            "lease_until = NULL", (error, time.time() + delay))

    def defer(self, job_id: int, error: str, delay: float, token: str | None = None) -> bool:
        """Back to the queue after `delay` seconds without using up an attempt: the
        destination failed (a full or read-only outbox), not the photo."""
        return self._settle(job_id, token, "state = 'queued', error = ?, not_before = ?, batch_id = NULL, "
                            "lease_until = NULL, attempts = " + LESS_ONE, (error, time.time() + delay))

    def requeue_claimed_by(self, owner: str, quarantine_after: int = 2) -> tuple[int, list[Job]]:
        """Give back what a worker that died was running; a job under which its worker
        has now died `quarantine_after` times fails instead, so the queue moves on.
        Returns how many went back, and the jobs quarantined."""
        return self._give_back("claimed_by = ?", (owner,), quarantine_after)

    def requeue_expired(self, now: float, quarantine_after: int = 3) -> tuple[int, list[Job]]:
        """Give back running jobs whose lease has run out: their host died, froze or lost
        the database. A lost lease is weaker evidence against the job than a worker dying
        under it (a host can freeze or lose its network for its own reasons), so it takes
        a third loss, counting both kinds, to set the job aside."""
        return self._give_back("lease_until < ?", (now,), quarantine_after)

    def _give_back(self, where: str, params: tuple, quarantine_after: int) -> tuple[int, list[Job]]:
        with self._tx():
            rows = self.db.execute(f"UPDATE jobs SET crashes = crashes + 1 WHERE state = 'running' AND {where} "
                                   "RETURNING id, crashes", params).fetchall()
            bad = [i for i, crashes in rows if crashes >= quarantine_after]
            self.db.executemany("UPDATE jobs SET state = 'failed', error = ?, finished = ?, lease_until = NULL "
                                "WHERE id = ?",
                                [(f"its worker stopped {quarantine_after} times while running it "
                                  "(a crash of the device, the process or the host); set aside so the queue "
                                  "moves on", time.time(), i) for i in bad])
            back = self.db.executemany("UPDATE jobs SET state = 'queued', attempts = " + LESS_ONE + ", "
                                       "batch_id = NULL, lease_until = NULL WHERE id = ?",
                                       [(i,) for i, _ in rows if i not in bad])
        return back, self.get_jobs(bad)

    def requeue(self, job_ids: list[int], token: str | None = None) -> int:
        """Give running jobs back untouched, as if never started (a stop, not a failure).

        Only jobs still running (under `token`, when given) go back: a batch's callers pass
        every job they were given, and some may have finished, failed or gone to another
        worker since. Returns how many.
        """
        where, extra = ("", ()) if token is None else (" AND batch_id = ?", (token,))
        with self._tx():
            return self.db.executemany("UPDATE jobs SET state = 'queued', attempts = " + LESS_ONE + ", "
                                       "batch_id = NULL, lease_until = NULL WHERE id = ? AND state = 'running'"
                                       + where, [(i,) + extra for i in job_ids])

    # --- workers ----------------------------------------------------------------------

    def beat(self, worker: WorkerInfo, state: str, now: float) -> None:
        """A worker's heartbeat: here, doing `state`, as of `now`."""
        self.db.execute("INSERT INTO workers (owner, host, device, memory, state, started, heartbeat) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET state = ?, heartbeat = ?",
                        (worker.owner, worker.host, worker.device, worker.memory, state, now, now, state, now))

    def leave(self, owner: str) -> None:
        """A worker that stopped cleanly is no longer listed."""
        self.db.execute("DELETE FROM workers WHERE owner = ?", (owner,))

    def forget_workers(self, now: float, host: str | None = None) -> int:
        """Rows of workers silent for SILENT_SECONDS; with `host`, also every row of that
        host (at its start: they are its earlier processes)."""
        where, params = "heartbeat < ?", (now - SILENT_SECONDS,)
        if host is not None:
            where, params = where + " OR host = ?", params + (host,)
        return self.db.execute(f"DELETE FROM workers WHERE {where}", params).rowcount

    def note_speed(self, owner: str, flops_per_second: float, now: float) -> None:
        """What a worker measured of its device, for nstd check to quote rather than
        measure again on a machine the daemon keeps busy."""
        self.db.execute("UPDATE workers SET speed = ?, speed_at = ? WHERE owner = ?", (flops_per_second, now, owner))

    def workers(self) -> list[WorkerInfo]:
        columns = "owner, host, device, memory, state, started, heartbeat"
        try:
            try:
                rows = self.db.execute(f"SELECT {columns}, speed, speed_at FROM workers "
                                       "ORDER BY host, owner").fetchall()
            except self.db.no_column:
                rows = self.db.execute(f"SELECT {columns} FROM workers ORDER BY host, owner").fetchall()
        except self.db.no_table:  # read-only, before a newer daemon has migrated the journal
            return []
        return [WorkerInfo(*r) for r in rows]

    def largest_memory(self, now: float, within: float = SILENT_SECONDS) -> int | None:
        """The largest device memory among workers heard from lately: what the biggest job
        can ever have. None while no worker has said."""
        return self.db.execute("SELECT MAX(memory) FROM workers WHERE heartbeat >= ?",
                               (now - within,)).fetchone()[0]

    def running_of(self, owner: str) -> list[Job]:
        rows = self.db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE state = 'running' AND claimed_by = ? "
                               "ORDER BY id", (owner,)).fetchall()
        return [_job(r) for r in rows]

    # --- reports ----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("queued", "running", "done", "failed")}
        out.update(dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()))
        return out

    def progress(self, job_ids: list[int], iteration: int, total: int, rate: float | None = None,
                 eta: float | None = None) -> None:
        """How far the running batch has come, for nstd status."""
        self.db.executemany("UPDATE jobs SET progress = ?, progress_total = ?, progress_rate = ?, progress_eta = ? "
                            "WHERE id = ? AND state = 'running'", [(iteration, total, rate, eta, i) for i in job_ids])

    def batch_progress(self, batch_id: str) -> BatchProgress | None:
        """The furthest job's progress in a running batch; None before its first report."""
        where = ("FROM jobs WHERE batch_id = ? AND state = 'running' AND progress IS NOT NULL "
                 "ORDER BY progress DESC, id LIMIT 1")
        try:
            row = self.db.execute(f"SELECT progress, progress_total, progress_rate, progress_eta {where}",
                                  (batch_id,)).fetchone()
        except self.db.no_column:  # read-only, before a newer daemon has migrated the journal
            try:
                row = self.db.execute(f"SELECT progress, progress_total {where}", (batch_id,)).fetchone()
            except self.db.no_column:  # older still: no progress recorded at all
                return None
        return None if row is None else BatchProgress(*row)

    def input_counts(self) -> dict[str, int]:
        """Photos (inbox files) by state: a photo refused at intake has no jobs."""
        out = {s: 0 for s in ("queued", "done", "failed")}
        out.update(dict(self.db.execute("SELECT state, COUNT(*) FROM inputs GROUP BY state").fetchall()))
        return out

    def running(self) -> list[Job]:
        rows = self.db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE state = 'running' ORDER BY id").fetchall()
        return [_job(r) for r in rows]

    def recent_done(self, limit: int = 200) -> list[Job]:
        """Finished jobs, newest first."""
        rows = self.db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE state = 'done' "
                               "ORDER BY finished DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [_job(r) for r in rows]

    def recent_failures(self, limit: int = 10) -> list[tuple[str, str, float]]:
        """(relpath, reason, time) of failed inputs, newest first."""
        return self.db.execute("SELECT relpath, error, finished FROM inputs WHERE state = 'failed' "
                               "ORDER BY finished DESC LIMIT ?", (limit,)).fetchall()


def _damaged(path: Path | str, detail: str) -> JournalError:
    if not isinstance(path, Path):
        return JournalError(f"journal {path}: {detail}")
    return JournalError(f"{path}: the journal is damaged ({detail}); stop nstd, move it aside "
                        f"(mv {path} {path}.damaged) and start again: photos still in the inbox are "
                        f"taken in afresh, and failed/ and processed/ keep what was decided")


class _Transaction:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.begin()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.db.commit()
        else:
            try:
                self.db.rollback()
            except self.db.errors:
                pass  # a lost connection has rolled back already
        return False
