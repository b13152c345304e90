"""The configured styles and blends, decoded once and hashed, reloadable on SIGHUP."""

from __future__ import annotations

from nstd.config import Config, OutputConfig
from nstd.errors import ConfigError, ImageError
from nstd.guide import REGIONS_STYLE, GuideSpec, regions_style
from nstd.params import TransferParams
from nstd.style import Painting, Style, read_painting


class StyleBook:
    def __init__(self, styles: dict[str, Style]):
        self._styles = styles

    @classmethod
    def load(cls, cfg: Config) -> "StyleBook":
        loaded: dict[str, Style] = {}
        for name, style in cfg.styles.items():
            try:
                painting = read_painting(name, style.image, cfg.max_pixels)
            except ImageError as e:
                raise ConfigError(f"styles.{name}.image: {e}") from None
            loaded[name] = Style(name, style.params, (painting,))
        for name, blend in cfg.blends.items():
            parts = tuple(Painting(p.style, cfg.styles[p.style].image, loaded[p.style].sha256,
                                   loaded[p.style].parts[0].pixels, p.weight,
                                   p.scale if p.scale is not None else cfg.styles[p.style].params.style_scale)
                          for p in blend.parts)
            loaded[name] = Style(name, blend.params, parts)
        return cls(loaded)

    def names(self) -> list[str]:
        return sorted(self._styles)

    def get(self, name: str) -> Style:
        return self._styles[name]

    def has(self, name: str) -> bool:
        return name in self._styles

    def regions_params(self, spec: GuideSpec, output: OutputConfig, params: TransferParams) -> dict:
        """What shapes a region map's one output: its styles' paintings, the map and its
        colours, and the settings."""
        style = regions_style(spec, params, self.get)
        return params.as_dict() | {"style": REGIONS_STYLE, "style_sha256": style.sha256, "format": output.format,
                                   "quality": output.quality, "guide": spec.as_dict()}

    def job_params(self, name: str, output: OutputConfig, params: TransferParams | None = None) -> dict:
        """Everything that shapes a job's output: a change makes it a new job. `params`
        replaces the style's own (with a sidecar's overrides, say)."""
        s = self._styles[name]
        return (params or s.params).as_dict() | {"style": name, "style_sha256": s.sha256,
                                     "format": output.format, "quality": output.quality}

