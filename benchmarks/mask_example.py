"""The masks example in docs/images.md: Tübingen with its sky in The Starry Night and the town kept,
then a region map with the river in The Shipwreck as well. Masks are made from the photo
(the sky by its colour), the outputs by `nstd stylize`, and both laid side by side.

    python benchmarks/mask_example.py --images ../shared/images --out /tmp/masks

Its pictures: 384 px, 300 iterations, on the CPU. Portraits with `protect: faces` are
benchmarks/portraits.py's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def sky(photo: Image.Image) -> np.ndarray:
    """Bool (H, W): bright bluish pixels in the upper part, cleaned of specks."""
    rgb = np.asarray(photo.convert("RGB"), np.float32) / 255
    r, b = rgb[..., 0], rgb[..., 2]
    rows = np.arange(rgb.shape[0])[:, None]
    found = (b > r + 0.05) & (b > 0.45) & (rows < 0.6 * rgb.shape[0])
    im = Image.fromarray((found * 255).astype(np.uint8)).filter(ImageFilter.MedianFilter(9))
    return np.asarray(im) > 127


def make_masks(photo_path: Path, out: Path) -> tuple[Path, Path]:
    """PHOTO.mask.png (the sky) and PHOTO.regions.png (sky red, river blue, town black)."""
    photo = Image.open(photo_path)
    s = sky(photo)
    mask = Image.fromarray((s * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    mask_path = out / f"{photo_path.name}.mask.png"
    mask.save(mask_path)
    regions = np.zeros((*s.shape, 3), np.uint8)
    regions[s] = (255, 0, 0)
    regions[int(0.8 * s.shape[0]):] = (0, 0, 255)  # the Neckar along the bottom
    regions_path = out / f"{photo_path.name}.regions.png"
    Image.fromarray(regions).save(regions_path)
    return mask_path, regions_path


def stylize(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "nstd", "stylize", *args], check=True)


def sheet(cells: list[tuple[Path, str]], dst: Path, width: int = 300) -> None:
    ims = []
    for path, _ in cells:
        im = Image.open(path).convert("RGB")
        ims.append(im.resize((width, round(im.height * width / im.width)), Image.LANCZOS))
    h = max(im.height for im in ims)
    out = Image.new("RGB", (width * len(ims), h + 20), "white")
    draw = ImageDraw.Draw(out)
    for k, (im, (_, label)) in enumerate(zip(ims, cells)):
        out.paste(im, (k * width, 20))
        draw.text((k * width + 4, 4), label, fill="black")
    out.save(dst, quality=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=Path("../shared/images"))
    ap.add_argument("--out", type=Path, default=Path("masks-example"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--docs", type=Path, default=Path("docs/masks"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    photo = args.out / "tubingen.jpg"
    photo.write_bytes((args.images / "tubingen.jpg").read_bytes())
    mask, regions = make_masks(photo, args.out)
    common = ["--size", str(args.size), "--iterations", str(args.iterations), "-o", str(args.out / "out")]
    starry, shipwreck = args.images / "starry_night.jpg", args.images / "shipwreck.jpg"
    stylize([str(photo), "--style", str(starry), "--mask", str(mask), *common])
    stylize([str(photo), "--style", str(starry), "--style", str(shipwreck), "--regions", str(regions),
             "--region", "#ff0000=starry_night", "--region", "#0000ff=shipwreck", "--region", "#000000=keep",
             *common])
    args.docs.mkdir(parents=True, exist_ok=True)
    sheet([(photo, "photo"), (mask, "tubingen.jpg.mask.png"),
           (args.out / "out" / "tubingen.starry_night.jpg", "result: the sky in The Starry Night")],
          args.docs / "mask.jpg")
    sheet([(regions, "tubingen.jpg.regions.png"),
           (args.out / "out" / "tubingen.regions.jpg", "result: red Starry Night, blue Shipwreck, black kept")],
          args.docs / "regions.jpg")
    print(f"wrote the pictures in {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
