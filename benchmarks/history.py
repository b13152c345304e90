"""The L-BFGS history in bf16 against fp32, side by side in one run: what it saves (the
optimiser's bytes per photo, the time of one optimiser step with a full history) and
what it costs (the picture's objective, scored by the one fp32 evaluator, with a fixed
iteration count and with the default stopping rule), beside the spread between two fp32
runs whose photos differ by 1e-6.

    python benchmarks/history.py --images ../shared/images --out benchmarks/results-history-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nstd.bench import measure, ttq
from nstd.bench.measure import Workload, sync
from nstd.engine.multiscale import Scale
from nstd.engine.optim import BatchedLBFGS
from nstd.engine.switches import Switches
from nstd.engine.types import BatchSettings

PAIRS = (("tubingen", "starry_night"), ("golden_gate", "the_scream"))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def step_seconds(device: torch.device, size: tuple[int, int], batch: int, history: int, steps: int) -> dict:
    """Median seconds of one optimiser step once the history is full, and its bytes per
    photo, for each dtype; the two are timed in turns so that drift hits both alike."""
    gen = torch.Generator(device).manual_seed(0)
    target = torch.rand(batch, 3, *size, device=device, generator=gen)
    weight = torch.rand(batch, 3, *size, device=device, generator=gen) + 0.1
    runs = {}
    for name, dtype in DTYPES.items():
        x = torch.full_like(target, 0.5).requires_grad_(True)
        runs[name] = (x, BatchedLBFGS(x, history=history, dtype=dtype))
        for _ in range(history + 2):  # fill the ring, untimed
            _step(*runs[name], target, weight)
    times: dict[str, list[float]] = {name: [] for name in DTYPES}
    for _ in range(steps):
        for name in DTYPES:
            times[name].append(_step(*runs[name], target, weight, device))
    return {name: {"step_ms": round(1000 * statistics.median(t), 2),
                   "history_bytes_per_photo": opt._w[0].numel() * opt._w.element_size()}
            for (name, t), (_, opt) in zip(times.items(), runs.values())}


def _step(x: torch.Tensor, opt: BatchedLBFGS, target: torch.Tensor, weight: torch.Tensor,
          device: torch.device | None = None) -> float:
    """One step on a separable bowl (cheap to evaluate: the optimiser's time is the point)."""
    x.grad = None
    loss = (weight * (x - target) ** 2 * (1 + (x - target) ** 2)).flatten(1).sum(1)
    loss.sum().backward()
    if device is not None:
        sync(device)
    start = time.perf_counter()
    opt.step(loss.detach())
    if device is not None:
        sync(device)
    return time.perf_counter() - start


def quality(model, w: Workload, conv: str) -> dict:
    """Each history dtype over the workload: the fixed run against fp32's own final
    objective (the reference), and with the default stopping rule; and fp32 again with
    the photo nudged, for the spread that chance alone gives."""
    its, history = w.iterations, w.settings.lbfgs_history
    out, traces = {}, {}
    for name in DTYPES:
        switches = Switches(conv, checkpoint=False, history_precision=name)
        traces[name] = ttq.nstd_trace(name, model, w, switches, [Scale(w.size, its, history)])
        traces[name + "_stopping"] = ttq.nstd_trace(name + "_stopping", model, ttq.stopping(w), switches,
                                                    [Scale(w.size, its, history)])
    traces["fp32_nudged"] = ttq.nstd_trace("fp32_nudged", model, measure.nudged(w), Switches(conv, checkpoint=False),
                                           [Scale(w.size, its, history)])
    reference = ttq.objective(model, w, traces["fp32"].snapshots[-1][2])
    for name, trace in traces.items():
        row = ttq.reached(model, w, trace, reference)
        out[name] = {"reached_1pct_at": row["iterations"] if row["reached"] else None,
                     "last_iteration": trace.snapshots[-1][0], "seconds": round(trace.snapshots[-1][1], 1),
                     "objective_vs_reference": round(ttq.objective(model, w, trace.snapshots[-1][2]) / reference, 4),
                     "curve": row["curve"]}
        print(f"  {name:<14} {out[name]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--size", type=int, default=192, help="long side of the quality runs")
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--precision", default="fp32", help="the convolutions' precision in the quality runs")
    ap.add_argument("--step-batch", type=int, default=1, help="photos in the optimiser-step timing (512x384)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    out = measure.machine(device) | {"size": args.size, "iterations": args.iterations, "precision": args.precision}
    out["step"] = step_seconds(device, (384, 512), args.step_batch, BatchSettings().lbfgs_history, 20)
    print("step", out["step"], flush=True)
    args.out.write_text(json.dumps(out, indent=1))
    model = measure.stored_model(device)
    out["quality"] = {}
    for content, style in PAIRS:
        print(f"{content} x {style}", flush=True)
        w = measure.pair(args.images, content, style, args.size, args.iterations,
                         BatchSettings(iterations=args.iterations))
        out["quality"][f"{content}_x_{style}"] = quality(model, w, args.precision)
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
