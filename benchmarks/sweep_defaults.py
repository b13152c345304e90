"""Sweep the style and TV weights on real photo x painting pairs: a contact sheet per pair.

For choosing the defaults by eye and by numbers. Each cell is labelled with its weights,
the share of pixels clipped to white, and the final content and style losses. Needs the
real Caffe weights (nstd weights fetch) and the photos of ../shared/images.

    .venv/bin/python benchmarks/sweep_defaults.py --images ../shared/images --out sweep/
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from nstd import images
from nstd.bench import measure

try:  # the engine's layout moved during the house refactor; accept either
    from nstd.engine.types import BatchSettings, StyleImage, TransferJob
    from nstd.engine.resize import resize_long_side
except ImportError:  # pragma: no cover
    from nstd.engine.transfer import BatchSettings, StyleImage, TransferJob, resize_long_side
from nstd.engine.transfer import run_batch

PAIRS = (("tubingen.jpg", "starry_night.jpg"), ("golden_gate.jpg", "the_scream.jpg"),
         ("tubingen.jpg", "shipwreck.jpg"))


def load(path: Path) -> torch.Tensor:
    return images.decode(path.read_bytes(), str(path), images.DEFAULT_MAX_PIXELS).pixels


def clipped(image: torch.Tensor) -> float:
    """Share of pixels with every channel at 255 after 8-bit rounding: blown highlights."""
    return float(((image * 255).round() >= 255).all(0).float().mean())


def sheet(cells: list[tuple[torch.Tensor, str]], cols: int) -> Image.Image:
    w, h = cells[0][0].shape[2], cells[0][0].shape[1]
    rows = (len(cells) + cols - 1) // cols
    out = Image.new("RGB", (cols * w, rows * (h + 28)), "white")
    draw = ImageDraw.Draw(out)
    for k, (img, label) in enumerate(cells):
        x, y = (k % cols) * w, (k // cols) * (h + 28)
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        out.paste(Image.fromarray(arr), (x, y))
        draw.text((x + 3, y + h + 2), label, fill="black")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=Path("../shared/images"))
    ap.add_argument("--out", type=Path, default=Path("sweep"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--style-weights", default="10,30,100,300")
    ap.add_argument("--tv-weights", default="1,5")
    args = ap.parse_args()
    sws = [float(v) for v in args.style_weights.split(",")]
    tvs = [float(v) for v in args.tv_weights.split(",")]
    settings = BatchSettings(iterations=args.iterations, log_every=args.iterations)
    model = measure.stored_model()
    args.out.mkdir(parents=True, exist_ok=True)
    table = []
    for photo_name, style_name in PAIRS:
        photo = resize_long_side(load(args.images / photo_name), args.size)
        style = StyleImage(load(args.images / style_name), key=style_name)
        grid = list(itertools.product(sws, tvs))
        jobs = [TransferJob(photo, (style,), style_weight=sw, tv_weight=tv) for sw, tv in grid]
        results = run_batch(model, jobs, settings)
        cells = [(photo, f"photo, clipped {clipped(photo):.1%}")]
        for (sw, tv), r in zip(grid, results):
            last = r.history[-1]
            row = {"pair": f"{photo_name} x {style_name}", "style_weight": sw, "tv_weight": tv,
                   "clipped": clipped(r.image), "content": last["content"], "style": last["style"]}
            table.append(row)
            cells.append((r.image, f"s{sw:g} tv{tv:g} clip {row['clipped']:.1%} c{row['content']:.2f} "
                                   f"s{row['style']:.3f}"))
        stem = f"{Path(photo_name).stem}_x_{Path(style_name).stem}"
        sheet(cells, len(tvs) + 1 if len(tvs) > 1 else 3).save(args.out / f"{stem}.png")
        print(json.dumps(table[-len(grid):], indent=1), flush=True)
    (args.out / "sweep.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
