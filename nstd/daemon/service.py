"""`nstd run`: wiring, signals, sd_notify and the loop that watches, takes in and tidies up."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from nstd import config as config_mod
from nstd import weights
from nstd.config import Config
from nstd.daemon import dispose, gallery, outbox, preflight
from nstd.daemon.inbox import (Hints, IgnoreRules, SettleTracker, Watcher, choose_mode, relative, scan,
                               settle_seconds)
from nstd.daemon.intake import Intake, Kind
from nstd.daemon.journal import Input, Journal, State
from nstd.daemon.notify import notify, watchdog_interval
from nstd.daemon.styles import StyleBook
from nstd.daemon.worker import Worker
from nstd.engine.device import describe, resolve_devices
from nstd.errors import ConfigError, NstdError
from nstd.fsutil import sha256_file
from nstd.log import get

log = get("nstd.service")


class Service:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stop_requested = threading.Event()  # set by a signal
        self.worker_stop = threading.Event()
        self.reload_requested = threading.Event()
        self.hints = Hints()
        self.rules = IgnoreRules(cfg.watch.extensions, cfg.watch.ignore)
        self.settle = SettleTracker(settle_seconds(cfg.watch.settle_seconds, cfg.inbox))
        self.accepted: dict[str, tuple[int, int, int]] = {}  # relpath -> stat key when taken in
        self._weights: dict[str, tuple] = {}
        self._weights_lock = threading.Lock()

    # --- start-up ---------------------------------------------------------------------

    def prepare(self) -> None:
        bad = [f.text for f in preflight.folders(self.cfg) if not f.ok]
        if bad:
            raise ConfigError(bad[0])
        models_dir = self.cfg.models_dir or weights.default_models_dir()
        for model_id in sorted(self.cfg.model_ids()):
            weights.verify(models_dir, model_id)
        try:
            self.devices = resolve_devices(self.cfg.worker.device)
        except ValueError as e:
            raise ConfigError(f"worker.device: {e}") from None
        self.styles = StyleBook.load(self.cfg)
        self.journal = Journal(self.cfg.state_dir / "journal.sqlite3")
        self.intake = Intake(self.cfg, self.journal, self.styles)

    def load_weights(self, model_id: str):
        with self._weights_lock:
            if model_id not in self._weights:
                self._weights[model_id] = weights.load(self.cfg.models_dir or weights.default_models_dir(),
                                                       model_id)
            return self._weights[model_id]

    def recover(self) -> None:
        """After a crash: running jobs back to the queue, finished outputs recognised."""
        requeued = self.journal.recover()
        adopted = 0
        for job in self.journal.queued_jobs():
            image = outbox.complete(self.cfg.outbox, job)
            if image is not None:
                self.journal.finish(job.id, str(image.relative_to(self.cfg.outbox)))
                adopted += 1
        # Litter from writes and moves a crash interrupted; the originals are intact.
        litter = outbox.stray_temp_files(self.cfg.outbox)
        litter += dispose.stray_moves(self.cfg.processed) + dispose.stray_moves(self.cfg.failed)
        in_use = self.journal.spools_in_use()
        litter += [p for p in self.intake.spool_dir.iterdir() if str(p) not in in_use]
        for path in litter:
            path.unlink(missing_ok=True)
        if requeued or adopted or litter:
            log.info("recovered", requeued=requeued, already_complete=adopted, removed=len(litter))
        try:
            gallery.write(self.cfg.outbox, self.journal)
        except OSError as e:
            log.warning("gallery_not_written", error=str(e))

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        self.prepare()
        self.recover()
        self._install_signals()
        mode, fs = choose_mode(self.cfg.watch.mode, self.cfg.inbox)
        self.watcher = Watcher(self.cfg.inbox, mode, self.cfg.watch.poll_interval, self.hints)
        self.watcher.start()
        self.workers = [self._start_worker(dev) for dev in self.devices]
        log.info("started", inbox=str(self.cfg.inbox), watch=mode, filesystem=fs,
                 devices=[describe(d) for d in self.devices],
                 styles=self.styles.names(), pid=os.getpid())
        self.rescan()
        notify("READY=1")
        next_rescan = time.monotonic() + self.cfg.watch.rescan_interval
        next_health = 0.0
        dog = watchdog_interval()
        while not self.stop_requested.is_set():
            now = time.monotonic()
            try:
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                if now >= next_rescan:
                    next_rescan = now + self.cfg.watch.rescan_interval
                    self.rescan()
                self.take_hints()
                self.take_settled()
                self.finalize()
                if now >= next_health:
                    next_health = now + min(self.cfg.health_interval, dog or self.cfg.health_interval)
                    self.health()
            except Exception as e:  # noqa: BLE001 - months unattended: log, back off, carry on
                log.error("loop_error", error=f"{type(e).__name__}: {e}")
                self.stop_requested.wait(1.0)
            self.hints.event.wait(0.25)
        return self.shutdown()

    def _install_signals(self) -> None:
        def stop(signum, _frame):
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stop_requested.set()
            self.hints.event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda *_: (self.reload_requested.set(), self.hints.event.set()))

    def _start_worker(self, device) -> Worker:
        w = Worker(self.cfg, lambda: self.styles, self.load_weights, device, self.worker_stop)
        w.start()
        return w

    def rescan(self) -> None:
        if not self.cfg.inbox.is_dir():
            log.warning("inbox_unavailable", inbox=str(self.cfg.inbox))
            return
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

    def take_settled(self) -> None:
        for rel, key in self.settle.poll(self.cfg.inbox, time.time()):
            if self.accepted.get(rel) == key:
                continue
            try:
                outcome = self.intake.accept(rel, key)
            except OSError as e:
                log.warning("intake_deferred", input=rel, error=str(e))
                continue  # the next rescan tries again
            if outcome.kind is Kind.CHANGED:
                self.settle.watch(rel)
            elif outcome.kind in (Kind.QUEUED, Kind.KNOWN):
                self.accepted[rel] = key
                if outcome.kind is Kind.KNOWN:
                    self._redispose(rel, outcome.known)

    def _redispose(self, rel: str, known: Input) -> None:
        """A file whose fate was decided before (a re-drop, or a crash before it was moved)."""
        if known.state is State.QUEUED:
            return
        self.accepted.pop(rel, None)
        if known.state is State.DONE:
            dispose.on_success(self.cfg.inbox, self.cfg.processed, rel, self.cfg.on_success)
            log.info("already_done", input=rel)
        elif known.state is State.FAILED:
            dispose.to_failed(self.cfg.inbox, self.cfg.failed, rel, known.error or "failed before", known.sha256)

    def finalize(self) -> None:
        """Inputs whose jobs have all ended leave the inbox; never before outputs are durable."""
        for inp, jobs in self.journal.inputs_settled():
            path = self.cfg.inbox / inp.relpath
            if os.path.lexists(path) and not self._same_version(inp.relpath, inp.sha256):
                # Replaced since it was taken in: the new version is a new input, leave it.
                self.journal.close_input(inp.id, State.DONE if all(j.state is State.DONE for j in jobs)
                                         else State.FAILED)
                continue
            failed = [j for j in jobs if j.state is State.FAILED]
            try:
                if failed:
                    reason = "; ".join(f"{j.style}: {j.error}" for j in failed)
                    attempts = max(j.attempts for j in failed)
                    dispose.to_failed(self.cfg.inbox, self.cfg.failed, inp.relpath, reason, inp.sha256, attempts)
                    self.journal.close_input(inp.id, State.FAILED, reason)
                    log.warning("input_failed", input=inp.relpath, reason=reason)
                else:
                    dispose.on_success(self.cfg.inbox, self.cfg.processed, inp.relpath, self.cfg.on_success)
                    self.journal.close_input(inp.id, State.DONE)
                    log.info("input_done", input=inp.relpath, outputs=[j.output for j in jobs])
            except OSError as e:
                log.warning("dispose_deferred", input=inp.relpath, error=str(e))
                continue
            except ValueError as e:  # a name that would leave processed/ or failed/
                self.journal.close_input(inp.id, State.FAILED, str(e))
                log.error("dispose_refused", input=inp.relpath, error=str(e))
                continue
            self.accepted.pop(inp.relpath, None)
            if inp.spool and not self.journal.spool_in_use(inp.spool):
                Path(inp.spool).unlink(missing_ok=True)

    def _same_version(self, rel: str, sha: str) -> bool:
        key = self.accepted.get(rel)
        try:
            st = os.lstat(self.cfg.inbox / rel)
        except OSError:
            return False
        if key is not None and key == (st.st_size, st.st_mtime_ns, st.st_ino):
            return True
        return _sha256(self.cfg.inbox / rel) == sha

    def health(self) -> None:
        if not self.watcher.healthy():
            if self.watcher.restart():
                log.warning("watch_restarted", inbox=str(self.cfg.inbox))
                self.rescan()
            else:
                log.warning("inbox_unavailable", inbox=str(self.cfg.inbox))
        for i, w in enumerate(self.workers):
            if not w.is_alive() and not self.worker_stop.is_set():
                log.error("worker_restarted", device=str(w.device), error=repr(w.error))
                self.journal.requeue([job.id for job in w.current])
                self.workers[i] = self._start_worker(w.device)
        c = self.journal.counts()
        notify(f"STATUS=queued {c['queued']}, running {c['running']}, done {c['done']}, "
               f"failed {c['failed']}\nWATCHDOG=1")

    def reload(self) -> None:
        try:
            fresh = config_mod.load(self.cfg.path)
            styles = StyleBook.load(fresh)
            for model_id in fresh.model_ids():
                weights.verify(fresh.models_dir or weights.default_models_dir(), model_id)
        except NstdError as e:
            log.error("reload_failed", error=str(e), keeping=self.styles.names())
            return
        # Only the style set and transfer settings change live; folders need a restart.
        self.cfg = _with_styles(self.cfg, fresh)
        self.styles = styles
        self.intake.cfg, self.intake.styles = self.cfg, styles
        log.info("reloaded", styles=styles.names())

    def shutdown(self) -> int:
        notify("STOPPING=1")
        deadline = time.time() + self.cfg.worker.stop_timeout
        for w in self.workers:
            w.deadline = deadline
        self.worker_stop.set()
        for w in self.workers:
            w.join(max(0.0, deadline - time.time()) + 10)
        self.watcher.stop()
        self.journal.recover()  # anything the worker could not hand back cleanly
        self.journal.close()
        log.info("stopped")
        return 0


def _with_styles(cfg: Config, fresh: Config) -> Config:
    from dataclasses import replace
    return replace(cfg, styles=fresh.styles, blends=fresh.blends, transfer=fresh.transfer, output=fresh.output)



def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None
