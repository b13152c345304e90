"""Faces found in a photo, as a feathered mask of ellipses to keep them as they are.

The detector is MTCNN (Zhang et al. 2016) from `facenet-pytorch`, the optional extra
`nstd[faces]`: its wheel carries the three small networks' weights, so nothing is
downloaded at run time, and it runs on torch as nstd does.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
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

REMEMBERED = 64  # photos whose faces a finder keeps, so each style of a photo detects once


def available() -> bool:
    return importlib.util.find_spec("facenet_pytorch") is not None


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

    def detect(self, pixels: torch.Tensor, key: str | None = None) -> list[tuple[float, float, float, float]]:
        """Each face as (left, top, right, bottom), fractions of the photo's width and height.
        `key` (the photo's sha256) lets the other styles of a photo reuse what was found."""
        with self._lock:
            if key is not None and key in self._found:
                self._found.move_to_end(key)
                return self._found[key]
        boxes = self._detect(pixels)
        if key is not None:
            with self._lock:
                self._found[key] = boxes
                if len(self._found) > REMEMBERED:
                    self._found.popitem(last=False)
        return boxes

    def _detect(self, pixels: torch.Tensor) -> list[tuple[float, float, float, float]]:
        import torch

        h, w = pixels.shape[-2:]
        scale = min(1.0, DETECT_SIDE / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if min(size) < SMALLEST:  # no face the detector could find, and MTCNN fails on such sizes
            return []
        small = torch.nn.functional.interpolate(pixels[None], size=size, mode="bilinear", antialias=True,
                                                align_corners=False)[0]
        with self._lock, torch.inference_mode():
            boxes, probs = self._mtcnn().detect(images.to_pil(small))
        if boxes is None:
            return []
        sh, sw = small.shape[-2:]
        return [(float(b[0]) / sw, float(b[1]) / sh, float(b[2]) / sw, float(b[3]) / sh)
                for b, p in zip(boxes, probs) if p is not None and p >= MIN_PROBABILITY]

    def _mtcnn(self):
        if self._detector is None:
            from facenet_pytorch import MTCNN

            self._detector = MTCNN(keep_all=True, device="cpu")
        return self._detector


def mask(boxes: list[tuple[float, float, float, float]], size: tuple[int, int]) -> torch.Tensor:
    """(H, W) in [0, 1]: one at the faces, falling smoothly to zero around them."""
    import torch

    h, w = size
    y = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None] / h
    x = (torch.arange(w, dtype=torch.float32) + 0.5)[None, :] / w
    out = torch.zeros(h, w)
    for left, top, right, bottom in boxes:
        cx, cy = (left + right) / 2, (top + bottom) / 2
        rx, ry = (right - left) / 2 * GROW[0], (bottom - top) / 2 * GROW[1]
        r = (((x - cx) / max(rx, 1e-6)) ** 2 + ((y - cy) / max(ry, 1e-6)) ** 2).sqrt()
        t = ((1 - r) / SOFT).clamp(0, 1)
        out = torch.maximum(out, t * t * (3 - 2 * t))  # smoothstep: no visible seam
    return out
