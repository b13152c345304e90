"""The endpoint wired to a running daemon: what its probes and metrics read."""

from __future__ import annotations

import time

from nstd.log import get
from nstd.web.dashboard import Dashboard
from nstd.web.metrics import Live, Reader, registry
from nstd.web.server import Endpoint, Probe
from nstd.web.status import Site

log = get("nstd.web")
STALE = 30.0  # seconds without a supervisor round before /healthz says the daemon is stuck


def start(service) -> Endpoint | None:
    """The endpoint for `service` (a prepared nstd.daemon.service.Service), or None when
    it is off or its port is taken: the daemon's work does not depend on it."""
    cfg = service.cfg.http
    if not cfg.on:
        return None
    live = Live(paused=lambda: service.folders.trouble and service.folders.trouble.reason,
                settling=lambda: len(service.inputs.settle), outages=lambda: service.outage.count,
                pauses=lambda: service.folders.pauses, expiries=lambda: service.lease_expiries)
    reader = Reader(service.cfg.journal_target)
    probe = Probe(healthy=lambda: _healthy(service), ready=lambda: _ready(service, reader))
    site = Site(host=service.cfg.host, outbox=lambda: service.cfg.outbox, config=lambda: service.cfg.path,
                paused=live.paused)
    try:
        endpoint = Endpoint(cfg.host, cfg.port, registry(reader, live), probe, service.token, on_stop=reader.close,
                            dashboard=Dashboard(reader, site))
    except OSError as e:
        log.warning("http_not_started", listen=f"{cfg.host}:{cfg.port}", error=e.strerror,
                    meaning="metrics, health and the dashboard are not served; the daemon works on")
        return None
    log.info("http_listening", listen=f"{cfg.host}:{endpoint.port}", token=service.token is not None)
    return endpoint.start()


def _healthy(service) -> tuple[bool, str]:
    age = time.monotonic() - service.last_round
    if age > STALE:
        return False, f"the supervisor's last round was {age:.0f} s ago"
    if service.intake_loop is not None and not service.intake_loop.thread.is_alive():
        return False, "the intake's thread has stopped"
    return True, "alive"


def _ready(service, reader: Reader) -> tuple[bool, str]:
    trouble = service.folders.trouble
    if trouble is not None:
        return False, f"paused: {trouble.reason}"
    if service.outage.down_since is not None:
        return False, "the journal's database is unavailable"
    try:
        reader.read(lambda journal: journal.counts())
    except Exception as e:  # noqa: BLE001 - whatever keeps the journal from answering
        return False, f"the journal does not answer ({type(e).__name__}: {e})"
    alive = service.pool.alive()
    if not alive:
        return False, "no worker is running"
    pauses = reader.read(lambda journal: journal.pauses())
    held = [w for w in alive if any(p.covers(service.cfg.host, str(w.device)) for p in pauses)]
    if len(held) == len(alive):
        return False, f"paused by operator: {held[0].device if len(held) == 1 else 'every worker'} (nstd resume)"
    return True, f"{len(alive) - len(held)} worker(s) running" + (f", {len(held)} paused" if held else "")
