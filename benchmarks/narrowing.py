"""A batch whose photos stop at different iterations, with and without narrowing: once no
more than half of a batch's images are working, it goes on with those only instead of
computing the stopped ones too. Side by side in one run, batched (not reproducible)
fp32, per-image stopping on, no refills: the tail of a stream, or `nstd stylize`'s last
batch.

    python benchmarks/narrowing.py --images ../shared/images --out benchmarks/results-narrowing-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from nstd.bench import measure
from nstd.engine import transfer
from nstd.engine.resize import resize_long_side
from nstd.engine.switches import Switches
from nstd.engine.targets import GramCache
from nstd.engine.types import BatchSettings, StyleImage
from nstd.params import TransferParams

STYLES = ("starry_night", "the_scream", "shipwreck", "starry_night")


def never(self, slots: list[int]) -> bool:
    self.parked.update(slots)  # parked, still computed: as before narrowing
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    p = TransferParams()
    settings = BatchSettings(iterations=p.iterations, log_every=10, stop_tolerance=p.stop_tolerance,
                             stop_window=p.stop_window)
    model = measure.stored_model(device)
    photo = resize_long_side(measure.picture(args.images, "tubingen"), args.size)
    hands = [1.0, 1.0, 1.0, 0.3]  # the last: the same painting, a lighter hand, another stopping point
    jobs = [replace(p, style_weight=p.style_weight * hand).job(
        photo, (StyleImage(measure.picture(args.images, s), key=s),)) for s, hand in zip(STYLES, hands)]
    switches, cache = Switches("fp32", reproducible=False, checkpoint=False), GramCache()
    transfer.run_batch(model, jobs, BatchSettings(iterations=2), cache, switches=switches)  # warm
    out = measure.machine(device) | {"size": list(photo.shape[-2:]), "runs": {}}
    real = transfer._Batch.park
    for name, park in (("parked", never), ("narrowed", real)):
        transfer._Batch.park = park
        try:
            start = time.perf_counter()
            results = transfer.run_batch(model, jobs, settings, cache, switches=switches)
            seconds = time.perf_counter() - start
        finally:
            transfer._Batch.park = real
        out["runs"][name] = {"seconds": round(seconds, 1), "stopped_at": [r.runs[0].iterations for r in results],
                             "final_total": [round(r.history[-1]["total"], 5) for r in results]}
        print(name, out["runs"][name], flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
