"""The daemon's two loops of rounds: the supervisor's and the intake's, each on its own
thread, and what both do with an error a round raises."""

from __future__ import annotations

import threading
from typing import Callable

from nstd.daemon.database import Unavailable
from nstd.daemon.folders import Folders
from nstd.daemon.inputs import Inputs
from nstd.daemon.outage import Outage
from nstd.fsutil import is_share_error, own_litter
from nstd.log import get

log = get("nstd.service")


def guarded(round_: Callable[[], None], stop: threading.Event, share_away: Callable[[], None]) -> None:
    """One round; months unattended, an error is logged and the loop backs off and carries
    on. A share that went away mid-round is the folders' check to say, once (`share_away`
    asks for it at once)."""
    try:
        round_()
    except OSError as e:
        if not is_share_error(e):
            log.error("loop_error", error=f"{type(e).__name__}: {e}")
        else:
            log.debug("share_error", error=str(e))
            share_away()
        stop.wait(1.0)
    except Exception as e:  # noqa: BLE001 - see the docstring
        log.error("loop_error", error=f"{type(e).__name__}: {e}")
        stop.wait(1.0)


class IntakeLoop:
    """The inbox side, on a thread of its own: decoding a large photo or region map holds
    up the next file, never the health checks, reloads and systemd's watchdog. It rests
    while the folders are out of reach."""

    def __init__(self, inputs: Inputs, folders: Folders, outage: Outage, clock: Callable[[], float],
                 stop: threading.Event, share_away: Callable[[], None]):
        self.inputs, self.folders, self.outage, self.clock = inputs, folders, outage, clock
        self.stop, self.share_away = stop, share_away
        self.thread = threading.Thread(target=self.run, name="nstd-intake", daemon=True)

    def run(self) -> None:
        away = False
        while not self.stop.is_set():
            if self.folders.reachable:
                if away:
                    guarded(self.clear_own_litter, self.stop, self.share_away)
                guarded(self.round, self.stop, self.share_away)
            away = not self.folders.reachable
            self.inputs.hints.event.wait(0.25)

    def round(self) -> None:
        now = self.clock()
        try:
            self.inputs.step(now)
        except Unavailable as e:
            self.outage.down(str(e), now)

    def clear_own_litter(self) -> None:
        """What a share's outage left half-written by the intake (its spool copies and error
        records); on the intake's thread, between rounds, so none of its writes is under way."""
        cfg = self.inputs.cfg
        for folder in (cfg.spool_dir, cfg.failed):
            for path in own_litter(folder):
                path.unlink(missing_ok=True)
