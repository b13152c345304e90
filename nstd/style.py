"""A style as the pipeline uses it: one painting, or a weighted blend of several, decoded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nstd import images
from nstd.engine.types import StyleImage
from nstd.errors import ImageError
from nstd.params import TransferParams


@dataclass(frozen=True)
class Painting:
    """One painting of a style or blend."""

    name: str
    path: Path
    sha256: str
    pixels: torch.Tensor
    weight: float = 1.0
    scale: float | None = None  # None: the job's style_scale


@dataclass(frozen=True)
class Style:
    """What an output is named after: one painting, or a blend, with its own parameters."""

    name: str
    params: TransferParams
    parts: tuple[Painting, ...]

    @property
    def sha256(self) -> str:
        """Identifies the look: the painting, or every painting with its weight and scale."""
        if len(self.parts) == 1:
            return self.parts[0].sha256
        spec = [[p.sha256, p.weight, p.scale] for p in self.parts]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def style_images(self, params: TransferParams) -> tuple[StyleImage, ...]:
        return tuple(StyleImage(p.pixels, p.sha256, p.weight, params.style_scale if p.scale is None else p.scale)
                     for p in self.parts)

    def describe(self) -> list[dict]:
        """The loss log's `styles` entry."""
        return [{"name": p.name, "path": str(p.path), "sha256": p.sha256, "weight": p.weight} for p in self.parts]


def read_painting(name: str, path: Path, max_pixels: int) -> Painting:
    """Decode a painting file, or raise ImageError naming it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    return Painting(name, path, hashlib.sha256(data).hexdigest(), images.decode(data, str(path), max_pixels).pixels)
