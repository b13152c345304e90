"""A 24-megapixel photo at full resolution on one GPU: time and memory of every scale.

    python benchmarks/fullres.py --models-dir DIR --content PHOTO --style PAINTING --out DIR \
        [--variants auto,checkpoint] [--daemon]

The photo is cropped to 3:2 and resized to 6000x4000, then run with the default
transfer parameters and `size: original` (coarse to fine, 512 px up to 6000 px).
Each variant forces or leaves to the engine the memory switches; `--daemon` also
drops the photo into a real daemon and times it to its output. Results go to
fullres.json in --out after every step, with a preview and a 100% crop per variant.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from nstd import images, weights
from nstd.bench import measure
from nstd.engine.device import describe, free_memory, is_oom, release_cache
from nstd.engine.switches import Switches
from nstd.engine.memory import Footprint, bytes_per_image
from nstd.engine.multiscale import run_scales
from nstd.engine.targets import GramCache
from nstd.engine.types import StyleImage
from nstd.params import TransferParams

VARIANTS = {
    "auto": Switches(),
    "checkpoint": Switches(checkpoint=True),
    "no-checkpoint": Switches(checkpoint=False),
    "fp32": Switches("fp32"),
    "graph": Switches(cuda_graph=True),
    "no-graph": Switches(cuda_graph=False),
}


def make_photo(src: Path, dest: Path, width: int, height: int) -> Path:
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        crop_h = min(h, round(w * height / width))
        crop_w = round(crop_h * width / height)
        left, top = (w - crop_w) // 2, (h - crop_h) // 2
        im.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.BICUBIC) \
            .save(dest, quality=95)
    return dest


def save_views(image: torch.Tensor, out: Path, name: str) -> None:
    arr = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
    im = Image.fromarray(arr)
    preview = im.copy()
    preview.thumbnail((1500, 1500), Image.Resampling.LANCZOS)
    preview.save(out / f"{name}.preview.jpg", quality=90)
    w, h = im.size
    half = min(512, w // 2, h // 2)
    im.crop((w // 2 - half, h // 2 - half, w // 2 + half, h // 2 + half)).save(out / f"{name}.crop100.jpg", quality=90)


def variant(model, params: TransferParams, content: torch.Tensor, style: torch.Tensor, scales: list,
            name: str, device: torch.device) -> tuple[dict, torch.Tensor | None]:
    """One variant's time, each scale's peak against the estimate, and its final losses;
    or the out-of-memory error it met, and no image."""
    cuda = device.type == "cuda"
    release_cache(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    free = free_memory(device)
    job = params.job(content, (StyleImage(style, "style", 1.0, params.style_scale),))
    started = time.perf_counter()
    try:
        [result] = run_scales(model, [job], scales, params.settings(), GramCache(), None, VARIANTS[name],
                              lambda: free_memory(device))
    except Exception as e:  # noqa: BLE001 - an OOM is a result here
        if not is_oom(e):
            raise
        return {"error": f"out of memory: {str(e).splitlines()[0]}"}, None
    seconds = time.perf_counter() - started
    runs = [r.as_dict() for r in result.runs]
    for run, scale in zip(runs, scales):
        h, w = run["size"]
        fp = Footprint(params.settings().layers, params.optimizer, scale.lbfgs_history, run["precision"],
                       run["checkpoint"])
        run["estimate_bytes"] = bytes_per_image(h, w, fp)
    return {"seconds": round(seconds, 2), "free_at_start": free,
            "max_reserved": torch.cuda.max_memory_reserved(device) if cuda else None, "runs": runs,
            "final": {k: result.history[-1][k] for k in ("total", "content", "style", "tv")}}, result.image


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path, default=weights.default_models_dir())
    ap.add_argument("--model", default="caffe")
    ap.add_argument("--content", type=Path, required=True)
    ap.add_argument("--style", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--variants", default="auto", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--daemon", action="store_true", help="also time the real daemon, drop to output")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test at a small --width")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = device.type == "cuda"
    results: dict = {"device": describe(device), "torch": torch.__version__,
                     "memory_total": torch.cuda.get_device_properties(device).total_memory if cuda else None,
                     "size": [args.width, args.height], "variants": {}}

    def save() -> None:
        (args.out / "fullres.json").write_text(json.dumps(results, indent=1))

    tmp = Path(tempfile.mkdtemp(prefix="nstd-fullres-"))
    photo = make_photo(args.content, tmp / "photo.jpg", args.width, args.height)
    params = TransferParams(size="original", model=args.model)
    content = images.decode(photo.read_bytes(), str(photo), images.DEFAULT_MAX_PIXELS).pixels
    style = images.decode(args.style.read_bytes(), str(args.style), images.DEFAULT_MAX_PIXELS).pixels
    model = measure.stored_model(device, args.model, args.models_dir)
    scales = params.scales(max(args.width, args.height))
    results["scales"] = [s.__dict__ for s in scales]
    print("scales:", [(s.long_side, s.iterations, s.lbfgs_history) for s in scales], flush=True)

    for name in args.variants.split(","):
        entry, image = variant(model, params, content, style, scales, name, device)
        results["variants"][name] = entry
        print(name, json.dumps(entry) if image is not None else "out of memory", flush=True)
        if image is not None:
            save_views(image, args.out, name)
        save()
        del image

    if args.daemon:
        del model
        release_cache(device)
        results["daemon"] = measure.drop_to_output(args.models_dir, args.model, photo, args.style, args.device,
                                                   transfer={"size": "original"})
        print("daemon", json.dumps(results["daemon"]), flush=True)
        save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
