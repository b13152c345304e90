"""What a batch must be before the loop runs it: refusals with a reason, for a caller's
bug rather than a user's (a user's bad input is refused at the door, with its name)."""

from __future__ import annotations

from nstd.engine.types import COLOR_MODES, INITS, BatchSettings, TransferJob
from nstd.engine.vgg import VGGFeatures


def check_batch(model: VGGFeatures, jobs: list[TransferJob], settings: BatchSettings) -> None:
    """Refuse a batch the loop cannot run, with a reason (a caller's bug, not a user's)."""
    if not jobs:
        raise ValueError("a batch needs at least one job")
    shapes = {tuple(j.content.shape) for j in jobs}
    if len(shapes) != 1:
        raise ValueError(f"a batch must be one size, got {sorted(shapes)}")
    c, h, w = next(iter(shapes))
    if c != 3 or min(h, w) < 16:
        raise ValueError(f"content must be RGB and at least 16 px on each side, got {c}x{h}x{w}")
    missing = settings.layers - model.layers
    if missing:
        raise ValueError(f"model lacks layer(s) {sorted(missing)}")
    for j in jobs:
        check_job(j, (c, h, w))
    if settings.iterations < 0 or settings.log_every < 1:
        raise ValueError("iterations must be >= 0 and log_every >= 1")
    if settings.stop_tolerance < 0 or settings.stop_window < 1:
        raise ValueError("stop_tolerance must be >= 0 and stop_window >= 1")


def check_job(j: TransferJob, shape: tuple[int, ...]) -> None:
    """Refuse a job that cannot run in a batch of contents of `shape`."""
    if tuple(j.content.shape) != shape:
        raise ValueError(f"a batch must be one size: {tuple(j.content.shape)} is not {shape}")
    if not j.styles:
        raise ValueError("every job needs at least one style")
    if j.regions and not j.styled_regions:
        raise ValueError("a job with regions needs at least one region with a style")
    if any(r.mask.dim() != 2 for r in j.regions):
        raise ValueError("a region's mask must be (height, width)")
    if j.content_map is not None and j.content_map.dim() != 2:
        raise ValueError("a content map must be (height, width)")
    if j.init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, not {j.init!r}")
    if j.init_image is not None and j.init_image.shape != j.content.shape:
        raise ValueError(f"init_image must match the content's shape {tuple(j.content.shape)}")
    if j.preserve_color not in COLOR_MODES:
        raise ValueError(f"preserve_color must be one of {', '.join(COLOR_MODES)}, not {j.preserve_color!r}")
