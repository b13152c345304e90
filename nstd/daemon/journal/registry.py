"""The workers registry: each worker process on every host, by its heartbeats, with what
it is doing and what its device can hold and do."""

from __future__ import annotations

from nstd.daemon.journal.records import WORKER_COLUMNS, WorkerInfo, WorkerState, worker_from
from nstd.daemon.journal.store import Store

SILENT_SECONDS = 3600.0  # a worker row with no heartbeat for this long is forgotten


class WorkerRegistry(Store):
    """Workers as they say they are: here, doing this, as of then."""

    def beat(self, worker: WorkerInfo, state: WorkerState, now: float, reason: str | None = None) -> None:
        """A worker's heartbeat: here, in `state` (paused for `reason`), as of `now`."""
        state = WorkerState(state)
        self.db.execute("INSERT INTO workers (owner, host, device, memory, state, reason, started, heartbeat) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET state = excluded.state, "
                        "reason = excluded.reason, heartbeat = excluded.heartbeat",
                        (worker.owner, worker.host, worker.device, worker.memory, state, reason, now, now))

    def leave(self, owner: str) -> None:
        """A worker that stopped cleanly is no longer listed."""
        self.db.execute("DELETE FROM workers WHERE owner = ?", (owner,))

    def forget_workers(self, now: float, host: str | None = None) -> int:
        """Rows of workers silent for SILENT_SECONDS; with `host`, also every row of that
        host (at its start: they are its earlier processes)."""
        if host is None:
            return self.db.execute("DELETE FROM workers WHERE heartbeat < ?", (now - SILENT_SECONDS,)).rowcount
        return self.db.execute("DELETE FROM workers WHERE heartbeat < ? OR host = ?",
                               (now - SILENT_SECONDS, host)).rowcount

    def note_speed(self, owner: str, flops_per_second: float, now: float) -> None:
        """What a worker measured of its device, for nstd check to quote rather than
        measure again on a machine the daemon keeps busy."""
        self.db.execute("UPDATE workers SET speed = ?, speed_at = ? WHERE owner = ?", (flops_per_second, now, owner))

    def workers(self) -> list[WorkerInfo]:
        """Every worker listed, by host. A journal an older nstd made is read as it is
        (read-only, before a newer daemon has migrated it): no table, fewer columns."""
        present = self._present("workers")
        columns = ", ".join(c for c in WORKER_COLUMNS if c in present)
        if not columns:
            return []
        return [worker_from(r) for r in self._rows(f"SELECT {columns} FROM workers ORDER BY host, owner")]

    def largest_memory(self, now: float, within: float = SILENT_SECONDS) -> int | None:
        """The largest device memory among workers heard from lately: what the biggest job
        can ever have. None while no worker has said."""
        return self._value("SELECT MAX(memory) FROM workers WHERE heartbeat >= ?", (now - within,))
