"""Where an iteration's time goes on a GPU: graph on and off, and the top kernels.

    python benchmarks/gpu_profile.py [--models-dir DIR] [--size 512] [--batches 1,2,8]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from nstd.bench import measure
from nstd.engine.switches import Switches
from nstd.engine.targets import GramCache
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", default="1,2,8")
    ap.add_argument("--iterations", type=int, default=60)
    args = ap.parse_args()
    warnings.simplefilter("always")
    settings = BatchSettings(iterations=args.iterations, log_every=args.iterations)
    model = measure.stored_model("cuda", models_dir=args.models_dir)
    gen = torch.Generator().manual_seed(0)
    h, w = args.size * 3 // 4, args.size
    job = TransferJob(torch.rand(3, h, w, generator=gen), (StyleImage(torch.rand(3, h, w, generator=gen), key="s"),))
    cache = GramCache()
    for b in [int(v) for v in args.batches.split(",")]:
        for graph in (True, False):
            switches = Switches("bf16", cuda_graph=graph)
            run_batch(model, [job] * b, BatchSettings(iterations=5, log_every=5), cache, switches=switches)
            torch.cuda.synchronize()
            t = time.perf_counter()
            run_batch(model, [job] * b, settings, cache, switches=switches)
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / args.iterations * 1000
            print(f"batch {b:3} graph {graph!s:5}: {ms:7.2f} ms/iteration, {ms / b:6.2f} ms/image")
    b = int(args.batches.split(",")[-1])
    switches = Switches("bf16", cuda_graph=False)
    short = BatchSettings(iterations=10, log_every=10)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run_batch(model, [job] * b, short, cache, switches=switches)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))


if __name__ == "__main__":
    main()
