"""VGG19's layer table and the input conventions of its weight sets.

Plain data, no torch: the weights store, the config's layer names and the memory
planner read it without loading PyTorch; nstd.engine.vgg builds the network from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nstd.engine.sizes import POOLED

if TYPE_CHECKING:
    import torch

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


def reach(name: str) -> int:
    """How far, in input pixels, a layer's activation sees from its own position: half its
    receptive field (a 3x3 convolution widens it by the layer's stride on each side, a
    2x2 pool by half of one). relu5_1's field is 156 px wide."""
    width = 1
    for layer in LAYERS[: LAYER_INDEX[name] + 1]:
        width += 2 * layer.scale if layer.kind == "conv" else layer.scale if layer.kind == "pool" else 0
    return width // 2


def halo(names) -> int:
    """Px of context a window's core needs on each side for its activations at `names` to
    be exactly the whole image's: the deepest layer's reach, in the pools' multiples of
    16 so that a window's activations line up with the image's (80 for relu5_1)."""
    deepest = max(reach(n) for n in names)
    return -(-deepest // POOLED) * POOLED


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
