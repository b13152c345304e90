"""VGG19 feature extractor, truncated after the deepest layer in use."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

# Configuration "E" of Simonyan & Zisserman: channel counts, "M" for a pooling layer.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


@dataclass(frozen=True)
class Layer:
    """One layer of `vgg19().features`: the one table every other walk reads."""

    index: int  # in torchvision's `features`, and in the state dict's keys
    name: str  # conv1_1, relu1_1, pool1, ...
    kind: str  # conv | relu | pool
    block: int  # 1..5; a block ends with its pooling layer
    channels_in: int
    channels_out: int
    scale: int  # how many times the input was halved before this layer: 1, 2, 4, 8, 16


def _table() -> tuple[Layer, ...]:
    layers: list[Layer] = []
    block, conv, channels, scale = 1, 1, 3, 1
    for item in VGG19_CFG:
        if item == "M":
            layers.append(Layer(len(layers), f"pool{block}", "pool", block, channels, channels, scale))
            block, conv, scale = block + 1, 1, scale * 2
            continue
        for kind, cin in (("conv", channels), ("relu", item)):
            layers.append(Layer(len(layers), f"{kind}{block}_{conv}", kind, block, cin, item, scale))
        channels, conv = item, conv + 1
    return tuple(layers)


LAYERS: tuple[Layer, ...] = _table()
LAYER_NAMES: tuple[str, ...] = tuple(layer.name for layer in LAYERS)
LAYER_INDEX = {layer.name: layer.index for layer in LAYERS}
CONV_INDICES = tuple(layer.index for layer in LAYERS if layer.kind == "conv")


def feature_size(name: str, h: int, w: int) -> tuple[int, int]:
    """The (height, width) of a layer's activations for an h x w input: each pool floors."""
    for _ in range(LAYERS[LAYER_INDEX[name]].scale.bit_length() - 1):
        h, w = h // 2, w // 2
    return h, w


def weight_shapes() -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a VGG19 feature state dict holds, keyed like torchvision's."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in LAYERS:
        if layer.kind == "conv":
            shapes[f"{layer.index}.weight"] = (layer.channels_out, layer.channels_in, 3, 3)
            shapes[f"{layer.index}.bias"] = (layer.channels_out,)
    return shapes


@dataclass(frozen=True)
class Preprocessing:
    """How a weight set expects its input: channel order, value range and normalisation.

    `mean` and `std` are in the network's own channel order (B, G, R when `bgr`), in
    the units of `scale`: they apply after the image has been reordered and scaled.
    """

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] to the network's input; `mean` and `std` as (1, 3, 1, 1) / scale."""
        if self.bgr:
            x = x.flip(1)
        return (x - mean) / std


PREPROCESSING = {
    # Caffe VGG19 (Simonyan & Zisserman): BGR, 0-255, the ImageNet mean subtracted, no
    # std. The mean is B, G, R: the blue channel's mean is 103.939.
    "caffe": Preprocessing("caffe", True, 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # torchvision IMAGENET1K_V1: RGB, 0-1, ImageNet mean and std.
    "torchvision": Preprocessing("torchvision", False, 1.0,
                                 (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


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
