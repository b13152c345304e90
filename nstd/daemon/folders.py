"""Whether the folders the daemon works in can be used now, told once when they cannot
and once when they can again.

A studio's folders are often on a NAS: the share goes away when the server reboots or
the network drops (every call fails with EIO, ENOTCONN, ESTALE …), or its mount is
taken down and leaves the empty mount point behind, where nothing must be written. Both
are the share's trouble, never a photo's: no attempt is spent, nothing is failed, and the
work waits. A full or read-only outbox or state folder pauses new work the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nstd.daemon import outbox
from nstd.daemon.inbox import mount_of, mounts
from nstd.log import get

log = get("nstd.folders")

@dataclass(frozen=True)
class Trouble:
    reason: str
    unreachable: bool  # the folders cannot be read at all: the inbox side waits too


def unreachable(folders: dict[str, Path], mounts_at_start: dict[str, str | None] | None = None) -> str | None:
    """Why one of `folders` (name -> path) cannot be reached now, or None. With `mounts_at_start`
    (name -> the mount point it was under at start), a folder now under another mount
    point is on the disk below a share that went: nothing must be written there."""
    table = mounts() if mounts_at_start else []
    for name, path in folders.items():
        try:
            os.stat(path)
            with os.scandir(path) as entries:  # some clients answer stat from a cache
                next(entries, None)
        except OSError as e:
            return f"{name} {path}: {e.strerror or e}"
        at_start = (mounts_at_start or {}).get(name)
        if at_start and mount_of(path, table)[0] != at_start:
            return f"{name} {path}: its share is no longer mounted at {at_start}"
    return None


def mounts_of(folders: dict[str, Path]) -> dict[str, str | None]:
    table = mounts()
    return {name: mount_of(path, table)[0] for name, path in folders.items()}


def watched(cfg) -> tuple[dict[str, Path], dict[str, Path]]:
    """The folders to reach, and those that must take writes (the SQLite journal's too)."""
    reach = {"inbox": cfg.inbox, "outbox": cfg.outbox, "failed": cfg.failed, "processed": cfg.processed,
             "spool": cfg.spool_dir}
    return reach, {"outbox": cfg.outbox} | ({} if cfg.journal else {"state_dir": cfg.state_dir})


def paused_now(reach: dict[str, Path], writable: dict[str, Path],
               mounts_at_start: dict[str, str | None] | None = None) -> Trouble | None:
    """Why new work waits now, or None: a folder of `reach` out of reach, or one of
    `writable` that takes no writes (watched(cfg) gives the daemon's)."""
    reason = unreachable(reach, mounts_at_start)
    if reason:
        return Trouble(f"share unavailable: {reason}", True)
    for path in writable.values():
        reason = outbox.unwritable(path)
        if reason:
            return Trouble(reason, False)
    return None


AFTER_OUTAGE = 30.0  # seconds after the folders are back in which a watch restart is expected


class Folders:
    """The supervisor's view of its folders. `check` looks, and logs only the changes:
    one warning when work pauses, one line when it resumes."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.mounts = mounts_of(watched(cfg)[0])  # at start, when preflight found every folder
        self.trouble: Trouble | None = None
        self.since: float | None = None
        self.pauses = 0  # since the daemon started, for /metrics
        self.back_at: float | None = None  # when the folders were last back after an outage

    def check(self, now: float) -> Trouble | None:
        trouble = paused_now(*watched(self.cfg), self.mounts)
        if trouble and self.trouble is None:
            self.since = now
            self.pauses += 1
            log.warning("paused", reason=trouble.reason,
                        meaning="nothing is lost or failed: running work waits, new work starts once it is back")
        elif trouble is None and self.trouble is not None:
            log.info("resumed", after_seconds=round(now - (self.since or now), 1), was=self.trouble.reason)
            self.since, self.back_at = None, now
        self.trouble = trouble
        return trouble

    def just_back(self, now: float) -> bool:
        """Whether the folders came back lately: the inbox watch may notice its folder was
        replaced a look or two after that, and its restart then is the outage's, not news."""
        return self.trouble is None and self.back_at is not None and now - self.back_at <= AFTER_OUTAGE

    @property
    def reachable(self) -> bool:
        return self.trouble is None or not self.trouble.unreachable
