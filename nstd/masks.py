"""Masks and region maps: their names beside a photo, and their decoding, checked against it.

`photo.jpg.mask.png` (white: the full style, black: keep the photo, grey: the style at that
strength) and `photo.jpg.regions.png` (flat colours, each mapped by a sidecar to a style,
`STYLE@0.5` for a style at half strength, or `keep`)
belong to `photo.jpg`. A name like `vignette.mask.png` is a mask that sidecars may name.
Neither is ever taken for a photo. The names need no torch, so commands that only move
files (nstd retry) load none; it is imported where a region map is labelled.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from nstd import images
from nstd.errors import ConfigError, ImageError, shown

if TYPE_CHECKING:
    import torch

KINDS = ("mask", "regions")
KEEP = "keep"
EXTENSIONS = ("png", "tif", "tiff", "jpg", "jpeg", "webp", "bmp")
ASPECT_TOLERANCE = 0.02  # exports round sizes by a pixel or two; a crop changes the aspect more
UNMAPPED_SHARE = 0.005  # a colour covering more of a region map than this must be mapped
UNMAPPED_TOTAL = 0.02  # and unmapped colours together no more than this (anti-aliased edges are less)
MAP_SIDE = 2048  # a region map is read at most this large: its labels need no more
MAX_COLOURS = 64  # a region map names a few areas; each colour costs a pass over the map
NEAR = 60.0  # an anti-aliased edge pixel within this RGB distance of a mapped colour takes it

_MASK_NAME = re.compile(r"^(?P<base>.+)\.(?P<kind>mask|regions)\.(?P<ext>[A-Za-z0-9]+)$")
_PHOTO_BASE = re.compile(r"\.[A-Za-z0-9]{2,5}$")
_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")


def kind_of(relpath: str) -> str | None:
    """'mask' or 'regions' for a mask file's name, else None."""
    m = _MASK_NAME.match(PurePosixPath(relpath).name)
    return m["kind"] if m and m["ext"].lower() in EXTENSIONS else None


def photo_of(relpath: str) -> str | None:
    """The photo a mask file belongs to (`a/p.jpg` for `a/p.jpg.mask.png`), or None for a
    mask that sidecars name."""
    m = _MASK_NAME.match(relpath)
    if not m or kind_of(relpath) is None or not _PHOTO_BASE.search(PurePosixPath(m["base"]).name):
        return None
    return m["base"]


def own_names(relpath: str, kind: str) -> list[str]:
    """The names a photo's own mask of `kind` may have."""
    return [f"{relpath}.{kind}.{ext}" for ext in EXTENSIONS]


def own_file(photo: Path, kind: str, links: bool = False) -> Path | None:
    """The photo's own mask of `kind` beside it, if one is there; a link counts only with
    `links` (the daemon follows none; a user's one-shot command may). Anything else under
    a mask's name (a link, a FIFO, a folder) is an ImageError: the photo was meant to be
    masked, and painting it all over would not be what was asked."""
    for name in own_names(photo.name, kind):
        try:
            mode = (os.stat if links else os.lstat)(photo.with_name(name)).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            raise ImageError(f"{name}: not a regular file (a link, FIFO or folder); nstd follows no links, "
                             f"so {photo.name} is not stylized without its {kind}")
        return photo.with_name(name)
    return None


def split_target(target: str) -> tuple[str, float]:
    """A region's target as (style or keep, strength): `starry@0.5` is starry at half its
    strength, `starry@0` keeps the photo as `keep` does. A ValueError says what is wrong."""
    name, at, level = target.partition("@")
    if not at:
        return target, 0.0 if target == KEEP else 1.0
    try:
        strength = float(level)
    except ValueError:
        raise ValueError(f"{target!r}: the strength after @ must be a number from 0 to 1") from None
    if not 0 <= strength <= 1 or name == KEEP or not name:
        raise ValueError(f"{target!r}: write STYLE@S with S from 0 (keep the photo) to 1 (the full style)")
    return (KEEP, 0.0) if strength == 0 else (name, strength)


def parse_colour(text, where: str) -> tuple[int, int, int]:
    m = _COLOUR.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ConfigError(f"{where}: {shown(text)} is not a colour; write it as \"#rrggbb\", e.g. \"#ff0000\"")
    v = int(m[1], 16)
    return (v >> 16) & 255, (v >> 8) & 255, v & 255


def _decode(data: bytes, name: str, photo_hw: tuple[int, int], max_pixels: int) -> torch.Tensor:
    """(3, h, w) in [0, 1], upright, with an aspect that matches the photo's."""
    pixels = images.decode(data, name, max_pixels).pixels
    h, w = pixels.shape[-2:]
    ph, pw = photo_hw
    if abs((w / h) / (pw / ph) - 1) > ASPECT_TOLERANCE:
        raise ImageError(f"{name}: {w}x{h} does not match its photo's shape ({pw}x{ph}); "
                         f"export the mask from the photo as it is, uncropped")
    return pixels


def decode_mask(data: bytes, name: str, photo_hw: tuple[int, int], max_pixels: int) -> torch.Tensor:
    """(h, w) weights in [0, 1]: white stylizes, black keeps the photo, grey is between."""
    pixels = _decode(data, name, photo_hw, max_pixels)
    return (0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2]).clamp(0, 1)


def decode_regions(data: bytes, name: str, photo_hw: tuple[int, int], colours: dict[tuple[int, int, int], str],
                   max_pixels: int) -> list[tuple[str, torch.Tensor]]:
    """(target, (h, w) mask) for each target in `colours` found in the map. Each pixel takes
    the nearest mapped colour; a colour that covers a real area and is mapped to nothing
    is an ImageError naming it."""
    import torch
    import torch.nn.functional as F

    rgb = _decode(data, name, photo_hw, max_pixels)
    if max(rgb.shape[-2:]) > MAP_SIDE:  # labels need no more; nearest keeps the colours flat
        scale = MAP_SIDE / max(rgb.shape[-2:])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[2] * scale)))
        rgb = F.interpolate(rgb[None], size=size, mode="nearest-exact")[0]
    rgb = (rgb * 255).round()
    flat = rgb.reshape(3, -1).T  # (pixels, 3)
    nearest, far = _nearest(flat, torch.tensor(list(colours), dtype=flat.dtype))
    _check_unmapped(flat, far, name)
    targets = list(colours.values())
    found: dict[str, torch.Tensor] = {}
    for k, target in enumerate(targets):
        hit = (nearest == k).reshape(rgb.shape[1:]).float()
        if hit.any():
            found[target] = found[target] + hit if target in found else hit
    return list(found.items())


_CHUNK = 1 << 18  # pixels compared with the palette at a time: memory stays bounded whatever the map


def _nearest(flat: torch.Tensor, palette: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's nearest palette index, and whether that colour is farther than NEAR."""
    import torch

    nearest = torch.empty(flat.shape[0], dtype=torch.long)
    far = torch.empty(flat.shape[0], dtype=torch.bool)
    for i in range(0, flat.shape[0], _CHUNK):
        best = torch.cdist(flat[i:i + _CHUNK], palette).min(1)
        nearest[i:i + _CHUNK] = best.indices
        far[i:i + _CHUNK] = best.values > NEAR
    return nearest, far


def _check_unmapped(flat: torch.Tensor, far: torch.Tensor, name: str) -> None:
    """An ImageError naming the largest colour mapped to nothing, if that colour, or all such
    colours together, cover a real part of the map."""
    unmapped = int(far.sum())
    if unmapped == 0:
        return
    values, counts = flat[far].unique(dim=0, return_counts=True)
    worst = int(counts.argmax())
    r, g, b = (int(v) for v in values[worst])
    share, total = 100 * int(counts[worst]) / flat.shape[0], 100 * unmapped / flat.shape[0]
    if counts[worst] > UNMAPPED_SHARE * flat.shape[0]:
        raise ImageError(f"{name}: colour #{r:02x}{g:02x}{b:02x} covers {share:.1f}% of the map and names "
                         f"no style; map it in the sidecar's regions (to a style or to keep)")
    if unmapped > UNMAPPED_TOTAL * flat.shape[0]:
        raise ImageError(f"{name}: {len(values)} colours that name no style cover {total:.1f}% of the map "
                         f"(the largest, #{r:02x}{g:02x}{b:02x}, {share:.1f}%); paint the map in the "
                         f"sidecar's colours only")
