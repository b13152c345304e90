"""Faces found in a photo: a soft mask of ellipses where their style is held back, and a
map of their features (eyes, mouth) where the photo's content weighs most.

The detector is MTCNN (Zhang et al. 2016) from `facenet-pytorch`, the optional extra
`nstd[faces]`: its wheel carries the three small networks' weights, so nothing is
downloaded at run time, and it runs on torch as nstd does.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nstd import images

if TYPE_CHECKING:  # imported where a face is looked for: checking `protect: faces` loads no torch
    import torch

EXTRA = "faces"
DETECT_SIDE = 1024  # faces are found on the photo at most this large: enough for a face of 2%
MIN_PROBABILITY = 0.9
SMALLEST = 40  # px on the short side: MTCNN's smallest face is 20 px
GROW = (1.25, 1.4)  # the ellipse beyond the detector's box, across and down: hair, chin, ears
SOFT = 0.2  # of the ellipse's radius: the width of its soft edge
FEATURE_SIGMA = 0.09  # of the face box's width: how far an eye's or the mouth's weight reaches

REMEMBERED = 64  # photos whose faces a finder keeps, so each style of a photo detects once


def available() -> bool:
    return importlib.util.find_spec("facenet_pytorch") is not None


Point = tuple[float, float]  # (x, y), fractions of the photo's width and height


@dataclass(frozen=True)
class Face:
    """One face the detector found: its box (left, top, right, bottom) and its five
    landmarks (left eye, right eye, nose, left and right mouth corners), all as fractions
    of the photo's width and height."""

    box: tuple[float, float, float, float]
    landmarks: tuple[Point, Point, Point, Point, Point]
    probability: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]


def missing() -> str:
    """What a user reads when `protect: faces` is set without the extra."""
    return f"'faces' needs the face detector: from nstd's checkout, .venv/bin/pip install '.[{EXTRA}]'"


class FaceFinder:
    """A detector and what it found, owned by one worker or one `nstd stylize` run (no
    state shared by the process). MTCNN is not made for threads: calls take turns."""

    def __init__(self):
        self._lock = threading.Lock()
        self._detector = None
        self._found: OrderedDict[str, list] = OrderedDict()  # by photo sha256

    def detect(self, pixels: torch.Tensor, key: str | None = None, least: float = MIN_PROBABILITY) -> list[Face]:
        """The faces found with at least probability `least`. `key` (the photo's sha256)
        lets the other styles of a photo reuse what was found."""
        with self._lock:
            found = self._found.get(key) if key is not None else None
            if found is not None:
                self._found.move_to_end(key)
        if found is None:
            found = self._detect(pixels)
            if key is not None:
                with self._lock:
                    self._found[key] = found
                    if len(self._found) > REMEMBERED:
                        self._found.popitem(last=False)
        return [f for f in found if f.probability >= least]

    def _detect(self, pixels: torch.Tensor) -> list[Face]:
        """Every face MTCNN reports, however unsure: `detect` chooses."""
        import torch

        h, w = pixels.shape[-2:]
        scale = min(1.0, DETECT_SIDE / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if min(size) < SMALLEST:  # no face the detector could find, and MTCNN fails on such sizes
            return []
        small = torch.nn.functional.interpolate(pixels[None], size=size, mode="bilinear", antialias=True,
                                                align_corners=False)[0]
        with self._lock, torch.inference_mode():
            boxes, probs, points = self._mtcnn().detect(images.to_pil(small), landmarks=True)
        if boxes is None:
            return []
        sh, sw = small.shape[-2:]
        return [Face((float(b[0]) / sw, float(b[1]) / sh, float(b[2]) / sw, float(b[3]) / sh),
                     tuple((float(x) / sw, float(y) / sh) for x, y in marks), float(p))
                for b, p, marks in zip(boxes, probs, points) if p is not None]

    def _mtcnn(self):
        if self._detector is None:
            from facenet_pytorch import MTCNN

            self._detector = MTCNN(keep_all=True, device="cpu")
        return self._detector


def _grid(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres as fractions: (H, 1) rows and (1, W) columns."""
    import torch

    h, w = size
    return ((torch.arange(h, dtype=torch.float32) + 0.5)[:, None] / h,
            (torch.arange(w, dtype=torch.float32) + 0.5)[None, :] / w)


def around(face: Face, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's offset from the centre of the face's ellipse, across (1, W) and down
    (H, 1), in units of the ellipse's radii: the ellipse's edge is where x² + y² = 1."""
    y, x = _grid(size)
    left, top, right, bottom = face.box
    rx, ry = (right - left) / 2 * GROW[0], (bottom - top) / 2 * GROW[1]
    return (x - (left + right) / 2) / max(rx, 1e-6), (y - (top + bottom) / 2) / max(ry, 1e-6)


def mask(found: list[Face], size: tuple[int, int]) -> torch.Tensor:
    """(H, W) in [0, 1]: one at the faces, falling smoothly to zero around them."""
    import torch

    out = torch.zeros(size)
    for face in found:
        x, y = around(face, size)
        t = ((1 - (x * x + y * y).sqrt()) / SOFT).clamp(0, 1)
        out = torch.maximum(out, t * t * (3 - 2 * t))  # smoothstep: no visible seam
    return out


def features(found: list[Face], size: tuple[int, int]) -> torch.Tensor:
    """(H, W) in [0, 1]: one on each eye and along the mouth, falling off as a Gaussian
    whose reach follows the face's size; what makes a face its own lies there."""
    import torch

    y, x = _grid(size)
    h, w = size
    out = torch.zeros(size)
    for face in found:
        sigma = FEATURE_SIGMA * face.width * w  # in px, the same across and down
        left_eye, right_eye, _, mouth_l, mouth_r = face.landmarks
        for a, b in ((left_eye, left_eye), (right_eye, right_eye), (mouth_l, mouth_r)):
            d2 = _to_segment((x * w, y * h), (a[0] * w, a[1] * h), (b[0] * w, b[1] * h))
            out = torch.maximum(out, torch.exp(-0.5 * d2 / max(sigma, 1e-6) ** 2))
    return out


def _to_segment(p, a: tuple[float, float], b: tuple[float, float]) -> torch.Tensor:
    """Squared distance in px from each pixel to the segment a-b (a point where a == b)."""
    px, py = p
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else (((px - a[0]) * dx + (py - a[1]) * dy) / length2).clamp(0, 1)
    return (px - a[0] - t * dx) ** 2 + (py - a[1] - t * dy) ** 2
