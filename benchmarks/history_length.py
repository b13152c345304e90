"""How many L-BFGS pairs the picture needs: nstd fp32 with its default history (100
pairs) against shorter ones, side by side in one run, each scored by the one fp32
evaluator against the default's own objective after the standard iterations, beside
the default again on a photo changed by 1e-6 (the spread that chance alone gives).

The history is the optimiser's largest state (2 x pairs copies of the image) and is read
twice an iteration, so a shorter one is less memory and less traffic on a GPU; it pays
only if the picture comes as soon.

    python benchmarks/history_length.py --images ../shared/images --out history-length.json
    python benchmarks/history_length.py --images ../shared/images --precision bf16 --lengths 100,20 --out bf16.json
    python benchmarks/history_length.py --images ../shared/images --size 384 --start 192 --lengths 20 --out ms.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from nstd.bench import measure, ttq
from nstd.engine.sizes import Scale, schedule
from nstd.engine.switches import Switches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.pair_arguments(ap, size=192)
    ap.add_argument("--lengths", default="50,20,10", help="histories to try, comma-separated")
    ap.add_argument("--precision", default="fp32", help="the tried runs' convolutions (the reference and the "
                                                        "control stay fp32)")
    ap.add_argument("--start", type=int, default=0, help="run everything coarse to fine from this long side, "
                                                         "as the daemon does above multiscale_start (0: one scale)")
    ap.add_argument("--later", type=int, default=200, help="iterations at each later scale")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = measure.stored_model(device)
    w = measure.pair(args.images, args.content, args.style, args.size, args.iterations)
    its, default = w.iterations, w.settings.lbfgs_history

    def plan(m: int) -> list[Scale]:  # a later scale's history shrinks from the first's, as the daemon's does
        return schedule(w.size, args.start, 2.0, its, (args.later,), m) if args.start else [Scale(w.size, its, m)]

    # The reference is the default's objective where its last scale ends.
    w = replace(w, iterations=sum(s.iterations for s in plan(default)))
    fp32, tried = Switches("fp32", checkpoint=False), Switches(args.precision, checkpoint=False)
    runs = {"nstd_fp32": lambda: ttq.nstd_trace("nstd_fp32", model, w, fp32, plan(default))}
    # The control: the default again on a photo changed by 1e-6, for the spread chance alone gives.
    runs["nstd_fp32_nudged"] = lambda: ttq.nstd_trace("nstd_fp32_nudged", model, measure.nudged(w), fp32,
                                                      plan(default))
    for m in (int(v) for v in args.lengths.split(",")):
        name = f"nstd_{args.precision}_history_{m}"
        runs[name] = lambda m=m, name=name: ttq.nstd_trace(name, model, w, tried, plan(m))
    out = measure.machine(device) | {"pair": [args.content, args.style], "size": args.size, "iterations": its,
                                     "default_history": default, "precision": args.precision,
                                     "scales": [[s.long_side, s.iterations, s.lbfgs_history] for s in plan(default)]}

    def write(table: dict) -> None:  # after every run: one cut short keeps what it measured
        args.out.write_text(json.dumps(out | table, indent=1))

    ttq.side_by_side(model, w, runs, lambda line: print(line, flush=True), write)

if __name__ == "__main__":
    main()
