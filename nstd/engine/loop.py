"""The optimisation loop: one iteration after another, eagerly or as a replayed CUDA graph,
with losses logged without stalling the device."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from nstd.engine.session import Outcome, Verdict
from nstd.engine.types import BatchSettings

_log = logging.getLogger("nstd.engine")


class Batch(Protocol):
    """What the loop drives: a fixed number of image slots optimised together."""

    size: int

    def iteration(self) -> torch.Tensor:
        """One step of every working slot; each slot's loss row, (size, columns)."""

    def pixels(self) -> torch.Tensor:
        """The images now, (size, 3, H, W)."""

    def rows_now(self, slots: list[int]) -> list[torch.Tensor]:
        """The loss rows of `slots` at their pixels now, without stepping."""

    def park(self, slots: list[int]) -> bool:
        """These slots have nothing more to do; True where the batch's shapes changed."""


@dataclass
class Slot:
    """The image in one place of the batch, from the loop iteration it started at."""

    start: int
    clock: float  # perf_counter at its start
    records: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    totals: list[tuple[int, float]] = field(default_factory=list)  # (iterations done, total) seen on the host
    working: bool = True


@dataclass(frozen=True)
class Ended:
    """A slot's image as it leaves the batch."""

    slot: int
    image: torch.Tensor  # (3, H, W) on the device, unclamped
    records: list[tuple[int, torch.Tensor]]  # (iteration, loss row), the last at its final pixels
    snapshots: list[tuple[int, torch.Tensor]]
    iterations: int
    seconds: float


def flat(settings: BatchSettings, done: int, totals: list[tuple[int, float]]) -> bool:
    """Whether an image's loss has stopped improving: by less than `stop_tolerance` of
    itself over the last `stop_window` iterations (or it is no longer finite)."""
    if settings.stop_tolerance <= 0 or not totals:
        return False
    at, now = totals[-1]
    if not math.isfinite(now):
        return True
    past = [t for k, t in totals if k <= at - settings.stop_window]
    return bool(past) and past[-1] - now <= settings.stop_tolerance * abs(now)


class Occupants(Protocol):
    """Who is in the batch's slots (transfer's `_Occupants`): told as an image leaves,
    asked for newcomers, and asked after each iteration whether to go on."""

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict: ...

    def dropped(self) -> list[int]:
        """Slots whose images must leave unfinished, said since last asked."""

    def leave(self, end: Ended) -> None: ...

    def join(self, free: list[int]) -> list[int]:
        """Newcomers into slots of `free`; the slots filled."""


def optimise(batch: Batch, settings: BatchSettings, use_graph: bool, occupants: Occupants) -> Outcome:
    """Step the batch until every slot is done, or until told to stop. A slot is done after
    `settings.iterations`, or sooner once its loss is flat (see `flat`); its image then
    leaves, and a newcomer may take its place."""
    step = Stepper(batch.iteration, use_graph)
    device = batch.pixels().device
    reporter = LossReporter(settings.style_names, device)
    watch = Totals(device, max(1, settings.stop_window // 5)) if settings.stop_tolerance > 0 else None
    slots = [Slot(0, time.perf_counter()) for _ in range(batch.size)]
    if settings.iterations == 0:
        _end(batch, slots, list(range(batch.size)), 0, occupants)
    it = 0
    while any(s.working for s in slots):
        row = step()
        _note(slots, it, row, batch, settings)
        if it % settings.log_every == 0:
            reporter.push(it, row.detach().clone())
        it += 1
        judged = watch is not None and watch.push(it, row, slots)
        verdict = occupants.progress(it, reporter.ready())
        dropped = [k for k in occupants.dropped() if slots[k].working]
        for k in dropped:
            slots[k].working = False
        ending = [k for k, s in enumerate(slots) if s.working and
                  (it - s.start >= settings.iterations or judged and flat(settings, it - s.start, s.totals))]
        if ending:
            _end(batch, slots, ending, it, occupants)
        if verdict is Verdict.STOP:  # the images that were done have left: nothing finished is lost
            return Outcome.STOPPED
        if freed := sorted(ending + dropped):
            for k in occupants.join(freed):
                slots[k] = Slot(it, time.perf_counter())
            if batch.park([k for k in freed if not slots[k].working]):
                del step  # the old shapes' graph, and its memory pool
                step = Stepper(batch.iteration, use_graph)
    del step  # frees a captured graph's memory pool
    return Outcome.COMPLETE


def _note(slots: list[Slot], it: int, row: torch.Tensor, batch: Batch, settings: BatchSettings) -> None:
    """Each working slot's logged rows and snapshots at loop iteration `it`."""
    logged = None
    pixels = None
    for k, s in enumerate(slots):
        if not s.working:
            continue
        age = it - s.start
        if age % settings.log_every == 0:
            logged = row.detach().clone() if logged is None else logged
            s.records.append((age, logged[k]))
        done = age + 1
        if settings.snapshot_every and done % settings.snapshot_every == 0 and done < settings.iterations:
            pixels = batch.pixels() if pixels is None else pixels
            s.snapshots.append((done, pixels[k].clamp(0, 1).cpu()))


def _end(batch: Batch, slots: list[Slot], ending: list[int], it: int, occupants: Occupants) -> None:
    final = batch.rows_now(ending)
    pixels = batch.pixels()
    now = time.perf_counter()
    for k, row in zip(ending, final):
        s = slots[k]
        s.working = False
        occupants.leave(Ended(k, pixels[k].detach().clone(), s.records + [(it - s.start, row)], s.snapshots, it - s.start,
                    round(now - s.clock, 3)))


class Totals:
    """Each slot's total loss on the host every `every` iterations, for the stopping rule,
    without stalling the device: on CUDA each copy is read one interval later."""

    def __init__(self, device: torch.device, every: int):
        self.every = every
        self.async_copy = device.type == "cuda"
        self.pending: tuple[int, torch.Tensor, object] | None = None

    def push(self, it: int, row: torch.Tensor, slots: list[Slot]) -> bool:
        """Whether new totals reached the slots."""
        if it % self.every:
            return False
        if not self.async_copy:
            self._give(it, row[:, 0].tolist(), slots)
            return True
        host = torch.empty(row.shape[0], dtype=row.dtype, pin_memory=True)
        host.copy_(row[:, 0], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        before, self.pending = self.pending, (it, host, event)
        if before is None:
            return False
        event_it, values, done = before
        done.synchronize()  # long done: recorded one interval ago
        self._give(event_it, values.tolist(), slots)
        return True

    @staticmethod
    def _give(it: int, values: list[float], slots: list[Slot]) -> None:
        for s, v in zip(slots, values):
            if s.working and it > s.start:  # a value from before a slot's newcomer is not its
                s.totals.append((it - s.start, v))


class Stepper:
    """Runs the iteration eagerly, or replays it as a CUDA graph once warm.

    The graph removes the launch cost of several hundred small kernels per iteration,
    which dominates at small batches. Capture needs a few eager iterations first (cuDNN
    autotuning, the optimiser's first step); if capture fails, the loop stays eager.
    """

    WARMUP = 3

    def __init__(self, iteration: Callable[[], torch.Tensor], use_graph: bool):
        self.iteration = iteration
        self.use_graph = use_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self.side: torch.cuda.Stream | None = None  # one warm-up stream for the run
        self.count = 0

    def __call__(self) -> torch.Tensor:
        self.count += 1
        if self.graph is not None:
            self.graph.replay()
            return self.out
        if not self.use_graph or self.count <= self.WARMUP:
            if self.use_graph:
                # Warm-up on a side stream, as capture requires.
                self.side = self.side or torch.cuda.Stream()
                side = self.side
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = self.iteration()
                torch.cuda.current_stream().wait_stream(side)
                return out
            return self.iteration()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.iteration()
        except RuntimeError as e:
            _log.warning("CUDA graph capture failed, running eagerly: %s", e)
            self.use_graph = False
            torch.cuda.synchronize()
            return self.iteration()
        self.graph, self.out = graph, out
        graph.replay()  # capture records the work; the replay does it
        return out


class LossReporter:
    """Hands logged losses to the progress callback without stalling the device.

    Each logged row is copied to pinned host memory asynchronously and delivered at
    the next logged iteration, when the copy has long finished.
    """

    def __init__(self, style_names: list[str], device: torch.device):
        self.style_names = style_names
        self.async_copy = device.type == "cuda"
        self.pending: tuple[int, torch.Tensor, object] | None = None
        self.delivered: tuple[int, torch.Tensor, object] | None = None

    def push(self, it: int, row: torch.Tensor) -> None:
        if self.async_copy:
            host = torch.empty(row.shape, dtype=row.dtype, pin_memory=True)
            host.copy_(row, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.delivered, self.pending = self.pending, (it, host, event)
        else:
            self.delivered = (it, row, None)

    def ready(self) -> list[dict] | None:
        if self.delivered is None:
            return None
        it, host, event = self.delivered
        self.delivered = None
        if event is not None:
            event.synchronize()  # long done: recorded one log interval ago
        return [record(it, v, self.style_names) for v in host.tolist()]


def record(it: int, v: list[float], style_names: list[str]) -> dict:
    """One image's loss record; a guided batch's row ends with its regions' style losses,
    listed here in order for the transfer to name."""
    out = {"iteration": it, "total": v[0], "content": v[1], "style": v[2], "tv": v[3],
           "style_by_layer": dict(zip(style_names, v[4:4 + len(style_names)]))}
    if len(v) > 4 + len(style_names):
        out["style_by_region"] = v[4 + len(style_names):]
    return out


def histories(records: list[tuple[int, torch.Tensor]], style_names: list[str]) -> list[dict]:
    """One image's records, fetched in one copy. Rows may differ in width: a batch pads
    them to its widest problem's."""
    width = max(row.shape[0] for _, row in records)
    host = torch.stack([F.pad(row, (0, width - row.shape[0])) for _, row in records]).cpu().tolist()
    return [record(it, v, style_names) for (it, _), v in zip(records, host)]
