"""Start-up after a crash or a stop: running jobs back to the queue, outputs a crash left
complete adopted, and the litter of interrupted writes and moves cleared."""

from __future__ import annotations

import time
from pathlib import Path

from nstd.config import Config
from nstd.daemon import companions, dispose, gallery, outbox
from nstd.daemon.journal import Journal
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
