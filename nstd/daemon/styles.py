"""The configured styles and blends, decoded once and hashed, reloadable on SIGHUP."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nstd import images
from nstd.config import Config, OutputConfig
from nstd.engine.transfer import StyleImage
from nstd.errors import ConfigError, ImageError
from nstd.params import TransferParams


@dataclass(frozen=True)
class Part:
    """One painting of a style or blend."""

    name: str
    path: Path
    sha256: str
    pixels: torch.Tensor
    weight: float = 1.0
    scale: float | None = None  # None: the job's style_scale


@dataclass(frozen=True)
class LoadedStyle:
    """What a job's outbox folder names: one painting, or a weighted blend of several."""

    name: str
    params: TransferParams
    parts: tuple[Part, ...]

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


class StyleBook:
    def __init__(self, styles: dict[str, LoadedStyle]):
        self._styles = styles

    @classmethod
    def load(cls, cfg: Config) -> "StyleBook":
        loaded: dict[str, LoadedStyle] = {}
        for name, style in cfg.styles.items():
            try:
                data = style.image.read_bytes()
            except OSError as e:
                raise ConfigError(f"styles.{name}.image: cannot read {style.image} ({e.strerror})") from None
            try:
                pixels = images.decode(data, str(style.image), cfg.max_pixels).pixels
            except ImageError as e:
                raise ConfigError(f"styles.{name}.image: {e}") from None
            part = Part(name, style.image, hashlib.sha256(data).hexdigest(), pixels)
            loaded[name] = LoadedStyle(name, style.params, (part,))
        for name, blend in cfg.blends.items():
            parts = tuple(Part(p.style, cfg.styles[p.style].image, loaded[p.style].sha256,
                               loaded[p.style].parts[0].pixels, p.weight,
                               p.scale if p.scale is not None else cfg.styles[p.style].params.style_scale)
                          for p in blend.parts)
            loaded[name] = LoadedStyle(name, blend.params, parts)
        return cls(loaded)

    def names(self) -> list[str]:
        return sorted(self._styles)

    def get(self, name: str) -> LoadedStyle:
        return self._styles[name]

    def has(self, name: str) -> bool:
        return name in self._styles

    def job_params(self, name: str, output: OutputConfig, params: TransferParams | None = None) -> dict:
        """Everything that shapes a job's output: a change makes it a new job. `params`
        replaces the style's own (with a sidecar's overrides, say)."""
        s = self._styles[name]
        return (params or s.params).as_dict() | {"style": name, "style_sha256": s.sha256,
                                     "format": output.format, "quality": output.quality}
