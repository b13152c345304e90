"""Spatial control in the engine: per-region style losses and kept regions."""

import pytest
import torch

from nstd.engine.guides import at_layer, guided_gram, keep_alpha
from nstd.engine.losses import gram
from nstd.engine.switches import Switches
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, Region, StyleImage, TransferJob

from harness.synthetic import rand_image

H, W = 40, 60


def reds() -> torch.Tensor:
    """Red stripes on black."""
    img = torch.zeros(3, 36, 36)
    img[0, 0::3], img[0, 1::3] = 1.0, 0.8
    return img


def blues() -> torch.Tensor:
    """Blue and pale blue checks."""
    y, x = torch.meshgrid(torch.arange(36), torch.arange(36), indexing="ij")
    on = ((y // 3 + x // 3) % 2).float()
    return torch.stack([0.1 * on, 0.2 * on, 0.5 + 0.5 * on])


def banded_photo() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A photo of three flat grey bands with a little grain, and each band as a mask."""
    photo = torch.full((3, H, W), 0.5) + 0.02 * rand_image(H, W, seed=1)
    masks = []
    for k, level in enumerate((0.3, 0.5, 0.7)):
        m = torch.zeros(H, W)
        m[:, k * 20:(k + 1) * 20] = 1
        photo[:, m.bool()] = level
        masks.append(m)
    return photo, masks


def style_distance(model, image: torch.Tensor, mask: torch.Tensor, style: torch.Tensor) -> float:
    """The objective's own measure, taken independently: over the masked area, each style
    layer's Gram distance to the style's, normalised by the style's Gram, averaged."""
    with torch.no_grad():
        f, s = model(image[None]), model(style[None])
        out = []
        for name, _ in BatchSettings().style_layers:
            g = guided_gram(f[name], at_layer(mask[None, None], tuple(f[name].shape[-2:])))[:, 0]
            t = gram(s[name])
            out.append(float((g - t).pow(2).mean() / t.pow(2).mean()))
    return sum(out) / len(out)


def test_each_region_moves_toward_its_own_style_and_kept_region_stays(tiny_model):
    photo, (left, middle, right) = banded_photo()
    a, b = StyleImage(reds(), key="reds"), StyleImage(blues(), key="blues")
    job = TransferJob(photo, (a, b), tv_weight=0.0,
                      regions=(Region(left, (a,), "a"), Region(middle, (b,), "b"), Region(right, (), "keep")))
    [result] = run_batch(tiny_model, [job], BatchSettings(iterations=60, log_every=20))
    out = result.image
    for mask, own, other in ((left, reds(), blues()), (middle, blues(), reds())):
        after = style_distance(tiny_model, out, mask, own)
        assert after < 0.6 * style_distance(tiny_model, photo, mask, own)  # toward its own style
        assert after < 0.8 * style_distance(tiny_model, out, mask, other)  # and not the other's
    r, g, b_ = out[:, left.bool()].mean(1)
    assert r > b_ + 0.1  # the left band took the reds' colour...
    r, g, b_ = out[:, middle.bool()].mean(1)
    assert b_ > r + 0.2  # ...and the middle band the blues'
    assert (out[:, :, 44:] - photo[:, :, 44:]).abs().mean() < 0.01  # the kept band is the photo
    last = result.history[-1]
    assert set(last["style_by_region"]) == {"a", "b"}
    assert last["style_by_region"]["a"] < 0.6 * result.history[0]["style_by_region"]["a"]


def test_guided_gram_of_a_full_region_is_the_gram():
    f = torch.randn(2, 8, 6, 7)
    full = guided_gram(f, torch.ones(2, 1, 6, 7))[:, 0]
    assert torch.allclose(full, gram(f), rtol=1e-5, atol=1e-6)
    half = torch.zeros(2, 1, 6, 7)
    half[..., :3] = 1
    assert torch.allclose(guided_gram(f, half)[:, 0], gram(f[..., :3]), rtol=1e-5, atol=1e-6)


def test_keep_is_feathered_at_its_edge():
    m = torch.zeros(100, 100)
    m[:, 50:] = 1
    alpha = keep_alpha(TransferJob(torch.zeros(3, 100, 100), (), regions=(Region(m),)), (100, 100))
    assert alpha[0, 0] == pytest.approx(0, abs=1e-6) and alpha[0, -1] == pytest.approx(1, abs=1e-6)
    assert 0.2 < alpha[0, 49] < 0.5 < alpha[0, 50] < 0.8  # soft across the edge


@pytest.mark.parametrize("reproducible", [True, False])
def test_masked_and_unmasked_share_a_batch_and_end_as_alone(tiny_model, reproducible):
    """Reproducible (the CPU's way): the same bits as alone. One shared pass (CUDA's way): the
    same objective and gradients, so the first steps agree to rounding; later steps part
    only as far as any batched pass does (test_engine's invariance check)."""
    style = StyleImage(reds(), key="reds")
    photo, (left, middle, right) = banded_photo()
    plain = TransferJob(rand_image(H, W, seed=5), (style,), init="noise", seed=3)
    masked = TransferJob(photo, (style,), regions=(Region(left + middle, (style,), "style"), Region(right, ())))
    settings = BatchSettings(iterations=4, log_every=1)
    switches = Switches("fp32", channels_last=False, reproducible=reproducible)
    together = run_batch(tiny_model, [plain, masked], settings, switches=switches)
    for job, both in zip((plain, masked), together):
        [alone] = run_batch(tiny_model, [job], settings, switches=switches)
        assert ("style_by_region" in both.history[-1]) == bool(job.regions)
        if reproducible:
            assert torch.equal(both.image, alone.image)
            assert [h["total"] for h in both.history] == [h["total"] for h in alone.history]
        else:
            for hb, ha in zip(both.history[:2], alone.history[:2]):
                assert hb["total"] == pytest.approx(ha["total"], rel=1e-5)
            assert both.history[-1]["total"] == pytest.approx(alone.history[-1]["total"], rel=2e-2)
