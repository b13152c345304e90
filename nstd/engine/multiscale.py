"""Coarse to fine: optimise small, upsample the result as the next scale's start.

The style's texture is set where VGG's receptive fields see it at the scale the
painting was made for; each finer scale then adds detail in far fewer iterations.
Every scale is an ordinary batch, so same-size jobs stay batched throughout, and each
scale's style targets are computed at that scale.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from nstd.engine.switches import Switches
from nstd.engine.resize import long_side_size, resize_long_side, upsample
from nstd.engine.sizes import Scale
from nstd.engine.targets import GramCache
from nstd.engine.transfer import Finished, run_batch
from nstd.engine.types import BatchSettings, Progress, Refill, RunStats, TransferJob, TransferResult
from nstd.engine.vgg import VGGFeatures


def run_scales(model: VGGFeatures, jobs: list[TransferJob], scales: list[Scale], settings: BatchSettings,
               cache: GramCache | None = None, progress: Progress | None = None,
               switches: Switches | None = None, free: Callable[[], int | None] | None = None,
               refill: Refill | None = None, finished: Finished | None = None) -> list[TransferResult]:
    """Run every scale of `scales` on same-size jobs (contents at any one size).

    Histories run on across scales: each record gains a "scale" (its long side) and
    iterations count from the first scale's start. Progress counts the same way. Each
    result's `runs` has one entry per scale. `refill` and `finished` are run_batch's; a
    newcomer cannot join a schedule half done, so several scales take no refill, and
    each result is finished after the last scale.
    """
    cache = cache if cache is not None else GramCache()
    if len(scales) == 1:
        return _one_scale(model, jobs, scales[0], settings, cache, progress, switches, free, refill, finished)
    results = _scales(model, jobs, scales, settings, cache, progress, switches, free)
    if finished is None:
        return results
    for i, result in enumerate(results):
        finished(i, result)
    return []


def _one_scale(model, jobs, scale: Scale, settings, cache, progress, switches, free, refill, finished):
    def mark(result: TransferResult) -> TransferResult:
        result.history = [rec | {"scale": scale.long_side} for rec in result.history]
        return result

    def sized(given: list[TransferJob]) -> list[TransferJob]:
        return [replace(j, content=resize_long_side(j.content, scale.long_side)) for j in given]

    more = None if refill is None else (lambda n: sized(refill(n)))
    done = None if finished is None else (lambda i, result: finished(i, mark(result)))
    step_settings = replace(settings, iterations=scale.iterations, lbfgs_history=scale.lbfgs_history)
    return [mark(r) for r in run_batch(model, sized(jobs), step_settings, cache, progress, _at(switches, scale), free,
                                       more, done)]


def _at(switches: Switches | None, scale: Scale) -> Switches | None:
    """The run's switches with the scale's own precision, where it has one."""
    return switches if scale.precision is None else replace(switches or Switches(), precision=scale.precision)


def _scales(model: VGGFeatures, jobs: list[TransferJob], scales: list[Scale], settings: BatchSettings,
            cache: GramCache, progress: Progress | None, switches: Switches | None,
            free: Callable[[], int | None] | None) -> list[TransferResult]:
    starts: list[torch.Tensor] | None = None
    histories: list[list[dict]] = [[] for _ in jobs]
    runs: list[list[RunStats]] = [[] for _ in jobs]
    done = 0
    results: list[TransferResult] = []
    for scale in scales:
        h, w = jobs[0].content.shape[-2:]
        size = long_side_size(h, w, scale.long_side)
        scaled = []
        for i, job in enumerate(jobs):
            content = resize_long_side(job.content, scale.long_side)
            init_image = None if starts is None else upsample(starts[i], size)
            scaled.append(replace(job, content=content, init_image=init_image))
        step_settings = replace(settings, iterations=scale.iterations, lbfgs_history=scale.lbfgs_history)
        offset = done

        def step_progress(it, rows, offset=offset):
            if progress is not None:
                progress(offset + it, None if rows is None else
                         [r | {"iteration": offset + r["iteration"]} for r in rows])

        results = run_batch(model, scaled, step_settings, cache, step_progress, _at(switches, scale), free)
        for i, r in enumerate(results):
            # The end of one scale and the start of the next are the same iteration; each
            # image counts its own, which are fewer than the scale's where it stopped early.
            skip, before = (1, histories[i][-1]["iteration"]) if histories[i] else (0, 0)
            histories[i] += [rec | {"iteration": before + rec["iteration"], "scale": scale.long_side}
                             for rec in r.history[skip:]]
            runs[i] += r.runs
        starts = [r.image for r in results]
        done += max(r.runs[-1].iterations for r in results)  # the loop's count, short where all stopped early
    for r, history, run in zip(results, histories, runs):
        r.history, r.runs = history, run
    return results

