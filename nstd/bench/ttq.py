"""Time to quality: how long a way of running takes to give the picture that nstd's own
fp32 L-BFGS gives after the standard iterations.

A user wants the picture, not a count of iterations. The reference is the objective of
nstd's fp32 run after `iterations`; every contender's snapshots are scored afterwards by
one evaluator (fp32, nstd's normalised objective, on the image as it would be saved),
and its time is the wall time of the first snapshot within `TOLERANCE` of the reference.
Scoring happens after the run, so it costs the contender nothing.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import torch

from nstd.bench import baseline, peer
from nstd.bench.measure import Workload, final_losses, sync
from nstd.engine import transfer
from nstd.engine.device import free_memory
from nstd.engine.losses import tv_loss
from nstd.engine.multiscale import Scale, run_scales
from nstd.engine.session import Collect
from nstd.engine.sizes import least_long_side
from nstd.engine.switches import Switches
from nstd.engine.targets import GramCache
from nstd.engine.transfer import run_batch
from nstd.engine.vgg import VGGFeatures
from nstd.params import TransferParams

TOLERANCE = 0.01  # within 1% of the reference objective counts as the same picture
SNAPSHOTS = 50  # per reference run: every 10 iterations of 500


@dataclass
class Trace:
    """A contender's run: each snapshot with the seconds since its start."""

    name: str
    snapshots: list[tuple[int, float, torch.Tensor]] = field(default_factory=list)  # iteration, seconds, image
    scales: list[dict] = field(default_factory=list)  # nstd's: each scale's size, iterations run, seconds


@torch.no_grad()
def objective(model: VGGFeatures, w: Workload, image: torch.Tensor) -> float:
    """The evaluator: nstd's weighted objective in fp32, of the image clamped as saved."""
    job = w.job()
    x = image.float().clamp(0, 1)
    parts = final_losses(model, w, x)
    return float(job.content_weight * parts["content"] + job.style_weight * parts["style"] +
                 job.tv_weight * tv_loss(x[None]))


def every(w: Workload) -> int:
    """Iterations between snapshots."""
    return max(1, w.iterations // SNAPSHOTS)


def nstd_trace(name: str, model: VGGFeatures, w: Workload, switches: Switches, scales: list[Scale]) -> Trace:
    """nstd's engine over `scales` (one scale: the fixed-iteration run), snapshots at the last."""
    trace = Trace(name)
    step = every(w)
    device = model.mean.device
    job = w.job()
    settings = replace(w.settings, log_every=10**9, snapshot_every=step)
    cache = GramCache()
    run_scales(model, [job], [replace(scales[0], iterations=2)], settings, cache,
               switches=switches)  # warm: kernels and the Gram cache, as on a running daemon
    stamps: dict[int, float] = {}
    sync(device)
    start = time.perf_counter()

    def progress(done: int, _rows) -> None:
        if done % step == 0:
            sync(device)
            stamps[done] = time.perf_counter() - start

    [result] = run_scales(model, [job], scales, settings, cache, progress, switches)
    sync(device)
    before = sum(r.iterations for r in result.runs[:-1])
    last = before + result.runs[-1].iterations  # fewer than the scale's where it stopped early
    stamps[last] = time.perf_counter() - start
    snaps = [(before + k, image) for k, image in result.snapshots if before + k < last] + [(last, result.image)]
    trace.snapshots = [(k, stamps[k], image) for k, image in snaps if k in stamps]
    trace.scales = [{"size": list(r.size), "iterations": r.iterations, "seconds": r.seconds} for r in result.runs]
    return trace


def peer_trace(model: VGGFeatures, w: Workload, iterations: int) -> Trace:
    """neural-style-pt through its CLI, with the same snapshot spacing."""
    sd = model.features.state_dict()
    return Trace(peer.NAME, peer.snapshots(sd, w, iterations, every(w), model.mean.device))


def baseline_trace(model: VGGFeatures, w: Workload, iterations: int) -> Trace:
    """The tutorial loop, with snapshots as nstd's."""
    trace = Trace("tutorial")
    step = every(w)
    device = model.mean.device
    settings = replace(w.settings, iterations=iterations)
    baseline.run(model, w.job(), replace(settings, iterations=2))
    sync(device)
    start = time.perf_counter()

    def seen(done: int, x: torch.Tensor) -> None:
        if done % step == 0:
            sync(device)
            trace.snapshots.append((done, time.perf_counter() - start, x.detach()[0].clamp(0, 1).cpu()))

    baseline.run(model, w.job(), settings, seen)
    return trace


def reached(model: VGGFeatures, w: Workload, trace: Trace, target: float) -> dict:
    """When the trace first came within TOLERANCE of `target`, or the best it reached."""
    scored = [(k, seconds, objective(model, w, image)) for k, seconds, image in trace.snapshots]
    best = min(loss for _, _, loss in scored)
    # The whole curve, relative to the reference, so other tolerances can be read off later.
    curve = [[k, round(seconds, 3), round(loss / target, 5)] for k, seconds, loss in scored]
    extra = {"curve": curve, "scales": trace.scales}
    for k, seconds, loss in scored:
        if loss <= target * (1 + TOLERANCE):
            return {"name": trace.name, "reached": True, "iterations": k, "seconds": seconds,
                    "photos_per_hour": 3600 / seconds, "objective": loss, "best_vs_reference": best / target,
                    **extra}
    return {"name": trace.name, "reached": False, "iterations": scored[-1][0], "seconds": scored[-1][1],
            "photos_per_hour": None, "objective": scored[-1][2], "best_vs_reference": best / target,
            **extra}


def stream(model: VGGFeatures, w: Workload, batch: int, switches: Switches, photos: int,
           reference: float) -> dict:
    """Photos per hour as the daemon runs a steady stream: `batch` places, per-image
    stopping, and each finished photo's place taken by the next, `photos` in all; and how
    far each output is from the reference picture, by the one evaluator. The photos are
    copies of one, so they stop together and are replaced in waves, where a real stream's
    differ; the rate per photo is the same."""
    s = stopping(w)
    settings = replace(s.settings, iterations=s.iterations, log_every=10**9)
    job, device = s.job(), model.mean.device
    cache, free = GramCache(), partial(free_memory, device)
    run_batch(model, [job] * batch, replace(settings, iterations=2), cache, switches=switches, free=free)  # warm
    given = min(batch, photos)
    stream = Collect(queue=[replace(job, id=i) for i in range(given, photos)])
    sync(device)
    start = time.perf_counter()
    transfer.run(model, stream, [replace(job, id=i) for i in range(given)], settings, cache, switches, free)
    sync(device)
    seconds = time.perf_counter() - start
    done = [(stream.results[i].runs[-1].iterations, stream.results[i].image) for i in stream.order]
    ratios = [objective(model, w, image) / reference for _, image in done]
    return {"batch": batch, "photos": len(done), "seconds": seconds, "photos_per_hour": 3600 * len(done) / seconds,
            "mean_iterations": statistics.fmean(k for k, _ in done), "tolerance": TOLERANCE,
            "within_tolerance": sum(r <= 1 + TOLERANCE for r in ratios) / len(ratios),
            "median_vs_reference": statistics.median(ratios), "worst_vs_reference": max(ratios)}


def half_size(w: Workload) -> int:
    """Coarse to fine's first scale: half the long side, its short side at least 16 px."""
    return max(w.size // 2, least_long_side(*w.content.shape[-2:]))


def stopping(w: Workload) -> Workload:
    """The workload with the default per-image stopping rule on."""
    stop = TransferParams()
    return replace(w, settings=replace(w.settings, stop_tolerance=stop.stop_tolerance, stop_window=stop.stop_window))


def contenders(model: VGGFeatures, w: Workload, fast: Switches, compiled: bool) -> dict[str, Callable[[], Trace]]:
    """Each way of running, by name: nstd's levers alone and together, and the peers.
    The fixed-iteration runs go to twice the iterations, so a slower one can still arrive."""
    its, history = w.iterations, w.settings.lbfgs_history
    fp32 = Switches("fp32", checkpoint=False)
    narrow = replace(fast, history_precision="bf16")
    half, stops = half_size(w), stopping(w)
    full, twice = [Scale(w.size, its, history)], [Scale(w.size, 2 * its, history)]
    out = {
        "nstd_fp32": lambda: nstd_trace("nstd_fp32", model, w, fp32, twice),
        "nstd_fp32_stopping": lambda: nstd_trace("nstd_fp32_stopping", model, stops, fp32, full),
        "nstd_fp32_compiled": lambda: nstd_trace("nstd_fp32_compiled", model, w, replace(fp32, compile=True),
                                                 twice),
        "nstd_fp32_coarse_to_fine": lambda: nstd_trace(
            "nstd_fp32_coarse_to_fine", model, w, fp32, [Scale(half, its, history), Scale(w.size, its, history)]),
        "nstd_fp32_stopping_compiled": lambda: nstd_trace("nstd_fp32_stopping_compiled", model, stops,
                                                          replace(fp32, compile=True), full),
        "nstd_fast": lambda: nstd_trace("nstd_fast", model, w, fast, twice),
        "nstd_fast_coarse_to_fine": lambda: nstd_trace(
            "nstd_fast_coarse_to_fine", model, w, fast, [Scale(half, its, history), Scale(w.size, its, history)]),
        "nstd_fast_stopping_compiled": lambda: nstd_trace("nstd_fast_stopping_compiled", model, stops,
                                                          replace(fast, compile=True), full),
        "nstd_fast_bf16_history": lambda: nstd_trace("nstd_fast_bf16_history", model, w, narrow, twice),
        "nstd_fast_all_compiled": lambda: nstd_trace("nstd_fast_all_compiled", model, stops,
                                                     replace(narrow, compile=True), full),
        "tutorial": lambda: baseline_trace(model, w, 2 * its),
    }
    if model.mean.device.type == "cuda":
        # TF32 keeps three more mantissa bits than bf16, which levels off 1.2-1.7% above the
        # reference on the CPU (benchmarks/RESULTS.md); the CPU has no TF32 to try.
        tf32 = replace(fp32, precision="tf32")
        out["nstd_tf32"] = lambda: nstd_trace("nstd_tf32", model, w, tf32, twice)
        out["nstd_tf32_stopping_compiled"] = lambda: nstd_trace("nstd_tf32_stopping_compiled", model, stops,
                                                                replace(tf32, compile=True), full)
    if not compiled:
        out = {name: make for name, make in out.items() if "compiled" not in name}
    if peer.available():
        out[peer.NAME] = lambda: peer_trace(model, w, 2 * its)
    return out


def run(model: VGGFeatures, w: Workload, fast: Switches, say: Callable[[str], None], compiled: bool = True,
        chosen: Callable[[str], bool] = lambda name: True, done: Callable[[dict], None] | None = None) -> dict:
    """The reference, then each `chosen` contender side by side (see `side_by_side`)."""
    makes = {name: make for name, make in contenders(model, w, fast, compiled).items()
             if name == "nstd_fp32" or chosen(name)}
    return side_by_side(model, w, makes, say, done)


def side_by_side(model: VGGFeatures, w: Workload, makes: dict[str, Callable[[], Trace]],
                 say: Callable[[str], None], done: Callable[[dict], None] | None = None) -> dict:
    """Each of `makes` run and scored as soon as it has run, against the objective of
    `makes["nstd_fp32"]` after `w.iterations`; `done` gets the table so far after each, so
    a run cut short keeps its rows."""
    its = w.iterations
    reference_trace = _attempt("nstd_fp32", makes["nstd_fp32"], say, fatal=True)
    reference = next(objective(model, w, image) for k, _, image in reference_trace.snapshots if k == its)
    out = {"reference_objective": reference, "reference_iterations": its, "tolerance": TOLERANCE,
           "size": w.size, "contenders": []}
    for name, make in makes.items():
        trace = reference_trace if name == "nstd_fp32" else _attempt(name, make, say)
        if trace is None:
            continue
        row = reached(model, w, trace, reference)
        say(f"  {row['name']:<30} " + (f"{row['seconds']:7.1f} s  {row['photos_per_hour']:8.0f} photos/h  "
                                       f"({row['iterations']} iterations)" if row["reached"] else
                                       f"not reached in {row['iterations']} iterations: best "
                                       f"{row['best_vs_reference']:.3f}x the reference"))
        out["contenders"].append(row)
        if done is not None:
            done(out)
    return out


def _attempt(name: str, make: Callable[[], Trace], say: Callable[[str], None], fatal: bool = False) -> Trace | None:
    """A contender's trace, or None where it cannot run (reported, not fatal, unless it is
    the reference)."""
    started = time.perf_counter()
    try:
        trace = make()
    except Exception as e:  # noqa: BLE001 - one contender's failure is a result
        if fatal:
            raise
        say(f"  {name:<30} could not run: {type(e).__name__}: {e}")
        return None
    say(f"  ran {name} ({time.perf_counter() - started:.0f} s with warm-up)")
    return trace
