"""How fast a device runs the transfer: measured on a small batch, scaled by FLOPs.

Cost grows with the pixels almost linearly (memory.flops_per_iteration), so a few
iterations at a small size tell how long a photo at the configured size will take.
"""

from __future__ import annotations

import time

import torch

from nstd.durations import say  # noqa: F401 - speed.say: check's and the worker's estimates
from nstd.engine.memory import flops_per_iteration
from nstd.engine.switches import Switches
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob
from nstd.engine.vgg import VGGFeatures

# 96 px on a CPU measures within a few per cent of the rate at 512 px, in 0.4 s on the
# 2-core development machine; a GPU needs more work per kernel before it shows its pace.
PROBE_SIDE = {"cpu": 96, "cuda": 256}
PROBE_ITERATIONS = 3


def measure(model: VGGFeatures, switches: Switches | None = None) -> float:
    """FLOP/s of the optimisation loop on the model's device, from a short run."""
    settings = BatchSettings(iterations=PROBE_ITERATIONS, log_every=PROBE_ITERATIONS)
    side = PROBE_SIDE.get(model.mean.device.type, 128)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, side, side, generator=gen)
    job = TransferJob(image, (StyleImage(image.flip(2)),))  # any photo and style: only the time counts
    run_batch(model, [job], BatchSettings(iterations=1), switches=switches)  # warm-up: allocations, autotuning
    if model.mean.device.type == "cuda":
        torch.cuda.synchronize(model.mean.device)
    started = time.perf_counter()
    run_batch(model, [job], settings, switches=switches)
    seconds = time.perf_counter() - started
    return flops_per_iteration(side, side, settings.layers) * PROBE_ITERATIONS / seconds


def photo_seconds(flops_per_second: float, scales: list[tuple[int, int, int]], layers: frozenset[str]) -> float:
    """Seconds one photo takes: `scales` as (height, width, iterations), one per scale."""
    return sum(flops_per_iteration(h, w, layers) * its for h, w, its in scales) / flops_per_second
