"""The measurements of `nstd bench`: each a plain function returning plain data."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
import yaml

from nstd import __version__, images, weights
from nstd.bench import baseline
from nstd.engine.device import describe, free_memory
from nstd.engine.switches import Switches
from nstd.engine.memory import flops_per_iteration
from nstd.engine.resize import resize_long_side
from nstd.engine.targets import GramCache
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob
from nstd.engine.vgg import VGGFeatures

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s.
DATASHEET_BF16 = (("H100 80GB HBM3", 989.4e12), ("H100 SXM", 989.4e12), ("H100 PCIe", 756.5e12),
                  ("H100 NVL", 835.5e12), ("H200", 989.4e12), ("A100", 312e12))


def machine(device: torch.device) -> dict:
    """What every result file opens with: when, on what, with which versions."""
    return {"date": time.strftime("%Y-%m-%d"), "device": describe(device), "host": platform.node(),
            "torch": torch.__version__, "nstd": __version__, "cpu_threads": torch.get_num_threads()}


@dataclass
class Workload:
    content: torch.Tensor  # (3, H, W) in [0, 1], any size
    style: torch.Tensor
    size: int
    iterations: int
    settings: BatchSettings

    def job(self) -> TransferJob:
        return TransferJob(resize_long_side(self.content, self.size),
                           (StyleImage(self.style, key="bench-style"),))


def stored_model(device: torch.device | str = "cpu", model_id: str = "caffe",
                 models_dir: Path | None = None) -> VGGFeatures:
    """Stored weights (the Caffe VGG19 the quality benchmarks score with, unless named) on
    `device`, with the layers nstd's objective reads."""
    sd, info = weights.load(models_dir or weights.default_models_dir(), model_id)
    return VGGFeatures(sd, info.preprocessing, BatchSettings().layers, "max", info.model_id).to(device)


def picture(folder: Path, name: str) -> torch.Tensor:
    """`folder`/`name`.jpg (a photo or a painting of ../shared/images), RGB in [0, 1]."""
    return images.decode((folder / f"{name}.jpg").read_bytes(), name).pixels


def pair(folder: Path, content: str, style: str, size: int, iterations: int,
         settings: BatchSettings | None = None) -> Workload:
    """A photo and a painting of `folder` as a workload."""
    return Workload(picture(folder, content), picture(folder, style), size, iterations, settings or BatchSettings())


def nudged(w: Workload) -> Workload:
    """The workload with its photo changed by about 1e-6: the control. The optimisation
    amplifies any rounding, so this shows how far apart two runs land by chance alone."""
    gen = torch.Generator().manual_seed(1)
    return replace(w, content=(w.content + 1e-6 * torch.randn(w.content.shape, generator=gen)).clamp(0, 1))


def pair_arguments(ap: argparse.ArgumentParser, size: int) -> None:
    """The options of a bench script that runs one photo with one painting."""
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--content", default="tubingen")
    ap.add_argument("--style", default="starry_night")
    ap.add_argument("--size", type=int, default=size)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_nstd(model: VGGFeatures, w: Workload, batch: int, switches: Switches,
               per_run_iterations: int | None = None) -> dict:
    """One full run_batch of `batch` copies of the job, with its Gram target already cached.

    Images per hour are for runs of `per_run_iterations` (default: the timed count),
    scaled from the timed rate when the two differ.
    """
    device = model.mean.device
    settings = BatchSettings(**{**w.settings.__dict__, "iterations": w.iterations,
                                "log_every": max(1, w.iterations)})
    cache = GramCache()
    jobs = [w.job()] * batch
    # Warm: cuDNN autotuning and the Gram cache, as on a daemon that has run before.
    free = partial(free_memory, device)  # the daemon's auto switches see the same figure
    run_batch(model, jobs, BatchSettings(**{**settings.__dict__, "iterations": 4}), cache, switches=switches, free=free)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    results = run_batch(model, jobs, settings, cache, switches=switches, free=free)
    sync(device)
    seconds = time.perf_counter() - start
    h, wd = jobs[0].content.shape[-2:]
    flops = flops_per_iteration(h, wd, settings.layers) * batch * w.iterations
    per_run = per_run_iterations or w.iterations
    out = {"batch": batch, "height": h, "width": wd, "iterations": w.iterations, "seconds": seconds,
           "iterations_per_second_per_image": w.iterations / seconds,
           "image_iterations_per_second": w.iterations * batch / seconds,
           "images_per_hour": 3600 * batch / (seconds * per_run / w.iterations),
           "images_per_hour_iterations": per_run, "flops_per_second": flops / seconds,
           "image": results[0].image}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
        out["peak_memory_bytes"] = peak
        out["peak_memory_per_image_bytes"] = peak / batch
    return out


def timed_baseline(model: VGGFeatures, w: Workload) -> dict:
    device = model.mean.device
    job = w.job()
    settings = BatchSettings(**{**w.settings.__dict__, "iterations": w.iterations})
    baseline.run(model, job, BatchSettings(**{**settings.__dict__, "iterations": 2}))
    sync(device)
    start = time.perf_counter()
    image = baseline.run(model, job, settings)
    sync(device)
    seconds = time.perf_counter() - start
    h, wd = job.content.shape[-2:]
    # Counted as useful work, like nstd's: the targets it recomputes are not credited.
    flops = flops_per_iteration(h, wd, settings.layers) * w.iterations
    return {"batch": 1, "height": h, "width": wd, "iterations": w.iterations, "seconds": seconds,
            "flops_per_second": flops / seconds,
            "iterations_per_second_per_image": w.iterations / seconds,
            "image_iterations_per_second": w.iterations / seconds,
            "images_per_hour": 3600 / seconds, "image": image.cpu()}


@torch.no_grad()
def final_losses(model: VGGFeatures, w: Workload, image: torch.Tensor) -> dict:
    """Content and style loss of a finished image, in fp32, by nstd's definitions."""
    device = model.mean.device
    job = w.job()
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        content = job.content.to(device)[None]
        style = resize_long_side(job.styles[0].image.to(device), max(content.shape[-2:]))[None]
        c, s = baseline.content_and_style(model, image.to(device)[None], content, style, w.settings)
    return {"content": float(c), "style": float(s)}


def matmul_peak(device: torch.device, n: int = 8192, repeats: int = 20) -> float | None:
    """Measured bf16 matrix-product rate, FLOP/s: the ceiling the convolutions aim at."""
    if device.type != "cuda":
        return None
    gen = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    end.synchronize()
    return 2 * n**3 * repeats / (start.elapsed_time(end) / 1000)


def datasheet_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DATASHEET_BF16 if key in name), None)


def largest_batch(model: VGGFeatures, w: Workload, switches: Switches, cap: int) -> int:
    """The largest power-of-two batch up to `cap` that runs a few iterations without OOM."""
    best, batch = 0, 1
    short = Workload(w.content, w.style, w.size, 6, w.settings)
    while batch <= cap:
        try:
            timed_nstd(model, short, batch, switches)
        except torch.OutOfMemoryError:
            break
        finally:
            if model.mean.device.type == "cuda":
                torch.cuda.empty_cache()
        best, batch = batch, batch * 2
    return best


def drop_to_output(weights_dir: Path, model_id: str, content: Path, style: Path, device: str,
                   timeout: float = 600.0, transfer: dict | None = None) -> dict:
    """Start the real daemon on fresh folders, drop one photo once it is idle, time its output.

    `transfer` adds to the config's transfer section (for example a size)."""
    root = Path(tempfile.mkdtemp(prefix="nstd-bench-"))
    try:
        for name in ("inbox", "outbox", "failed", "processed", "state"):
            (root / name).mkdir()
        shutil.copy(style, root / "style.jpg")
        cfg = {"inbox": "inbox", "outbox": "outbox", "failed": "failed", "processed": "processed",
               "state_dir": "state", "models_dir": str(weights_dir),
               "styles": {"bench": {"image": "style.jpg"}},
               "transfer": {"model": model_id, **(transfer or {})}, "worker": {"device": device},
               "log": {"format": "json"}}
        (root / "config.yaml").write_text(yaml.safe_dump(cfg))
        log = (root / "daemon.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "nstd", "run", "--config", str(root / "config.yaml")],
                                stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            _wait(lambda: '"started"' in (root / "daemon.log").read_text(), timeout, proc)
            time.sleep(3)  # idle: the start-up sweep and first rescan are behind it
            tmp = root / "photo.jpg.part"
            shutil.copy(content, tmp)
            dropped = time.time()
            os.replace(tmp, root / "inbox" / "photo.jpg")
            outputs = root / "outbox" / "bench"
            _wait(lambda: any(p.suffix == ".jpg" for p in outputs.glob("*")) if outputs.exists() else False,
                  timeout, proc)
            done = time.time()
            # The loss log is written just after the image.
            _wait(lambda: any(outputs.glob("*.json")), 30, proc)
            entry = json.loads(next(outputs.glob("*.json")).read_text())
            return {"seconds": done - dropped, "transfer_seconds": entry["timings"]["seconds"],
                    "output": entry["output"], "runs": entry["runs"]}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait(cond, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {proc.returncode}")
        time.sleep(0.02)
    raise TimeoutError("timed out waiting for the daemon")
