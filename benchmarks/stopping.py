"""Where per-image stopping stops, and how far from the fixed-iteration result it is.

Runs each photo x painting pair in fp32 for `--iterations` with the loss logged every 5,
then replays the stopping rule (transfer.stop_tolerance over stop_window) on each curve
for a grid of tolerances: the iteration it stops at, and its loss against the loss at
the standard 500 iterations. The default is the largest tolerance that stays within 1%
(the time-to-quality tolerance) with room to spare on every pair.

    python benchmarks/stopping.py --images ../shared/images --out benchmarks/results-stopping-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from nstd.bench import measure
from nstd.engine.loop import flat
from nstd.engine.resize import resize_long_side
from nstd.engine.switches import Switches
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob
from nstd.engine.vgg import VGGFeatures

PAIRS = (("tubingen", "starry_night"), ("golden_gate", "the_scream"), ("tubingen", "shipwreck"))
TOLERANCES = (0.001, 0.002, 0.003, 0.004, 0.005, 0.01)
WINDOWS = (25, 50, 100)
STANDARD = 500


def curve(model: VGGFeatures, photo: torch.Tensor, painting: torch.Tensor, size: int, its: int,
          device: torch.device) -> list[tuple[int, float]]:
    job = TransferJob(resize_long_side(photo, size), (StyleImage(painting, key="p"),))
    settings = BatchSettings(iterations=its, log_every=5)
    [result] = run_batch(model.to(device), [job], settings, switches=Switches("fp32"))
    return [(h["iteration"], h["total"]) for h in result.history]


def replay(points: list[tuple[int, float]], tolerance: float, window: int) -> int:
    """The iteration the rule stops at on a logged curve (the last one if never)."""
    rule = BatchSettings(stop_tolerance=tolerance, stop_window=window)
    for n in range(1, len(points) + 1):
        if flat(rule, points[n - 1][0], points[:n]):
            return points[n - 1][0]
    return points[-1][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model = measure.stored_model()
    device = torch.device(args.device)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "size": args.size, "standard_iterations": STANDARD, "pairs": {}}
    for photo_name, painting_name in PAIRS:
        photo, painting = (measure.picture(args.images, n) for n in (photo_name, painting_name))
        points = curve(model, photo, painting, args.size, args.iterations, device)
        losses = dict(points)
        rows = []
        for window in WINDOWS:
            for tol in TOLERANCES:
                k = replay(points, tol, window)
                rows.append({"window": window, "tolerance": tol, "stops_at": k,
                             "loss_vs_standard": round(losses[k] / losses[STANDARD], 4)})
        name = f"{photo_name}+{painting_name}"
        out["pairs"][name] = {"curve": points, "rules": rows}
        for row in rows:
            if row["window"] == 50:
                print(f"{name:<26} tol {row['tolerance']:<6} stops at {row['stops_at']:4d}: "
                      f"{row['loss_vs_standard']:.4f}x the loss at {STANDARD}", flush=True)
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
