"""The real Caffe VGG19 stylizes (its weights fetched as `make run` fetches them, by the
`caffe_models` fixture, which tests/test_portraits.py shares)."""

import math

import pytest
import torch

from nstd import weights
from nstd.engine.resize import resize_long_side
from nstd.engine.transfer import run_batch
from nstd.engine.types import StyleImage
from nstd.engine.vgg import VGGFeatures
from nstd.params import TransferParams

pytestmark = pytest.mark.slow


def scene(h: int, w: int) -> torch.Tensor:
    """A photo-like scene: sky gradient, a sun, houses with windows, water."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    img = torch.stack([0.4 + 0.3 * y, 0.6 + 0.2 * y, 0.9 - 0.2 * y])
    sun = ((x - 0.8) ** 2 + (y - 0.2) ** 2) < 0.01
    img[:, sun] = torch.tensor([1.0, 0.9, 0.4])[:, None]
    for i, left in enumerate((0.1, 0.3, 0.5)):
        house = (x > left) & (x < left + 0.15) & (y > 0.45) & (y < 0.75)
        img[:, house] = torch.tensor([[0.8, 0.3, 0.2], [0.9, 0.8, 0.5], [0.6, 0.7, 0.3]][i])[:, None]
        window = house & ((x * 40).floor() % 3 == 0) & ((y * 40).floor() % 3 == 0)
        img[:, window] = 0.1
    img[:, y > 0.75] = torch.stack([0.1 + 0.1 * x, 0.2 + 0.1 * x, 0.4 + 0.1 * x])[:, y > 0.75]
    return img.clamp(0, 1)


def swirls(h: int, w: int) -> torch.Tensor:
    y = torch.linspace(-1, 1, h)[:, None].expand(h, w)
    x = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    r, a = (x**2 + y**2).sqrt(), torch.atan2(y, x)
    t = torch.sin(14 * r + 3 * a)
    return torch.stack([0.5 + 0.4 * t, 0.4 + 0.3 * torch.sin(9 * x), 0.6 - 0.3 * t]).clamp(0, 1)


def test_real_vgg19_stylizes_a_128px_image(caffe_models):
    sd, info = weights.load(caffe_models, "caffe")
    assert info.source_sha256 == weights.CAFFE_H5_SHA256

    # From noise, at 128 px and 50 iterations, a lighter style weight lets both losses show.
    params = TransferParams(size=128, iterations=50, init="noise", log_every=10, style_weight=1.0)
    model = VGGFeatures(sd, info.preprocessing, params.settings().layers, model_id=info.model_id)
    content = resize_long_side(scene(96, 128), 128)
    style = StyleImage(swirls(128, 128), key="swirls")
    [result] = run_batch(model, [params.job(content, (style,))], params.settings())
    first, last = result.history[0], result.history[-1]
    assert all(math.isfinite(h["total"]) for h in result.history)
    assert last["content"] < 0.4 * first["content"], (first, last)
    assert last["style"] < 0.5 * first["style"], (first, last)
    # The picture has moved from the noise it started from towards the scene.
    start = torch.rand(content.shape, generator=torch.Generator().manual_seed(params.seed))
    assert (result.image - content).abs().mean() < 0.75 * (start - content).abs().mean()
