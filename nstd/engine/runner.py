"""The engine's one way in: a batch on a device, with its Gram cache, its memory plan and
the out-of-memory fallback. The worker and `nstd stylize` call only this (through the
pipeline), with a session (see session.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from nstd.engine import multiscale
from nstd.engine.device import describe, is_oom, release_cache
from nstd.engine.memory import MemoryPlanner, OomStep, regions_of
from nstd.engine.session import Drop, Outcome, Session, Verdict
from nstd.engine.sizes import Scale
from nstd.engine.switches import Switches
from nstd.engine.targets import GramCache
from nstd.engine.types import BatchSettings, TransferJob, TransferResult
from nstd.engine.vgg import VGGFeatures

NOT_FINITE = "the loss became NaN or infinite; lower the weights or the learning rate"


class Engine:
    def __init__(self, planner: MemoryPlanner, switches: Switches):
        self.planner, self.switches = planner, switches
        self.device = planner.device
        self.cache = GramCache()

    def run(self, model: VGGFeatures, session: Session, jobs: list[TransferJob], scales: list[Scale],
            settings: BatchSettings) -> Outcome:
        """Run same-size jobs through every scale, each result handed to the session as its
        image finishes, newcomers taken from it as places come free. Out of memory halves
        the batch, then recomputes a lone image's activations (where checkpointing is on
        auto), then refuses that image; any other error propagates."""
        return self._run(model, _Guard(session), jobs, scales, settings, self.switches.checkpoint)

    def _run(self, model: VGGFeatures, guard: "_Guard", jobs: list[TransferJob], scales: list[Scale],
             settings: BatchSettings, checkpoint: bool | None, shrunk: int = 0) -> Outcome:
        guard.given(jobs)
        mark = len(guard.taken)

        def free() -> int | None:
            room = self.planner.free()
            return room if room is None else room >> shrunk

        try:
            outcome = multiscale.run(model, guard, jobs, scales, settings, self.cache,
                                     replace(self.switches, checkpoint=checkpoint), free,
                                     self.planner.measured.bytes_per_image)
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled here
            if not is_oom(e):
                raise
            release_cache(self.device)
            # What had not come back runs again, without newcomers: this batch was too large.
            guard.refilling = False
            rest = guard.outstanding(jobs + guard.taken[mark:])
            return self._after_oom(model, guard, rest, scales, settings, checkpoint, shrunk) if rest \
                else Outcome.COMPLETE
        if outcome is Outcome.COMPLETE and guard.last is not None:
            self.planner.observe(settings, scales[-1].lbfgs_history, guard.last.runs, regions_of(jobs))
        return outcome

    def _after_oom(self, model: VGGFeatures, guard: "_Guard", jobs: list[TransferJob], scales: list[Scale],
                   settings: BatchSettings, checkpoint: bool | None, shrunk: int) -> Outcome:
        step = self.planner.after_oom(len(jobs), checkpoint, shrunk)
        if step is OomStep.SPLIT:
            half = len(jobs) // 2
            for part in (jobs[:half], jobs[half:]):
                if self._run(model, guard, part, scales, settings, checkpoint) is Outcome.STOPPED:
                    return Outcome.STOPPED
            return Outcome.COMPLETE
        if step is OomStep.CHECKPOINT:
            # The estimate said it fits and it did not: recompute activations instead.
            return self._run(model, guard, jobs, scales, settings, True)
        if step is OomStep.SHRINK:
            # Still too large: the estimate is out, so plan for half the room, and the image
            # runs as tiles, or as smaller ones, from its start.
            return self._run(model, guard, jobs, scales, settings, checkpoint, shrunk + 1)
        h, w = jobs[0].content.shape[-2:]
        for job in jobs:
            guard.refused(job, f"out of memory even alone at {w}x{h} on {describe(self.device)}; "
                               f"lower the size or max_pixels")
        return Outcome.COMPLETE


class _Guard:
    """The caller's session as the engine hands it on: a result whose loss went NaN is
    refused, and what has not come back is known, to run again after out of memory."""

    def __init__(self, session: Session):
        self.session = session
        self.held: dict[int, TransferJob] = {}  # by id: every job given, not yet back
        self.taken: list[TransferJob] = []  # the newcomers, in order
        self.refilling = True
        self.last: TransferResult | None = None

    def given(self, jobs: list[TransferJob]) -> None:
        self.held.update({j.id: j for j in jobs})

    def outstanding(self, jobs: list[TransferJob]) -> list[TransferJob]:
        """Those of `jobs` that have not come back."""
        return [j for j in jobs if j.id in self.held]

    def take(self, n: int) -> list[TransferJob]:
        new = self.session.take(n) if self.refilling else []
        self.given(new)
        self.taken += new
        return new

    def progress(self, iteration: int, losses: list[dict] | None) -> Verdict | Drop:
        answer = self.session.progress(iteration, losses)
        if isinstance(answer, Drop):  # gone for good: not to run again after out of memory
            for i in answer.ids:
                self.held.pop(i, None)
        return answer

    def finished(self, job: TransferJob, result: TransferResult) -> None:
        self.held.pop(job.id, None)
        self.last = result
        if bool(torch.isfinite(result.image).all()) and math.isfinite(result.history[-1]["total"]):
            self.session.finished(job, result)
        else:
            self.session.refused(job, NOT_FINITE)

    def refused(self, job: TransferJob, reason: str) -> None:
        self.held.pop(job.id, None)
        self.session.refused(job, reason)
