"""VGG19 feature extractor, truncated after the deepest layer in use."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from nstd.engine.layers import LAYER_INDEX, LAYER_NAMES, LAYERS, PREPROCESSING


class VGGFeatures(nn.Module):
    """Frozen VGG19 features that return the activations of the named layers.

    Input is RGB in [0, 1]; the weight set's own preprocessing is applied inside.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], preprocessing: str,
                 layers: set[str] | frozenset[str], pooling: str = "max", model_id: str = "unknown"):
        super().__init__()
        self.model_id = model_id
        unknown = sorted(set(layers) - set(LAYER_INDEX))
        if unknown:
            raise ValueError(f"unknown VGG19 layer(s): {', '.join(unknown)}")
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be max or avg, not {pooling!r}")
        self.layers = frozenset(layers)
        self.pooling = pooling
        pre = PREPROCESSING[preprocessing]
        self.preprocessing = pre.name
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) / pre.scale)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) / pre.scale)
        self._pre = pre
        last = max(LAYER_INDEX[n] for n in self.layers)
        self.features = _build(last, pooling, self.layers)
        own = {k: v for k, v in state_dict.items() if int(k.split(".")[0]) <= last}
        self.features.load_state_dict(own)
        # Blocks end after each pooling layer: the natural checkpoint boundaries.
        ends = [layer.index + 1 for layer in LAYERS[: last + 1] if layer.kind == "pool"]
        ends = [e for e in ends if e <= last] + [last + 1]
        self._blocks = list(zip([0] + ends[:-1], ends))
        self.requires_grad_(False)
        self.eval()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self._pre.apply(x, self.mean, self.std)

    def forward(self, x: torch.Tensor, channels_last: bool = False,
                checkpoint: bool = False) -> dict[str, torch.Tensor]:
        """The named layers' activations. `checkpoint` keeps only each block's output for
        the backward pass and recomputes the rest, trading one more forward pass for
        most of the activation memory."""
        h = self.normalize(x)
        if channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        out: dict[str, torch.Tensor] = {}
        for start, stop in self._blocks:
            if checkpoint and torch.is_grad_enabled() and h.requires_grad:
                h, part = torch.utils.checkpoint.checkpoint(self._block, h, start, stop, use_reentrant=False)
            else:
                h, part = self._block(h, start, stop)
            out.update(part)
        return out

    def _block(self, h: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        part = {}
        for i in range(start, stop):
            h = self.features[i](h)
            if LAYER_NAMES[i] in self.layers:
                part[LAYER_NAMES[i]] = h
        return h, part


def _build(last: int, pooling: str, captured: frozenset[str]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for layer in LAYERS[: last + 1]:
        if layer.kind == "pool":
            mods.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
        elif layer.kind == "conv":
            mods.append(nn.Conv2d(layer.channels_in, layer.channels_out, 3, padding=1))
        else:
            # An in-place ReLU saves one activation per layer, but would overwrite
            # a conv output that the caller asked to keep.
            mods.append(nn.ReLU(inplace=LAYER_NAMES[layer.index - 1] not in captured))
    return nn.Sequential(*mods)
