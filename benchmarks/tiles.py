"""Tiles against a whole run: the same photo and painting at sizes where both fit, once
untiled and once tiled (forced by a memory cap, as `worker.max_memory` forces it), side
by side in one run, at two photo sizes under the same cap.

For each: the peak memory, the time, the content and style losses of the output scored
at full size by one evaluator (the whole photo's own objective, built once, the same for
both outputs), and the seam figure: the mean gradient magnitude of the output along the
tiles' boundaries (where one tile's core meets the next) over that away from them, 1.0
meaning invisible; computed on the untiled output too, with the same boundaries, as the
control.

Each case runs in a fresh process (the evaluator and the pictures in this one). Peak
memory: on CUDA the allocator's peak (torch.cuda.max_memory_allocated) over the run; on
the CPU the growth of the process's peak RSS over the run (VmHWM, reset once the model
is loaded), beside the planner's estimate for what ran.

    .venv/bin/python -m benchmarks.tiles --threads 2 --out benchmarks/results-tiles-whole-cpu.json \
        --sheet docs/tiles.jpg --corner docs/tiles-corner.png
    .venv/bin/python -m benchmarks.tiles --reach 1024,1536 --limit 1449MiB --iterations 2 --threads 2 --out benchmarks/results-tiles-whole-reach-cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from nstd.bench import measure
from nstd.engine import tiles, transfer
from nstd.engine.memory import TILE, Footprint, MemoryPlanner, batch_bytes, photo_state_bytes
from nstd.engine.resize import pad, padded_size, pool_padding, resize_long_side
from nstd.engine.runner import Engine
from nstd.engine.session import Collect
from nstd.engine.sizes import Scale
from nstd.engine.switches import Switches, resolve, running
from nstd.engine.targets import GramCache
from nstd.engine.types import BatchSettings, StyleImage
from nstd.engine.vgg import VGGFeatures
from nstd.params import TransferParams
from nstd.units import size_in_bytes

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "images"


def model_for(name: str, device: torch.device) -> VGGFeatures:
    """The stored weights of that name; "auto": the Caffe VGG19 where it is installed, else
    random weights (harness.synthetic), which exercise the same arithmetic."""
    if name != "random":
        try:
            return measure.stored_model(device, "caffe" if name == "auto" else name)
        except Exception:  # noqa: BLE001 - not installed: say so and go on with random weights
            if name != "auto":
                raise
    from harness.synthetic import random_vgg_state_dict

    return VGGFeatures(random_vgg_state_dict(), "torchvision", BatchSettings().layers, "max", "random").to(device)


def pictures(folder: Path | None, content: str, style: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The photo and the painting of ../shared/images, or made-up ones where it is absent."""
    if folder is not None and (folder / f"{content}.jpg").is_file() and (folder / f"{style}.jpg").is_file():
        return measure.picture(folder, content), measure.picture(folder, style), f"{content} x {style}"
    from harness.synthetic import rand_image

    return rand_image(768, 1024, seed=1), rand_image(640, 1024, seed=2), "synthetic (no images folder)"


def switches_for(args) -> Switches:
    return Switches(args.precision, checkpoint=args.checkpoint, cuda_graph=False)


def footprint(settings: BatchSettings, switches: Switches, device: torch.device) -> Footprint:
    return Footprint(settings.layers, settings.optimizer, settings.lbfgs_history,
                     precision=resolve(switches, device).precision, checkpoint=bool(switches.checkpoint))


def limit_for_tile(side: int, settings: BatchSettings, switches: Switches, device: torch.device,
                   photo: tuple[int, int]) -> int:
    """The memory cap under which the planner's largest tile is `side` (a multiple of 16) for
    a photo of `photo` (h, w), whose own state the CPU holds beside the tiles."""
    fp = footprint(settings, switches, device)
    state = photo_state_bytes(*padded_size(*photo), fp, settings.content_layers)
    return math.ceil((batch_bytes(1, side, side, replace(fp, optimizer=TILE)) + state) / switches.memory_budget)


# --- one case, in a child process -----------------------------------------------------

def _hwm() -> int | None:
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) * 1024
    except (OSError, TypeError):
        return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (Linux 4.0+)
        return True
    except OSError:
        return False


def child(spec: dict) -> None:
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model = model_for(spec["model"], device)
    photo, painting, _ = pictures(Path(spec["images"]) if spec["images"] else None, spec["content"], spec["style"])
    photo = resize_long_side(photo, spec["size"])
    settings = BatchSettings(iterations=spec["iterations"], log_every=max(1, spec["iterations"] // 10),
                             lbfgs_history=spec["history"])
    switches = Switches(spec["precision"], checkpoint=spec["checkpoint"], cuda_graph=False)
    job = replace(TransferParams().job(photo, (StyleImage(painting, key=spec["style"]),)), id=1)
    if device.type == "cuda":
        from nstd.engine.device import free_memory
        probe = partial(free_memory, device)
    else:
        probe = lambda: None  # noqa: E731 - the CPU reports nothing: the cap decides
    engine = Engine(MemoryPlanner(device, switches, probe, limit=spec["limit"]), switches)
    session = Collect()
    measure.sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset = _reset_hwm()
        before = _hwm()
    start, cpu = time.perf_counter(), time.process_time()
    engine.run(model, session, [job], [Scale(spec["size"], settings.iterations, settings.lbfgs_history)], settings)
    measure.sync(device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if device.type == "cuda":
        peak, how = torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    else:
        after = _hwm()
        peak = after - before if reset and after is not None and before is not None else None
        how = "peak RSS growth (VmHWM)"
    result = session.results[job.id]
    run = result.runs[-1].as_dict()
    h, w = photo.shape[-2:]
    spec_tiles = run.get("tiles")
    fp = footprint(settings, switches, device)
    if spec_tiles:
        state = photo_state_bytes(*padded_size(h, w), fp, settings.content_layers)
        estimate = batch_bytes(spec_tiles["at_once"], *spec_tiles["window"], replace(fp, optimizer=TILE)) + \
            (state if spec_tiles["state"] == "device" else 0)
    else:
        estimate = batch_bytes(1, *padded_size(h, w), fp)
    torch.save(result.image, spec["image_out"])
    Path(spec["result_out"]).write_text(json.dumps({
        "seconds": seconds, "cpu_seconds": cpu, "threads": torch.get_num_threads(), "peak_bytes": peak,
        "peak_measured_as": how, "estimate_bytes": estimate,
        "tiles": spec_tiles, "height": h, "width": w, "final_record": result.history[-1],
        "precision": run.get("precision"), "checkpoint": run.get("checkpoint")}))


# --- the evaluator and the seam figure ------------------------------------------------

class Evaluator:
    """The whole photo's objective, as the engine builds it for an untiled run (the photo
    mirrored to a multiple of 16, the painting's Grams at the photo's long side), built
    once in fp32 and used to score every output of that photo."""

    def __init__(self, model: VGGFeatures, job, settings: BatchSettings):
        device = model.mean.device
        self.r = resolve(Switches("fp32", checkpoint=False, cuda_graph=False, channels_last=False), device)
        self.features = partial(transfer.activations, model, r=self.r)
        h, w = job.content.shape[-2:]
        self.margin = pool_padding(h, w)
        padded = transfer.padded(job, self.margin)
        content = padded.content[None].to(device, torch.float32)
        with torch.no_grad(), running(self.r):
            self.objective = transfer._objective(model, self.features, [padded], settings, content, GramCache(),
                                                 self.r, max(h, w))
        self.device = device

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> dict:
        x = pad(image.float(), self.margin)[None].to(self.device)
        with running(self.r):
            _, row = self.objective(x, self.features(x))
        total, content, style, tv = (float(v) for v in row[0, :4])
        return {"total": total, "content": content, "style": style, "tv": tv}


def gradient_magnitude(image: torch.Tensor) -> torch.Tensor:
    """(H, W): the length of the forward differences over all channels (0 past the edge)."""
    dx = torch.zeros_like(image)
    dy = torch.zeros_like(image)
    dx[:, :, :-1] = image[:, :, 1:] - image[:, :, :-1]
    dy[:, :-1] = image[:, 1:] - image[:, :-1]
    return (dx.pow(2) + dy.pow(2)).sum(0).sqrt()


def cores(h: int, w: int, tiling: tiles.Tiling) -> list[tuple[int, int, int, int]]:
    """The tiles' cores (y0, y1, x0, x1) in the photo's pixels (the grid is laid on the
    photo mirrored out to a multiple of 16)."""
    left, _, top, _ = pool_padding(h, w)
    _, tiles_ = tiles.grid(*padded_size(h, w), tiling)
    return [(max(0, y0 - top), min(h, y1 - top), max(0, x0 - left), min(w, x1 - left))
            for y0, y1, x0, x1 in (t.core for t in tiles_)]


def boundary_masks(h: int, w: int, tiling: tiles.Tiling, away: int = 3,
                   border: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels on the tiles' inner edges (the two pixel columns or rows a step between
    tiles would fall on, along each core's side), and those more than `away` px from any
    such edge; neither within `border` px of the image's own edge."""
    on = torch.zeros(h, w, dtype=torch.bool)
    for y0, y1, x0, x1 in cores(h, w, tiling):
        for col in (x0, x1):  # the step between col - 1 and col
            if 0 < col < w:
                on[y0:y1, col - 1:col + 1] = True
        for row in (y0, y1):
            if 0 < row < h:
                on[row - 1:row + 1, x0:x1] = True
    near = torch.nn.functional.max_pool2d(on[None, None].float(), 2 * away + 1, stride=1, padding=away)[0, 0] > 0
    inner = torch.zeros(h, w, dtype=torch.bool)
    inner[border:h - border, border:w - border] = True
    return on & inner, ~near & inner


def seam_figure(image: torch.Tensor, tiling: tiles.Tiling) -> float:
    h, w = image.shape[-2:]
    on, off = boundary_masks(h, w, tiling)
    g = gradient_magnitude(image.float())
    return float(g[on].mean() / g[off].mean())


# --- pictures -------------------------------------------------------------------------

def contact_sheet(images: list[torch.Tensor], path: Path, gap: int = 8, limit: int = 300_000) -> int:
    """Images side by side on white; a JPEG saved at the best quality under `limit` bytes."""
    from PIL import Image

    h = max(i.shape[-2] for i in images)
    w = sum(i.shape[-1] for i in images) + gap * (len(images) - 1)
    sheet = torch.ones(3, h, w)
    x = 0
    for i in images:
        sheet[:, :i.shape[-2], x:x + i.shape[-1]] = i.clamp(0, 1)
        x += i.shape[-1] + gap
    pil = Image.fromarray((sheet * 255).round().byte().permute(1, 2, 0).numpy())
    for quality in (92, 88, 84, 80, 75, 70, 60, 50):
        if path.suffix.lower() == ".png":
            pil.save(path, optimize=True)
        else:
            pil.save(path, quality=quality, optimize=True)
        if path.stat().st_size <= limit or path.suffix.lower() == ".png":
            break
    return path.stat().st_size


def corner_crop(h: int, w: int, tiling: tiles.Tiling, crop: int) -> tuple[int, int]:
    """The top-left of a `crop` square centred on the inner corner of the tiles' cores
    nearest the image's centre."""
    corners = [(y0, x0) for y0, _, x0, _ in cores(h, w, tiling) if y0 > 0 and x0 > 0] or \
              [(y0, x0) for y0, _, x0, _ in cores(h, w, tiling)]
    y, x = min(corners, key=lambda c: (c[0] - h / 2) ** 2 + (c[1] - w / 2) ** 2)
    return min(max(0, y - crop // 2), h - crop), min(max(0, x - crop // 2), w - crop)


# --- the run ---------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=Path, default=SHARED if SHARED.is_dir() else None,
                    help="photos and paintings (default ../shared/images where it exists, else made-up images)")
    ap.add_argument("--content", default="tubingen")
    ap.add_argument("--style", default="starry_night")
    ap.add_argument("--size", default="640,896", help="the photo's long sides, comma-separated, all under one cap")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--history", type=int, default=5,
                    help="L-BFGS history (default 5: what coarse to fine gives the fine scales that tile)")
    ap.add_argument("--tile", type=int, default=416,
                    help="set the cap so that the planner's largest tile is this side (ignored with --limit)")
    ap.add_argument("--limit", help="the memory cap, such as 600MiB (default: from --tile)")
    ap.add_argument("--model", default="auto", help="stored weights' name, 'random', or 'auto': caffe where installed")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--checkpoint", action="store_true", help="recompute VGG's blocks (both runs)")
    ap.add_argument("--threads", type=int, default=1 if not torch.cuda.is_available() else 0,
                    help="CPU threads per run (0: torch's default); on a shared CPU one thread each keeps the "
                         "runs' CPU seconds comparable")
    ap.add_argument("--out", type=Path, help="the JSON results")
    ap.add_argument("--sheet", type=Path, help="untiled and tiled outputs side by side (a .jpg), at the largest size")
    ap.add_argument("--corner", type=Path, help="a 100%% crop at a tile corner of each (a .png)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--reach", help="instead: only tiled runs at these long sides (comma-separated), with no whole "
                                    "run and no scoring: the peak as the photo grows under one cap")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child.read_text()))
        return
    if args.reach:
        reach(args)
        return
    device = torch.device(args.device)
    sizes = [int(s) for s in args.size.split(",")]
    settings = BatchSettings(iterations=args.iterations, lbfgs_history=args.history)
    switches = switches_for(args)
    model = model_for(args.model, device)
    photo, painting, pair = pictures(args.images, args.content, args.style)
    limit = size_in_bytes(args.limit) if args.limit else limit_for_tile(
        args.tile, settings, switches, device, tuple(resize_long_side(photo, max(sizes)).shape[-2:]))
    out = measure.machine(device) | {
        "pair": pair, "model": model.model_id, "iterations": args.iterations, "lbfgs_history": args.history,
        "precision": resolve(switches, device).precision, "checkpoint": args.checkpoint, "limit_bytes": limit,
        "style_weight": TransferParams().style_weight, "tv_weight": TransferParams().tv_weight, "sizes": []}
    print(f"{out['device']}, {pair}, model {model.model_id}, {args.iterations} iterations, "
          f"cap {limit / 2**20:.0f} MiB", flush=True)
    outputs = {}
    with tempfile.TemporaryDirectory(prefix="nstd-tiles-") as tmp:
        for size in sizes:
            row = {"size": size}
            for name, cap in (("untiled", None), ("tiled", limit)):
                spec = {"device": args.device, "model": args.model, "images": str(args.images) if args.images else None,
                        "content": args.content, "style": args.style, "size": size, "iterations": args.iterations,
                        "history": args.history, "precision": args.precision, "checkpoint": args.checkpoint,
                        "limit": cap, "threads": args.threads,
                        "image_out": f"{tmp}/{name}-{size}.pt", "result_out": f"{tmp}/{name}-{size}.json"}
                Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
                subprocess.run([sys.executable, "-m", "benchmarks.tiles", "--child", f"{tmp}/spec.json"], cwd=ROOT,
                               check=True)
                row[name] = json.loads(Path(spec["result_out"]).read_text())
                outputs[name, size] = torch.load(spec["image_out"])
                r = row[name]
                print(f"  {size} px {name}: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU), tiles {r['tiles']}",
                      flush=True)
            if not row["tiled"]["tiles"]:
                raise SystemExit(f"at {size} px the cap did not force tiles: lower --limit or --tile")
            if row["untiled"]["tiles"]:
                raise SystemExit(f"at {size} px the untiled run tiled")
            h, w = outputs["untiled", size].shape[-2:]
            t = row["tiled"]["tiles"]
            tiling = _tiling(t)
            job = TransferParams().job(resize_long_side(photo, size), (StyleImage(painting, key=args.style),))
            score = Evaluator(model, job, settings)
            for name in ("untiled", "tiled"):
                image = outputs[name, size]
                row[name]["losses"] = score(image)
                row[name]["seam"] = round(seam_figure(image, tiling), 4)
            u, ti = row["untiled"], row["tiled"]
            row["ratios"] = {"time": ti["seconds"] / u["seconds"], "cpu_time": ti["cpu_seconds"] / u["cpu_seconds"],
                             "content": ti["losses"]["content"] / u["losses"]["content"],
                             "style": ti["losses"]["style"] / u["losses"]["style"],
                             "total": ti["losses"]["total"] / u["losses"]["total"]}
            out["sizes"].append(row)
            if args.out:  # after every size: a run cut short keeps what it measured
                args.out.write_text(json.dumps(out, indent=1))
    largest = sizes[-1]
    big = out["sizes"][-1]
    tiling = _tiling(big["tiled"]["tiles"])
    if args.sheet:
        size_ = contact_sheet([outputs["untiled", largest], outputs["tiled", largest]], args.sheet)
        print(f"{args.sheet}: {size_ / 1000:.0f} KB (untiled, tiled at {largest} px)")
    if args.corner:
        h, w = outputs["untiled", largest].shape[-2:]
        crop = min(args.crop, h, w)
        y, x = corner_crop(h, w, tiling, crop)
        crops = [outputs[name, largest][:, y:y + crop, x:x + crop] for name in ("untiled", "tiled")]
        size_ = contact_sheet(crops, args.corner)
        out["corner_crop"] = {"size": largest, "y": y, "x": x, "side": crop}
        print(f"{args.corner}: {size_ / 1000:.0f} KB (a {crop} px crop at ({y}, {x}), untiled then tiled)")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print(table(out))


def reach(args) -> None:
    """Tiled runs only, growing photos under one cap: each run's peak, time and tiles."""
    device = torch.device(args.device)
    settings = BatchSettings(iterations=args.iterations, lbfgs_history=args.history)
    switches = switches_for(args)
    sizes = [int(s) for s in args.reach.split(",")]
    photo, _, _ = pictures(args.images, args.content, args.style)
    limit = size_in_bytes(args.limit) if args.limit else limit_for_tile(
        args.tile, settings, switches, device, tuple(resize_long_side(photo, max(sizes)).shape[-2:]))
    out = measure.machine(device) | {"pair": f"{args.content} x {args.style}", "iterations": args.iterations,
                                     "limit_bytes": limit, "precision": resolve(switches, device).precision,
                                     "runs": []}
    print(f"{out['device']}, cap {limit / 2**20:.0f} MiB, {args.iterations} iterations, tiled only", flush=True)
    with tempfile.TemporaryDirectory(prefix="nstd-reach-") as tmp:
        for size in sizes:
            spec = {"device": args.device, "model": args.model, "images": str(args.images) if args.images else None,
                    "content": args.content, "style": args.style, "size": size, "iterations": args.iterations,
                    "history": args.history, "precision": args.precision, "checkpoint": args.checkpoint,
                    "limit": limit, "threads": args.threads, "image_out": f"{tmp}/out.pt",
                    "result_out": f"{tmp}/out.json"}
            Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
            subprocess.run([sys.executable, "-m", "benchmarks.tiles", "--child", f"{tmp}/spec.json"], cwd=ROOT,
                           check=True)
            r = json.loads(Path(spec["result_out"]).read_text())
            r.pop("final_record", None)
            out["runs"].append(r)
            peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f} MiB"
            print(f"| {r['width']}x{r['height']} | {r['width'] * r['height'] / 1e6:.2f} MP | {r['tiles']} | {peak} "
                  f"| {r['seconds']:.1f} s |", flush=True)
            if args.out:
                args.out.write_text(json.dumps(out, indent=1))


def _tiling(described: dict) -> tiles.Tiling:
    """The tiling a run's loss log describes."""
    return tiles.Tiling(described["side"], described["at_once"], described["halo"])


def table(out: dict) -> str:
    mib = 2**20
    lines = ["| size | run | tiles (window, count; reads) | peak measured | planner's estimate | seconds | CPU seconds "
             "| content | style | total | seam (control) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in out["sizes"]:
        h, w = row["untiled"]["height"], row["untiled"]["width"]
        for name in ("untiled", "tiled"):
            r = row[name]
            t = r["tiles"]
            tiles_ = (f"{t['window'][1]}x{t['window'][0]} px, {t['tiles']}; reads "
                      f"{t['read_window'][1]}x{t['read_window'][0]} px, {t['reads']}" if t else "-")
            peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / mib:.0f} MiB"
            lo = r["losses"]
            lines.append(f"| {w}x{h} | {name} | {tiles_} | {peak} | {r['estimate_bytes'] / mib:.0f} MiB "
                         f"| {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {lo['content']:.4f} | {lo['style']:.5f} "
                         f"| {lo['total']:.4f} | {r['seam']:.3f} |")
        q = row["ratios"]
        lines.append(f"| | tiled / untiled | | | | {q['time']:.2f}x | {q['cpu_time']:.2f}x | {q['content']:.3f} "
                     f"| {q['style']:.3f} | {q['total']:.3f} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
