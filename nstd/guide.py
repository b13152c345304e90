"""A photo's spatial control as the pipeline applies it: which parts take which style, and
how strongly.

A `GuideSpec` is plain data (stored with a job: the mask's name and sha256, and for a
region map its colours); `load` decodes it against the photo into a `Guide`, whose parts
become the engine's regions at the working size.

Strength is one idea everywhere: a grey mask, a region's `STYLE@0.5` and a protected face
each give a part a style strength below 1. It lives in the loss, not in a blend of pixels:
the part's style weighs that much less (its mask's value in the guided Gram) and the
photo's content weighs more (`content_map`), so the part is still painted, only less, and
its edge is as soft as its weights. Strength 0 is `keep`: the photo's own pixels, put back
where a user asks for them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from nstd import faces, masks
from nstd.engine.guides import fit
from nstd.engine.types import Region
from nstd.errors import ImageError
from nstd.params import TransferParams
from nstd.style import Style

REGIONS_STYLE = "regions"  # the outbox folder of outputs made from a region map
KEEP_BELOW = 0.02  # a mask this dark is black (a JPEG's noise included): the photo is kept exactly
# Where a part's style strength is s, its content weighs 1 + CONTENT_GAIN * (1 - s) times as
# much, and a protected face's eyes and mouth FEATURE_GAIN more on top: measured on portraits
# by benchmarks/portraits.py (docs/portraits.md).
CONTENT_GAIN = 2.0
FEATURE_GAIN = 4.0


@dataclass(frozen=True)
class GuideSpec:
    kind: str  # mask | regions
    name: str  # the mask file, as the loss log names it
    sha256: str
    colours: tuple[tuple[str, str], ...] = ()  # regions: ("#rrggbb", style or keep)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "sha256": self.sha256, "colours": dict(self.colours)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "GuideSpec | None":
        if not d:
            return None
        return cls(d["kind"], d["name"], d["sha256"], tuple(d.get("colours", {}).items()))

    def styles(self) -> list[str]:
        """The styles a region map names."""
        return sorted({n for n, _ in (masks.split_target(t) for _, t in self.colours)} - {masks.KEEP})


def styled_regions(spec: GuideSpec | None, protect: str) -> int:
    """The most styled regions a job's guide can have, for sizing its batch before it is
    loaded: 0 where it has none, and the plain style loss runs."""
    if spec is None:
        return 1 if protect == "faces" else 0  # found faces make the rest one styled region
    return 1 if spec.kind == "mask" else len(spec.styles())


OWN = ""  # a part that takes the output's own style (a plain mask's white)


@dataclass(frozen=True)
class Part:
    name: str
    mask: torch.Tensor  # (h, w) in [0, 1], of the photo's aspect: where it is, times its strength
    style: str | None  # a style's name, OWN, or None to keep the photo
    colour: tuple[int, int, int] | None = None  # a region map's colour, for pictures of the guide


@dataclass(frozen=True)
class Guide:
    """A photo's parts, decoded once and shared by all of its outputs."""

    parts: tuple[Part, ...]
    log: dict  # the loss log's "guide" entry
    features: torch.Tensor | None = None  # (h, w) in [0, 1]: protected faces' eyes and mouths


def load(spec: GuideSpec, data: bytes, photo_hw: tuple[int, int], max_pixels: int) -> Guide:
    """The spec's file decoded against its photo, or an ImageError naming the file."""
    log = {"source": spec.kind, "file": spec.name, "sha256": spec.sha256}
    if spec.kind == "mask":
        m = masks.decode_mask(data, spec.name, photo_hw, max_pixels)
        black = (m < KEEP_BELOW).float()
        keep = (Part(masks.KEEP, black, None),) if black.any() else ()
        return Guide((Part(OWN, m * (1 - black), OWN),) + keep, log)
    colours = {masks.parse_colour(c, spec.name): target for c, target in spec.colours}
    found = masks.decode_regions(data, spec.name, photo_hw, colours, max_pixels)
    if all(masks.split_target(target)[0] == masks.KEEP for target, _ in found):
        raise ImageError(f"{spec.name}: every region keeps the photo; map a colour to a style")
    first = {}
    for rgb, target in colours.items():
        first.setdefault(target, rgb)
    parts = []
    for target, m in found:
        style, strength = masks.split_target(target)
        kept = style == masks.KEEP
        parts.append(Part(target, m if kept else m * strength, None if kept else style, first[target]))
    return Guide(tuple(parts), log | {"regions": dict(spec.colours)})


def regions_style(spec: GuideSpec, params: TransferParams, style_for: Callable[[str], Style]) -> Style:
    """What a region map's output is named after: every painting its regions use."""
    paintings = tuple(p for name in spec.styles() for p in style_for(name).parts)
    return Style(REGIONS_STYLE, params, paintings)


def protect_faces(guide: Guide | None, pixels: torch.Tensor, finder: faces.FaceFinder, strength: float,
                  key: str | None = None, name: str = "photo") -> Guide:
    """The guide with the photo's faces painted at `strength` (their eyes and mouth held
    to the photo most), or at 0 kept as they are in the photo; unchanged where no face is
    found. `key`: the photo's sha256, so that its other outputs reuse the detection. A
    detector failure is an ImageError naming the photo: its faces would not be protected."""
    try:
        found = finder.detect(pixels, key)
    except Exception as e:  # noqa: BLE001 - the detector's own errors, of many types
        raise ImageError(f"{name}: face detection failed ({type(e).__name__}: {e}); "
                         f"not stylized, as its faces could not be protected") from None
    if not found:  # said in the loss log, so that a user sees the detector ran
        return Guide((), {"source": "faces", "faces": 0}) if guide is None else \
            replace(guide, log=guide.log | {"faces": 0})
    f = faces.mask(found, tuple(pixels.shape[-2:]))
    if guide is None:
        guide = Guide((Part(OWN, torch.ones_like(f), OWN),), {"source": "faces"})
    log = guide.log | {"faces": len(found), "strength": strength}
    held = 1 - f * (1 - strength)
    parts = tuple(p if p.style is None else replace(p, mask=fit(p.mask, f.shape) * held) for p in guide.parts)
    if strength == 0:  # the photo's own faces, put back
        return Guide(parts + (Part("faces", f, None),), log)
    return Guide(parts, log, faces.features(found, f.shape))


def picture(guide: Guide, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) RGB of the guide for people: a region map's colours, else white where the
    photo is stylized and black where it is kept."""
    out = torch.zeros(3, *size)
    for p in guide.parts:
        rgb = p.colour if p.colour is not None else (0, 0, 0) if p.style is None else (255, 255, 255)
        out += fit(p.mask, size)[None] * torch.tensor(rgb, dtype=torch.float32)[:, None, None] / 255
    return out.clamp(0, 1)


def content_map(guide: Guide | None, size: tuple[int, int]) -> torch.Tensor | None:
    """(H, W): the content loss's weight at each pixel, raised where the style is held back
    and on protected faces' features; None where it is 1 everywhere."""
    if guide is None or not guide.parts:
        return None
    strength = torch.zeros(size)
    for p in guide.parts:
        if p.style is not None:
            strength += fit(p.mask, size)
    held = 1 - strength.clamp(0, 1)
    if guide.features is None and float(held.max()) < 1e-3:
        return None
    out = 1 + CONTENT_GAIN * held
    return out if guide.features is None else out + FEATURE_GAIN * fit(guide.features, size)


def engine_regions(guide: Guide | None, style: Style, style_for: Callable[[str], Style], params: TransferParams,
                   size: tuple[int, int]) -> tuple[Region, ...]:
    """The guide's parts as the engine's regions at the working size; OWN is `style`."""
    if guide is None:
        return ()
    out = []
    for p in guide.parts:
        chosen = None if p.style is None else style if p.style == OWN else style_for(p.style)
        out.append(Region(fit(p.mask, size), () if chosen is None else chosen.style_images(params),
                          style.name if p.style == OWN else p.name))
    return tuple(out)
