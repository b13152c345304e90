"""Whether coarse to fine reaches the reference sooner at a given size: half size until the
loss is flat, then full size until it is flat again, against the one-scale runs (fixed
iterations, and the default per-image stopping), scored by time to quality's evaluator.

    python benchmarks/coarse_to_fine.py --images ../shared/images --size 384 --out benchmarks/results-c2f-cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from nstd import images, weights
from nstd.bench import ttq
from nstd.bench.measure import Workload
from nstd.engine.device import describe
from nstd.engine.multiscale import Scale
from nstd.engine.switches import Switches
from nstd.engine.types import BatchSettings
from nstd.engine.vgg import VGGFeatures
from nstd.params import TransferParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--content", default="tubingen")
    ap.add_argument("--style", default="starry_night")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    sd, info = weights.load(weights.default_models_dir(), "caffe")
    model = VGGFeatures(sd, info.preprocessing, BatchSettings().layers, "max", info.model_id).to(device)
    content, style = (images.decode((args.images / f"{n}.jpg").read_bytes(), n).pixels
                      for n in (args.content, args.style))
    fixed = Workload(content, style, args.size, args.iterations, BatchSettings())
    p = TransferParams()
    stopping = replace(fixed, settings=replace(fixed.settings, stop_tolerance=p.stop_tolerance,
                                               stop_window=p.stop_window))
    h, w = fixed.job().content.shape[-2:]
    half = max(args.size // 2, math.ceil(16 * max(h, w) / min(h, w)))
    its, history, fp32 = args.iterations, p.lbfgs_history, Switches("fp32", checkpoint=False)
    runs = {"fixed": (fixed, [Scale(args.size, its, history)]),
            "stopping": (stopping, [Scale(args.size, its, history)]),
            "coarse_to_fine_stopping": (stopping, [Scale(half, its, history), Scale(args.size, its, history)])}
    traces = {}
    for name, (work, scales) in runs.items():
        traces[name] = ttq.nstd_trace(name, model, work, fp32, scales)
        print(f"ran {name}: {traces[name].scales}", flush=True)
    reference = next(ttq.objective(model, fixed, image) for k, _, image in traces["fixed"].snapshots if k == its)
    rows = [ttq.reached(model, fixed, t, reference) for t in traces.values()]
    for row in rows:
        print(f"{row['name']:<26} reached={row['reached']} {row['seconds']:7.1f} s  {row['iterations']} its  "
              f"best {row['best_vs_reference']:.4f}x", flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "device": describe(device), "host": platform.node(),
           "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "size": args.size,
           "half": half, "pair": [args.content, args.style], "reference_objective": reference,
           "reference_iterations": its, "tolerance": ttq.TOLERANCE, "contenders": rows}
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
