"""What the journal tells a monitoring system: distributions of how long jobs took, the
queue by size and priority, each worker's running slots and rate, and how often work was
taken back from a worker. Read at each scrape; every query is one bounded statement."""

from __future__ import annotations

from typing import NamedTuple

from nstd.daemon.journal.records import State
from nstd.daemon.journal.store import Store

# How long a finished job took, as (name, the SQL for its seconds): its last run's
# compute, and the wait from the drop to the output.
SPANS = {"compute": "finished - started", "drop_to_output": "finished - queued"}


class Spread(NamedTuple):
    """A histogram's cumulative counts at each upper bound, its count and its sum."""

    buckets: list[tuple[float, int]]
    count: int
    total: float


class Slots(NamedTuple):
    """A worker's running batch as the journal holds it."""

    owner: str
    in_use: int
    rate: float | None  # iterations per second, as its worker last reported


class Tallies(Store):
    def spread(self, span: str, bounds: tuple[float, ...]) -> Spread:
        """Finished jobs by how long `span` (a key of SPANS) took, at each of `bounds`."""
        seconds = SPANS[span]
        cases = ", ".join(f"SUM(CASE WHEN {seconds} <= ? THEN 1 ELSE 0 END) AS le{i}" for i in range(len(bounds)))
        row = self._row(f"SELECT COUNT(*) AS n, SUM({seconds}) AS total, {cases} FROM jobs "
                        "WHERE state = ? AND started IS NOT NULL AND finished IS NOT NULL",
                        (*bounds, State.DONE))
        buckets = [(b, int(row[f"le{i}"] or 0)) for i, b in enumerate(bounds)]
        return Spread(buckets, int(row["n"] or 0), float(row["total"] or 0.0))

    def slots(self) -> list[Slots]:
        """Each claimed batch's worker: its jobs running and their reported rate."""
        rate = "MAX(progress_rate)" if "progress_rate" in self._present("jobs") else "NULL"
        rows = self._rows(f"SELECT claimed_by AS owner, COUNT(*) AS n, {rate} AS rate FROM jobs "
                          "WHERE state = ? AND claimed_by IS NOT NULL GROUP BY claimed_by", (State.RUNNING,))
        return [Slots(r["owner"], r["n"], r["rate"]) for r in rows]

    def queued_by(self, column: str, limit: int) -> list[tuple[str, int]]:
        """Queued jobs grouped by `column` ("size" or "priority"), the largest groups first,
        at most `limit` of them and the rest as "other": a label's values stay few."""
        group = {"size": "width || 'x' || height", "priority": "priority"}[column]
        if column == "priority" and "priority" not in self._present("jobs"):
            group = "0"
        rows = self._rows(f"SELECT {group} AS g, COUNT(*) AS n FROM jobs WHERE state = ? GROUP BY {group} "
                          "ORDER BY n DESC", (State.QUEUED,))
        out = [(str(r["g"]), r["n"]) for r in rows[:limit]]
        rest = sum(r["n"] for r in rows[limit:])
        return out + ([("other", rest)] if rest else [])

    def takeovers(self) -> int:
        """Times a running job was taken back from a worker that died or went silent past
        its lease, over the journal's history."""
        return int(self._value("SELECT COALESCE(SUM(crashes), 0) FROM jobs") or 0)
