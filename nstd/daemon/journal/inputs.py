"""The journal's verbs on inputs: a file of the inbox taken in (its jobs queued) or
refused, settled once its jobs are through, and moved out of the inbox by one host."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from nstd.daemon.journal.records import (ENDED_BADLY, INPUT_COLUMNS, LEASE_SECONDS, WAITING, Input, Job, JobSpec,
                                         State, input_from)
from nstd.daemon.journal.store import Store


class InputRecords(Store):
    """Inputs: one version (sha256) of one file in the inbox, and the jobs it brought."""

    def find_input(self, relpath: str, sha256: str) -> Input | None:
        row = self._row(f"SELECT {INPUT_COLUMNS} FROM inputs WHERE relpath = ? AND sha256 = ?", (relpath, sha256))
        return input_from(row) if row else None

    def add_input(self, relpath: str, sha256: str, spool: str | None, specs: list[JobSpec],
                  now: float | None = None, again: Mapping[int, float | None] | None = None) -> Input:
        """Record an accepted input and queue its jobs. Jobs that exist are linked, and
        failed ones start again: dropping a photo again is asking for another try; so do
        the done ones in `again` (whose outputs have left the outbox, intake found), each
        only if it is still the run that finished when intake looked: another host that
        took the same drop in has not made it again meanwhile."""
        again = again or {}
        now = time.time() if now is None else now
        with self._tx():
            self.db.execute("INSERT INTO inputs (relpath, sha256, spool, state, created) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (relpath, sha256, spool, State.QUEUED, now))
            self.db.execute("UPDATE inputs SET state = ?, error = NULL, finished = NULL, spool = ? "
                            "WHERE relpath = ? AND sha256 = ?", (State.QUEUED, spool, relpath, sha256))
            input_id = self._value("SELECT id FROM inputs WHERE relpath = ? AND sha256 = ?", (relpath, sha256))
            for spec in specs:
                job_id = self._queue_job(relpath, sha256, spool, spec, now, again)
                self.db.execute("INSERT INTO input_jobs VALUES (?, ?) ON CONFLICT DO NOTHING", (input_id, job_id))
        found = self.find_input(relpath, sha256)
        assert found is not None  # just written
        return found

    def _queue_job(self, relpath: str, sha256: str, spool: str | None, s: JobSpec, now: float,
                   again: Mapping[int, float | None]) -> int:
        """A job queued, or found; a failed or cancelled one queued again afresh, and a done
        one in `again`, under the name it was dropped with this time. Returns its id."""
        self.db.execute(
            "INSERT INTO jobs (input_sha256, style, params_hash, relpath, spool, width, "
            "height, batch_key, params, state, priority, created, queued) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (sha256, s.style, s.params_hash, relpath, spool, s.width, s.height, s.batch_key,
             json.dumps(s.params, sort_keys=True), State.QUEUED, s.priority, now, now))
        job_id = self._value("SELECT id FROM jobs WHERE input_sha256 = ? AND style = ? AND params_hash = ?",
                             (sha256, s.style, s.params_hash))
        # A job not in `again` compares its finish with NULL, which matches nothing.
        self.db.execute("UPDATE jobs SET state = ?, attempts = 0, crashes = 0, error = NULL, not_before = 0, "
                        "queued = ?, spool = ?, priority = ?, cancelled_by = NULL, cancelled_at = NULL, "
                        "output = NULL, relpath = ? WHERE id = ? AND (state IN (?, ?) OR (state = ? AND finished = ?))",
                        (State.QUEUED, now, spool, s.priority, relpath, job_id, *ENDED_BADLY, State.DONE,
                         again.get(job_id)))
        return job_id

    def photo_jobs(self, sha256: str) -> list[Job]:
        """Every job of a photo (by content), whatever name it came under."""
        return self._jobs("WHERE input_sha256 = ? ORDER BY id", (sha256,))

    def fail_input(self, relpath: str, sha256: str, error: str, now: float | None = None) -> None:
        """An input refused at intake (undecodable, unknown style folder): no jobs."""
        now = time.time() if now is None else now
        with self._tx():
            self.db.execute("INSERT INTO inputs (relpath, sha256, state, created) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (relpath, sha256, State.FAILED, now))
            self.db.execute("UPDATE inputs SET state = ?, error = ?, finished = ? "
                            "WHERE relpath = ? AND sha256 = ?", (State.FAILED, error, now, relpath, sha256))

    def inputs_settled(self) -> list[tuple[Input, list[Job]]]:
        """Queued inputs none of whose jobs is still queued or running."""
        columns = ", ".join("i." + c for c in INPUT_COLUMNS.split(", "))
        rows = self._rows(
            f"SELECT {columns} FROM inputs i WHERE i.state = ? AND NOT EXISTS (SELECT 1 FROM input_jobs l "
            "JOIN jobs j ON j.id = l.job_id WHERE l.input_id = i.id AND j.state IN (?, ?))",
            (State.QUEUED, *WAITING))
        return [(input_from(r), self.jobs_of(r["id"])) for r in rows]

    def had_jobs(self, input_id: int) -> bool:
        """Whether an input got as far as jobs (else intake refused it for what it is)."""
        return self._value("SELECT 1 FROM input_jobs WHERE input_id = ? LIMIT 1", (input_id,)) is not None

    def jobs_of(self, input_id: int) -> list[Job]:
        return self._jobs("WHERE id IN (SELECT job_id FROM input_jobs WHERE input_id = ?) ORDER BY id", (input_id,))

    def claim_disposal(self, input_id: int, host: str, now: float, lease: float = LEASE_SECONDS) -> bool:
        """Whether `host` may move a settled input out of the inbox: one host at a time, so
        a photo is moved once however many hosts watch the inbox. A host that dies
        mid-move loses the claim when its lease runs out."""
        return self.db.execute("UPDATE inputs SET disposer = ?, dispose_until = ? WHERE id = ? AND state = ? "
                               "AND (disposer IS NULL OR disposer = ? OR dispose_until < ?)",
                               (host, now + lease, input_id, State.QUEUED, host, now)).rowcount == 1

    def close_input(self, input_id: int, state: State, error: str | None = None) -> None:
        self.db.execute("UPDATE inputs SET state = ?, error = ?, finished = ? WHERE id = ?",
                        (State(state), error, time.time(), input_id))

    def spools_in_use(self) -> set[str]:
        rows = self._rows("SELECT DISTINCT spool FROM jobs WHERE state IN (?, ?)", WAITING)
        return {r["spool"] for r in rows}

    def spool_in_use(self, spool: str) -> bool:
        return self._value("SELECT 1 FROM jobs WHERE spool = ? AND state IN (?, ?) LIMIT 1",
                           (spool, *WAITING)) is not None
