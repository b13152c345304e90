"""The outbox: where each job's outputs go, whether they are complete, and writing them."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path, PurePosixPath

from nstd import images, publish
from nstd.daemon.journal import Job
from nstd.fsutil import (SHARE_ERRNOS, contained, fit_name, host_tag, is_own, is_share_error,
                         left_by_dead_writer, make_folders)
from nstd.publish import STEM_ROOM


def subpath(relpath: str, style: str) -> str:
    """The path below the style folder: inbox/<style>/a/b.jpg and inbox/a/b.jpg name a/b.jpg."""
    parts = PurePosixPath(relpath).parts
    if len(parts) > 1 and parts[0] == style:
        return "/".join(parts[1:])
    return relpath


def _read_log(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _owned_by(log: dict | None, job: Job) -> bool:
    return bool(log) and log.get("input", {}).get("sha256") == job.input_sha256 \
        and log.get("params_hash") == job.params_hash


def targets(outbox: Path, job: Job) -> tuple[Path, Path]:
    """(image, json) paths; a name already taken by another input gets a short-hash suffix."""
    fmt = job.params["format"]
    sub = PurePosixPath(subpath(job.relpath, job.style))
    stem = sub.stem if sub.stem not in ("", ".", "..") else f"_{sub.name}"
    stem = fit_name(stem, STEM_ROOM)
    # Each style's outputs stay inside its own folder, whatever the names.
    base = contained(contained(outbox, job.style), str(sub.parent / stem))
    js = base.with_name(base.name + ".json")
    if js.exists() and not _owned_by(_read_log(js), job):
        base = base.with_name(f"{base.name}-{job.input_sha256[:8]}")
        js = base.with_name(base.name + ".json")
    return base.with_name(base.name + "." + images.EXTENSIONS[fmt]), js


def complete(outbox: Path, job: Job) -> Path | None:
    """The image path if this job's outputs already exist in full."""
    try:
        image, js = targets(outbox, job)
    except ValueError:
        return None
    if _owned_by(_read_log(js), job) and image.exists():
        return image
    return None


def write(outbox: Path, job: Job, pixels, log: dict, snapshots=(), exif: bytes | None = None,
          bits: int = 8) -> Path:
    """The job's files at its targets (see publish.write); returns the image's path."""
    image, js = targets(outbox, job)
    make_folders(outbox, image.parent)
    fmt = job.params["format"]
    log = log | {"params_hash": job.params_hash,
                 "output": log.get("output", {}) | {"format": fmt.lower(), "path": os.path.relpath(image, outbox)}}
    publish.write(publish.Output(image, js, fmt, job.params["quality"]), pixels, log,
                  f"{job.relpath} × {job.style}", snapshots, exif, bits)
    return image


def withdraw(outbox: Path, job: Job) -> None:
    """Remove a job's outputs, written just before the job was cancelled: nothing of a
    cancelled job is published."""
    for path in targets(outbox, job):
        path.unlink(missing_ok=True)


def stray_temp_files(outbox: Path, shared: bool = False) -> list[Path]:
    """Temporary files an interrupted write left behind (names from fsutil.atomic_write).
    On an outbox `shared` with other hosts, only those this host's dead processes left."""
    found = [p for p in outbox.rglob(".*.tmp") if p.is_file()]
    return [p for p in found if left_by_dead_writer(p)] if shared else found


# Errors of the outbox itself, not of the photo: the photo waits for the outbox to mend.
DESTINATION_ERRNOS = SHARE_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT,
                                     errno.EAGAIN}


def destination_trouble(e: OSError) -> bool:
    """Whether a failed write is the outbox's trouble (full, read-only, a share that is
    away or unmounted), so that the job waits for it rather than fails."""
    return e.errno in DESTINATION_ERRNOS or is_share_error(e)


PROBE = ".nstd-probe"
MIN_FREE_BYTES = 64 << 20  # below this, a batch's images may not fit (a tenth of a small volume)


def _clear_own_probes(folder: Path) -> None:
    """Probes of this process that an outage left (a share may list '@' as '%40', so
    they are found by listing, not by name)."""
    for path in folder.glob(f"{PROBE}.*.tmp"):
        if is_own(path):
            path.unlink(missing_ok=True)


def unwritable(outbox: Path) -> str | None:
    """Why nothing can be written to the outbox now, or None. A real write is tried:
    permissions and read-only flags on a share do not always say. Each thread probes
    under a name of its own (the supervisor and the worker look at the same folder), and
    a probe that succeeds removes what an earlier one, cut short by an outage, left."""
    probe = outbox / f"{PROBE}.@{host_tag()}@{os.getpid()}.{threading.get_native_id()}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass  # another thread's clearing took it: the write happened all the same
        st = os.statvfs(outbox)
        _clear_own_probes(outbox)
    except OSError as e:
        return f"{outbox} cannot be written ({e.strerror})"
    free = st.f_bavail * st.f_frsize
    if free < min(MIN_FREE_BYTES, st.f_blocks * st.f_frsize // 10):
        return f"{outbox} is full ({free >> 20} MiB free)"
    return None
