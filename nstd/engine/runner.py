"""The engine's one way in: a batch on a device, with its Gram cache, its memory plan and
the out-of-memory fallback. The worker and `nstd stylize` call only this."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import torch

from nstd.engine.device import describe, is_oom, release_cache
from nstd.engine.switches import Switches
from nstd.engine.memory import MemoryPlanner, OomStep, regions_of
from nstd.engine.multiscale import Scale, run_scales
from nstd.engine.targets import GramCache
from nstd.engine.types import BatchSettings, Progress, Refill, TransferJob, TransferResult
from nstd.engine.vgg import VGGFeatures

# Called with the positions (in the jobs given to run) and their results, as each part
# of a batch finishes: an out-of-memory split delivers its halves one after the other.
Done = Callable[[list[int], list[TransferResult]], None]
# Called with the positions of jobs that cannot run on this device, and why.
Refused = Callable[[list[int], str], None]


class Engine:
    def __init__(self, planner: MemoryPlanner, switches: Switches):
        self.planner, self.switches = planner, switches
        self.device = planner.device
        self.cache = GramCache()

    def run(self, model: VGGFeatures, jobs: list[TransferJob], scales: list[Scale], settings: BatchSettings,
            done: Done, refused: Refused, progress: Progress | None = None, refill: Refill | None = None) -> None:
        """Run same-size jobs through every scale, each result delivered as its image
        finishes. `refill` may hand over more jobs as places come free; they take the
        positions after the given jobs', in order. Out of memory halves the batch, then
        recomputes a lone image's activations (where checkpointing is on auto), then
        refuses that image; any other error propagates."""
        self._run(model, list(range(len(jobs))), jobs, scales, settings, done, refused, progress,
                  self.switches.checkpoint, refill)

    def _run(self, model, positions: list[int], jobs: list[TransferJob], scales: list[Scale],
             settings: BatchSettings, done: Done, refused: Refused, progress, checkpoint: bool | None,
             refill: Refill | None = None) -> None:
        held, where = list(jobs), list(positions)
        delivered: set[int] = set()
        last: list[TransferResult] = []

        def more(n: int) -> list[TransferJob]:
            new = refill(n)
            where.extend(range(len(held), len(held) + len(new)))
            held.extend(new)
            return new

        def finished(i: int, result: TransferResult) -> None:
            delivered.add(i)
            last[:] = [result]
            ok = bool(torch.isfinite(result.image).all()) and math.isfinite(result.history[-1]["total"])
            if ok:
                done([where[i]], [result])
            else:
                refused([where[i]], "the loss became NaN or infinite; lower the weights or the learning rate")

        try:
            run_scales(model, jobs, scales, settings, self.cache, progress,
                       replace(self.switches, checkpoint=checkpoint), self.planner.free,
                       None if refill is None else more, finished)
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled here
            if not is_oom(e):
                raise
            release_cache(self.device)
            # What had not finished runs again, without refills: this batch was too large.
            rest = [k for k in range(len(held)) if k not in delivered]
            if rest:
                self._after_oom(model, [where[k] for k in rest], [held[k] for k in rest], scales, settings, done,
                                refused, progress, checkpoint)
            return
        self.planner.observe(settings, scales[-1].lbfgs_history, last[0].runs, regions_of(held))

    def _after_oom(self, model, positions, jobs, scales, settings, done, refused, progress, checkpoint) -> None:
        step = self.planner.after_oom(len(jobs), checkpoint)
        if step is OomStep.SPLIT:
            half = len(jobs) // 2
            for part in (slice(None, half), slice(half, None)):
                self._run(model, positions[part], jobs[part], scales, settings, done, refused, progress,
                          checkpoint)
        elif step is OomStep.CHECKPOINT:
            # The estimate said it fits and it did not: recompute activations instead.
            self._run(model, positions, jobs, scales, settings, done, refused, progress, True)
        else:
            h, w = jobs[0].content.shape[-2:]
            refused(positions, f"out of memory even alone at {w}x{h} on {describe(self.device)}; "
                               f"lower the size or max_pixels")
