"""neural-style-pt (PyPI `neural-style`), the reference PyTorch port of Johnson's
neural-style, as a contender: driven through its own command line, on the same photo,
painting and Caffe VGG19 weights, with its own defaults, its snapshots timed as it prints
them and scored afterwards by nstd's evaluator like every other contender's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nstd import images
from nstd.bench.measure import Workload

NAME = "neural_style_pt"
# Its documented defaults, which its users get: the objective it minimises is its own.
DEFAULTS = {"content_weight": 5.0, "style_weight": 100.0, "tv_weight": 1e-3}


def available() -> bool:
    return importlib.util.find_spec("neural_style") is not None


def convert_weights(state_dict: dict[str, torch.Tensor], dst: Path) -> Path:
    """nstd's stored VGG19 in the peer's layout: torchvision's `features.N` keys, and a file
    name with 'vgg' and '19' in it, which is how its loader picks the architecture."""
    torch.save({f"features.{k}": v for k, v in state_dict.items()}, dst)
    return dst


def snapshots(state_dict: dict[str, torch.Tensor], w: Workload, iterations: int, every: int,
              device: torch.device) -> list[tuple[int, float, torch.Tensor]]:
    """(iteration, seconds since its first iteration began, image) every `every` iterations
    and at the end, from one run of its CLI."""
    with tempfile.TemporaryDirectory(prefix="nstd-peer-") as tmp:
        tmp = Path(tmp)
        job = w.job()
        photo, painting = tmp / "photo.png", tmp / "painting.png"
        photo.write_bytes(images.encode(job.content, "PNG"))
        painting.write_bytes(images.encode(job.styles[0].image, "PNG"))
        cuda = device.type == "cuda"
        args = [sys.executable, "-u", "-m", "neural_style.neural_style", "-content_image", str(photo),
                "-style_image", str(painting), "-image_size", str(max(job.content.shape[-2:])),
                "-gpu", str(device.index or 0) if cuda else "c", "-backend", "cudnn" if cuda else "nn",
                "-model_file", str(convert_weights(state_dict, tmp / "vgg19-nstd.pth")), "-disable_check",
                "-init", "image", "-optimizer", "lbfgs", "-num_iterations", str(iterations),
                "-print_iter", str(every), "-save_iter", str(every), "-seed", "0",
                "-output_image", str(tmp / "out.png")] + [a for k, v in DEFAULTS.items() for a in (f"-{k}", str(v))]
        stamps = _stamped(args)
        out = []
        for k, seconds in stamps:
            path = tmp / ("out.png" if k == iterations else f"out_{k}.png")
            image = images.decode(path.read_bytes(), path.name).pixels
            if image.shape != job.content.shape:  # its own rounding of the size
                image = F.interpolate(image[None], size=job.content.shape[-2:], mode="bilinear")[0]
            out.append((k, seconds, image))
        return out


def _stamped(args: list[str]) -> list[tuple[int, float]]:
    """Run it, stamping each 'Iteration k' line as it is printed (unbuffered), from the
    line that says the optimisation starts."""
    start, stamps = None, []
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        tail = []
        for line in proc.stdout:
            now = time.perf_counter()
            tail = (tail + [line])[-20:]
            if line.startswith("Running optimization"):
                start = now
            elif line.startswith("Iteration ") and start is not None:
                stamps.append((int(line.split()[1]), now - start))
    if proc.returncode != 0:
        raise RuntimeError(f"neural-style failed ({proc.returncode}): {''.join(tail)[-1500:]}")
    return stamps
