"""The journal's connection, as its parts share it: statements in, rows by column name
out, transactions, and which columns a table has (an older journal read as it is)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nstd.daemon.database import PostgresDatabase, SqliteDatabase
from nstd.daemon.journal.records import JOB_FIELDS, Job, Row, job_from, named


class Store:
    """What every part of the journal stands on: one connection (`db`) to SQLite (one
    host) or PostgreSQL (several, `shared`). The parts add verbs; `Journal` opens it."""

    path: Path | str
    db: SqliteDatabase | PostgresDatabase
    shared: bool  # several hosts may use it
    readonly: bool
    _known_columns: dict[str, set[str]]

    def _tx(self) -> Transaction:
        return Transaction(self.db)

    def _rows(self, sql: str, params: tuple | list = ()) -> list[Row]:
        return named(self.db.execute(sql, params))

    def _row(self, sql: str, params: tuple | list = ()) -> Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _value(self, sql: str, params: tuple | list = ()) -> Any:
        """The one value a statement selects (a count, a maximum, an id), or None."""
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _jobs(self, tail: str, params: tuple | list = ()) -> list[Job]:
        """Jobs, whole, from `SELECT ... FROM jobs` followed by `tail`: the columns this
        journal has (an older one, read as it is, lacks the newest)."""
        present = self._present("jobs")
        columns = ", ".join(c for c in JOB_FIELDS if c in present)
        return [job_from(r) for r in self._rows(f"SELECT {columns} FROM jobs {tail}", params)]

    def _columns(self, table: str) -> set[str]:
        """The columns `table` has now; none where it does not exist."""
        if self.shared:
            rows = self._rows("SELECT column_name AS name FROM information_schema.columns WHERE table_name = ? "
                              "AND table_schema = current_schema()", (table,))
        else:
            rows = self._rows("SELECT name FROM pragma_table_info(?)", (table,))
        return {r["name"] for r in rows}

    def _present(self, table: str) -> set[str]:
        """The columns `table` has, looked up once: a reader of a journal that an older
        nstd made (read-only, not migrated) selects only these."""
        if table not in self._known_columns:
            self._known_columns[table] = self._columns(table)
        return self._known_columns[table]

    def server_time(self) -> float:
        """The database's clock (the host's own for SQLite), in Unix seconds."""
        if not self.shared:
            return time.time()
        return float(self._value("SELECT EXTRACT(EPOCH FROM clock_timestamp())"))

    def close(self) -> None:
        self.db.close()


class Transaction:
    """`with journal._tx():` the statements inside commit together, or not at all."""

    def __init__(self, db: SqliteDatabase | PostgresDatabase):
        self.db = db

    def __enter__(self) -> None:
        self.db.begin()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.db.commit()
            return
        try:
            self.db.rollback()
        except self.db.errors:
            pass  # a lost connection has rolled back already
