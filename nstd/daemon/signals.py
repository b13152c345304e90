"""What the daemon does on a signal: SIGTERM and SIGINT ask it to stop, SIGHUP to reload.
A handler only sets an event and wakes the loops; the supervisor acts on its next round."""

from __future__ import annotations

import signal
import threading

from nstd.log import get

log = get("nstd.service")


def install(stop: threading.Event, reload: threading.Event, wake: threading.Event) -> None:
    def on_stop(signum, _frame):
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()
        wake.set()

    def on_reload(_signum, _frame):
        reload.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
