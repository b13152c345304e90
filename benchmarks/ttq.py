"""Time to quality alone: every contender of `nstd bench`'s time-to-quality section, side
by side in one run, without the rest of the bench (its sweeps take long on a CPU).

    python benchmarks/ttq.py --images ../shared/images --size 192 --out benchmarks/results-ttq-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from nstd import __version__
from nstd.bench import measure, ttq
from nstd.bench.measure import Workload
from nstd.engine.device import describe
from nstd.engine.switches import Switches, resolve
from nstd.engine.types import BatchSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--content", default="tubingen")
    ap.add_argument("--style", default="starry_night")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = measure.caffe_model(device)
    w = Workload(measure.picture(args.images, args.content), measure.picture(args.images, args.style),
                 args.size, args.iterations, BatchSettings())
    fast = Switches(checkpoint=False)
    out = {"date": time.strftime("%Y-%m-%d"), "device": describe(device), "host": platform.node(),
           "torch": torch.__version__, "nstd": __version__, "cpu_threads": torch.get_num_threads(),
           "fast_path": resolve(fast, device).describe(), "pair": [args.content, args.style]}
    out["time_to_quality"] = ttq.run(model, w, fast, lambda line: print(line, flush=True), not args.no_compile)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
