"""How fast a device runs the transfer: measured on a small batch, scaled by FLOPs.

Cost grows with the pixels almost linearly (memory.flops_per_iteration), so a few
iterations at a small size tell how long a photo at the configured size will take.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from nstd.durations import say  # noqa: F401 - speed.say: check's and the worker's estimates
from nstd.engine import transfer
from nstd.engine.loop import Stepper
from nstd.engine.memory import flops_per_iteration
from nstd.engine.session import Collect, Verdict
from nstd.engine.switches import Switches
from nstd.engine.types import BatchSettings, StyleImage, TransferJob
from nstd.engine.vgg import VGGFeatures

# 96 px on a CPU measures within a few per cent of the rate at 512 px; a GPU needs more
# work per kernel before it shows its pace.
PROBE_SIDE = {"cpu": 96, "cuda": 256}
PROBE_SECONDS = 1.0  # timed iterations after the warm-up take about this long
PROBE_LAPS = (3, 100)  # the fewest and the most timed iterations
PROGRESS_EVERY = 5.0  # seconds between a running batch's progress reports


@dataclass(frozen=True)
class Measured:
    flops_per_second: float
    seconds: float  # how long the measurement took, warm-up included


class _Probe(Collect):
    """The probe's session: each iteration's time, until enough are timed."""

    def __init__(self, device: torch.device, warm: int, budget: float, clock: Callable[[], float]):
        super().__init__()
        self.device, self.warm, self.budget, self.clock = device, warm, budget, clock
        self.marks: list[float] = []
        self.laps: list[float] = []

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append(self.clock())
        if iteration <= self.warm:
            return Verdict.GO
        self.laps.append(self.marks[-1] - self.marks[-2])
        timed = self.marks[-1] - self.marks[self.warm - 1]
        fewest, most = PROBE_LAPS
        done = len(self.laps) >= most or (len(self.laps) >= fewest and timed >= self.budget)
        return Verdict.STOP if done else Verdict.GO


def measure(model: VGGFeatures, switches: Switches | None = None, budget: float = PROBE_SECONDS,
            clock: Callable[[], float] = time.perf_counter) -> Measured:
    """FLOP/s of the optimisation loop on the model's device: its fastest single
    iteration of those timed for about `budget` seconds after a warm-up. Every iteration
    does the same work, and other processes' load only ever slows one down, so the
    fastest is the device's own pace: what the daemon gets while it has the device. One
    short run timed whole swung with whatever else the machine was doing then."""
    device = model.mean.device
    side = PROBE_SIDE.get(device.type, 128)
    # Not timed: allocations, autotuning, and on a GPU the eager iterations before the
    # loop's graph is captured.
    warm = Stepper.WARMUP + 2 if device.type == "cuda" else 1
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, side, side, generator=gen)
    job = TransferJob(image, (StyleImage(image.flip(2)),))  # any photo and style: only the time counts
    last = warm + PROBE_LAPS[1] + 1
    settings = BatchSettings(iterations=last, log_every=last)
    probe = _Probe(device, warm, budget, clock)
    began = clock()
    transfer.run(model, probe, [job], settings, switches=switches)
    return Measured(flops_per_iteration(side, side, settings.layers) / min(probe.laps), probe.marks[-1] - began)


def photo_seconds(flops_per_second: float, scales: list[tuple[int, int, int]], layers: frozenset[str]) -> float:
    """Seconds one photo takes: `scales` as (height, width, iterations), one per scale."""
    return sum(flops_per_iteration(h, w, layers) * its for h, w, its in scales) / flops_per_second


class Pace:
    """A running batch's rate and each job's time left, over the batch so far.

    Reported every `every` seconds whatever the loss log's interval: a count that moved
    only when losses were logged made the rate sag between moves and the time left swing.
    The rate runs from the first report, so the first iteration's warm-up (and the
    loading before it) do not weigh on it. A later scale's iteration costs more than an
    earlier one's, so the work is counted in FLOPs: `scales` as (height, width,
    iterations), or None for iterations of equal cost.
    """

    def __init__(self, total: int, scales: list[tuple[int, int, int]] | None = None,
                 layers: frozenset[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 every: float = PROGRESS_EVERY):
        self.steps = [(its, float(flops_per_iteration(h, w, layers))) for h, w, its in scales] \
            if scales else [(total, 1.0)]
        self.total, self.clock, self.every = total, clock, every
        self.first: tuple[float, int] | None = None
        self.last = float("-inf")
        self.work_rate: float | None = None  # one image's work per second

    def due(self, iteration: int) -> bool:
        """Whether to report at this loop iteration: at the first, then every `every`
        seconds; the rate is brought up to date when it is."""
        now = self.clock()
        if self.first is None:
            self.first, self.last = (now, iteration), now
            return True
        if now - self.last < self.every:
            return False
        self.last = now
        at, start = self.first
        if now > at and iteration > start:
            self.work_rate = (self.work(iteration) - self.work(start)) / (now - at)
        return True

    def work(self, iterations: int) -> float:
        """One image's work in its first `iterations` iterations."""
        out, left = 0.0, iterations
        for its, cost in self.steps:
            n = min(left, its)
            out, left = out + n * cost, left - n
        return out + left * self.steps[-1][1]  # a refilled batch's loop runs on past one job's count

    def rate(self, iteration: int) -> float | None:
        """Iterations per second at the scale of this iteration."""
        if self.work_rate is None:
            return None
        return self.work_rate / (self.work(iteration + 1) - self.work(iteration))

    def left(self, done: int) -> float | None:
        """Seconds until a job that has done `done` iterations is through."""
        if self.work_rate is None:
            return None
        return max(self.work(self.total) - self.work(min(done, self.total)), 0.0) / self.work_rate
