"""Turning a settled inbox file into queued jobs, or into a failed/ entry with a reason."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Callable

from nstd import guide, images, masks
from nstd.config import Config
from nstd.daemon import companions, dispose, sidecar
from nstd.daemon.hooks import Hooks, Notice
from nstd.daemon.inbox import route
from nstd.daemon.journal import Input, JobSpec, Journal, State
from nstd.daemon.runtime import Runtime
from nstd.daemon.styles import StyleBook
from nstd.errors import ConfigError, ImageError, clip
from nstd.fsutil import atomic_write, is_utf8, make_folders, printable
from nstd.guide import REGIONS_STYLE, GuideSpec, styled_regions
from nstd.log import get
from nstd.pipeline import check_fits, working_size

log = get("nstd.intake")


class Changed(Exception):
    """The file moved under us while reading: look again once it settles."""


class Kind(Enum):
    """What became of a settled file."""

    QUEUED = "queued"  # new: its jobs are queued
    KNOWN = "known"  # this very version was taken in before
    FAILED = "failed"  # refused, into failed/ with a reason
    CHANGED = "changed"  # it moved under us, or its mask is still arriving: look again once settled
    GONE = "gone"  # no longer there
    COMPANION = "companion"  # a mask: it waits for its photo, or for the sidecars that name it


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    detail: str = ""
    known: Input | None = None  # for "known": the journal's record of this very file


def read_settled(path: Path, key: tuple[int, int, int]) -> bytes:
    """Read a regular file whose stat still matches `key`; never follow links or block on FIFOs."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{path.name}: not a regular file")
        if (st.st_size, st.st_mtime_ns, st.st_ino) != key:
            raise Changed()
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise Changed()
        return b"".join(chunks)
    finally:
        os.close(fd)


class Intake:
    def __init__(self, runtime: Callable[[], Runtime], journal: Journal, settled: companions.Settled,
                 hooks: Hooks | None = None):
        self.runtime, self.journal = runtime, journal
        self.hooks = hooks or Hooks(self.cfg.on_done)  # told of each photo refused at the door
        self.settled = settled  # a mask file's stat key once the watcher has seen it settle
        self.spool_dir = self.cfg.spool_dir
        self.spool_dir.mkdir(parents=True, exist_ok=True)

    @property
    def cfg(self) -> Config:
        return self.runtime().cfg

    @property
    def styles(self) -> StyleBook:
        return self.runtime().styles

    @property
    def models(self) -> set[str]:
        return self.cfg.model_ids()

    def accept(self, relpath: str, key: tuple[int, int, int]) -> Outcome:
        if not is_utf8(relpath):  # the journal, the outputs and the logs all need text names
            return self._refuse(relpath, None, f"{printable(relpath)}: the file name is not valid UTF-8 "
                                               f"(written by an old Windows share?); rename it and drop it again")
        if masks.kind_of(relpath):
            return self._companion(relpath, key)
        data = self._read(relpath, key)
        if isinstance(data, Outcome):
            return data
        sha = hashlib.sha256(data).hexdigest()
        known = self.journal.find_input(relpath, sha)
        where = route(relpath, self.styles.names())
        again = self._again(relpath, sha, known, where.styles)
        if known is not None and again is None and \
                not (known.state is State.FAILED and self.journal.had_jobs(known.id)):
            changed = self._mask_changed(relpath, known)
            if changed is not True:
                return changed or Outcome(Kind.KNOWN, known.state, known)
        # New, or its jobs failed before (a full disk, say), or its outputs have left the
        # outbox: dropped again, it is new work.
        if where.error:
            return self._refuse(relpath, sha, where.error)
        try:
            decoded = images.decode(data, relpath, self.cfg.max_pixels)
            sidecars = sidecar.overrides_for(self.cfg.inbox, relpath)
            found = self._guide(relpath, sidecars)
            if found.waiting:
                return Outcome(Kind.CHANGED, found.waiting)
            if found.spec is not None:  # refused now, with its reason, rather than at the worker
                guide.load(found.spec, found.data, tuple(decoded.pixels.shape[-2:]), self.cfg.max_pixels)
            specs = self._specs(relpath, where.styles, *decoded.pixels.shape[-2:], sidecars, found.spec)
        except (Changed, FileNotFoundError):
            return Outcome(Kind.CHANGED, "")  # the mask moved under us
        except (ImageError, ConfigError) as e:
            return self._refuse(relpath, sha, str(e))
        except OSError:
            raise  # a share that went away: the next scan looks again, no attempt spent
        except Exception as e:  # noqa: BLE001 - whatever a hostile file provokes fails that file alone
            return self._refuse(relpath, sha, f"cannot be taken in ({type(e).__name__}: {clip(str(e), 120)})")
        spool = self.spool_dir / f"{sha}{Path(relpath).suffix.lower()}"
        make_folders(self.spool_dir, self.spool_dir)
        if not spool.exists():
            atomic_write(spool, data)
        if found.spec is not None:
            atomic_write(companions.spool_path(spool, sha, found.spec), found.data)
        inp = self.journal.add_input(relpath, sha, str(spool), specs, again=again)
        h, w = decoded.pixels.shape[-2:]
        log.info("queued", input=relpath, sha256=sha[:12], styles=list(where.styles), size=f"{w}x{h}")
        return Outcome(Kind.QUEUED, str(inp.id))

    def _again(self, relpath: str, sha: str, known: Input | None,
               styles: tuple[str, ...]) -> dict[int, float | None] | None:
        """A photo dropped again (under a new name, or back in the inbox since it was
        done) whose results have left the outbox (cleared once delivered, or deleted to be
        made again) is made again: its done jobs of the styles this drop asks for whose
        image is gone, each with when it finished (journal.add_input). None where a known
        file is not such a drop (a photo kept in the inbox, seen again by a rescan or a
        restart) or has nothing to be made or waited for: it is settled as before.
        Nothing is judged gone while the outbox itself is not there (a share away)."""
        if known is not None and (known.state is not State.DONE or not self._dropped_since(relpath, known)):
            return None
        if not self.cfg.outbox.is_dir():
            return None if known is not None else {}
        jobs = [j for j in self.journal.photo_jobs(sha) if j.style in styles]
        gone = {j.id: j.finished for j in jobs if j.state is State.DONE and j.output and self._missing(j.output)}
        # Its jobs made again for another name dropped with it: it waits for them too.
        waiting = any(j.state in (State.QUEUED, State.RUNNING) for j in jobs)
        return gone if known is None or gone or waiting else None

    def _dropped_since(self, relpath: str, known: Input) -> bool:
        """Whether the file was put in the inbox after its input was done: a copy or a move
        sets its change time; a photo kept in the inbox keeps the one it came with."""
        try:
            return known.finished is not None and os.lstat(self.cfg.inbox / relpath).st_ctime > known.finished
        except FileNotFoundError:
            return False

    def _missing(self, output: str) -> bool:
        """Whether an output has left the outbox. Only its absence counts: a share's error
        (EIO, a stale handle) is raised, and intake looks again at the next scan."""
        try:
            os.lstat(self.cfg.outbox / output)
        except FileNotFoundError:
            return True
        return False

    def _read(self, relpath: str, key: tuple[int, int, int]) -> bytes | Outcome:
        """The settled file's bytes, or what became of it instead."""
        if key[0] < 0:
            return self._refuse(relpath, None, "not a regular file (a link, FIFO or device); nstd follows no links")
        try:
            return read_settled(self.cfg.inbox / relpath, key)
        except Changed:
            return Outcome(Kind.CHANGED)
        except FileNotFoundError:
            return Outcome(Kind.GONE)
        except ImageError as e:
            return self._refuse(relpath, None, str(e))
        except OSError as e:
            if e.errno == errno.ELOOP:
                return self._refuse(relpath, None, "a symbolic link; nstd follows no links")
            if e.errno in (errno.EACCES, errno.EPERM):
                return self._refuse(relpath, None, f"cannot read ({e.strerror})")
            raise  # EIO and friends: the share may be back soon; the next scan retries

    def _guide(self, relpath: str, sidecars: list[tuple[str, dict]]) -> companions.Found:
        """The photo's mask or region map, read only once it has settled."""
        return companions.find(self.cfg.inbox, relpath, sidecars, self.styles.names(), self.settled,
                               lambda rel, key: read_settled(self.cfg.inbox / rel, key))

    def _mask_changed(self, relpath: str, known: Input) -> bool | Outcome:
        """Whether a photo seen before comes with another mask (or none) than its jobs used:
        a new mask is new work. An Outcome when its mask is still arriving."""
        try:
            found = self._guide(relpath, sidecar.overrides_for(self.cfg.inbox, relpath))
        except (Changed, FileNotFoundError):
            return Outcome(Kind.CHANGED, "")
        except (ConfigError, ImageError, OSError):
            return False  # judged as new work only once its sidecar can be read
        if found.waiting:
            return Outcome(Kind.CHANGED, found.waiting)
        used = {(j.params.get("guide") or {}).get("sha256") for j in self.journal.jobs_of(known.id)}
        return bool(used) and (found.spec.sha256 if found.spec else None) not in used

    def _companion(self, relpath: str, key: tuple[int, int, int]) -> Outcome:
        """A mask waits beside its photo (or for the sidecars that name it); alone, it fails.
        One that is no regular file waits too: its photo fails with its reason, and not
        being painted all over."""
        photo = masks.photo_of(relpath)
        if photo is not None and os.path.lexists(self.cfg.inbox / photo):
            return Outcome(Kind.COMPANION)
        if key[0] < 0:
            return self._refuse(relpath, None, "not a regular file (a link, FIFO or device); nstd follows no links")
        if photo is None:
            return Outcome(Kind.COMPANION)
        return self._refuse(relpath, None, f"no photo {PurePosixPath(photo).name} beside it; a mask must "
                                           f"arrive with its photo or before it")

    def _specs(self, relpath: str, styles: tuple[str, ...], h: int, w: int, sidecars: list[tuple[str, dict]],
               spec: GuideSpec | None) -> list[JobSpec]:
        """One job per style (or one for a region map), with the sidecars' overrides, at the
        photo's working size."""
        memory = self.journal.largest_memory(time.time())  # of every worker that has said, on any host
        priority = sidecar.priority(sidecars)
        if spec is not None and spec.kind == "regions":
            params = sidecar.apply(self.cfg.transfer, sidecars, self.models)
            return [self._spec(relpath, REGIONS_STYLE, params, self.cfg.transfer, h, w, memory,
                               self.styles.regions_params(spec, self.cfg.output, params), spec, priority)]
        specs = []
        for name in styles:
            base = self.styles.get(name).params
            params = sidecar.apply(base, sidecars, self.models)
            stored = self.styles.job_params(name, self.cfg.output, params)
            specs.append(self._spec(relpath, name, params, base, h, w, memory,
                                    stored | ({"guide": spec.as_dict()} if spec else {}), spec, priority))
        return specs

    def _spec(self, relpath: str, style: str, params, base, h: int, w: int, memory: int | None, stored: dict,
              spec: GuideSpec | None, priority: int = 0) -> JobSpec:
        """A guided job's mask, region map or face keeping shapes its objective and its
        memory, and only jobs of one shape of objective can take each other's places in a
        running batch."""
        guided = spec is not None or params.protect != "none"
        hh, ww = working_size(relpath, h, w, params, self.cfg.max_pixels)
        self.cfg.limits.check(relpath, params, max(hh, ww), base)  # base: the config's own, before sidecars
        check_fits(relpath, (hh, ww), params, memory, styled_regions(spec, params.protect))
        key = [ww, hh, repr(params.batch_key())] + (["guided"] if guided else [])
        return JobSpec(style=style, params_hash=_digest(stored), params=stored, width=ww, height=hh,
                       batch_key=_digest(key), priority=priority)

    def _refuse(self, relpath: str, sha: str | None, reason: str) -> Outcome:
        self.journal.fail_input(printable(relpath), sha or "", reason)
        moved = None
        try:
            moved = dispose.to_failed(self.cfg.inbox, self.cfg.failed, relpath, reason, sha)
        except ValueError as e:  # a planted link in failed/: nothing is written through it
            reason = f"{reason}; left in the inbox: {e}"
            self.journal.fail_input(printable(relpath), sha or "", reason)
        log.warning("refused", input=printable(relpath), reason=reason)
        self.hooks.tell(Notice(printable(relpath), State.FAILED.value, sha, None if moved is None else str(moved),
                               reason=reason, host=self.cfg.host), self.cfg.on_done)
        return Outcome(Kind.FAILED, reason)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
