"""Runs the benchmark's sections in one process and writes JSON and a Markdown table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from nstd.bench import measure, ttq
from nstd.bench.measure import Workload
from nstd.engine.switches import Switches, resolve
from nstd.engine.types import BatchSettings
from nstd.engine.vgg import VGGFeatures


@dataclass(frozen=True)
class Plan:
    size: int = 512
    iterations: int = 500
    batches: tuple[int, ...] | None = None  # None: 1, 2, 4, ... up to what fits
    max_batch: int = 64
    sizes: tuple[int, ...] = (256, 512, 768, 1024)
    sweep_iterations: int | None = None  # None: the same as `iterations`
    precision: str = "auto"  # the fast path's, as worker.precision
    stream_photos: int | None = None  # the stream at the best batch: this many photos; None: 3 batches; 0: none
    baseline: bool = True
    latency: bool = True
    time_to_quality: bool = True
    compile: bool = True  # time to quality's torch.compile contenders


def run(model: VGGFeatures, content: torch.Tensor, style: torch.Tensor, plan: Plan,
        latency: Callable[[], dict] | None, say: Callable[[str], None]) -> dict:
    device = model.mean.device
    settings = BatchSettings()
    # No checkpointing: the sweep finds the largest batch that fits without it, and every
    # row then measures the same switches. (CUDA graphs stay auto, as in the daemon.)
    switches = Switches(plan.precision, checkpoint=False)
    fp32 = Switches("fp32", checkpoint=False)
    r = resolve(switches, device)
    w = Workload(content, style, plan.size, plan.iterations, settings)
    workload = {"size": plan.size, "iterations": plan.iterations, "model": model.model_id,
                "optimizer": settings.optimizer, "lbfgs_history": settings.lbfgs_history}
    out: dict = measure.machine(device) | {"fast_path": r.describe(), "workload": workload}
    out["matmul_bf16_flops"] = measure.matmul_peak(device)
    out["datasheet_bf16_flops"] = measure.datasheet_peak(device)

    say(f"standard workload: {plan.size} px, {plan.iterations} iterations, batch 1")
    std = {}
    if plan.baseline:
        std["baseline"] = measure.timed_baseline(model, w)
        say(f"  baseline       {_fmt(std['baseline'])}")
    std["nstd_fp32"] = measure.timed_nstd(model, w, 1, fp32)
    say(f"  nstd fp32      {_fmt(std['nstd_fp32'])}")
    std["nstd_fast"] = measure.timed_nstd(model, w, 1, switches)
    say(f"  nstd {r.precision:<9} {_fmt(std['nstd_fast'])}")
    reference = ttq.objective(model, w, std["nstd_fp32"]["image"])
    for name, row in std.items():
        row["final_losses"] = measure.final_losses(model, w, row.pop("image"))
    out["standard"] = std
    if plan.time_to_quality:
        say(f"time to quality: to within {100 * ttq.TOLERANCE:.0f}% of nstd fp32's objective after "
            f"{plan.iterations} iterations")
        out["time_to_quality"] = ttq.run(model, w, switches, say, plan.compile)

    out["batches"], out["sizes"] = _sweeps(model, content, style, plan, settings, switches, say)
    best = max(out["batches"], key=lambda x: x["images_per_hour"])["batch"]
    photos = 3 * best if plan.stream_photos is None else plan.stream_photos
    if photos:
        say(f"a stream of {photos} photos at batch {best}, stopping and refilling as the daemon does")
        out["stream"] = ttq.stream(model, w, best, switches, photos, reference)
        say(f"  {_stream_line(out['stream'])}")

    if plan.latency and latency is not None:
        say("drop to output on an idle daemon")
        out["latency"] = latency()
        say(f"  {out['latency']['seconds']:.1f} s")

    out["summary"] = summary(out)
    return out


def _sweeps(model: VGGFeatures, content: torch.Tensor, style: torch.Tensor, plan: Plan,
            settings: BatchSettings, switches: Switches, say: Callable[[str], None]) -> tuple[list, list]:
    """Images per hour by batch size at the standard size, then by size at the best batch."""
    say("batch sweep")
    w = Workload(content, style, plan.size, plan.iterations, settings)
    batches = plan.batches or _powers(measure.largest_batch(model, w, switches, plan.max_batch))
    sweep_w = Workload(content, style, plan.size, plan.sweep_iterations or plan.iterations, settings)
    batches_out: list[dict] = []
    for b in batches:
        row = measure.timed_nstd(model, sweep_w, b, switches, plan.iterations)
        row.pop("image")
        batches_out.append(row)
        say(f"  batch {b:<3}      {_fmt(row)}")
    best = max(batches_out, key=lambda x: x["images_per_hour"])

    say("scale sweep")
    sizes_out: list[dict] = []
    for size in plan.sizes:
        sw = Workload(content, style, size, plan.sweep_iterations or plan.iterations, settings)
        # The best batch at the standard size, scaled by pixels, then to what fits.
        guess = max(1, _pow2_floor(best["batch"] * (plan.size / size) ** 2))
        b = min(guess, max(1, measure.largest_batch(model, sw, switches, guess)))
        row = measure.timed_nstd(model, sw, b, switches, plan.iterations)
        row.pop("image")
        sizes_out.append(row)
        say(f"  {size:>4} px       {_fmt(row)}")
    return batches_out, sizes_out


def _stream_line(row: dict) -> str:
    return (f"{row['photos_per_hour']:.0f} photos/h, {row['mean_iterations']:.0f} iterations a photo; "
            f"{100 * row['within_tolerance']:.0f}% of them within {100 * row['tolerance']:.0f}% of the "
            f"reference (median {row['median_vs_reference']:.3f}, worst {row['worst_vs_reference']:.3f})")


def summary(out: dict) -> dict:
    std = out["standard"]
    best = max(out["batches"], key=lambda x: x["images_per_hour"])
    peak = out.get("datasheet_bf16_flops") or out.get("matmul_bf16_flops")
    s = {"best_batch": best["batch"], "best_images_per_hour": best["images_per_hour"],
         "best_flops_per_second": best["flops_per_second"]}
    if peak:
        s["best_fraction_of_peak"] = best["flops_per_second"] / peak
    if "baseline" in std:
        base = std["baseline"]
        s["speedup_batch1_fast"] = std["nstd_fast"]["images_per_hour"] / base["images_per_hour"]
        s["speedup_batch1_fp32"] = std["nstd_fp32"]["images_per_hour"] / base["images_per_hour"]
        s["speedup_best"] = best["images_per_hour"] / base["images_per_hour"]
        for name in ("content", "style"):
            s[f"{name}_loss_vs_baseline"] = std["nstd_fast"]["final_losses"][name] / base["final_losses"][name]
    for name in ("content", "style"):
        s[f"{name}_loss_fast_vs_fp32"] = (std["nstd_fast"]["final_losses"][name]
                                          / std["nstd_fp32"]["final_losses"][name])
    rows = {r["name"]: r for r in out.get("time_to_quality", {}).get("contenders", [])}
    tutorial = rows.get("tutorial")
    for name, row in rows.items():
        if name != "tutorial" and row["reached"] and tutorial and tutorial["reached"]:
            s[f"time_to_quality_speedup_{name}"] = tutorial["seconds"] / row["seconds"]
    return s


def markdown(out: dict) -> str:
    s, std = out["summary"], out["standard"]
    peak = out.get("datasheet_bf16_flops")
    lines = [f"## {out['device']}, {out['date']}", "",
             f"torch {out['torch']}, nstd {out['nstd']}, fast path {out['fast_path']}. "
             f"Workload: {out['workload']['size']} px long side, {out['workload']['iterations']} iterations, "
             f"{out['workload']['optimizer']} (history {out['workload']['lbfgs_history']}), "
             f"weights `{out['workload']['model']}`.", ""]
    if out.get("matmul_bf16_flops"):
        lines.append(f"Measured bf16 matrix-product ceiling: {out['matmul_bf16_flops'] / 1e12:.0f} TFLOP/s"
                     + (f"; datasheet dense bf16 peak: {peak / 1e12:.0f} TFLOP/s." if peak else "."))
        lines.append("")
    lines += ["### Same work, batch 1", "",
              "| loop | s/run | it/s | images/h | final content | final style |",
              "|---|---|---|---|---|---|"]
    for name, row in std.items():
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['iterations_per_second_per_image']:.1f} | "
                     f"{row['images_per_hour']:.0f} | {row['final_losses']['content']:.4g} | "
                     f"{row['final_losses']['style']:.4g} |")
    lines += _ttq_lines(out.get("time_to_quality"))
    sweep_its = out["batches"][0]["iterations"]
    note = (f"Timed over {sweep_its} iterations; images/h are for {out['workload']['iterations']}-iteration "
            "runs at that rate." if sweep_its != out["workload"]["iterations"] else "")
    lines += ["", "### Batch sweep (fast path)", "", *([note, ""] if note else []),
              "| batch | it/s per image | images/h | TFLOP/s | % of peak | peak memory per image |",
              "|---|---|---|---|---|---|"]
    for row in out["batches"]:
        lines.append(_row(row, peak or out.get("matmul_bf16_flops")))
    lines += ["", "### Scale sweep (fast path)", "",
              "| size | batch | it/s per image | images/h | TFLOP/s | % of peak | peak memory per image |",
              "|---|---|---|---|---|---|---|"]
    for row in out["sizes"]:
        lines.append(f"| {row['width']}×{row['height']} " + _row(row, peak or out.get("matmul_bf16_flops")))
    lines += ["", "### Summary", ""]
    for key, value in s.items():
        lines.append(f"- {key.replace('_', ' ')}: {value:.3g}" if isinstance(value, float) else
                     f"- {key.replace('_', ' ')}: {value}")
    if "stream" in out:
        lines.append(f"- a stream at batch {out['stream']['batch']}, stopping and refilling: "
                     f"{_stream_line(out['stream'])}")
    if "latency" in out:
        lat = out["latency"]
        lines.append(f"- drop to output, idle daemon: {lat['seconds']:.1f} s "
                     f"(of which the transfer itself {lat['transfer_seconds']:.1f} s; the rest is the "
                     "inbox's settle time and the batch window)")
    return "\n".join(lines) + "\n"


def _ttq_lines(t: dict | None) -> list[str]:
    if not t:
        return []
    lines = ["", "### Time to quality, batch 1", "",
             f"The time to within {100 * t['tolerance']:.0f}% of nstd fp32's objective after "
             f"{t['reference_iterations']} iterations ({t['reference_objective']:.4g}), each snapshot scored "
             "by one fp32 evaluator; contenders capped at twice the iterations.", "",
             "| contender | reached | iterations | seconds | photos/h | best / reference |",
             "|---|---|---|---|---|---|"]
    for r in t["contenders"]:
        rate = f"{r['photos_per_hour']:.0f}" if r["reached"] else "–"
        lines.append(f"| {r['name']} | {'yes' if r['reached'] else 'no'} | {r['iterations']} | {r['seconds']:.1f} | "
                     f"{rate} | {r['best_vs_reference']:.3f} |")
    return lines


def write(out: dict, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    j, m = folder / "bench.json", folder / "bench.md"
    j.write_text(json.dumps(out, indent=2) + "\n")
    m.write_text(markdown(out))
    return j, m


def _row(row: dict, peak: float | None) -> str:
    pct = f"{100 * row['flops_per_second'] / peak:.0f}%" if peak else "–"
    mem = f"{row['peak_memory_per_image_bytes'] / 2**20:.0f} MiB" if "peak_memory_per_image_bytes" in row else "–"
    return (f"| {row['batch']} | {row['iterations_per_second_per_image']:.1f} | {row['images_per_hour']:.0f} | "
            f"{row['flops_per_second'] / 1e12:.1f} | {pct} | {mem} |")


def _fmt(row: dict) -> str:
    return (f"{row['seconds']:7.2f} s  {row['iterations_per_second_per_image']:7.1f} it/s/image  "
            f"{row['images_per_hour']:8.0f} images/h  {row['flops_per_second'] / 1e12:6.1f} TFLOP/s")


def _powers(limit: int) -> tuple[int, ...]:
    out, b = [], 1
    while b <= max(1, limit):
        out.append(b)
        b *= 2
    return tuple(out)


def _pow2_floor(x: float) -> int:
    b = 1
    while b * 2 <= x:
        b *= 2
    return b
