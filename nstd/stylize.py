"""`nstd stylize`: a one-shot run of the engine over photos named on the command line."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from nstd import images, report, weights
from nstd.engine.device import describe, is_oom, release_cache, resolve_device
from nstd.engine.fastpath import FastPath
from nstd.engine.memory import after_oom
from nstd.engine.multiscale import run_scales
from nstd.engine.transfer import GramCache, StyleImage, TransferResult, long_side_size, resize_long_side
from nstd.engine.vgg import VGGFeatures
from nstd.errors import ImageError
from nstd.fsutil import atomic_write, atomic_write_json
from nstd.plot import curve_name, loss_curve_svg
from nstd.params import TransferParams


@dataclass(frozen=True)
class Request:
    contents: list[Path]
    styles: list[Path]
    outdir: Path
    params: TransferParams
    device: str = "auto"
    fmt: str = "JPEG"
    quality: int = 92
    max_batch: int = 4
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    models_dir: Path = field(default_factory=weights.default_models_dir)


@dataclass
class Photo:
    path: Path
    sha256: str
    pixels: torch.Tensor  # already at the working size
    exif: bytes | None = None
    bits: int = 8


@dataclass
class Style:
    path: Path
    image: StyleImage  # its key is the file's sha256


def read(path: Path, max_pixels: int) -> tuple[str, images.Decoded]:
    """The file's sha256 and its decoded pixels, or an ImageError naming it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    return hashlib.sha256(data).hexdigest(), images.decode(data, str(path), max_pixels)


def run(req: Request, on_error: Callable[[str], None],
        make_progress: Callable[[str, int], Callable[[int, list | None], None]] | None = None) -> int:
    """Stylize every content with every style; returns how many outputs failed."""
    sd, info = weights.load(req.models_dir, req.params.model)
    device = resolve_device(req.device)
    model = VGGFeatures(sd, info.preprocessing, req.params.settings().layers,
                        req.params.pooling, info.model_id).to(device)
    styles = []
    for p in req.styles:
        digest, dec = read(p, req.max_pixels)  # a bad style is fatal: every output needs it
        styles.append(Style(p, StyleImage(dec.pixels, digest, 1.0, req.params.style_scale)))

    groups: dict[tuple, list[Photo]] = defaultdict(list)
    failures = 0
    for p in req.contents:
        try:
            digest, dec = read(p, req.max_pixels)
            h, w = dec.pixels.shape[-2:]
            long_side = req.params.long_side(h, w)
            pixels = resize_long_side(dec.pixels, long_side)
            first = long_side_size(h, w, req.params.scales(long_side)[0].long_side)
            if min(*pixels.shape[-2:], *first) < 16 or min(h, w) < 16:
                raise ImageError(f"{p}: {w}x{h} is too small or narrow to stylize at size {req.params.size}")
        except ImageError as e:
            on_error(str(e))
            failures += len(styles)
            continue
        groups[tuple(pixels.shape)].append(Photo(p, digest, pixels, dec.exif, dec.bits))

    cache = GramCache()
    batches = []
    for group in groups.values():
        pairs = [(photo, style) for style in styles for photo in group]
        batches += [pairs[i:i + req.max_batch] for i in range(0, len(pairs), req.max_batch)]
    for n, batch in enumerate(batches, 1):
        shape = batch[0][0].pixels.shape
        label = f"batch {n}/{len(batches)}: {len(batch)} × {shape[2]}x{shape[1]}"
        long_side = max(shape[1:])
        progress = make_progress(label, req.params.total_iterations(long_side)) if make_progress else None
        failures += _run_batch(req, model, info, device, batch, cache, progress, on_error)
    return failures


def _run_batch(req: Request, model: VGGFeatures, info, device: torch.device, batch: list[tuple[Photo, Style]],
               cache: GramCache, progress, on_error: Callable[[str], None], checkpoint: bool | None = None) -> int:
    """Run and write one batch; out of memory splits it, then recomputes activations,
    then gives up on the photo with a message. Returns how many outputs failed."""
    long_side = max(batch[0][0].pixels.shape[1:])
    started = time.time()
    jobs = [req.params.job(photo.pixels, (style.image,)) for photo, style in batch]
    try:
        results = run_scales(model, jobs, req.params.scales(long_side), req.params.settings(), cache, progress,
                             FastPath(checkpoint=checkpoint))
    except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled here
        if not is_oom(e):
            raise
        release_cache(device)
        step = after_oom(len(batch), checkpoint)
        if step == "split":
            half = len(batch) // 2
            return (_run_batch(req, model, info, device, batch[:half], cache, None, on_error) +
                    _run_batch(req, model, info, device, batch[half:], cache, None, on_error))
        if step == "checkpoint":
            return _run_batch(req, model, info, device, batch, cache, None, on_error, checkpoint=True)
        h, w = batch[0][0].pixels.shape[1:]
        on_error(f"{batch[0][0].path}: out of memory at {w}x{h} on {describe(device)}; "
                 f"lower the size or max_pixels")
        return 1
    finished = time.time()
    batch_id = uuid.uuid4().hex[:12]
    for i, ((photo, style), result) in enumerate(zip(batch, results)):
        _write(req, photo, style, result, info, describe(device), batch_id, len(batch), i,
               {"started": report.iso_time(started), "finished": report.iso_time(finished),
                "seconds": round(finished - started, 3)})
    return 0


def output_stem(req: Request, photo: Photo, style: Style) -> str:
    stem = f"{photo.path.stem}.{style.path.stem}"
    same_stem = [p for p in req.contents if p.stem == photo.path.stem]
    return stem if len(same_stem) <= 1 else f"{stem}.{photo.sha256[:8]}"


def _write(req: Request, photo: Photo, style: Style, result: TransferResult, info, device: str,
           batch_id: str, batch_size: int, index: int, timings: dict) -> None:
    stem = output_stem(req, photo, style)
    ext = images.EXTENSIONS[req.fmt]
    out = req.outdir / f"{stem}.{ext}"
    exif = images.output_exif(photo.exif, report.software(), report.description([style.path.stem]))
    atomic_write(out, images.encode(result.image, req.fmt, req.quality, exif, photo.bits))
    for it, snap in result.snapshots:
        atomic_write(req.outdir / f"{stem}.iter{it:05d}.{ext}",
                     images.encode(snap, req.fmt, req.quality, exif, photo.bits))
    h, w = result.image.shape[-2:]
    log = report.loss_log(
        input_path=str(photo.path), input_sha256=photo.sha256,
        styles=[{"name": style.path.stem, "path": str(style.path), "sha256": style.image.key, "weight": 1.0}],
        params=req.params, weights=info, device=device, batch_id=batch_id, batch_size=batch_size,
        batch_index=index, output={"path": out.name, "format": req.fmt.lower(), "width": w, "height": h},
        timings=timings, history=result.history, runs=result.runs)
    atomic_write_json(req.outdir / f"{stem}.json", log)
    atomic_write(req.outdir / curve_name(f"{stem}.json"),
                 loss_curve_svg(result.history, f"{photo.path.name} × {style.path.name}"))

