"""What the journal tells people: counts by state, running batches and how far they have
come, recent outputs and failures. For nstd status, the gallery, the systemd status line."""

from __future__ import annotations

from nstd.daemon.journal.records import (INPUT_STATES, PROGRESS_COLUMNS, BatchProgress, Failure, Job, State)
from nstd.daemon.journal.store import Store


class Reports(Store):
    """Reads for people, and the one write they need: a running batch's progress."""

    def counts(self) -> dict[str, int]:
        """Jobs by state, every state named."""
        out = {s.value: 0 for s in State}
        out.update({r["state"]: r["n"] for r in self._rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")})
        return out

    def counts_by_style(self) -> dict[tuple[str, str], int]:
        """Jobs by (style, state): the styles are the configured ones, so the pairs are few."""
        return {(r["style"], r["state"]): r["n"]
                for r in self._rows("SELECT style, state, COUNT(*) AS n FROM jobs GROUP BY style, state")}

    def input_counts(self) -> dict[str, int]:
        """Photos (inbox files) by state: a photo refused at intake has no jobs."""
        out = {s.value: 0 for s in INPUT_STATES}
        out.update({r["state"]: r["n"] for r in self._rows("SELECT state, COUNT(*) AS n FROM inputs GROUP BY state")})
        return out

    def progress(self, job_ids: list[int], iteration: int, total: int, rate: float | None = None,
                 eta: float | None = None) -> None:
        """How far the running batch has come, for nstd status."""
        self.db.executemany("UPDATE jobs SET progress = ?, progress_total = ?, progress_rate = ?, progress_eta = ? "
                            "WHERE id = ? AND state = ?",
                            [(iteration, total, rate, eta, i, State.RUNNING) for i in job_ids])

    def batch_progress(self, batch_id: str) -> BatchProgress | None:
        """The furthest job's progress in a running batch; None before its first report,
        or in a journal from before progress was recorded (read as it is, read-only)."""
        present = self._present("jobs")
        if "progress" not in present:
            return None
        columns = ", ".join(c for c in PROGRESS_COLUMNS if c in present)
        row = self._row(f"SELECT {columns} FROM jobs WHERE batch_id = ? AND state = ? AND progress IS NOT NULL "
                        "ORDER BY progress DESC, id LIMIT 1", (batch_id, State.RUNNING))
        if row is None:
            return None
        return BatchProgress(row["progress"], row["progress_total"], row.get("progress_rate"), row.get("progress_eta"))

    def running(self) -> list[Job]:
        return self._jobs("WHERE state = ? ORDER BY id", (State.RUNNING,))

    def running_of(self, owner: str) -> list[Job]:
        """The jobs one worker is running: its own claims."""
        return self._jobs("WHERE state = ? AND claimed_by = ? ORDER BY id", (State.RUNNING, owner))

    def queue_head(self, limit: int) -> list[Job]:
        """The first `limit` queued jobs in the order they are taken: highest priority
        first where the journal has priorities, then oldest. Bounded, where queued_jobs
        reads a backlog whole."""
        first = "priority DESC, " if "priority" in self._present("jobs") else ""
        return self._jobs(f"WHERE state = ? ORDER BY {first}queued, id LIMIT ?", (State.QUEUED, limit))

    def recent_done(self, limit: int = 200) -> list[Job]:
        """Finished jobs, newest first."""
        return self._jobs("WHERE state = ? ORDER BY finished DESC, id DESC LIMIT ?", (State.DONE, limit))

    def recent_failures(self, limit: int = 10) -> list[Failure]:
        """(relpath, reason, time) of failed inputs, newest first."""
        rows = self._rows("SELECT relpath, error, finished FROM inputs WHERE state = ? "
                          "ORDER BY finished DESC LIMIT ?", (State.FAILED, limit))
        return [Failure(**r) for r in rows]
