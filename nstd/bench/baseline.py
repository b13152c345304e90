"""The loop as the classic tutorials write it: the yardstick for `nstd bench`.

One image at a time, fp32, the content and style features computed again inside every
iteration, and `torch.optim.LBFGS` (one evaluation per step, so one iteration is one
forward and backward pass, as in nstd) or `torch.optim.Adam`. The losses are nstd's own
definitions, so both loops do the same work and reach comparable numbers.
"""

from __future__ import annotations

from typing import Callable

import torch

from nstd.engine.losses import content_loss, gram, style_loss, tv_loss
from nstd.engine.resize import resize_long_side
from nstd.engine.types import BatchSettings, TransferJob
from nstd.engine.vgg import VGGFeatures


def content_and_style(model: VGGFeatures, x: torch.Tensor, content: torch.Tensor, style: torch.Tensor,
                      settings: BatchSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """nstd's normalised content and style losses of x, with the targets computed afresh
    from the content and style images, as the tutorials do every iteration."""
    with torch.no_grad():
        c_feats, s_feats = model(content), model(style)
        c_targets = {n: c_feats[n] for n in settings.content_layers}
        s_targets = {n: gram(s_feats[n]) for n, _ in settings.style_layers}
    f = model(x)
    c = sum(content_loss(f[n], t) / t.pow(2).mean() for n, t in c_targets.items())
    s = sum(w * style_loss(f[n], s_targets[n]) / s_targets[n].pow(2).mean() for n, w in settings.style_layers)
    return c, s


def run(model: VGGFeatures, job: TransferJob, settings: BatchSettings,
        seen: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Stylize one image; returns it (3, H, W) on the model's device. `seen` is shown the
    pixels after each iteration (for time-to-quality snapshots)."""
    device = model.mean.device
    content = job.content.to(device)[None]
    style = resize_long_side(job.styles[0].image.to(device), max(content.shape[-2:]))[None]
    x = content.clone().requires_grad_(True)
    if settings.optimizer == "lbfgs":
        opt = torch.optim.LBFGS([x], lr=settings.lr or 1.0, max_iter=1, history_size=settings.lbfgs_history,
                                tolerance_grad=-1, tolerance_change=-1)
    else:
        opt = torch.optim.Adam([x], lr=settings.lr or 0.02)

    def closure():
        opt.zero_grad()
        c, s = content_and_style(model, x, content, style, settings)
        loss = job.content_weight * c + job.style_weight * s + job.tv_weight * tv_loss(x)
        loss.sum().backward()
        return loss.sum()

    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        for done in range(1, settings.iterations + 1):
            opt.step(closure)
            if settings.optimizer == "adam":
                with torch.no_grad():
                    x.clamp_(0, 1)
            if seen is not None:
                seen(done, x)
    return x.detach()[0].clamp(0, 1)
