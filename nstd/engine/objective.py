"""The objective of Gatys et al. as small modules: content, style and TV terms, summed.

Each module returns one value per image. Each layer's loss is divided by its target's
mean square, so the weights mean the same for every weight set (Caffe's 0-255 input
makes Grams ~1e4 times larger) and no layer dominates by the size of its activations.
"""

from __future__ import annotations

import torch
from torch import nn

from nstd.engine.guides import at_layer, guided_gram
from nstd.engine.layers import feature_size
from nstd.engine.losses import content_loss, style_loss, tv_loss


def mean_square(t: torch.Tensor) -> torch.Tensor:
    """Per image, the mean square of a target: the layer's normaliser."""
    return t.float().pow(2).flatten(1).mean(1).clamp_min(1e-12)


class ContentLoss(nn.Module):
    """Normalised feature distance to the photo at one layer, weighted per position where
    `weights` (N, 1, H, W) at the image's size is given."""

    def __init__(self, layer: str, target: torch.Tensor, weights: torch.Tensor | None = None):
        super().__init__()
        self.layer = layer
        self.register_buffer("target", target)
        self.register_buffer("norm", mean_square(target))
        # Pooled once to the layer's size, as the guides are: a cell weighs as its pixels do.
        self.register_buffer("weights", None if weights is None else at_layer(weights, tuple(target.shape[-2:])))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return content_loss(feats[self.layer], self.target, self.weights) / self.norm

    def load(self, k: int, other: "ContentLoss") -> None:
        if self.weights is not None or other.weights is not None:
            raise ValueError("only jobs without a content map take a slot in a running batch")
        self.target[k] = other.target[0]
        self.norm[k] = other.norm[0]

    def select(self, rows: torch.Tensor) -> "ContentLoss":
        out = ContentLoss(self.layer, self.target[rows])
        out.norm = self.norm[rows]
        out.weights = None if self.weights is None else self.weights[rows]
        return out


class StyleLoss(nn.Module):
    """Normalised Gram distance to the style at each layer: (N, layers), unweighted."""

    def __init__(self, targets: dict[str, torch.Tensor]):
        super().__init__()
        self.layers = list(targets)
        self.targets = [targets[n] for n in self.layers]
        self.register_buffer("norm", torch.stack([mean_square(t) for t in self.targets], 1))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([style_loss(feats[n], t) for n, t in zip(self.layers, self.targets)], 1) / self.norm

    def load(self, k: int, other: "StyleLoss") -> None:
        for target, new in zip(self.targets, other.targets):
            target[k] = new[0]
        self.norm[k] = other.norm[0]

    def select(self, rows: torch.Tensor) -> "StyleLoss":
        out = StyleLoss({n: t[rows] for n, t in zip(self.layers, self.targets)})
        out.norm = self.norm[rows]
        return out


class GuidedStyleLoss(nn.Module):
    """Per region, the normalised distance of the region's own Gram to its style's.

    Returns (N, layers), each region weighted by its share of the image (so a lone full
    region is exactly StyleLoss), and (N, R) layer-weighted region losses for the log."""

    def __init__(self, targets: dict[str, torch.Tensor], guides: torch.Tensor, layer_weights: torch.Tensor):
        super().__init__()
        self.layers = list(targets)
        self.targets = [targets[n] for n in self.layers]  # (N, R, C, C)
        # Each layer's guides, pooled once to its activations' size: they never change.
        self.guides = [at_layer(guides, feature_size(n, *guides.shape[-2:])) for n in self.layers]
        self.register_buffer("area", guides.flatten(2).mean(2))
        self.register_buffer("norm", torch.stack([t.float().pow(2).flatten(2).mean(2).clamp_min(1e-12)
                                                  for t in self.targets], 2))  # (N, R, layers)
        self.register_buffer("layer_weights", layer_weights)

    def forward(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        per = []
        for name, target, guides in zip(self.layers, self.targets, self.guides):
            per.append((guided_gram(feats[name], guides) - target).pow(2).flatten(2).mean(2))
        losses = torch.stack(per, 2) / self.norm  # (N, R, layers)
        return (losses * self.area[..., None]).sum(1), (losses * self.layer_weights).sum(2)


class TVLoss(nn.Module):
    """Total variation of the image itself: smoothness against pixel-level speckle."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tv_loss(x)


class Objective(nn.Module):
    """The weighted sum, with a row of its parts per image for the loss log.

    The row is total, content, style, tv, then each style layer unweighted, then (guided
    style only) each region's layer-weighted style loss."""

    def __init__(self, content: list[ContentLoss], style: StyleLoss | GuidedStyleLoss, layer_weights: torch.Tensor,
                 weights: torch.Tensor):
        super().__init__()
        self.content = nn.ModuleList(content)
        self.style = style
        self.tv = TVLoss()
        self.register_buffer("layer_weights", layer_weights)  # (layers,)
        self.register_buffer("weights", weights)  # (N, 3): content, style, tv per image

    def forward(self, x: torch.Tensor, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        c = sum(term(feats) for term in self.content)
        out = self.style(feats)
        s_layers, regions = out if isinstance(out, tuple) else (out, None)
        s = (s_layers * self.layer_weights).sum(1)
        tv = self.tv(x)
        cw, sw, tw = self.weights.unbind(1)
        total = cw * c + sw * s + tw * tv
        parts = [torch.stack([total, c, s, tv], 1), s_layers] + ([] if regions is None else [regions])
        return total, torch.cat(parts, 1)

    @torch.no_grad()
    def select(self, rows: torch.Tensor) -> "Objective":
        """The objective of images `rows` only (plain style losses, as for `load`)."""
        if not isinstance(self.style, StyleLoss):
            raise ValueError("only an objective without regions is narrowed")
        return Objective([c.select(rows) for c in self.content], self.style.select(rows), self.layer_weights,
                         self.weights[rows])

    @torch.no_grad()
    def load(self, k: int, other: "Objective") -> None:
        """Image k's targets and weights replaced, in place, by those of `other`, a one-image
        objective: a new job takes the slot. Only plain style losses are swapped: a guided
        one's regions differ in number from job to job."""
        if not isinstance(self.style, StyleLoss) or not isinstance(other.style, StyleLoss):
            raise ValueError("only jobs without regions take a slot in a running batch")
        for mine, theirs in zip(self.content, other.content):
            mine.load(k, theirs)
        self.style.load(k, other.style)
        self.weights[k] = other.weights[0]
