"""Portraits: the face painted, not pasted. Each portrait and painting runs three ways side
by side in one batch: the defaults (no protection), the old paste (`protect: faces` at
strength 0: the photo's face put back over the painted image) and the new protection
(`protect: faces` at its strength, held back in the loss). For each output:

- `probability`: the face detector's confidence in the face it finds where the photo's is
  (0 where it finds none), and `landmarks_moved`: how far the five landmarks (eyes, nose,
  mouth corners) moved from the photo's, in % of the face box's width (mean and worst);
- `face_style`: the style loss of the face region alone against the painting (the guided
  Gram of the face's ellipse, each layer normalised as the engine's objective does it),
  scored by the real VGG19 at the output's size: how painted the face is;
- `halo`: sector by sector around the face's ellipse, the luminance step between rings
  just inside and just outside the band where it fades out, over the steps between rings
  as far apart on either side; divided by the same figure of the photo (`halo_raw` of
  the photo): the band crosses the photo's own jaw line and hairline, which are no seam.
  1.0: the edge adds no step the photo has not;
- `texture_step`: the fine detail (luminance less its blur) just outside the band over
  that just inside it, divided by the photo's: a pasted face is smooth photo skin beside
  brushwork, a seam of texture rather than of brightness. 1.0: as in the photo.

    .venv/bin/python -m benchmarks.portraits --out benchmarks/results-portraits-cpu.json \\
        --sheet docs/portraits.jpg --crops docs/portraits-crops.jpg

Needs the Caffe VGG19 (`nstd weights fetch`) and `nstd[faces]`; the portraits default to
NASA's portrait of Eileen Collins (tests/data/astronaut.jpg, public domain), the paintings
to The Starry Night and The Scream of ../shared/images (public domain).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from nstd import faces, images
from nstd.bench import measure
from nstd.engine.guides import at_layer, blur, guided_gram
from nstd.engine.layers import feature_size
from nstd.engine.losses import gram
from nstd.engine.resize import resize_long_side
from nstd.engine.targets import GramCache
from nstd.engine.transfer import run_batch
from nstd.guide import content_map, engine_regions
from nstd.params import TransferParams
from nstd.pipeline import load_guide, resize_photo
from nstd.style import Style, read_painting

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "images"
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class Variant:
    name: str
    protect: str
    strength: float


def variants(strength: float) -> list[Variant]:
    return [Variant("default", "none", 1.0), Variant("paste", "faces", 0.0),
            Variant(f"strength {strength:g}", "faces", strength)]


# --- the figures ------------------------------------------------------------------------

def luminance(image: torch.Tensor) -> torch.Tensor:
    return 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]


def polar(face: faces.Face, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's radius in the face's ellipse (1 where its soft edge ends, as faces.mask
    draws it) and its angle around the ellipse's centre."""
    x, y = faces.around(face, size)
    return (x * x + y * y).sqrt(), torch.atan2(y, x).expand(*size)


EDGE = 1 - faces.SOFT / 2  # the middle of the ellipse's fading band, in its radius
SECTORS = 24


def halo(image: torch.Tensor, r: torch.Tensor, angle: torch.Tensor, gap: float = 0.15, width: float = 0.1) -> float:
    """Around the ellipse, sector by sector: the luminance step between rings just inside
    and just outside the fading band, over the steps between rings as far apart on either
    side of it; averaged over the sectors."""
    lum = luminance(image)
    sector = ((angle + torch.pi) / (2 * torch.pi) * SECTORS).long().clamp(max=SECTORS - 1)
    across, beside = [], []
    for s in range(SECTORS):
        means = []
        for centre in (EDGE - 1.5 * gap, EDGE - 0.5 * gap, EDGE + 0.5 * gap, EDGE + 1.5 * gap):
            sel = (sector == s) & ((r - centre).abs() < width / 2)
            means.append(float(lum[sel].mean()) if sel.any() else None)
        if None in means:
            continue
        a, b, c, d = means
        across.append(abs(b - c))
        beside.append((abs(a - b) + abs(c - d)) / 2)
    return sum(across) / max(sum(beside), 1e-9)


def texture(image: torch.Tensor, r: torch.Tensor) -> float:
    """Fine detail (luminance less its 1.5 px blur) in a ring just outside the fading band
    over that in a ring just inside it."""
    lum = luminance(image)
    detail = (lum - blur(lum, 1.5)).abs()
    inside = detail[(r > EDGE - 0.3) & (r < EDGE - 0.1)].mean()
    outside = detail[(r > EDGE + 0.1) & (r < EDGE + 0.3)].mean()
    return float(outside / inside.clamp_min(1e-9))


def face_style(model, image: torch.Tensor, ellipse: torch.Tensor, painting_grams: dict, weights: dict) -> float:
    """The face's own Gram against the painting's, layer by layer, as the engine weighs it."""
    with torch.no_grad():
        feats = model(image[None])
        total = 0.0
        for name, target in painting_grams.items():
            guide = at_layer(ellipse[None, None], feature_size(name, *ellipse.shape))
            g = guided_gram(feats[name], guide)[0, 0]
            total += weights[name] * float((g - target).pow(2).mean() / target.pow(2).mean())
    return total


def match(found: list[faces.Face], face: faces.Face) -> faces.Face | None:
    """The found face whose box overlaps `face`'s most, if any does."""
    def overlap(a, b) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0
    best = max(found, key=lambda f: overlap(f.box, face.box), default=None)
    return best if best is not None and overlap(best.box, face.box) > 0.3 else None


def landmarks_moved(out: faces.Face, face: faces.Face, aspect: float) -> list[float]:
    """Each landmark's move in % of the photo's face box width (x and y in the same px)."""
    return [100 * ((a[0] - b[0]) ** 2 + ((a[1] - b[1]) * aspect) ** 2) ** 0.5 / face.width
            for a, b in zip(out.landmarks, face.landmarks)]


# --- the run ----------------------------------------------------------------------------

def case(model, finder: faces.FaceFinder, photo_path: Path, painting_path: Path, params: TransferParams,
         strength: float, out_dir: Path) -> dict:
    decoded = images.decode(photo_path.read_bytes(), photo_path.name)
    h, w = decoded.pixels.shape[-2:]
    size = (round(h * params.size / max(h, w)), round(w * params.size / max(h, w)))
    pixels = resize_photo(decoded.pixels, size)
    painting = read_painting(painting_path.stem, painting_path, MAX_PIXELS)
    style = Style(painting_path.stem, params, (painting,))
    found = finder.detect(pixels)
    if not found:
        raise SystemExit(f"{photo_path}: no face found at {params.size} px")
    face = max(found, key=lambda f: f.width)
    ellipse = faces.mask([face], size)
    jobs, names = [], []
    for v in variants(strength):
        p = replace(params, protect=v.protect, protect_strength=v.strength)
        guide = load_guide(None, None, decoded, p, MAX_PIXELS, finder, name=photo_path.name)
        regions = engine_regions(guide, style, {}.get, p, size)
        jobs.append(p.job(pixels, style.style_images(p), regions, content_map(guide, size)))
        names.append(v.name)
    start = time.perf_counter()
    results = run_batch(model, jobs, params.settings(), GramCache())
    seconds = time.perf_counter() - start
    grams = {}
    with torch.no_grad():
        side = round(max(size) * params.style_scale)
        feats = model(resize_long_side(painting.pixels.float(), side)[None])
        for name, _ in params.style_layers:
            grams[name] = gram(feats[name])[0]
    layer_w = dict(params.style_layers)
    r, angle = polar(face, size)
    photo_halo, photo_texture = halo(pixels, r, angle), texture(pixels, r)
    rows = {"photo": {"halo_raw": photo_halo, "texture_raw": photo_texture,
                      "face_style": face_style(model, pixels, ellipse, grams, layer_w)}}
    stem = f"{photo_path.stem}.{painting_path.stem}"
    images.to_pil(pixels).save(out_dir / f"{stem}.photo.png")
    for name, result in zip(names, results):
        img = result.image
        images.to_pil(img).save(out_dir / f"{stem}.{name.split()[0]}.png")
        seen = match(finder.detect(img, least=0.0), face)
        moved = landmarks_moved(seen, face, h / w) if seen else None
        rows[name] = {"probability": seen.probability if seen else 0.0,
                      "landmarks_moved_mean": None if moved is None else sum(moved) / 5,
                      "landmarks_moved_worst": None if moved is None else max(moved),
                      "face_style": face_style(model, img, ellipse, grams, layer_w),
                      "halo": halo(img, r, angle) / photo_halo,
                      "texture_step": texture(img, r) / photo_texture,
                      "iterations": result.runs[-1].iterations if result.runs else None}
    return {"photo": photo_path.name, "painting": painting_path.name, "size": list(size),
            "face_box": face.box, "landmarks": face.landmarks, "seconds_batch": seconds, "outputs": rows,
            "files": stem}


# --- the pictures -----------------------------------------------------------------------

def crops(face: dict, size: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    """The eyes and the jaw line as (left, top, right, bottom) px boxes."""
    h, w = size
    left, top, right, bottom = face["face_box"]
    fw = (right - left) * w
    (lx, ly), (rx, ry) = face["landmarks"][0], face["landmarks"][1]
    ex, ey = (lx + rx) / 2 * w, (ly + ry) / 2 * h
    cx = (left + right) / 2 * w
    jaw = ((top + bottom) / 2 + (bottom - top) / 2 * faces.GROW[1] * 0.85) * h

    def box(x, y, half_w, half_h):
        x0, y0 = max(0, round(x - half_w)), max(0, round(y - half_h))
        return x0, y0, min(w, round(x + half_w)), min(h, round(y + half_h))
    return {"eyes": box(ex, ey, 0.55 * fw, 0.2 * fw), "jaw": box(cx, jaw, 0.65 * fw, 0.22 * fw)}


def sheet(result: list[dict], folder: Path, dst: Path, width: int) -> None:
    """Each case as a row: the photo and its three outputs."""
    names = list(result[0]["outputs"])
    rows = []
    for r in result:
        cells = [Image.open(folder / f"{r['files']}.{n.split()[0]}.png").convert("RGB") for n in names]
        rows.append([c.resize((width, round(c.height * width / c.width)), Image.LANCZOS) for c in cells])
    _grid(rows, [f"{n}" for n in names], dst)


def crop_sheet(result: list[dict], folder: Path, dst: Path) -> None:
    """The eyes and the jaw line of each case at 3x, photo and outputs side by side."""
    names = list(result[0]["outputs"])
    rows = []
    for r in result:
        for where, (x0, y0, x1, y1) in crops(r, tuple(r["size"])).items():
            row = []
            for n in names:
                im = Image.open(folder / f"{r['files']}.{n.split()[0]}.png").convert("RGB").crop((x0, y0, x1, y1))
                row.append(im.resize((3 * im.width, 3 * im.height), Image.NEAREST))
            rows.append(row)
    _grid(rows, names, dst)


def _grid(rows: list[list[Image.Image]], labels: list[str], dst: Path) -> None:
    cw = max(c.width for row in rows for c in row)
    heights = [max(c.height for c in row) for row in rows]
    out = Image.new("RGB", (cw * len(labels), 20 + sum(heights) + 4 * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for k, label in enumerate(labels):
        draw.text((k * cw + 4, 4), label, fill="black")
    y = 20
    for row, rh in zip(rows, heights):
        for k, cell in enumerate(row):
            out.paste(cell, (k * cw, y))
        y += rh + 4
    out.save(dst, quality=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, action="append", help="a portrait (repeatable)")
    ap.add_argument("--painting", type=Path, action="append", help="a painting (repeatable)")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--strength", type=float, default=TransferParams().protect_strength)
    ap.add_argument("--style-weight", type=float, default=TransferParams().style_weight)
    ap.add_argument("--work", type=Path, default=Path("/tmp/nstd-portraits"))
    ap.add_argument("--out", type=Path, help="the results as JSON")
    ap.add_argument("--sheet", type=Path, help="a contact sheet of the outputs")
    ap.add_argument("--crops", type=Path, help="3x crops of the eyes and the jaw line")
    args = ap.parse_args()
    photos = args.photo or [ROOT / "tests" / "data" / "astronaut.jpg"]
    paintings = args.painting or [SHARED / "starry_night.jpg", SHARED / "the_scream.jpg"]
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = measure.stored_model("cpu")
    finder = faces.FaceFinder()
    params = TransferParams(size=args.size, iterations=args.iterations, style_weight=args.style_weight)
    result = []
    for photo in photos:
        for painting in paintings:
            result.append(case(model, finder, photo, painting, params, args.strength, args.work))
            print(json.dumps(result[-1]["outputs"], indent=1), flush=True)
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "size": args.size, "iterations": args.iterations, "strength": args.strength,
              "style_weight": args.style_weight, "cases": result}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.sheet:
        sheet(result, args.work, args.sheet, 256)
    if args.crops:
        crop_sheet(result, args.work, args.crops)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
