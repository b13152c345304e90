"""Start-up after a crash or a stop: running jobs back to the queue, outputs a crash left
complete adopted, and the litter of interrupted writes and moves cleared; at a stop,
what the workers could not hand back."""

from __future__ import annotations

import time
from pathlib import Path

from nstd.config import Config
from nstd.daemon import companions, dispose, gallery, outbox
from nstd.daemon.database import Unavailable
from nstd.daemon.journal import Journal
from nstd.daemon.outage import patiently
from nstd.log import get

log = get("nstd.recovery")


def recover(cfg: Config, journal: Journal) -> None:
    """On a shared journal, only this host's running jobs go back: the other hosts'
    batches are still running."""
    requeued = give_back_running(cfg, journal)
    journal.forget_workers(time.time(), cfg.host)  # this host's earlier processes
    adopted = 0
    for job in journal.queued_jobs():
        image = outbox.complete(cfg.outbox, job)
        if image is not None:
            journal.adopt(job.id, str(image.relative_to(cfg.outbox)))
            adopted += 1
    # Litter from writes and moves a crash interrupted; the originals are intact.
    found = litter(cfg, journal)
    for path in found:
        path.unlink(missing_ok=True)
    if requeued or adopted or found:
        log.info("recovered", requeued=requeued, already_complete=adopted, removed=len(found))
    try:
        gallery.write(cfg.outbox, journal)
    except OSError as e:
        log.warning("gallery_not_written", error=str(e))


def give_back_running(cfg: Config, journal: Journal) -> int:
    """Running jobs back to the queue: all of them, or on a shared journal this host's
    (owner ids begin with the host name: worker.owner_id)."""
    return journal.recover(cfg.host if journal.shared else None)


def litter(cfg: Config, journal: Journal) -> list[Path]:
    if journal.shared:
        # On shared folders another host's half-written file is its work in progress,
        # and a spooled photo not in the journal yet may be another host's intake.
        return outbox.stray_temp_files(cfg.outbox, shared=True)
    found = outbox.stray_temp_files(cfg.outbox)
    found += dispose.stray_moves(cfg.processed) + dispose.stray_moves(cfg.failed)
    # A queued job needs its photo's spool copy and the mask copies kept beside it.
    in_use = journal.spools_in_use()
    in_use |= {str(m) for s in list(in_use) for m in companions.mask_copies(Path(s))}
    return found + [p for p in cfg.spool_dir.iterdir() if str(p) not in in_use]


def give_back_at_stop(cfg: Config, journal: Journal) -> None:
    """At a stop, anything the workers could not hand back cleanly. The supervisor's
    connection may be one a database restart ended since its last use: a moment to
    reconnect; with the database away, the next start (or another host, at the lease's
    end) gives the jobs back instead."""
    give_up = time.time() + 10
    try:
        patiently(lambda: give_back_running(cfg, journal), "give_back", lambda: time.time() > give_up, time.sleep)
    except Unavailable as e:
        log.warning("running_jobs_left", error=str(e), meaning="given back at the next start or when "
                                                                "their lease runs out")
