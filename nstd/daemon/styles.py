"""The configured style set, decoded once and hashed, reloadable on SIGHUP."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from nstd import images
from nstd.config import Config, OutputConfig, Style
from nstd.errors import ConfigError, ImageError


@dataclass(frozen=True)
class LoadedStyle:
    style: Style
    sha256: str
    pixels: torch.Tensor

    @property
    def params(self):
        return self.style.params


class StyleBook:
    def __init__(self, styles: dict[str, LoadedStyle]):
        self._styles = styles

    @classmethod
    def load(cls, cfg: Config) -> "StyleBook":
        loaded = {}
        for name, style in cfg.styles.items():
            try:
                data = style.image.read_bytes()
            except OSError as e:
                raise ConfigError(f"styles.{name}.image: cannot read {style.image} ({e.strerror})") from None
            try:
                pixels = images.decode(data, str(style.image), cfg.max_pixels).pixels
            except ImageError as e:
                raise ConfigError(f"styles.{name}.image: {e}") from None
            loaded[name] = LoadedStyle(style, hashlib.sha256(data).hexdigest(), pixels)
        return cls(loaded)

    def names(self) -> list[str]:
        return sorted(self._styles)

    def get(self, name: str) -> LoadedStyle:
        return self._styles[name]

    def has(self, name: str) -> bool:
        return name in self._styles

    def job_params(self, name: str, output: OutputConfig) -> dict:
        """Everything that shapes a job's output: a change makes it a new job."""
        s = self._styles[name]
        return s.params.as_dict() | {"style": name, "style_sha256": s.sha256,
                                     "format": output.format, "quality": output.quality}
