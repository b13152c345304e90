import torch

from nstd.engine.losses import content_loss, gram, style_loss, tv_loss


def test_gram_matches_direct_sum():
    f = torch.randn(2, 4, 3, 5)
    g = gram(f)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                direct = sum(f[n, i, y, x] * f[n, j, y, x] for y in range(3) for x in range(5)) / 15
                assert torch.isclose(g[n, i, j], direct, rtol=1e-5, atol=1e-6)


def test_gram_is_fp32_for_half_inputs():
    f = (torch.randn(1, 8, 16, 16) * 300).half()
    g = gram(f)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


def test_gram_gradient_is_the_products_in_both_layouts():
    # The Gram's own backward against autograd through F @ F^T, for an asymmetric upstream
    # gradient (the loss's is symmetric, which would hide a missing transpose).
    weight = torch.randn(4, 4, dtype=torch.float64)
    for channels_last in (False, True):
        f = torch.randn(2, 4, 3, 5, dtype=torch.float64)
        if channels_last:
            f = f.contiguous(memory_format=torch.channels_last)
        f.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: (gram(t) * weight).sum(), (f,))
        ref = f.detach().clone().requires_grad_(True)
        flat = ref.reshape(2, 4, 15)
        ((flat @ flat.transpose(1, 2) / 15) * weight).sum().backward()
        (gram(f) * weight).sum().backward()
        assert torch.allclose(f.grad, ref.grad)


def test_bf16_gram_has_the_fp32_grams_value_and_gradient():
    # Whichever product the device has (a mixed bf16-in, fp32-out one on CUDA, a cast here).
    f = torch.randn(1, 8, 6, 6).bfloat16().requires_grad_(True)
    ref = f.detach().float().requires_grad_(True)
    gram(f).square().sum().backward()
    gram(ref).square().sum().backward()
    assert torch.allclose(gram(f), gram(ref)) and torch.allclose(f.grad.float(), ref.grad, rtol=1e-2, atol=1e-2)


def test_style_loss_is_gatys_up_to_the_constant_four():
    f, a = torch.randn(1, 6, 4, 4), torch.randn(1, 6, 4, 4)
    n, m = 6, 16
    G = f.reshape(6, 16) @ f.reshape(6, 16).T
    A = a.reshape(6, 16) @ a.reshape(6, 16).T
    gatys = ((G - A) ** 2).sum() / (4 * n**2 * m**2)
    assert torch.isclose(style_loss(f, gram(a))[0], 4 * gatys, rtol=1e-5)


def test_losses_are_per_image():
    f = torch.randn(3, 4, 5, 5)
    t = torch.randn(3, 4, 5, 5)
    c = content_loss(f, t)
    assert c.shape == (3,)
    assert torch.isclose(c[1], ((f[1] - t[1]) ** 2).mean())
    s = style_loss(f, gram(t))
    assert torch.isclose(s[2], style_loss(f[2:], gram(t[2:]))[0])


def test_tv_loss_zero_on_flat_and_counts_edges():
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert tv_loss(flat)[0] == 0
    step = torch.zeros(1, 1, 2, 2)
    step[..., 1] = 1.0  # one vertical edge per row
    # dx: 2 of 2 differences are 1 -> mean 1; dy: all 0
    assert tv_loss(step)[0] == 1.0
