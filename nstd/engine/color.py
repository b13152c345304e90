"""Colour preservation, after Gatys et al., "Preserving Color in Neural Artistic Style
Transfer" (2016): transfer on luminance alone, or match the style's colours to the photo.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from nstd.engine.types import StyleImage, TransferJob, TransferResult

# NTSC YIQ: Y is luminance, I and Q carry the colour.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.595716, -0.274453, -0.321263],
                            [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB to (3, H, W) YIQ."""
    return torch.einsum("ij,jhw->ihw", _RGB_TO_YIQ.to(image), image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,jhw->ihw", _YIQ_TO_RGB.to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(1, H, W) luminance of an RGB image."""
    return rgb_to_yiq(image)[:1]


def gray(y: torch.Tensor) -> torch.Tensor:
    """A one-channel luminance as an RGB image that VGG can read."""
    return y.expand(3, *y.shape[-2:]).clamp(0, 1)


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style's luminance, shifted and scaled to the photo's mean and deviation."""
    ys, yc = luminance(style), luminance(content)
    scale = yc.std() / ys.std().clamp_min(1e-6)
    return (ys - ys.mean()) * scale + yc.mean()


def recombine(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The stylized image's luminance with the photo's colour (I and Q)."""
    yiq = rgb_to_yiq(content)
    yiq[0] = luminance(stylized)[0]
    return yiq_to_rgb(yiq).clamp(0, 1)


def match_histogram(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style with its colour distribution moved onto the photo's.

    A linear map x -> A x + b that gives the style pixels the photo's mean and colour
    covariance, with A = C_c^1/2 C_s^-1/2 (the paper's image-analogies variant).
    """
    s, c = style.reshape(3, -1).double(), content.reshape(3, -1).double()
    mu_s, mu_c = s.mean(1, keepdim=True), c.mean(1, keepdim=True)
    cov_s = torch.cov(s) + 1e-5 * torch.eye(3, dtype=s.dtype)
    cov_c = torch.cov(c) + 1e-5 * torch.eye(3, dtype=s.dtype)
    a = _sqrtm(cov_c) @ torch.linalg.inv(_sqrtm(cov_s))
    out = a @ (s - mu_s) + mu_c
    return out.reshape(style.shape).to(style.dtype).clamp(0, 1)


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def prepare(job: TransferJob) -> TransferJob:
    """The job as the optimiser sees it under colour preservation. Its style targets then
    depend on the photo, so they bypass the Gram cache (key None)."""
    if job.preserve_color == "luminance":
        job = _restyle(job, lambda s: gray(match_luminance(s, job.content)))
        init = None if job.init_image is None else gray(luminance(job.init_image))
        return replace(job, content=gray(luminance(job.content)), init_image=init)
    if job.preserve_color == "histogram":
        return _restyle(job, lambda s: match_histogram(s, job.content))
    return job


def _restyle(job: TransferJob, change) -> TransferJob:
    """The job with `change` applied to every style image, its regions' included."""
    def each(styles: tuple[StyleImage, ...]) -> tuple[StyleImage, ...]:
        return tuple(StyleImage(change(s.image), None, s.weight, s.scale) for s in styles)

    regions = tuple(replace(r, styles=each(r.styles)) for r in job.regions)
    return replace(job, styles=each(job.styles), regions=regions)


def finish(job: TransferJob, result: TransferResult) -> None:
    """Put the photo's colour back into a luminance-only result and its snapshots."""
    if job.preserve_color == "luminance":
        photo = job.content.cpu().float()
        result.image = recombine(result.image, photo)
        result.snapshots = [(k, recombine(s, photo)) for k, s in result.snapshots]
