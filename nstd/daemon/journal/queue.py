"""The queue's verbs on jobs: what waits, a batch claimed under a lease and renewed, its
outcomes recorded while the claim still holds, and running jobs given back (a stop, a
crash, a dead worker, a lost lease)."""

from __future__ import annotations

import time

from nstd.daemon.journal.records import LEASE_SECONDS, Job, State
from nstd.daemon.journal.store import Store

LESS_ONE = "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"  # an attempt given back
# A running job back in the queue as if never started; binds State.QUEUED.
BACK_TO_QUEUE = f"state = ?, attempts = {LESS_ONE}, batch_id = NULL, lease_until = NULL"
HELD = "batch_id = ? AND state = ?"  # the claim (batch id, then State.RUNNING) still holds it
ORDER = "priority DESC, queued, id"  # the queue's order: priority, then age (as Deadline's farms take work)


class JobQueue(Store):
    """Jobs from queued to running to done or failed. A running job is held by a claim:
    its batch id is the claim's token, and its lease runs out unless the worker renews it."""

    def recover(self, host: str | None = None) -> int:
        """After a crash or stop: running jobs go back to the queue; with `host`, only those
        this host's workers held (on a shared journal the others are still running). A run
        that a kill cut short is not one of the job's attempts: those count its own outcomes."""
        where, params = ("", ()) if host is None else (" AND substr(claimed_by, 1, ?) = ?",
                                                       (len(host) + 1, host + ":"))
        with self._tx():
            cur = self.db.execute(f"UPDATE jobs SET {BACK_TO_QUEUE} WHERE state = ?" + where,
                                  (State.QUEUED, State.RUNNING) + params)
        return cur.rowcount

    def oldest_queued(self, now: float) -> Job | None:
        """The job the scheduler takes next: the highest priority, then the oldest."""
        jobs = self._jobs(f"WHERE state = ? AND not_before <= ? ORDER BY {ORDER} LIMIT 1", (State.QUEUED, now))
        return jobs[0] if jobs else None

    def count_queued(self, batch_key: str, now: float) -> int:
        return self._value("SELECT COUNT(*) FROM jobs WHERE state = ? AND batch_key = ? AND not_before <= ?",
                           (State.QUEUED, batch_key, now))

    def queued_jobs(self) -> list[Job]:
        return self._jobs("WHERE state = ?", (State.QUEUED,))

    def get_jobs(self, ids: list[int]) -> list[Job]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return self._jobs(f"WHERE id IN ({marks}) ORDER BY {ORDER}", list(ids))  # as claimed: a batch's first place to the first

    def claim(self, batch_key: str, limit: int, batch_id: str, now: float, owner: str | None = None,
              lease: float = LEASE_SECONDS) -> list[Job]:
        """Mark the first `limit` queued jobs of one batch key (by priority, then age) as running by `owner`, in one
        statement. On PostgreSQL, rows another host is claiming are skipped, not waited on.
        `batch_id` is the claim's token; the lease runs `lease` seconds from `now`."""
        with self._tx():
            rows = self._rows(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, started = ?, batch_id = ?, claimed_by = ?, "
                "lease_until = ?, progress = NULL, progress_total = NULL, progress_rate = NULL, progress_eta = NULL "
                "WHERE id IN (SELECT id FROM jobs WHERE state = ? AND batch_key = ? AND not_before <= ? "
                f"ORDER BY {ORDER} LIMIT ?" + self.db.lock_rows + ") RETURNING id",
                (State.RUNNING, now, batch_id, owner, now + lease, State.QUEUED, batch_key, now, limit))
        return self.get_jobs([r["id"] for r in rows])

    def renew(self, batch_id: str, now: float, lease: float = LEASE_SECONDS) -> int:
        """Extend a running batch's lease; returns how many of its jobs it still holds."""
        return self.db.execute(f"UPDATE jobs SET lease_until = ? WHERE {HELD}",
                               (now + lease, batch_id, State.RUNNING)).rowcount

    def holds(self, job_id: int, batch_id: str) -> bool:
        """Whether the claim `batch_id` still holds the job (its lease was not lost to another)."""
        return self._value(f"SELECT 1 FROM jobs WHERE id = ? AND {HELD}", (job_id, batch_id, State.RUNNING)) \
            is not None

    # --- outcomes ---------------------------------------------------------------------

    def _settle(self, job_id: int, token: str | None, sets: str, params: tuple) -> bool:
        """Apply a running job's outcome, only while `token` (its batch id) still holds it.
        Returns False for a stale claim: its lease ran out and another worker has the job."""
        if token is None:
            cur = self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", params + (job_id,))
        else:
            cur = self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND {HELD}",
                                  params + (job_id, token, State.RUNNING))
        return cur.rowcount == 1

    def finish(self, job_id: int, output: str, token: str | None = None) -> bool:
        return self._settle(job_id, token, "state = ?, output = ?, error = NULL, finished = ?, lease_until = NULL",
                            (State.DONE, output, time.time()))

    def adopt(self, job_id: int, output: str) -> bool:
        """A queued job whose outputs a run completed before a crash could record it: done,
        and that run counted."""
        return self.db.execute("UPDATE jobs SET state = ?, output = ?, error = NULL, finished = ?, "
                               "attempts = attempts + 1 WHERE id = ? AND state = ?",
                               (State.DONE, output, time.time(), job_id, State.QUEUED)).rowcount == 1

    def fail(self, job_id: int, error: str, token: str | None = None) -> bool:
        return self._settle(job_id, token, "state = ?, error = ?, finished = ?, lease_until = NULL",
                            (State.FAILED, error, time.time()))

    def retry(self, job_id: int, error: str, delay: float, token: str | None = None) -> bool:
        return self._settle(job_id, token, "state = ?, error = ?, not_before = ?, batch_id = NULL, "
                            "lease_until = NULL", (State.QUEUED, error, time.time() + delay))

    def defer(self, job_id: int, error: str, delay: float, token: str | None = None) -> bool:
        """Back to the queue after `delay` seconds without using up an attempt: the
        destination failed (a full or read-only outbox), not the photo."""
        return self._settle(job_id, token, f"{BACK_TO_QUEUE}, error = ?, not_before = ?",
                            (State.QUEUED, error, time.time() + delay))

    # --- giving back ------------------------------------------------------------------

    def requeue(self, job_ids: list[int], token: str | None = None) -> int:
        """Give running jobs back untouched, as if never started (a stop, not a failure).

        Only jobs still running (under `token`, when given) go back: a batch's callers pass
        every job they were given, and some may have finished, failed or gone to another
        worker since. Returns how many.
        """
        where, extra = ("", ()) if token is None else (" AND batch_id = ?", (token,))
        with self._tx():
            return self.db.executemany(f"UPDATE jobs SET {BACK_TO_QUEUE} WHERE id = ? AND state = ?" + where,
                                       [(State.QUEUED, i, State.RUNNING) + extra for i in job_ids])

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
        reason = (f"its worker stopped {quarantine_after} times while running it (a crash of the device, "
                  "the process or the host); set aside so the queue moves on")
        with self._tx():
            rows = self._rows(f"UPDATE jobs SET crashes = crashes + 1 WHERE state = ? AND {where} "
                              "RETURNING id, crashes", (State.RUNNING,) + params)
            bad = [r["id"] for r in rows if r["crashes"] >= quarantine_after]
            self.db.executemany("UPDATE jobs SET state = ?, error = ?, finished = ?, lease_until = NULL "
                                "WHERE id = ?", [(State.FAILED, reason, time.time(), i) for i in bad])
            back = self.db.executemany(f"UPDATE jobs SET {BACK_TO_QUEUE} WHERE id = ?",
                                       [(State.QUEUED, r["id"]) for r in rows if r["id"] not in bad])
        return back, self.get_jobs(bad)
