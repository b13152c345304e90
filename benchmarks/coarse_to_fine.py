"""Whether coarse to fine reaches the reference sooner at a given size: half size until the
loss is flat, then full size until it is flat again, against the one-scale runs (fixed
iterations, and the default per-image stopping), scored by time to quality's evaluator.

    python benchmarks/coarse_to_fine.py --images ../shared/images --size 384 --out benchmarks/results-c2f-cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nstd.bench import measure, ttq
from nstd.engine.multiscale import Scale
from nstd.engine.switches import Switches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.pair_arguments(ap, size=384)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = measure.stored_model(device)
    fixed = measure.pair(args.images, args.content, args.style, args.size, args.iterations)
    stopping = ttq.stopping(fixed)
    half, its, history = ttq.half_size(fixed), args.iterations, fixed.settings.lbfgs_history
    fp32 = Switches("fp32", checkpoint=False)
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
    out = measure.machine(device) | {"size": args.size, "half": half, "pair": [args.content, args.style],
                                     "reference_objective": reference, "reference_iterations": its,
                                     "tolerance": ttq.TOLERANCE, "contenders": rows}
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
