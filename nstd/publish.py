"""The last stage of the pipeline: an output's files, each written atomically, in an order
that makes the loss log's presence mean the job is complete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nstd import faults, images
from nstd.fsutil import atomic_write, atomic_write_json
from nstd.plot import curve_name, loss_curve_svg

if TYPE_CHECKING:
    import torch


# Bytes an output's stem leaves for what is added to it: a hash suffix or two (".1a2b3c4d")
# and the longest ending (".iter00500.tiff"); fsutil.fit_name shortens stems to leave it.
STEM_ROOM = 40


@dataclass(frozen=True)
class Output:
    """Where one job's files go, and how the image is encoded."""

    image: Path
    log: Path
    fmt: str  # a key of images.EXTENSIONS
    quality: int

    def snapshot(self, iteration: int) -> Path:
        return self.image.with_name(f"{self.image.stem}.iter{iteration:05d}{self.image.suffix}")


def write(out: Output, pixels: torch.Tensor, log: dict, title: str, snapshots=(),
          exif: bytes | None = None, bits: int = 8) -> None:
    """Snapshots, the image, the loss curve, then the loss log: the log comes last, so its
    presence means every file is there. `bits` 16 keeps a 16-bit photo 16-bit where the
    format can (TIFF)."""
    for iteration, snap in snapshots:
        atomic_write(out.snapshot(iteration), images.encode(snap, out.fmt, out.quality, exif, bits))
    atomic_write(out.image, images.encode(pixels, out.fmt, out.quality, exif, bits))
    faults.point("after_image")
    atomic_write(out.log.with_name(curve_name(out.log.name)), loss_curve_svg(log["history"], title))
    atomic_write_json(out.log, log)
    faults.point("after_json")
