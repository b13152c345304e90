"""Everything `nstd check` finds, in the order it prints them: the folders and how the
inbox is watched, the weights, the journal, a daemon already running, the devices
and how long a photo takes on each, the styles and blends, and the plan. Each check
returns findings; a failed one says why and what to do. Only the speed check loads
PyTorch, and only where the running daemon has not measured the device already."""

from __future__ import annotations

import time

from nstd import weights
from nstd.daemon import preflight
from nstd.daemon.preflight import Finding
from nstd.daemon.report import SILENT_AFTER
from nstd.errors import NstdError

ON_SUCCESS = {"move": "moved to processed/", "delete": "deleted", "keep": "left in the inbox"}


def findings(cfg) -> list[Finding]:
    """Every finding, in the order `nstd check` prints them."""
    models_dir = cfg.models_dir or weights.default_models_dir()
    return (preflight.folders(cfg) + [preflight.watch_plan(cfg)] + weight_sets(cfg, models_dir)
            + [preflight.journal(cfg)] + preflight.daemon(cfg) + devices(cfg, models_dir)
            + style_sets(cfg) + [plan(cfg)])


def weight_sets(cfg, models_dir) -> list[Finding]:
    """Each weight set the styles use: present and matching its checksum."""
    out = []
    for model_id in sorted(cfg.model_ids()):
        try:
            info = weights.verify(models_dir, model_id)
            out.append(Finding(True, f"weights: {model_id} ({info.preprocessing}, "
                                     f"sha256 {info.file_sha256[:12]}…) in {models_dir}"))
        except NstdError as e:
            out.append(Finding(False, f"weights: {e}"))
    return out


def devices(cfg, models_dir) -> list[Finding]:
    """The devices the workers run on, one worker each, and the speed of each."""
    from nstd.engine.device import describe, resolve_devices

    out = []
    try:
        found = resolve_devices(cfg.worker.device)
        out.append(Finding(True, f"workers: one per device: {', '.join(map(describe, found))}"))
        out += speed(cfg, found, models_dir)
    except ValueError as e:
        out.append(Finding(False, f"worker.device: {e}"))
    return out


def speed(cfg, devices, models_dir, now: float | None = None) -> list[Finding]:
    """Per device, how long one photo in one style takes at the configured settings: at
    the rate the running daemon's worker measured there when it started, else measured
    now. A measurement now competes with that daemon for the device."""
    from nstd.engine import speed as engine_speed
    from nstd.engine.device import describe

    p = cfg.transfer
    recorded = recorded_speeds(cfg, time.time() if now is None else now)
    loaded = None
    out = []
    for device in devices:
        worker = recorded.get(describe(device))
        if worker is not None:
            rate = worker.speed
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(worker.speed_at))
            source = f"measured by the running daemon on {worker.host} at {stamp}"
        else:
            try:
                loaded = loaded or weights.load(models_dir, p.model)
            except NstdError:
                continue  # the weights finding says why
            rate, source = _measure(cfg, device, *loaded)
        seconds = engine_speed.photo_seconds(rate, p.typical_scales(), p.settings().layers)
        out.append(Finding(True, f"speed: {describe(device)}: about {engine_speed.say(seconds)} per photo "
                                 f"and style at size {p.size}, {p.iterations} iterations "
                                 f"({rate / 1e9:.1f} GFLOP/s, {source})"))
    return out


def _measure(cfg, device, sd, info) -> tuple[float, str]:
    """The device's speed measured now, and how it was had."""
    from nstd.engine import speed as engine_speed
    from nstd.engine.vgg import VGGFeatures

    p = cfg.transfer
    model = VGGFeatures(sd, info.preprocessing, p.settings().layers, p.pooling, info.model_id).to(device)
    measured = engine_speed.measure(model, cfg.worker.switches)
    return measured.flops_per_second, f"measured now for {measured.seconds:.1f} s"


def recorded_speeds(cfg, now: float) -> dict:
    """This host's workers heard from lately that measured their device, by device."""
    from nstd.daemon.journal import Journal

    if not cfg.journal and not cfg.journal_target.exists():
        return {}
    try:
        journal = Journal(cfg.journal_target, readonly=True)
    except NstdError:
        return {}  # the journal finding says why
    try:
        workers = journal.workers()
    finally:
        journal.close()
    return {w.device: w for w in workers
            if w.host == cfg.host and w.speed and w.speed_at and now - w.heartbeat <= SILENT_AFTER}


def style_sets(cfg) -> list[Finding]:
    """Each style and blend: its paintings and their sizes, and the settings it runs at."""
    from nstd.daemon.styles import StyleBook

    try:
        book = StyleBook.load(cfg)
    except NstdError as e:
        return [Finding(False, str(e))]
    out = []
    for name in book.names():
        st = book.get(name)
        p = st.params
        paintings = " + ".join(f"{part.path.name} ({part.pixels.shape[2]}x{part.pixels.shape[1]})"
                               + (f" x{part.weight:g}" if len(st.parts) > 1 else "") for part in st.parts)
        out.append(Finding(True, f"{'blend' if len(st.parts) > 1 else 'style'} {name}: {paintings}, "
                                 f"{p.size} px, {p.iterations} it, {p.optimizer}, style weight {p.style_weight:g}"))
    return out


def plan(cfg) -> Finding:
    """Where photos go in and out, how large a batch may be, and what becomes of inputs."""
    batch = "auto" if cfg.worker.max_batch is None else cfg.worker.max_batch
    return Finding(True, f"plan: inbox/<photo> gets every style, inbox/<style>/<photo> one; outputs to "
                         f"{cfg.outbox}/<style>/; batches up to {batch}; on success inputs are "
                         f"{ON_SUCCESS[cfg.on_success]}")
