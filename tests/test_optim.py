import torch

from nstd.engine import optim
from nstd.engine.optim import BatchedAdam, BatchedLBFGS, _Products


def rosenbrock_like(x, a):
    # A smooth non-quadratic bowl per image, minimum at x = a.
    d = x - a
    return (d**2).flatten(1).sum(1) + 0.1 * (d**4).flatten(1).sum(1)


def test_single_image_follows_torch_lbfgs_step_for_step():
    torch.manual_seed(0)
    a = torch.randn(1, 3, 4, 4)
    x0 = torch.randn(1, 3, 4, 4)
    ours = x0.clone().requires_grad_(True)
    ref = x0.clone().requires_grad_(True)
    opt = BatchedLBFGS(ours, history=5, lr=1.0, clamp=None)  # unbounded, as torch's is
    torch_opt = torch.optim.LBFGS([ref], lr=1.0, max_iter=1, history_size=5, tolerance_grad=-1,
                                  tolerance_change=-1, line_search_fn=None)

    def closure():
        torch_opt.zero_grad()
        loss = rosenbrock_like(ref, a).sum()
        loss.backward()
        return loss

    for _ in range(12):
        ours.grad = None
        loss = rosenbrock_like(ours, a)
        loss.sum().backward()
        opt.step(loss)
        torch_opt.step(closure)
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_each_image_has_its_own_curvature():
    # Bowls of very different steepness: a shared step or history would ruin one of them.
    a = torch.zeros(2, 8)
    scales = torch.tensor([[1.0], [1000.0]])
    x = torch.ones(2, 8).requires_grad_(True)
    opt = BatchedLBFGS(x, history=10)
    for _ in range(30):
        x.grad = None
        loss = (scales * (x - a) ** 2).sum(1)
        loss.sum().backward()
        opt.step(loss)
    assert (x - a).abs().max() < 1e-4


def test_lbfgs_keeps_each_step_in_range_and_reaches_the_bounded_minimum():
    # Targets partly outside [0, 1]: the answer is the target clamped, and no iterate leaves the box.
    torch.manual_seed(1)
    a = torch.rand(2, 3, 4, 4) * 3 - 1
    x = torch.rand(2, 3, 4, 4).requires_grad_(True)
    opt = BatchedLBFGS(x, history=10)
    for _ in range(60):
        x.grad = None
        loss = rosenbrock_like(x, a)
        loss.sum().backward()
        opt.step(loss)
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.allclose(x.detach(), a.clamp(0, 1), atol=1e-3)


def test_adam_decreases_and_clamps():
    a = torch.full((2, 3, 4, 4), 0.5)
    x = torch.rand(2, 3, 4, 4).requires_grad_(True)
    opt = BatchedAdam(x, lr=0.05)
    start = rosenbrock_like(x, a).detach()
    for _ in range(50):
        x.grad = None
        rosenbrock_like(x, a).sum().backward()
        opt.step()
    assert (rosenbrock_like(x, a) < start * 0.1).all()
    assert x.min() >= 0 and x.max() <= 1


def test_a_rising_loss_is_rejected_and_the_step_halved():
    # A loss that is flat far from the start: the first full step overshoots into a wall.
    def f(x):
        return torch.where(x.abs() > 2, torch.full_like(x, 1e6), (x - 1.5) ** 2).flatten(1).sum(1)

    x = torch.zeros(2, 4).requires_grad_(True)
    opt = BatchedLBFGS(x, history=5, lr=1.0, clamp=None)  # its minimum, 1.5, is out of [0, 1]
    best = f(x).detach()
    for _ in range(40):
        x.grad = None
        loss = f(x)
        loss.sum().backward()
        best = torch.minimum(best, loss.detach())
        opt.step(loss)
    assert torch.isfinite(x).all()
    assert (best < 1e-6).all()


def _steps(opt, x, a, n):
    for _ in range(n):
        x.grad = None
        loss = rosenbrock_like(x, a)
        loss.sum().backward()
        opt.step(loss)


def test_adam_follows_torch_adam_step_for_step():
    torch.manual_seed(2)
    a = torch.randn(2, 3, 4, 4)
    x0 = torch.randn(2, 3, 4, 4)
    ours, ref = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    opt = BatchedAdam(ours, lr=0.05, clamp=None)
    torch_opt = torch.optim.Adam([ref], lr=0.05)
    for _ in range(20):
        _steps(opt, ours, a, 1)
        torch_opt.zero_grad()
        rosenbrock_like(ref, a).sum().backward()
        torch_opt.step()
        assert torch.allclose(ours, ref, atol=1e-4)  # rounding only: the ops differ in order


def test_a_reset_image_starts_over_as_if_alone():
    # Continuous batching: image 0 leaves after some steps and a new one takes its slot.
    # The newcomer must follow exactly the path it would in an optimiser of its own, and
    # its neighbour must not notice.
    torch.manual_seed(3)
    a = torch.rand(2, 3, 4, 4)
    for make in (lambda x: BatchedLBFGS(x, history=4), lambda x: BatchedAdam(x, lr=0.05)):
        x = torch.rand(2, 3, 4, 4).requires_grad_(True)
        opt = make(x)
        neighbour = x[1:].detach().clone().requires_grad_(True)
        alone_neighbour = make(neighbour)
        _steps(opt, x, a, 7)
        _steps(alone_neighbour, neighbour, a[1:], 7)
        newcomer = torch.rand(1, 3, 4, 4)
        with torch.no_grad():
            x[0] = newcomer[0]
        opt.reset(0)
        alone = newcomer.clone().requires_grad_(True)
        alone_opt = make(alone)
        for _ in range(6):
            _steps(opt, x, a, 1)
            _steps(alone_opt, alone, a[:1], 1)
            _steps(alone_neighbour, neighbour, a[1:], 1)
            assert torch.allclose(x[:1], alone, atol=1e-6)
            assert torch.allclose(x[1:], neighbour, atol=1e-6)


def test_a_selected_state_goes_on_as_the_whole_batch_would_for_those_images():
    # A batch narrowed to its working images: their optimiser goes on exactly where it was.
    torch.manual_seed(4)
    a = torch.rand(3, 3, 4, 4)
    rows = torch.tensor([0, 2])
    for make in (lambda x: BatchedLBFGS(x, history=4), lambda x: BatchedAdam(x, lr=0.05)):
        x = torch.rand(3, 3, 4, 4).requires_grad_(True)
        opt = make(x)
        _steps(opt, x, a, 6)  # past the history's length: the ring has wrapped
        kept = x.detach()[rows].clone().requires_grad_(True)
        narrow = opt.select(rows, kept)
        for _ in range(5):
            _steps(opt, x, a, 1)
            _steps(narrow, kept, a[rows], 1)
            assert torch.allclose(x.detach()[rows], kept, atol=1e-6)


def _valley(x, scales, a):
    return (scales * (x - a) ** 2).sum(1)


def _descend(dtype, history, iterations=60):
    # Eight steepnesses from 1 to 1000: a history of 2 cannot hold that curvature, one of 20 can.
    torch.manual_seed(5)
    scales = torch.logspace(0, 3, 8).repeat_interleave(32)[None]
    a = torch.rand(2, 256) * 0.5 + 0.25
    x = torch.zeros(2, 256).requires_grad_(True)
    opt = BatchedLBFGS(x, history=history, dtype=dtype)
    for _ in range(iterations):
        x.grad = None
        loss = _valley(x, scales, a)
        loss.sum().backward()
        opt.step(loss)
    return _valley(x.detach(), scales, a) / _valley(torch.zeros(2, 256), scales, a), opt


def test_a_bf16_history_keeps_the_curvature_in_half_the_memory():
    narrow, opt = _descend(torch.bfloat16, 20)
    short, _ = _descend(torch.float32, 2)
    wide, wide_opt = _descend(torch.float32, 20)
    assert opt._w.dtype == torch.bfloat16 and opt._w.element_size() * 2 == wide_opt._w.element_size()
    assert (narrow < 1e-6).all() and (narrow < 1e-2 * short).all()
    # Rounding each stored pair costs the exact quadratic's last digits, which fp32 keeps.
    assert (wide < narrow).all()


def test_a_bf16_history_is_widened_a_slice_at_a_time_to_the_same_products():
    torch.manual_seed(6)
    w = torch.randn(8, 1000).bfloat16()
    v, coef = torch.randn(1000, 3), torch.randn(8)
    products = _Products(torch.bfloat16, torch.device("cpu"))
    products.SLICE = 64  # many slices, the last one short
    assert torch.allclose(products.dots(w, v), w.float() @ v, rtol=1e-5, atol=1e-4)
    assert torch.allclose(products.combine(coef, w), coef @ w.float(), rtol=1e-5, atol=1e-4)


def test_a_selected_bf16_state_stays_bf16():
    x = torch.rand(3, 12).requires_grad_(True)
    opt = BatchedLBFGS(x, history=4, dtype=torch.bfloat16)
    narrow = opt.select(torch.tensor([1]), x.detach()[1:2].clone().requires_grad_(True))
    assert narrow._w.dtype == torch.bfloat16 and narrow._w.shape == (1, 8, 12)


def test_a_fused_bf16_product_keeps_the_fp32_side_to_16_bits(monkeypatch):
    # The CPU has no bf16 x bf16 -> fp32 product; an exact stand-in drives the CUDA branch.
    monkeypatch.setattr(optim, "_fp32_product", lambda a, b: torch.bmm(a.float(), b.float()))
    torch.manual_seed(7)
    w = torch.randn(8, 1000).bfloat16()
    v, coef = torch.randn(1000, 3), torch.randn(8)
    products = _Products(torch.bfloat16, torch.device("cpu"))
    products.fused = True

    def error(got, exact):
        return (got.double() - exact).abs().max()

    # Against the stored history times the unrounded fp32 side, computed in fp64: the two
    # bf16 parts are 100x closer than the fp32 side rounded to bf16 would be.
    dots, combined = w.double() @ v.double(), coef.double() @ w.double()
    assert error(products.dots(w, v), dots) < error(w.float() @ v.bfloat16().float(), dots) / 100
    assert error(products.combine(coef, w), combined) < error(coef.bfloat16().float() @ w.float(), combined) / 100
