"""Checks of the CUDA fast path that the CPU test suite cannot make; run on a GPU host.

    python benchmarks/gpu_check.py [--models-dir DIR]

Each line compares a switch against the plain fp32 eager loop on the same jobs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from nstd.bench import measure
from nstd.engine.switches import Switches
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob


def jobs(n: int, h: int, w: int) -> list[TransferJob]:
    gen = torch.Generator().manual_seed(0)
    style = StyleImage(torch.rand(3, 64, 64, generator=gen), key="s")
    out = []
    for i in range(n):
        small = torch.rand(1, 3, h // 8, w // 8, generator=gen)
        content = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic")[0].clamp(0, 1)
        out.append(TransferJob(content, (style,), style_weight=10.0 * (i + 1), seed=i))
    return out


def final(results) -> torch.Tensor:
    return torch.tensor([r.history[-1]["total"] for r in results])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path)
    ap.add_argument("--model", default="caffe")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    settings = BatchSettings(iterations=60, log_every=20)
    model = measure.stored_model("cuda", args.model, args.models_dir)
    batch = jobs(3, 192, 256)
    failures = 0

    def check(name, switches, rel, opt="lbfgs"):
        nonlocal failures
        s = BatchSettings(**{**settings.__dict__, "optimizer": opt})
        ref = final(run_batch(model, batch, s, switches=Switches("fp32", channels_last=False, cuda_graph=False)))
        t = time.perf_counter()
        got = final(run_batch(model, batch, s, switches=switches))
        torch.cuda.synchronize()
        diff = ((got - ref).abs() / ref.abs()).max().item()
        ok = diff <= rel and torch.isfinite(got).all()
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {opt:5} {name:28} max rel diff {diff:.2e} (limit {rel:g}) "
              f"{time.perf_counter() - t:.2f} s")

    check("fp32 channels-last", Switches("fp32", channels_last=True, cuda_graph=False), 2e-2)
    check("fp32 cuda graph", Switches("fp32", channels_last=False, cuda_graph=True), 2e-2)
    check("fp32 checkpoint", Switches("fp32", channels_last=False, checkpoint=True), 2e-2)
    check("tf32 all", Switches("tf32"), 5e-2)
    check("bf16 all", Switches("bf16"), 5e-2)
    check("bf16 all", Switches("bf16"), 5e-2, opt="adam")
    check("fp32 cuda graph", Switches("fp32", channels_last=False, cuda_graph=True), 1e-3, opt="adam")

    # L-BFGS amplifies rounding over 60 iterations; a real fault (a stale buffer in a
    # replayed graph, a shared state) shows as O(1).
    # Batch invariance on the GPU: each image alone against the batch, fast path on.
    s = settings
    together = final(run_batch(model, batch, s))
    alone = torch.cat([final(run_batch(model, [j], s)) for j in batch])
    diff = ((together - alone).abs() / alone.abs()).max().item()
    failures += diff > 5e-2
    print(f"{'ok  ' if diff <= 5e-2 else 'FAIL'} batch invariance, fast path: max rel diff {diff:.2e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
