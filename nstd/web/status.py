"""/api/status: what the dashboard shows, as one small JSON document.

Everything but this daemon's own pause comes from the journal, so on a shared PostgreSQL
journal every host's workers, batches, queue and outcomes are on every host's page.
Every list is bounded (LIMIT). Photo names are sent as they are: the page writes them
as text, never as markup. Times are sent as seconds before or after the server's now,
so a phone whose clock is off still reads them right."""

from __future__ import annotations

import glob
import shlex
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nstd.daemon.gallery import result_thumb
from nstd.daemon.journal import ANY
from nstd.daemon.report import SILENT_AFTER
from nstd.fsutil import contained
from nstd.steer import EVERY

LIMIT = 50  # items in each list; the counts at the top say how many there are in all


@dataclass(frozen=True)
class Site:
    """What the page needs from the daemon serving it, read at each request (a reload
    may move the outbox)."""

    host: str
    outbox: Callable[[], Path]
    config: Callable[[], Path]
    paused: Callable[[], str | None]  # why this daemon takes no new work, or None


def read(journal, site: Site, now: float) -> dict:
    """The document, from the journal alone: a caller holds the journal's connection only
    for this, and looks at the outbox (thumbs) after letting it go."""
    counts = journal.counts()
    running = journal.running()
    listed = journal.workers()[:LIMIT]
    held = {job.batch_id: w for w in listed for job in journal.running_of(w.owner)}
    return {
        "host": site.host,
        "paused": site.paused(),
        "jobs": counts,
        "photos": journal.input_counts(),
        "workers": [_worker(w, now) for w in listed],
        "pauses": [_pause(p, site.config(), now) for p in journal.pauses()[:LIMIT]],
        "batches": _batches(journal, running, held, now),
        "queue": [_queued(job, now) for job in journal.queue_head(LIMIT)],
        "done": [_done(job, now) for job in journal.recent_done(LIMIT)],
        "failures": [_failure(f, site.config(), now) for f in journal.recent_failures(LIMIT)],
        "limit": LIMIT,
    }


def thumbs(doc: dict, outbox: Path, can_look: bool) -> dict:
    """Mark the outputs whose thumbnail is there to fetch. The gallery writes it just after
    the job is recorded done, so a new output may have none yet; while a folder is away
    (a share gone) nothing is looked at, so no request waits on a dead mount."""
    for item in doc["done"]:
        item["thumb"] = can_look and thumb_path(outbox, item["id"]) is not None
    return doc


def thumb_path(outbox: Path, job_id: int) -> Path | None:
    """A finished job's thumbnail, built from its id alone (no name from the request
    reaches the file system); None where it is missing or a link would lead it out."""
    try:
        path = contained(outbox, result_thumb(job_id))
    except (OSError, ValueError):
        return None
    return path if path.is_file() else None


def _worker(w, now: float) -> dict:
    age = max(0.0, now - w.heartbeat)
    return {"host": w.host, "device": w.device, "state": str(w.state), "reason": w.reason,
            "memory": w.memory, "heartbeat_age": round(age, 1), "silent": age > SILENT_AFTER}


def _pause(pause, config: Path, now: float) -> dict:
    """An operator's pause (nstd pause), host and device as the journal holds them ("*"
    for every one), with the command that lifts it."""
    return {"host": pause.host, "device": pause.device, "by": pause.by_whom,
            "ago": round(max(0.0, now - pause.since), 1), "resume": resume_command(config, pause.host, pause.device)}


def _batches(journal, running: list, held: dict, now: float) -> list[dict]:
    """Each running batch with its photos and how far it has come; a batch no listed
    worker holds (its host stopped beating, or the listing was cut) is shown unowned."""
    jobs = defaultdict(list)
    for job in running:
        jobs[job.batch_id].append(job)
    out = []
    for batch_id, members in list(jobs.items())[:LIMIT]:
        worker = held.get(batch_id)
        first = members[0]
        item = {"id": batch_id, "host": worker.host if worker else None, "device": worker.device if worker else None,
                "size": f"{first.width}x{first.height}", "count": len(members),
                "jobs": [{"id": j.id, "photo": j.relpath, "style": j.style} for j in members[:LIMIT]]}
        item.update(_progress(journal.batch_progress(batch_id), now))
        out.append(item)
    return out


def _progress(progress, now: float) -> dict:
    if progress is None:
        return {"iteration": None, "total": None, "rate": None, "left": None}
    left = None if progress.eta is None else round(max(0.0, progress.eta - now), 1)
    rate = None if progress.rate is None else round(progress.rate, 3)
    return {"iteration": progress.done, "total": progress.total, "rate": rate, "left": left}


def _queued(job, now: float) -> dict:
    return {"id": job.id, "photo": job.relpath, "style": job.style, "size": f"{job.width}x{job.height}",
            "priority": getattr(job, "priority", 0), "waiting": round(max(0.0, now - job.queued), 1)}


def _done(job, now: float) -> dict:
    return {"id": job.id, "photo": job.relpath, "style": job.style, "output": job.output,
            "ago": None if job.finished is None else round(max(0.0, now - job.finished), 1), "thumb": False}


def _failure(failure, config: Path, now: float) -> dict:
    relpath, error, when = failure
    return {"photo": relpath, "reason": (error or "no reason recorded").removeprefix(f"{relpath}: "),
            "ago": None if when is None else round(max(0.0, now - when), 1),
            "retry": retry_command(config, relpath)}


def retry_command(config: Path, relpath: str) -> str:
    """The command that brings a failed photo back, as pasted into a shell: nstd retry
    takes globs, so the name's own glob characters are escaped to match it alone."""
    words = ["nstd", "retry", "--config", str(config), glob.escape(relpath)]
    return " ".join(shlex.quote(w) for w in words)


def resume_command(config: Path, host: str, device: str) -> str:
    """The command that lifts one pause, as pasted into a shell, its host and device named
    as nstd resume takes them ('all' for every one). A wide pause's command lifts the
    narrower ones it covers too, as nstd resume does."""
    sides = [EVERY if side == ANY else side for side in (host, device)]
    words = ["nstd", "resume", "--config", str(config), "--host", sides[0], "--device", sides[1]]
    return " ".join(shlex.quote(w) for w in words)
