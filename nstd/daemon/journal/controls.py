"""The studio's controls over the queue, from any host on a shared journal: a job's
priority, cancelling, and pausing workers. Each is a row, so it holds across restarts
and every host sees it."""

from __future__ import annotations

from dataclasses import fields
from fnmatch import fnmatch

from nstd.daemon.journal.records import ANY, INPUT_COLUMNS, WAITING, Job, Pause, State, input_from
from nstd.daemon.journal.store import Store

PAUSE_COLUMNS = ", ".join(f.name for f in fields(Pause))


class Controls(Store):
    def photos(self, names: list[str], style: str | None = None) -> dict[str, list[Job]]:
        """The jobs of the photos whose names match one of `names` (globs allowed), by
        name, every version of a name together; only the jobs of `style` where given."""
        rows = self._rows(f"SELECT {INPUT_COLUMNS} FROM inputs ORDER BY id")
        out: dict[str, list[Job]] = {}
        for inp in map(input_from, rows):
            if any(fnmatch(inp.relpath, n) for n in names):
                jobs = out.setdefault(inp.relpath, [])
                jobs += [j for j in self.jobs_of(inp.id) if style in (None, j.style) and j not in jobs]
        return out

    def set_priority(self, job_ids: list[int], priority: int) -> int:
        """A new priority for jobs still queued or running (a running one's matters to its
        refills, and to its next claim should it go back). Returns how many."""
        with self._tx():
            return self.db.executemany("UPDATE jobs SET priority = ? WHERE id = ? AND state IN (?, ?)",
                                       [(priority, i, *WAITING) for i in job_ids])

    def cancel(self, job_ids: list[int], by: str, now: float) -> int:
        """Cancel queued and running jobs: a running one leaves its batch at its worker's
        next look, and nothing of it is published. Returns how many were cancelled now;
        cancelling again finds nothing to do."""
        with self._tx():
            return self.db.executemany(
                "UPDATE jobs SET state = ?, error = ?, cancelled_by = ?, cancelled_at = ?, finished = ?, "
                "lease_until = NULL WHERE id = ? AND state IN (?, ?)",
                [(State.CANCELLED, f"cancelled by {by}", by, now, now, i, *WAITING) for i in job_ids])

    def cancelled_among(self, job_ids: list[int]) -> set[int]:
        """Those of `job_ids` that were cancelled: a running batch asks, to let them go."""
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        rows = self._rows(f"SELECT id FROM jobs WHERE state = ? AND id IN ({marks})", (State.CANCELLED, *job_ids))
        return {r["id"] for r in rows}

    def pause(self, host: str, device: str, by: str, now: float) -> None:
        """Workers of `host` (ANY: every host) on `device` (ANY: every device) take no new
        batch until resumed; the batch each is running finishes."""
        self.db.execute("INSERT INTO pauses (host, device, by_whom, since) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (host, device) DO UPDATE SET by_whom = excluded.by_whom, since = excluded.since",
                        (host, device, by, now))

    def resume(self, host: str, device: str) -> int:
        """Lift the pauses that `host` and `device` name (ANY lifts them all of that side).
        Returns how many were lifted."""
        where = " AND ".join(["1 = 1"] + [f"{column} = ?" for column, value in (("host", host), ("device", device))
                                          if value != ANY])
        params = tuple(v for v in (host, device) if v != ANY)
        return self.db.execute(f"DELETE FROM pauses WHERE {where}", params).rowcount

    def pauses(self) -> list[Pause]:
        """Every pause in force. A journal from before pauses has none."""
        if not self._present("pauses"):
            return []
        return [Pause(**r) for r in self._rows(f"SELECT {PAUSE_COLUMNS} FROM pauses ORDER BY host, device")]

    def pause_of(self, host: str, device: str) -> Pause | None:
        """The pause that holds a worker of `host` on `device`, if any."""
        return next((p for p in self.pauses() if p.covers(host, device)), None)
