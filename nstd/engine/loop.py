"""The optimisation loop: one iteration after another, eagerly or as a replayed CUDA graph,
with losses logged without stalling the device."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from nstd.engine.types import BatchSettings, Progress

_log = logging.getLogger("nstd.engine")


@dataclass
class Trace:
    """What a loop leaves besides the image: logged loss rows and snapshots."""

    records: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def optimise(iteration: Callable[[], torch.Tensor], pixels: Callable[[], torch.Tensor], settings: BatchSettings,
             use_graph: bool, progress: Progress | None) -> Trace:
    """Run `settings.iterations` iterations; `iteration()` steps the images and returns
    their loss rows, and `pixels()` is the images now, for snapshots."""
    step = Stepper(iteration, use_graph)
    trace = Trace()
    reporter = LossReporter(settings.style_names, pixels().device)
    for it in range(settings.iterations):
        row = step()
        if it % settings.log_every == 0:
            trace.records.append((it, row.detach().clone()))
            reporter.push(it, trace.records[-1][1])
        done = it + 1
        if settings.snapshot_every and done % settings.snapshot_every == 0 and done < settings.iterations:
            trace.snapshots.append((done, pixels().clamp(0, 1).cpu()))
        if progress is not None:
            progress(done, reporter.ready())
    del step  # frees a captured graph's memory pool
    return trace


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


def histories(records, style_names, n) -> list[list[dict]]:
    host = torch.stack([r for _, r in records]).cpu().tolist()  # one sync for the whole run
    return [[record(it, host[k][i], style_names) for k, (it, _) in enumerate(records)]
            for i in range(n)]
