"""A masked batch's peak memory against the planner's estimate (memory.Footprint with its
styled regions): one photo of 512x384, with no mask and with one and three styled regions,
a few iterations each, each in a process of its own. On CUDA the peak is the allocator's;
on the CPU it is the growth of peak RSS over the run, which varies from run to run, so
each case runs `--repeats` times.

    python benchmarks/masked_memory.py --out benchmarks/results-masked-memory-cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from nstd.bench import measure
from nstd.engine.memory import Footprint, bytes_per_image, regions_of
from nstd.engine.switches import Switches
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, Region, StyleImage, TransferJob
from nstd.engine.layers import weight_shapes
from nstd.engine.vgg import VGGFeatures


SIZE = (384, 512)
SETTINGS = BatchSettings(iterations=3, lbfgs_history=5)


def job(regions: int) -> TransferJob:
    """A photo with `regions` vertical bands, each its own painting (0: no mask)."""
    h, w = SIZE
    gen = torch.Generator().manual_seed(0)
    styles = [StyleImage(torch.rand(3, 256, 256, generator=gen), key=f"s{i}") for i in range(max(regions, 1))]
    photo = torch.rand(3, h, w, generator=gen)
    if not regions:
        return TransferJob(photo, (styles[0],))
    bands = []
    for i, style in enumerate(styles):
        mask = torch.zeros(h, w)
        mask[:, i * w // regions:(i + 1) * w // regions] = 1
        bands.append(Region(mask, (style,)))
    return TransferJob(photo, (styles[0],), regions=tuple(bands))


def one(regions: int, device: torch.device) -> dict:
    """Run one case here and return its peak and the estimate."""
    # The weights' values do not change the memory; random ones need no download.
    sd = {k: torch.randn(*shape) * 0.01 for k, shape in weight_shapes().items()}
    model = VGGFeatures(sd, "torchvision", SETTINGS.layers, model_id="random").to(device)
    j = job(regions)
    switches = Switches("fp32", reproducible=False, checkpoint=False, cuda_graph=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run_batch(model, [j], SETTINGS, switches=switches)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - before
    fp = Footprint(SETTINGS.layers, SETTINGS.optimizer, SETTINGS.lbfgs_history, regions=regions_of([j]))
    return {"regions": regions, "peak_bytes": peak, "estimate_bytes": bytes_per_image(*SIZE, fp)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child's case
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.one is not None:
        print(json.dumps(one(args.one, device)))
        return
    rows = []
    for _ in range(args.repeats):
        for regions in (0, 1, 3):
            child = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", str(regions)],
                                   capture_output=True, text=True, check=True)
            rows.append(json.loads(child.stdout.splitlines()[-1]))
            print(rows[-1], flush=True)
    out = measure.machine(device) | {"size": list(SIZE), "runs": rows}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
