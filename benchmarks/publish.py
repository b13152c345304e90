"""How long the optimisation loop waits around each photo that finishes: to publish it,
and to load the photo that takes its place. With the publisher and the prefetch on
threads of their own (nstd's way) and both inline, side by side in one run.

Publishing encodes the image, plots the loss curve, writes the loss log and the gallery's
thumbnails (each file fsynced) and records the outcome in the journal. A newcomer is
claimed, read from the spool, decoded and resized. Inline, the loop (and so the device)
waits for all of it. The batch has one place, so every photo after the first is a
newcomer; the engine runs two iterations on random weights: this measures the handling,
not the optimisation. The photos are shots of one scene upscaled to `--megapixels`, like a
camera's files.

    python -m benchmarks.publish --images ../shared/images --out benchmarks/results-publish-cpu.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image, ImageEnhance

from harness.daemon import photo_bytes, write_config
from harness.synthetic import random_vgg_state_dict
from nstd import config, pipeline
from nstd.bench import measure
from nstd.cli import main as cli
from nstd.daemon import worker as worker_mod
from nstd.daemon.intake import Kind
from nstd.daemon.prefetch import Prefetch
from nstd.daemon.service import Service
from nstd.handoff import Handoff


def no_prefetch(self, n):
    return []  # every newcomer is claimed and loaded on the loop's thread, as before prefetching


class Inline(Handoff):
    """The sink called on the loop's own thread, as before the publisher had one."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def publish(self, *args):
        self.sink.publish(*args)

    def refuse(self, *args):
        self.sink.refuse(*args)


def daemon(root: Path, photos: list[bytes], size: int, styles: dict, max_batch: int) -> Service:
    """The daemon in-process on random weights, its photos queued."""
    models = root / "models"
    torch.save(random_vgg_state_dict(), root / "r.pth")
    cli(["weights", "import", str(root / "r.pth"), "--name", "random", "--preprocessing", "torchvision",
         "--models-dir", str(models)])
    cfg = config.load(write_config(root, models, styles=styles,
                                   transfer={"size": size, "iterations": 2, "model": "random", "log_every": 1,
                                             "stop_tolerance": 0},
                                   worker={"max_batch": max_batch, "batch_window": 0}))
    svc = Service(cfg)
    svc.prepare()
    svc.worker = worker_mod.Worker(cfg, lambda: svc.styles, svc.load_weights, svc.devices[0], threading.Event())
    for i, data in enumerate(photos):
        (cfg.inbox / f"p{i}.jpg").write_bytes(data)
        st = (cfg.inbox / f"p{i}.jpg").stat()
        assert svc.intake.accept(f"p{i}.jpg", (st.st_size, st.st_mtime_ns, st.st_ino)).kind is Kind.QUEUED
    return svc


def first_load(root: Path, photos: list[bytes], size: int) -> dict:
    """A new batch's load (every photo in two styles): one decode at a time, and side by side."""
    svc = daemon(root, photos, size, {"ink": {"image": "style.png"}, "wash": {"image": "style.png"}}, 64)
    job = svc.journal.oldest_queued(1e12)
    batch = svc.journal.claim(job.batch_key, 64, "b", 1e12)
    out = {"jobs": len(batch), "photos": len(photos)}
    most = worker_mod.LOADERS
    try:
        for loaders in (1, most):
            worker_mod.LOADERS = loaders
            start = time.perf_counter()
            tasks = svc.worker._load(svc.journal, batch)
            out[f"ms_with_{loaders}_loaders"] = round((time.perf_counter() - start) * 1000, 1)
            assert len(tasks) == len(batch)
    finally:
        worker_mod.LOADERS = most
        svc.close()
    return out


def one_run(root: Path, photos: list[bytes], size: int, inline: bool) -> dict:
    svc = daemon(root, photos, size, {"ink": {"image": "style.png"}}, 1)
    handed, sunk, joined = [], [], []
    handoff = Inline if inline else Handoff
    real_sink, real_hand, real_more, real_take = (worker_mod._Outbox.publish, handoff.publish, worker_mod.Worker._more,
                                                  Prefetch.take)

    def timed(store, real):
        def call(*args):
            t = time.perf_counter()
            out = real(*args)
            store.append(time.perf_counter() - t)
            return out
        return call

    worker_mod._Outbox.publish = timed(sunk, real_sink)
    handoff.publish = timed(handed, real_hand)
    worker_mod.Worker._more = lambda *args: timed(joined, real_more(*args))
    Prefetch.take = no_prefetch if inline else real_take
    pipeline.Handoff = handoff
    try:
        start = time.perf_counter()
        while (job := svc.journal.oldest_queued(1e12)) is not None:
            svc.worker.process(svc.journal, svc.journal.claim(job.batch_key, 1, f"b{job.id}", 1e12))
        wall = time.perf_counter() - start
    finally:
        worker_mod._Outbox.publish, handoff.publish, pipeline.Handoff = real_sink, real_hand, Handoff
        worker_mod.Worker._more, Prefetch.take = real_more, real_take
        svc.close()
    ms = lambda xs: round(statistics.median(xs) * 1000, 1)  # noqa: E731
    return {"photos": len(sunk), "publish_ms_median": ms(sunk), "loop_waits_to_publish_ms_median": ms(handed),
            "refills": len(joined), "loop_waits_to_refill_ms_median": ms(joined),
            "loop_waits_ms_total": round((sum(handed) + sum(joined)) * 1000, 1), "wall_s": round(wall, 2)}


def camera_shots(data: bytes, megapixels: float, count: int) -> list[bytes]:
    """`count` shots of one scene at a camera's pixel count (one size, so they share batches),
    each exposed a little differently, as a camera's JPEGs."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = (megapixels * 1e6 / (img.width * img.height)) ** 0.5
    big = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    shots = []
    for i in range(count):
        buf = io.BytesIO()
        ImageEnhance.Brightness(big).enhance(0.9 + 0.2 * i / max(1, count - 1)).save(buf, "JPEG", quality=92)
        shots.append(buf.getvalue())
    return shots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="the folder of tubingen.jpg (else synthetic 1024 x 768 photos)")
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--megapixels", type=float, default=24.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    given = args.images / "tubingen.jpg" if args.images else None
    photos = camera_shots(given.read_bytes(), args.megapixels, args.photos) if given else \
        [photo_bytes(768, 1024, i) for i in range(args.photos)]
    out = measure.machine(torch.device("cpu")) | {"size": args.size, "megapixels": args.megapixels if given else 0.8,
           "runs": {}}
    for name in ("inline", "threads"):
        # The outbox on the disk that will hold the results.
        with tempfile.TemporaryDirectory(dir=args.out.resolve().parent) as tmp:
            out["runs"][name] = one_run(Path(tmp), photos, args.size, name == "inline")
        print(name, out["runs"][name], flush=True)
    with tempfile.TemporaryDirectory(dir=args.out.resolve().parent) as tmp:
        out["first_load"] = first_load(Path(tmp), photos, args.size)
    print("first load", out["first_load"], flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
