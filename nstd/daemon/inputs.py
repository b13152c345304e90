"""The input lifecycle: files in the inbox become queued jobs, and an input whose jobs
have all ended leaves the inbox for processed/ or failed/."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Callable

from nstd import masks
from nstd.config import Config
from nstd.daemon import companions, dispose
from nstd.daemon.hooks import Hooks, Notice
from nstd.daemon.database import Unavailable
from nstd.daemon.inbox import Hints, IgnoreRules, SettleTracker, relative, scan, settle_seconds
from nstd.daemon.intake import Intake, Kind
from nstd.daemon.journal import Input, Journal, State
from nstd.daemon.journal.records import ENDED_BADLY
from nstd.daemon.runtime import Runtime
from nstd.fsutil import FolderGone, is_share_error, printable, sha256_file
from nstd.log import get

log = get("nstd.inputs")


class Inputs:
    """One `step(now)` watches, takes in and tidies up; the clock is the caller's."""

    def __init__(self, runtime: Callable[[], Runtime], journal: Journal, hints: Hints):
        self.runtime, self.journal, self.hints = runtime, journal, hints
        cfg = runtime().cfg
        self.rules = IgnoreRules(cfg.watch.extensions, cfg.watch.ignore)
        self.settle = SettleTracker(settle_seconds(cfg.watch.settle_seconds, cfg.inbox))
        self.accepted: dict[str, tuple[int, int, int]] = {}  # relpath -> stat key when taken in
        self.hooks = Hooks(cfg.on_done)
        self.intake = Intake(runtime, journal, self._settled, self.hooks)
        self.next_rescan: float | None = None
        self.deferred: dict[int, tuple[float, float]] = {}  # input id -> (retry at, last wait)
        self.refused: set[str] = set()  # inputs whose disposal was refused, logged once
        self.companions: set[str] = set()  # masks waiting beside their photos

    @property
    def cfg(self) -> Config:
        return self.runtime().cfg

    def step(self, now: float) -> None:
        """A rescan when one is due, then the hints, the settled files and finished inputs."""
        if self.next_rescan is None or now >= self.next_rescan:
            self.next_rescan = now + self.cfg.watch.rescan_interval
            self.rescan()
        self.take_hints()
        self.orphans()
        self.take_settled(now)
        self.finalize(now)

    def orphans(self) -> None:
        """A mask whose photo has left without it is looked at again once it has held still:
        alone, it is refused now, not at the next start."""
        for rel in list(self.companions):
            photo = masks.photo_of(rel)
            if photo is None or os.path.lexists(self.cfg.inbox / photo):
                continue
            self.companions.discard(rel)
            self.accepted.pop(rel, None)
            self.settle.watch(rel)

    def rescan(self) -> None:
        if not self.cfg.inbox.is_dir():  # the supervisor's look at its folders says so, once
            raise FolderGone(errno.ENOENT, "the inbox is not there", str(self.cfg.inbox))
        for rel in scan(self.cfg.inbox, self.rules):
            self.settle.watch(rel)

    def take_hints(self) -> None:
        for path in self.hints.drain():
            rel = relative(self.cfg.inbox, path)
            if rel is None:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                for sub in scan(Path(path), self.rules):  # a folder moved in at once
                    if not self.rules.ignored(f"{rel}/{sub}"):  # its own name may be ignored
                        self.settle.watch(f"{rel}/{sub}")
            elif not self.rules.ignored(rel):
                self.settle.watch(rel)

    def take_settled(self, now: float) -> None:
        # Masks first: a photo that settles with its mask is then taken in at once, with it.
        for rel, key in sorted(self.settle.poll(self.cfg.inbox, now), key=lambda r: masks.kind_of(r[0]) is None):
            if self.accepted.get(rel) == key:
                continue
            try:
                self._take(rel, key)
            except Unavailable:
                self.settle.watch(rel)  # taken in once the database is back
                raise
            except OSError as e:
                self.settle.watch(rel)  # looked at again once it has held still
                if is_share_error(e):
                    raise  # the share, not this file: the round ends and the supervisor says so once
                log.warning("intake_deferred", input=printable(rel), error=str(e))
            except Exception as e:  # noqa: BLE001 - one file's trouble must not stop the files beside it
                log.error("intake_error", input=printable(rel), error=f"{type(e).__name__}: {e}")

    def _take(self, rel: str, key: tuple[int, int, int]) -> None:
        if rel in self.refused:
            return  # its fate is decided and its move was refused; it waits for a person
        outcome = self.intake.accept(rel, key)
        if outcome.kind is Kind.CHANGED:
            self.settle.watch(rel)
            if outcome.detail:  # its mask, still arriving
                self.settle.watch(outcome.detail)
        elif outcome.kind in (Kind.QUEUED, Kind.KNOWN, Kind.COMPANION):
            self.accepted[rel] = key
            if outcome.kind is Kind.COMPANION:
                self.companions.add(rel)
            if outcome.kind is Kind.KNOWN:
                self._redispose(rel, outcome.known)

    def _settled(self, rel: str) -> tuple[int, int, int] | None:
        """A mask file's stat key if it has settled and not changed since; else None, and
        it is watched until it settles."""
        key = self._unchanged(rel)
        if key is None:
            self.settle.watch(rel)
        return key

    def _unchanged(self, rel: str) -> tuple[int, int, int] | None:
        """The stat key `rel` was taken in with, if the file still has it."""
        key = self.accepted.get(rel)
        try:
            st = os.lstat(self.cfg.inbox / rel)
        except OSError:
            return None
        return key if key is not None and key == (st.st_size, st.st_mtime_ns, st.st_ino) else None

    def _redispose(self, rel: str, known: Input) -> None:
        """A file whose fate was decided before (a re-drop, or a crash before it was moved)."""
        if known.state is State.QUEUED or rel in self.refused:
            return  # still running; or its move was refused before, and said so then
        self.accepted.pop(rel, None)
        try:
            if known.state is State.DONE:
                dispose.on_success(self.cfg.inbox, self.cfg.processed, rel, self.cfg.on_success)
                log.info("already_done", input=rel)
            elif known.state is State.FAILED:
                dispose.to_failed(self.cfg.inbox, self.cfg.failed, rel, known.error or "failed before", known.sha256)
        except ValueError as e:  # a planted link in processed/ or failed/: the file stays put
            self.refused.add(rel)
            log.error("dispose_refused", input=rel, error=str(e))

    def finalize(self, now: float) -> None:
        """Inputs whose jobs have all ended leave the inbox; never before outputs are durable."""
        for inp, jobs in self.journal.inputs_settled():
            if self.deferred.get(inp.id, (0.0, 0.0))[0] > now:
                continue  # tried a moment ago; the folder will not have mended yet
            if not self.journal.claim_disposal(inp.id, self.cfg.host, time.time(), self.cfg.worker.lease):
                continue  # another host watching this inbox is moving it
            try:
                self._dispose(inp, jobs)
            except OSError as e:
                wait = min(300.0, 2 * self.deferred.get(inp.id, (0.0, 0.5))[1])
                self.deferred[inp.id] = (now + wait, wait)
                if is_share_error(e):
                    raise  # said once by the supervisor's check of its folders
                log.warning("dispose_deferred", input=inp.relpath, error=str(e), in_seconds=wait)
            except ValueError as e:  # a name, or a planted link, that would leave processed/ or failed/
                self.refused.add(inp.relpath)
                self.journal.close_input(inp.id, State.FAILED, f"left in the inbox: {e}")
                log.error("dispose_refused", input=inp.relpath, error=str(e))
            else:
                self.deferred.pop(inp.id, None)

    def _dispose(self, inp: Input, jobs: list) -> None:
        path = self.cfg.inbox / inp.relpath
        if os.path.lexists(path) and not self._same_version(inp.relpath, inp.sha256):
            # Replaced since it was taken in: the new version is a new input, leave it.
            self.journal.close_input(inp.id, State.DONE if all(j.state is State.DONE for j in jobs)
                                     else State.FAILED)
            return
        failed = [j for j in jobs if j.state in ENDED_BADLY]
        if failed:
            reason = "; ".join(f"{j.style}: {j.error}" for j in failed)
            attempts = max(j.attempts for j in failed)
            moved = dispose.to_failed(self.cfg.inbox, self.cfg.failed, inp.relpath, reason, inp.sha256, attempts,
                                      finishing=True)
            self.journal.close_input(inp.id, State.FAILED, reason)
            log.warning("input_failed", input=inp.relpath, reason=reason)
        else:
            moved = dispose.on_success(self.cfg.inbox, self.cfg.processed, inp.relpath, self.cfg.on_success,
                                       inp.sha256)
            self.journal.close_input(inp.id, State.DONE)
            log.info("input_done", input=inp.relpath, outputs=[j.output for j in jobs])
        self.hooks.tell(Notice(inp.relpath, State.FAILED.value if failed else State.DONE.value, inp.sha256,
                               None if moved is None else str(moved),
                               tuple(str(self.cfg.outbox / j.output) for j in jobs if j.output and not failed),
                               reason if failed else None, self.cfg.host), self.cfg.on_done)
        for rel in [inp.relpath] + [m for kind in masks.KINDS for m in masks.own_names(inp.relpath, kind)]:
            self.accepted.pop(rel, None)
        if inp.spool and not self.journal.spool_in_use(inp.spool):
            Path(inp.spool).unlink(missing_ok=True)
            for mask in companions.mask_copies(Path(inp.spool)):  # its masks' copies go with it
                mask.unlink(missing_ok=True)

    def _same_version(self, rel: str, sha: str) -> bool:
        return self._unchanged(rel) is not None or _sha256(self.cfg.inbox / rel) == sha


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None
