"""Time to quality alone: every contender of `nstd bench`'s time-to-quality section, side
by side in one run, without the rest of the bench (its sweeps take long on a CPU).

    python benchmarks/ttq.py --images ../shared/images --size 192 --out benchmarks/results-ttq-cpu.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

import torch

from nstd.bench import measure, ttq
from nstd.engine.switches import Switches, resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.pair_arguments(ap, size=192)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--only", help="contenders to run, comma-separated name patterns such as '*compiled*' "
                                   "(the reference, nstd_fp32, always runs)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = measure.stored_model(device)
    w = measure.pair(args.images, args.content, args.style, args.size, args.iterations)
    fast = Switches(checkpoint=False)
    out = measure.machine(device) | {"fast_path": resolve(fast, device).describe(), "pair": [args.content, args.style]}
    patterns = args.only.split(",") if args.only else ["*"]

    def chosen(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    def write(table: dict) -> None:  # after every contender: a run cut short keeps what it measured
        args.out.write_text(json.dumps(out | {"time_to_quality": table}, indent=1))

    ttq.run(model, w, fast, lambda line: print(line, flush=True), not args.no_compile, chosen, write)


if __name__ == "__main__":
    main()
