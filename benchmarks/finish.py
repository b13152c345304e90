"""bf16 convolutions with a short fp32 (or TF32) finish, against fp32 and bf16 alone, side
by side in one run: time to the reference picture (nstd fp32's objective after the
standard iterations, every snapshot scored by the one fp32 evaluator), with the default
stopping rule. The finish is a last scale at the same size whose convolutions run at the
finish's precision, started from the bf16 result.

    python benchmarks/finish.py --images ../shared/images --out benchmarks/results-finish-cpu.json
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
    ap.add_argument("--finishes", default="25,50", help="iterations of the finish after the bf16 run stops")
    ap.add_argument("--finish-precision", default="fp32", help="the finish's convolutions: fp32, or tf32 on a GPU")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = measure.stored_model(device)
    w = measure.pair(args.images, args.content, args.style, args.size, args.iterations)
    stops, its, history = ttq.stopping(w), w.iterations, w.settings.lbfgs_history
    fp32, bf16 = Switches("fp32", checkpoint=False), Switches("bf16", checkpoint=False)
    full = [Scale(w.size, its, history)]
    runs = {"nstd_fp32": lambda: ttq.nstd_trace("nstd_fp32", model, w, fp32, full),
            "nstd_fp32_stopping": lambda: ttq.nstd_trace("nstd_fp32_stopping", model, stops, fp32, full),
            "nstd_bf16_stopping": lambda: ttq.nstd_trace("nstd_bf16_stopping", model, stops, bf16, full)}
    for k in (int(v) for v in args.finishes.split(",")):
        name = f"nstd_bf16_stopping_{args.finish_precision}_finish_{k}"
        runs[name] = lambda k=k, name=name: ttq.nstd_trace(name, model, stops, bf16,
                                                          full + [Scale(w.size, k, history, args.finish_precision)])
    out = measure.machine(device) | {"pair": [args.content, args.style], "size": args.size, "iterations": its,
                                     "finish_precision": args.finish_precision}

    def write(table: dict) -> None:  # after every run: one cut short keeps what it measured
        args.out.write_text(json.dumps(out | table, indent=1))

    ttq.side_by_side(model, w, runs, lambda line: print(line, flush=True), write)


if __name__ == "__main__":
    main()
