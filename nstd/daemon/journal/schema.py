"""The journal's tables and their migrations: made on first open, brought up to date
by a newer nstd, recorded with their version, and checked for damage before use.

A migration only adds: tables (CREATE ... IF NOT EXISTS) and columns (ADDED_COLUMNS),
so an older nstd still reads and writes a journal a newer one has migrated, and a
newer reader (nstd status, read-only) selects only the columns an older journal has.
"""

from __future__ import annotations

from pathlib import Path

from nstd.daemon.journal.store import Store
from nstd.errors import JournalError

# 2: leases and claims; 3: the workers table; 4: rates, time left and measured speeds;
# 5: a worker's state is one of WorkerState, a pause's reason in its own column;
# 6: a job's priority and its cancelling, and the operators' pauses.
SCHEMA_VERSION = 6
SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    id {pk},
    relpath TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    spool TEXT,
    state TEXT NOT NULL,            -- State: queued | done | failed
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
    relpath TEXT NOT NULL,          -- of the input that last queued it: names the output
    spool TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    batch_key TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,            -- State: queued | running | done | failed | cancelled
    priority INTEGER NOT NULL DEFAULT 0,  -- higher first, then the oldest
    cancelled_by TEXT,              -- who cancelled it (user@host), and when
    cancelled_at {real},
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
    state TEXT NOT NULL,            -- WorkerState: starting | idle | working | paused
    reason TEXT,                    -- why it is paused (before schema 5: in state, "paused: why")
    started {real} NOT NULL,
    heartbeat {real} NOT NULL,
    speed {real},                   -- FLOP/s the worker measured when it started, and when
    speed_at {real}
);
CREATE TABLE IF NOT EXISTS pauses (
    host TEXT NOT NULL,             -- a host as the config names it, or * for every host
    device TEXT NOT NULL,           -- a device as torch names it (cuda:0, cpu), or * for all
    by_whom TEXT,                   -- user@host of the nstd pause
    since {real} NOT NULL,
    PRIMARY KEY (host, device)
)
"""
# Columns added since version 1, for journals made before them.
ADDED_COLUMNS = {"jobs": (("claimed_by", "TEXT"), ("crashes", "INTEGER NOT NULL DEFAULT 0"), ("progress", "INTEGER"),
                          ("progress_total", "INTEGER"), ("lease_until", "{real}"), ("progress_rate", "{real}"),
                          ("progress_eta", "{real}"), ("priority", "INTEGER NOT NULL DEFAULT 0"),
                          ("cancelled_by", "TEXT"), ("cancelled_at", "{real}")),
                 "inputs": (("disposer", "TEXT"), ("dispose_until", "{real}")),
                 "workers": (("speed", "{real}"), ("speed_at", "{real}"), ("reason", "TEXT"))}
# Indexes on added columns: made once the columns are there.
LATE_INDEXES = ("CREATE INDEX IF NOT EXISTS jobs_order ON jobs (state, priority, queued)",)
# The PostgreSQL advisory lock that lets one host at a time create or migrate the tables.
# The number itself means nothing; what matters is that it never changes, since an older
# and a newer nstd must take the same lock to exclude each other, and that nothing else
# in the same database uses it (advisory locks are per database).
MIGRATION_LOCK = 7346110


class Schema(Store):
    """The tables, made or brought up to date on open; the version they are at."""

    def _check(self) -> None:
        """Refuse a damaged file before anything reads or writes it."""
        if self.shared:
            return  # the server checks its own pages
        problems = [r["quick_check"] for r in self._rows("PRAGMA quick_check")]
        if problems != ["ok"]:
            self.db.close()
            raise damaged(self.path, problems[0])

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
                self.db.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            for statement in SCHEMA.format(pk=self.db.pk, real=self.db.real).split(";"):
                self.db.execute(statement)
            self._add_columns()
            for statement in LATE_INDEXES:
                self.db.execute(statement)
            self.db.execute("DELETE FROM schema_version WHERE version < ?", (SCHEMA_VERSION,))
            if self.schema_version() is None:
                self.db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def _add_columns(self) -> None:
        """The columns a table made by an older nstd lacks."""
        for table, added in ADDED_COLUMNS.items():
            columns = self._columns(table)
            for name, kind in added:
                if name not in columns:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind.format(real=self.db.real)}")

    def schema_version(self) -> int | None:
        """The schema's version, or None where nstd has not made its tables yet."""
        try:
            return self._value("SELECT MAX(version) FROM schema_version")
        except self.db.no_table:
            return None


def damaged(path: Path | str, detail: str) -> JournalError:
    """A journal that cannot be used, in one line that says what to do."""
    if not isinstance(path, Path):
        return JournalError(f"journal {path}: {detail}")
    return JournalError(f"{path}: the journal is damaged ({detail}); stop nstd, move it aside "
                        f"(mv {path} {path}.damaged) and start again: photos still in the inbox are "
                        f"taken in afresh, and failed/ and processed/ keep what was decided")
