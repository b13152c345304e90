"""Spatial control, after Gatys et al., "Controlling Perceptual Factors in Neural Style
Transfer" (CVPR 2017): each region's style statistics are taken over that region only, and
the photo is blended back, feathered, where a region keeps it.

A guide is a per-pixel weight in [0, 1] for each styled region of a job. A job without
regions has one region covering everything, so masked and unmasked jobs share a batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nstd.engine.types import TransferJob

FEATHER = 0.01  # of the long side: the blur (sigma) of a keep region's edge in the final blend


def fit(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (h, w) mask at exactly `size`, its edges averaged rather than aliased."""
    if tuple(mask.shape) == tuple(size):
        return mask.float()
    return resample(mask, size).clamp(0, 1)


def resample(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (h, w) map of any values at exactly `size`, averaged rather than aliased."""
    if tuple(plane.shape) == tuple(size):
        return plane.float()
    return F.interpolate(plane.float()[None, None], size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0, 0]


def pixel_guides(jobs: list[TransferJob], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(N, R, H, W): each job's styled regions' weights, zero-padded to the batch's most."""
    count = max(max(len(j.styled_regions), 1) for j in jobs)
    out = torch.zeros(len(jobs), count, *size, device=device)
    for i, job in enumerate(jobs):
        if not job.regions:
            out[i, 0] = 1.0
        for k, region in enumerate(job.styled_regions):
            out[i, k] = fit(region.mask.to(device), size)
    return out


def content_maps(jobs: list[TransferJob], size: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """(N, 1, H, W): each job's content weight per pixel (1 where it has no map); None
    where no job of the batch has one."""
    if all(j.content_map is None for j in jobs):
        return None
    out = torch.ones(len(jobs), 1, *size, device=device)
    for i, job in enumerate(jobs):
        if job.content_map is not None:
            out[i, 0] = resample(job.content_map.to(device), size).clamp_min(0)
    return out


def at_layer(guides: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Guides at a layer's feature size: the share of each cell's pixels in the region."""
    if tuple(guides.shape[-2:]) == tuple(size):
        return guides
    return F.adaptive_avg_pool2d(guides, size)


def guided_gram(features: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) features, (N, R, H, W) weights -> (N, R, C, C): per region, the
    weighted mean of the activations' outer products (a plain Gram for a full region)."""
    return weighted_products(features, guides) / guides.flatten(2).sum(-1)[..., None, None].clamp_min(1e-6)


# Positions weighed at once: a print-size image's first layer has tens of millions, and a
# weighted fp32 copy of all of them for every region would cost more than its activations.
SLICE = 1 << 18


def weighted_products(features: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) activations, (N, K, H, W) weights -> (N, K, C, C): per weight map, the
    weighted sum of the activations' outer products, in fp32, a slice of positions at a
    time."""
    n, c, h, w = features.shape
    k = guides.shape[1]
    f = features.reshape(n, c, h * w)
    g = guides.reshape(n, k, 1, h * w)
    out = None
    for lo in range(0, h * w, SLICE):
        part = f[:, :, lo:lo + SLICE].float()
        weighted = (part[:, None] * g[..., lo:lo + SLICE]).reshape(n, k * c, -1)
        step = torch.bmm(weighted, part.transpose(1, 2))
        out = step if out is None else out + step
    return out.reshape(n, k, c, c)


def keep_alpha(job: TransferJob, size: tuple[int, int]) -> torch.Tensor | None:
    """(H, W): how much of the photo to blend back at each pixel, feathered; None: nowhere."""
    keeps = [fit(r.mask.cpu(), size) for r in job.regions if r.keep]
    if not keeps:
        return None
    alpha = torch.stack(keeps).sum(0).clamp(0, 1)
    return blur(alpha, FEATHER * max(size))


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) blurred by a Gaussian of `sigma` px, edges reflected (separable: rows, then columns)."""
    radius = min(math.ceil(3 * sigma), (min(image.shape) - 1) // 2)
    if radius < 1:
        return image
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(image)
    x = F.pad(image[None, None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))[0, 0]


def blend_keep(job: TransferJob, image: torch.Tensor) -> torch.Tensor:
    """The result with the photo put back where its regions keep it."""
    alpha = keep_alpha(job, tuple(image.shape[-2:]))
    if alpha is None:
        return image
    photo = job.content.to(image.device, image.dtype)
    return (alpha * photo + (1 - alpha) * image).clamp(0, 1)
