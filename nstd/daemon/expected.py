"""What a starting worker says of its device: how long a photo will take at the
configured settings. On a CPU it is minutes, and a user should hear that before waiting
for the first one. The rate goes into the journal too: nstd check quotes it rather than
measure on a device the daemon keeps busy."""

from __future__ import annotations

import time

from nstd.config import Config
from nstd.daemon.database import Unavailable
from nstd.daemon.journal import Journal
from nstd.engine import speed
from nstd.engine.vgg import VGGFeatures
from nstd.log import get

log = get("nstd.worker")


def say_speed(cfg: Config, model: VGGFeatures, device: str, owner: str, journal: Journal | None = None) -> None:
    p = cfg.transfer
    try:
        rate = speed.measure(model, cfg.worker.switches).flops_per_second
    except Exception as e:  # noqa: BLE001 - an estimate is worth a line, not the worker
        log.warning("expected_speed_unknown", device=device, error=f"{type(e).__name__}: {e}")
        return
    seconds = speed.photo_seconds(rate, p.typical_scales(), p.settings().layers)
    log.info("expected_speed", device=device, per_photo_and_style=speed.say(seconds),
             size=p.size, iterations=p.iterations, gflops=round(rate / 1e9, 1))
    if journal is not None:
        try:
            journal.note_speed(owner, rate, time.time())
        except Unavailable:
            pass  # nstd check measures for itself then
