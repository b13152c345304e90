"""Made-up inputs: smooth random images and VGG19-shaped random weights, so that tests and
fault harnesses exercise nstd without real photos or the real model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from nstd.engine.layers import weight_shapes


def random_vgg_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-initialised weights with VGG19's shapes, keyed like torchvision's features."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in weight_shapes().items():
        if key.endswith(".weight"):
            sd[key] = torch.randn(*shape, generator=gen) * (2.0 / (shape[1] * 9)) ** 0.5
        else:
            sd[key] = torch.randn(*shape, generator=gen) * 0.01
    return sd


def rand_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth random image: noise, blurred by downsampling, so it has structure."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, h // 4), max(2, w // 4), generator=gen)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def models_dir(work: Path) -> Path:
    """`work`/models holding the random weights as the model "random", imported the way a
    user imports weights, with the import's chatter kept off a harness's report."""
    from nstd.cli import main as nstd_main

    d = work / "models"
    torch.save(random_vgg_state_dict(), work / "random.pth")
    with open(os.devnull, "w") as devnull:
        old, sys.stdout = sys.stdout, devnull
        try:
            nstd_main(["weights", "import", str(work / "random.pth"), "--name", "random",
                       "--preprocessing", "torchvision", "--models-dir", str(d)])
        finally:
            sys.stdout = old
    return d
