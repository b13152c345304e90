"""How many L-BFGS pairs the picture needs: nstd fp32 with its default history (100
pairs) against shorter ones, side by side in one run, each scored by the one fp32
evaluator against the default's own objective after the standard iterations, beside
the default again on a photo changed by 1e-6 (the spread that chance alone gives).

The history is the optimiser's largest state (2 x pairs copies of the image) and is read
twice an iteration, so a shorter one is less memory and less traffic on a GPU; it pays
only if the picture comes as soon.

    python benchmarks/history_length.py --images ../shared/images --out history-length.json
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
    measure.pair_arguments(ap, size=192)
    ap.add_argument("--lengths", default="50,20,10", help="shorter histories to try, comma-separated")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = measure.stored_model(device)
    w = measure.pair(args.images, args.content, args.style, args.size, args.iterations)
    fp32, its, default = Switches("fp32", checkpoint=False), w.iterations, w.settings.lbfgs_history
    runs = {"nstd_fp32": lambda: ttq.nstd_trace("nstd_fp32", model, w, fp32, [Scale(w.size, its, default)])}
    # The control: the default again on a photo changed by 1e-6, for the spread chance alone gives.
    runs["nstd_fp32_nudged"] = lambda: ttq.nstd_trace("nstd_fp32_nudged", model, measure.nudged(w), fp32,
                                                      [Scale(w.size, its, default)])
    for m in (int(v) for v in args.lengths.split(",")):
        name = f"nstd_fp32_history_{m}"
        runs[name] = lambda m=m, name=name: ttq.nstd_trace(name, model, w, fp32, [Scale(w.size, its, m)])
    out = measure.machine(device) | {"pair": [args.content, args.style], "size": args.size, "iterations": its,
                                     "default_history": default}

    def write(table: dict) -> None:  # after every run: one cut short keeps what it measured
        args.out.write_text(json.dumps(out | table, indent=1))

    ttq.side_by_side(model, w, runs, lambda line: print(line, flush=True), write)


if __name__ == "__main__":
    main()
