import pytest
import torch

from nstd.engine import color
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob

from harness.synthetic import rand_image


def chroma(image):
    return color.rgb_to_yiq(image)[1:]


def test_yiq_round_trip():
    img = rand_image(20, 24, seed=1)
    assert torch.allclose(color.yiq_to_rgb(color.rgb_to_yiq(img)), img, atol=1e-5)


def test_luminance_mode_keeps_the_photos_colour(tiny_model):
    photo = rand_image(32, 40, seed=3)
    # A strongly coloured style: all red and blue, so a plain transfer would recolour.
    style = rand_image(36, 36, seed=4) * torch.tensor([1.0, 0.1, 0.9])[:, None, None]
    settings = BatchSettings(iterations=15, log_every=5)
    jobs = [TransferJob(photo, (StyleImage(style, key="s"),), style_weight=100.0, preserve_color=mode)
            for mode in ("none", "luminance")]
    plain, kept = run_batch(tiny_model, jobs, settings)
    # Luminance changed (the style did something) ...
    assert (color.luminance(kept.image) - color.luminance(photo)).abs().mean() > 1e-3
    # ... but chroma is the photo's, up to clamping into [0, 1].
    assert (chroma(kept.image) - chroma(photo)).abs().mean() < 0.01
    assert (chroma(plain.image) - chroma(photo)).abs().mean() > 2 * (chroma(kept.image) - chroma(photo)).abs().mean()


def test_histogram_matching_gives_the_style_the_photos_colour_statistics():
    photo = rand_image(30, 30, seed=5) * 0.5 + 0.25
    style = rand_image(40, 40, seed=6) * torch.tensor([0.9, 0.2, 0.3])[:, None, None]
    matched = color.match_histogram(style, photo)
    assert matched.shape == style.shape
    p, m = photo.reshape(3, -1), matched.reshape(3, -1)
    assert torch.allclose(m.mean(1), p.mean(1), atol=0.02)
    assert torch.allclose(torch.cov(m), torch.cov(p), atol=3e-3)


def test_luminance_matching_takes_the_photos_mean_and_deviation():
    photo, style = rand_image(30, 30, seed=7), rand_image(30, 30, seed=8) * 0.3
    y = color.match_luminance(style, photo)
    yc = color.luminance(photo)
    assert y.mean() == pytest.approx(yc.mean().item(), abs=1e-5)
    assert y.std() == pytest.approx(yc.std().item(), rel=1e-4)


def test_an_unknown_mode_is_refused(tiny_model):
    job = TransferJob(rand_image(32, 32, 1), (StyleImage(rand_image(32, 32, 2)),), preserve_color="sepia")
    with pytest.raises(ValueError, match="preserve_color"):
        run_batch(tiny_model, [job], BatchSettings(iterations=1))
