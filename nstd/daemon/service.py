"""`nstd run`'s supervisor: wiring, signals, sd_notify, the health of the watcher and
the workers, reloads and shutdown. The inbox side is `Inputs`; `step(now)` runs one
round of both, so tests can drive the daemon with their own clock."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from nstd import weights
from nstd.config import Config
from nstd.daemon import preflight, recovery, report, signals
from nstd.daemon.inbox import Hints, Watcher, choose_mode
from nstd.daemon.inputs import Inputs
from nstd.daemon.intake import Intake
from nstd.daemon.database import Unavailable
from nstd.daemon.folders import Folders
from nstd.daemon.journal import ANY, Journal
from nstd.daemon.lock import InboxClaim, StateLock
from nstd.daemon.notify import notify, watchdog_interval
from nstd.daemon.outage import Outage
from nstd.daemon.rounds import IntakeLoop, guarded
from nstd.daemon.runtime import Runtime
from nstd.daemon.styles import StyleBook
from nstd.daemon.workers import WorkerPool, isolation_for
from nstd.engine.device import describe, resolve_devices
from nstd.errors import ConfigError, NstdError
from nstd.fsutil import clear_own_litter
from nstd.log import get
from nstd.web import daemon as web

log = get("nstd.service")
PAUSED_LOOK = 1.0  # seconds between looks at the folders while work is paused for them
CLAIM_REFRESH = 30.0  # seconds between refreshes of the inbox claim (lock.CLAIM_FRESH_SECONDS: 120)


class Service:
    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic):
        self._cfg = cfg
        self.clock = clock
        self.runtime: Runtime | None = None  # set by prepare; a reload swaps it whole
        self.stop_requested = threading.Event()  # set by a signal
        self.reload_requested = threading.Event()
        self.hints = Hints()
        self.next_health: float | None = None
        self.look_now = threading.Event()  # a share went away: look at the folders at once
        self.outage = Outage(renew_every=cfg.worker.lease / 4)
        self._weights: dict[str, tuple] = {}
        self.last_round = time.monotonic()  # of the supervisor's loop, for /healthz
        self.lease_expiries = 0  # other workers' jobs given back, for /metrics
        self.intake_loop: IntakeLoop | None = None
        self.endpoint = None  # the HTTP endpoint (nstd/web), when it is on
        self.token: str | None = None
        self._weights_lock = threading.Lock()

    @property
    def cfg(self) -> Config:
        return self.runtime.cfg if self.runtime is not None else self._cfg

    @property
    def styles(self) -> StyleBook:
        return self.runtime.styles

    @property
    def intake(self) -> Intake:
        return self.inputs.intake

    # --- start-up ---------------------------------------------------------------------

    def prepare(self) -> None:
        bad = [f.text for f in preflight.folders(self.cfg) if not f.ok]
        if bad:
            raise ConfigError(bad[0])
        self.token = self.cfg.http.token() if self.cfg.http.on else None  # a bad token file: refuse now
        models_dir = self.cfg.models_dir or weights.default_models_dir()
        for model_id in sorted(self.cfg.model_ids()):
            weights.verify(models_dir, model_id)
        try:
            self.devices = resolve_devices(self.cfg.worker.device)
        except ValueError as e:
            raise ConfigError(f"worker.device: {e}") from None
        self.pool = WorkerPool(isolation_for(self.cfg.worker.isolation, len(self.devices)), lambda: self.runtime,
                               self.load_weights)
        self.lock = StateLock(self.cfg.state_dir)
        self.lock.acquire()
        # On a shared journal, other hosts on the same inbox are the point: no claim on it.
        self.claim = None if self.cfg.journal else InboxClaim(self.cfg.inbox, self.cfg.state_dir.resolve())
        if self.claim is not None:
            self.claim.take(time.time())
        self.claimed_at: float | None = None
        self.runtime = Runtime.load(self.cfg)
        self.folders = Folders(self.cfg)
        self.journal = Journal(self.cfg.journal_target)
        # The inbox side has a connection of its own: it runs on its own thread (see run).
        self.inputs = Inputs(lambda: self.runtime, Journal(self.cfg.journal_target), self.hints)

    def load_weights(self, model_id: str):
        with self._weights_lock:
            if model_id not in self._weights:
                self._weights[model_id] = weights.load(self.cfg.models_dir or weights.default_models_dir(),
                                                       model_id)
            return self._weights[model_id]

    def recover(self) -> None:
        """After a crash: running jobs back to the queue, finished outputs recognised."""
        recovery.recover(self.cfg, self.journal)

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        self.prepare()
        self.recover()
        signals.install(self.stop_requested, self.reload_requested, self.hints.event)
        mode, fs = choose_mode(self.cfg.watch.mode, self.cfg.inbox)
        self.watcher = Watcher(self.cfg.inbox, mode, self.cfg.watch.poll_interval, self.hints)
        self.watcher.start()
        self.pool.start(self.devices)
        log.info("started", inbox=str(self.cfg.inbox), watch=mode, filesystem=fs,
                 devices=[describe(d) for d in self.devices],
                 styles=self.styles.names(), pid=os.getpid())
        self.step(self.clock())
        notify("READY=1")
        self.intake_loop = IntakeLoop(self.inputs, self.folders, self.outage, self.clock, self.stop_requested,
                                      self._share_away)
        self.intake_loop.thread.start()
        self.endpoint = web.start(self)
        while not self.stop_requested.is_set():
            guarded(lambda: self.step(self.clock(), inputs=False), self.stop_requested, self._share_away)
            self.last_round = time.monotonic()
            self.stop_requested.wait(0.25)
        self.intake_loop.thread.join(self.cfg.worker.stop_timeout)
        if self.endpoint is not None:
            self.endpoint.stop()
        return self.shutdown()

    def _share_away(self) -> None:
        # Said from the intake's thread too: an event, not the supervisor's own schedule,
        # which it may be computing at this moment.
        self.look_now.set()  # the folders are looked at in the supervisor's next round

    def step(self, now: float, inputs: bool = True) -> None:
        """One round: a pending reload, the inputs (unless their thread takes them), and the
        health checks when due. With the database away, it waits: the workers keep their
        batches and take nothing new."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()
        try:
            if inputs and self.folders.reachable:
                self.inputs.step(now)
            self._supervise(now)
        except Unavailable as e:
            self.outage.down(str(e), now)
        else:
            self.outage.up(now)

    def _supervise(self, now: float) -> None:
        if self.claimed_at is None or now - self.claimed_at >= CLAIM_REFRESH:
            self.claimed_at = now
            self._refresh_claim()
        if self.look_now.is_set() or self.next_health is None or now >= self.next_health:
            self.look_now.clear()
            dog = watchdog_interval()
            due = now + min(self.cfg.health_interval, dog or self.cfg.health_interval)
            self.health()
            if self.folders.trouble is not None:  # paused: look again soon, to resume soon
                due = min(due, now + PAUSED_LOOK)
            self.next_health = due

    def health(self) -> None:
        now = self.clock()
        trouble = self.folders.check(now)
        if self.folders.reachable:
            self._watch_health(after_outage=self.folders.just_back(now))
        self._workers_health()
        self.journal.forget_workers(time.time())
        held = [p for p in self.journal.pauses() if p.host in (ANY, self.cfg.host)]
        notify(f"STATUS={report.status_line(self.journal.counts(), trouble, held)}\nWATCHDOG=1")

    def _watch_health(self, after_outage: bool = False) -> None:
        """The inbox watch restarted where it died (or its folder was replaced, a remount):
        after a share's outage, as expected; otherwise worth a warning."""
        if not self.watcher.healthy():
            if self.watcher.restart():
                (log.info if after_outage else log.warning)("watch_restarted", inbox=str(self.cfg.inbox))
                self.inputs.next_rescan = None  # the intake's next round looks at everything
            else:
                log.warning("inbox_unavailable", inbox=str(self.cfg.inbox))

    def _workers_health(self) -> None:
        self.pool.replace_dead(self.journal)
        # Batches whose worker stopped renewing: a host that died or lost the database.
        # Just after an outage nobody could renew, so the live hosts get time to first.
        if self.outage.settled(self.clock()):
            requeued, quarantined = self.journal.requeue_expired(time.time())
            self.lease_expiries += requeued + len(quarantined)
            if requeued or quarantined:
                log.warning("leases_expired", requeued=requeued, quarantined=[j.id for j in quarantined])

    def _refresh_claim(self) -> None:
        if self.claim is None or not self.folders.reachable:
            return
        try:
            self.claim.refresh()
        except OSError as e:  # the inbox's share is away; the rescan says so too
            log.warning("inbox_claim_not_refreshed", error=str(e))

    def close(self) -> None:
        """Let go of the journal, the inbox and the state folder."""
        self.journal.close()
        self.inputs.journal.close()
        if self.claim is not None:
            self.claim.release()
        self.lock.release()

    def reload(self) -> None:
        try:
            fresh = self.runtime.reloaded()
        except NstdError as e:
            log.error("reload_failed", error=str(e), keeping=self.styles.names())
            return
        self.runtime = fresh  # one swap: intake and thread workers read it on their next use
        self.pool.reload()
        log.info("reloaded", styles=fresh.styles.names())

    def shutdown(self) -> int:
        notify("STOPPING=1")
        self.pool.stop(time.time() + self.cfg.worker.stop_timeout)
        self.watcher.stop()
        # A probe or a write of this process that a share's outage, or the stop itself,
        # cut short: nothing of it writes any more.
        clear_own_litter(self.cfg.outbox)
        recovery.give_back_at_stop(self.cfg, self.journal)
        self.close()
        log.info("stopped")
        return 0
