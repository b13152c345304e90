"""Losses of Gatys et al. 2016, batched: every function returns one value per image."""

from __future__ import annotations

import functools

import torch


def gram(features: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrices, (N, C, H, W) -> (N, C, C), divided by H*W.

    Computed in fp32 whatever the activations' dtype: half-precision Grams overflow.
    """
    n, c, h, w = features.shape
    if c > 1 and features.is_contiguous(memory_format=torch.channels_last):
        # Read channels-last activations as (N, HW, C) in place rather than copying them.
        return _Gram.apply(features.permute(0, 2, 3, 1).reshape(n, h * w, c), True) / (h * w)
    return _Gram.apply(features.reshape(n, c, h * w), False) / (h * w)


class _Gram(torch.autograd.Function):
    """F F^T for F of (N, C, K), given as F itself or, `rows` True, as F^T (N, K, C).

    The Gram is symmetric, so its gradient is (G' + G'^T) F: one product, where autograd
    through `F @ F^T` would take two (one per operand) and add them, a third more of the
    time the Grams cost an iteration (benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, rows: bool) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.rows = rows
        return _product(f.transpose(1, 2), f) if rows else _product(f, f.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (f,) = ctx.saved_tensors
        sym = grad + grad.transpose(1, 2)
        return (_back(f, sym) if ctx.rows else _back(sym, f)), None


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in fp32. bf16 activations on CUDA go straight into one product with an fp32
    output (bf16 tensor cores, fp32 accumulation), with no fp32 copy of the activations."""
    if a.dtype == torch.bfloat16 and a.is_cuda and bf16_products(a.device):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(_wide(a), _wide(b))


def _back(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for a gradient, in the activations' dtype: bf16 ones on CUDA take bf16
    operands (tensor cores, fp32 accumulation) rather than an fp32 copy of themselves."""
    dtype = a.dtype if a.dtype != torch.float32 else b.dtype
    if dtype == torch.bfloat16 and a.is_cuda and bf16_products(a.device):
        return torch.bmm(a.to(dtype), b.to(dtype))
    return torch.bmm(_wide(a), _wide(b)).to(dtype)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, for gradient checks)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@functools.cache
def bf16_products(device: torch.device) -> bool:
    """Whether this build multiplies bf16 into fp32 on `device`, agreeing with the cast
    product; tried once per device."""
    try:
        gen = torch.Generator(device).manual_seed(0)
        a = torch.randn(2, 64, 96, device=device, generator=gen).bfloat16()
        fast = torch.bmm(a, a.transpose(1, 2), out_dtype=torch.float32)
        slow = torch.bmm(a.float(), a.float().transpose(1, 2))
        return bool(torch.allclose(fast, slow, rtol=1e-2, atol=1e-2))
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def content_loss(features: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared feature difference per image; `weights` (N, 1, H, W), each position's
    share (1: as unweighted)."""
    diff = (features.float() - target.float()).pow(2)
    if weights is not None:
        diff = diff * weights
    return diff.flatten(1).mean(1)


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
