"""Losses of Gatys et al. 2016, batched: every function returns one value per image."""

from __future__ import annotations

import torch


def gram(features: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrices, (N, C, H, W) -> (N, C, C), divided by H*W.

    Computed in fp32 whatever the activations' dtype: half-precision Grams overflow.
    """
    n, c, h, w = features.shape
    if c > 1 and features.is_contiguous(memory_format=torch.channels_last):
        # Read channels-last activations as (N, HW, C) in place rather than copying them.
        f = features.permute(0, 2, 3, 1).reshape(n, h * w, c).float()
        return torch.bmm(f.transpose(1, 2), f) / (h * w)
    f = features.reshape(n, c, h * w).float()
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared feature difference per image."""
    diff = features.float() - target.float()
    return diff.pow(2).flatten(1).mean(1)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared Gram difference per image.

    With Grams divided by H*W, this is Gatys' E_l = sum (G - A)^2 / (4 N^2 M^2) up to
    the constant 4, so layers of different widths and sizes weigh alike.
    """
    return (gram(features) - target_gram).pow(2).flatten(1).mean(1)


def tv_loss(images: torch.Tensor) -> torch.Tensor:
    """Total variation (squared neighbour differences) per image."""
    dx = images[:, :, :, 1:] - images[:, :, :, :-1]
    dy = images[:, :, 1:, :] - images[:, :, :-1, :]
    return dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1)
