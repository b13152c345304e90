import pytest
import torch

from nstd import config
from nstd.daemon.styles import StyleBook
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob
from nstd.errors import ConfigError

from harness.synthetic import rand_image
from test_config import write


def style_loss_at_start(model, styles):
    job = TransferJob(rand_image(32, 40, seed=1), styles)
    [r] = run_batch(model, [job], BatchSettings(iterations=0))
    return r.history[0]["style"]


def test_blend_weights_move_the_style_target(tiny_model):
    a = rand_image(36, 36, seed=10)
    b = rand_image(36, 36, seed=11) * torch.tensor([1.0, 0.3, 0.2])[:, None, None]
    alone_a = style_loss_at_start(tiny_model, (StyleImage(a),))
    alone_b = style_loss_at_start(tiny_model, (StyleImage(b),))
    only_a = style_loss_at_start(tiny_model, (StyleImage(a, weight=1.0), StyleImage(b, weight=0.0)))
    only_b = style_loss_at_start(tiny_model, (StyleImage(a, weight=0.0), StyleImage(b, weight=2.0)))
    half = style_loss_at_start(tiny_model, (StyleImage(a, weight=1.0), StyleImage(b, weight=1.0)))
    assert only_a == pytest.approx(alone_a, rel=1e-5)
    assert only_b == pytest.approx(alone_b, rel=1e-5)
    assert alone_a != pytest.approx(alone_b, rel=1e-2)
    # The loss against a mean of two Grams is quadratic in the weight: below the larger end.
    assert half < max(alone_a, alone_b)


BLEND = ("styles: {a: {image: a.png}, b: {image: b.png, style_scale: 0.5}}\n"
         "blends: {mix: {styles: {a: 0.7, b: {weight: 0.3, scale: 2.0}}, style_weight: 40}}\n")


def test_blends_parse_with_weights_scales_and_overrides(tmp_path):
    from PIL import Image
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / name)
    cfg = config.load(write(tmp_path, BLEND))
    mix = cfg.blends["mix"]
    assert [(p.style, p.weight, p.scale) for p in mix.parts] == [("a", 0.7, None), ("b", 0.3, 2.0)]
    assert mix.params.style_weight == 40
    book = StyleBook.load(cfg)
    assert book.names() == ["a", "b", "mix"]
    images = book.get("mix").style_images(mix.params)
    assert [(i.weight, i.scale) for i in images] == [(0.7, 1.0), (0.3, 2.0)]
    assert book.get("mix").sha256 not in (book.get("a").sha256, book.get("b").sha256)


@pytest.mark.parametrize("text,message", [
    ("blends: {mix: {styles: {a: 1, zz: 1}}}\n", "blends.mix.styles.zz: no such style"),
    ("blends: {mix: {styles: {a: 1}}}\n", "blends.mix.styles: a blend needs at least two styles"),
    ("blends: {a: {styles: {a: 1, b: 1}}}\n", "blends.a: a style has this name already"),
    ("blends: {mix: {styles: {a: -1, b: 1}}}\n", "blends.mix.styles.a.weight: must be at least 0"),
    ("blends: {mix: {styles: {a: 1, b: .inf}}}\n", "blends.mix.styles.b.weight: must be a finite number"),
    ("blends: {mix: {styles: {a: 1, b: 1}, style_wieght: 3}}\n", "blends.mix.style_wieght: unknown key"),
    ("blends: {mix: {weights: {a: 1}}}\n", "blends.mix.styles: missing"),
])
def test_bad_blends_name_their_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match="^" + message):
        config.load(write(tmp_path, "styles: {a: {image: a.png}, b: {image: b.png}}\n" + text))
