"""How much style gradient the image's edge rows and columns get, against its interior.

VGG's pools drop the last row or column of an odd size, so on such sizes the last row and
column get less of the deep layers' gradient than the first ones do, and stay sharper
than the rest. This prints, for even and odd sizes, the mean style-gradient magnitude of
the first and last row and column as a share of the interior's: through VGG alone, and
as nstd runs it (mirrored outward to a multiple of 16, `resize.pool_padding`).

    python benchmarks/edges.py --images ../shared/images
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nstd import images, weights
from nstd.bench import measure
from nstd.engine.losses import gram, style_loss
from nstd.engine.resize import crop, pad, pool_padding, resize_photo
from nstd.engine.types import BatchSettings
from nstd.engine.vgg import VGGFeatures


def profile(model: VGGFeatures, photo: torch.Tensor, style: torch.Tensor, size: tuple[int, int],
            padded: bool) -> dict:
    """Edge shares of the style loss's gradient at the photo's pixels, at `size`. Padded,
    the margin is part of the optimised image, as in the engine, and cropped after."""
    margin = pool_padding(*size) if padded else (0, 0, 0, 0)
    names = BatchSettings().style_names
    with torch.no_grad():
        targets = {n: gram(t) for n, t in model(resize_photo(style, size)[None]).items() if n in names}
    x = pad(resize_photo(photo, size), margin)[None].requires_grad_(True)
    f = model(x)
    sum(style_loss(f[n], targets[n]) / targets[n].pow(2).mean() for n in names).sum().backward()
    g = crop(x.grad[0].abs().sum(0), margin)  # (H, W) of the photo itself
    inner = g[16:-16, 16:-16].mean()
    return {"size": list(size), "padded": padded, "first_row": float(g[0].mean() / inner),
            "last_row": float(g[-1].mean() / inner), "first_col": float(g[:, 0].mean() / inner),
            "last_col": float(g[:, -1].mean() / inner)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=Path("../shared/images"))
    ap.add_argument("--models-dir", type=Path, default=weights.default_models_dir())
    args = ap.parse_args()
    model = measure.stored_model(models_dir=args.models_dir)
    rows = []
    for photo, style in (("tubingen.jpg", "starry_night.jpg"), ("golden_gate.jpg", "the_scream.jpg")):
        p = images.decode(args.images / photo).pixels
        s = images.decode(args.images / style).pixels
        for size in ((192, 256), (193, 257), (191, 255), (341, 512)):
            for padded in (False, True):
                rows.append({"pair": f"{photo} x {style}"} | profile(model, p, s, size, padded))
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
