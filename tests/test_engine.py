import pytest
import torch

from nstd.engine.switches import Switches, resolve
from nstd.engine.resize import resize_long_side
from nstd.engine.sizes import least_long_side, long_side_size
from nstd.engine.targets import GramCache
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob
from nstd.engine.vgg import LAYER_NAMES, VGGFeatures

from harness.synthetic import rand_image


def jobs_for(n, h=32, w=40, **kw):
    style = StyleImage(rand_image(36, 36, seed=99), key="style-a")
    return [TransferJob(rand_image(h, w, seed=i), (style,), **kw) for i in range(n)]


def test_layer_names_follow_torchvision_indices():
    assert LAYER_NAMES[0] == "conv1_1" and LAYER_NAMES[1] == "relu1_1"
    assert LAYER_NAMES[22] == "relu4_2" and LAYER_NAMES[29] == "relu5_1"


def test_model_is_truncated_after_last_used_layer(vgg_sd):
    m = VGGFeatures(vgg_sd, "caffe", {"relu1_1", "relu3_1"})
    assert len(m.features) == 12  # conv1_1 .. relu3_1
    assert not any(p.requires_grad for p in m.parameters())
    assert not m.training


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_losses_decrease(tiny_model, optimizer):
    settings = BatchSettings(iterations=30, optimizer=optimizer, log_every=10)
    [result] = run_batch(tiny_model, jobs_for(1, init="noise", style_weight=10.0), settings)
    first, last = result.history[0], result.history[-1]
    assert [h["iteration"] for h in result.history] == [0, 10, 20, 30]
    assert last["total"] < 0.5 * first["total"]
    assert last["style"] < first["style"] and last["content"] < first["content"]
    assert set(last["style_by_layer"]) == {"relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"}
    assert result.image.shape == (3, 32, 40)
    assert 0 <= result.image.min() and result.image.max() <= 1


def test_a_bf16_history_goes_as_far_as_fp32_and_says_so(tiny_model):
    settings = BatchSettings(iterations=30, log_every=10)
    jobs = jobs_for(1, init="noise", style_weight=10.0)
    [wide] = run_batch(tiny_model, jobs, settings, switches=Switches("fp32"))
    [narrow] = run_batch(tiny_model, jobs, settings, switches=Switches("fp32", history_precision="bf16"))
    assert wide.runs[0].history_precision == "fp32" and narrow.runs[0].as_dict()["history_precision"] == "bf16"
    assert narrow.history[-1]["total"] < 0.5 * narrow.history[0]["total"]
    assert narrow.history[-1]["total"] == pytest.approx(wide.history[-1]["total"], rel=0.05)


# Batched passes (reproducible off, as on CUDA): the optimisers' state must stay per image.
SWITCHES = {
    "fp32": Switches("fp32", channels_last=False, reproducible=False),
    "fp32-channels-last": Switches("fp32", channels_last=True, reproducible=False),
    "bf16-channels-last": Switches("bf16", channels_last=True, reproducible=False),
    "checkpoint": Switches("fp32", checkpoint=True, reproducible=False),
    "bf16-history": Switches("fp32", reproducible=False, history_precision="bf16"),
}
# Batch size changes how kernels block their sums, and the optimisation amplifies that
# rounding over the iterations; shared state between images shows as an O(1) difference at once.
INVARIANCE_ITERATIONS, INVARIANCE_REL = 4, 1e-2


def invariance_jobs():
    jobs = jobs_for(3, init="noise")
    # Each image its own weights and seed, so a shared state would show.
    return [TransferJob(j.content, j.styles, content_weight=1 + i, style_weight=10.0 ** i,
                        tv_weight=0.1 * i, init=j.init, seed=i) for i, j in enumerate(jobs)]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_batch_invariance(tiny_model, optimizer, switch):
    """An image optimised in a batch ends where it ends alone, under every switches-path switch."""
    settings = BatchSettings(iterations=INVARIANCE_ITERATIONS, optimizer=optimizer, log_every=1)
    jobs = invariance_jobs()
    switches = SWITCHES[switch]
    batched = run_batch(tiny_model, jobs, settings, switches=switches)
    alone = [run_batch(tiny_model, [j], settings, switches=switches)[0] for j in jobs]
    for b, a in zip(batched, alone):
        assert len(b.history) == INVARIANCE_ITERATIONS + 1
        for hb, ha in zip(b.history, a.history):
            for key in ("total", "content", "style", "tv"):
                assert hb[key] == pytest.approx(ha[key], rel=INVARIANCE_REL, abs=1e-12)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_reproducible_batches_give_each_image_its_own_bits(tiny_model, optimizer, precision):
    """With reproducible on (the CPU's default), a photo gives the same pixels alone or in
    any batch. The check is bitwise, so a difference shows from the iteration it starts;
    30 iterations are past where batched passes part (test_batch_invariance's 4)."""
    settings = BatchSettings(iterations=30, optimizer=optimizer, log_every=1)
    switches = Switches(precision)
    assert resolve(switches, torch.device("cpu")).reproducible
    photo = jobs_for(1)[0]
    mirrored = TransferJob(photo.content.flip(-1), photo.styles)
    [alone] = run_batch(tiny_model, [photo], settings, switches=switches)
    for company, at in (([mirrored, photo], 1),):
        batched = run_batch(tiny_model, company, settings, switches=switches)[at]
        assert torch.equal(batched.image, alone.image)
        assert [h["total"] for h in batched.history] == [h["total"] for h in alone.history]


def test_torch_lbfgs_would_fail_the_invariance_check(tiny_model):
    """The control: one flattened L-BFGS over the batch couples the images."""
    from nstd.engine import transfer

    settings = BatchSettings(iterations=INVARIANCE_ITERATIONS, optimizer="lbfgs", log_every=1)
    jobs = invariance_jobs()

    class SharedLBFGS:
        def __init__(self, x, **_):
            self.x = x
            self.opt = torch.optim.LBFGS([x], lr=1, max_iter=1, line_search_fn=None,
                                         tolerance_grad=-1, tolerance_change=-1)

        def step(self, loss):
            self.opt.step(lambda: torch.zeros(()))

    original = transfer.make_optimizer
    transfer.make_optimizer = lambda name, x, lr, history, dtype: SharedLBFGS(x)
    try:
        switches = SWITCHES["fp32"]
        batched = run_batch(tiny_model, jobs, settings, switches=switches)
        alone = run_batch(tiny_model, jobs[:1], settings, switches=switches)
    finally:
        transfer.make_optimizer = original
    assert batched[0].history[-1]["total"] != pytest.approx(alone[0].history[-1]["total"],
                                                             rel=INVARIANCE_REL)


def test_per_image_weights_apply(tiny_model):
    settings = BatchSettings(iterations=15, log_every=15)
    base = jobs_for(1, init="content")[0]
    no_style = TransferJob(base.content, base.styles, style_weight=0.0, tv_weight=0.0)
    styled = TransferJob(base.content, base.styles, style_weight=100.0)
    r0, r1 = run_batch(tiny_model, [no_style, styled], settings)
    # With no style and tv weight, the content init is already optimal: nothing moves.
    assert torch.allclose(r0.image, base.content.clamp(0, 1), atol=1e-6)
    assert not torch.allclose(r1.image, base.content, atol=1e-3)


def test_gram_targets_computed_once_per_style(tiny_model):
    cache = GramCache()
    settings = BatchSettings(iterations=2, log_every=1)
    run_batch(tiny_model, jobs_for(3), settings, cache)
    assert (cache.misses, cache.hits) == (1, 2)
    run_batch(tiny_model, jobs_for(2), settings, cache)
    assert (cache.misses, cache.hits) == (1, 4)
    # A different working size is a different target.
    run_batch(tiny_model, jobs_for(1, h=48, w=48), settings, cache)
    assert cache.misses == 2


def test_init_modes_and_seeds(tiny_model):
    settings = BatchSettings(iterations=0, log_every=1)
    content = rand_image(32, 32, seed=1)
    style = StyleImage(rand_image(32, 32, seed=2), key="s")
    out = run_batch(tiny_model, [TransferJob(content, (style,), init="content"),
                                 TransferJob(content, (style,), init="noise", seed=1),
                                 TransferJob(content, (style,), init="noise", seed=1),
                                 TransferJob(content, (style,), init="noise", seed=2),
                                 TransferJob(content, (style,), init="style")], settings)
    assert torch.allclose(out[0].image, content)
    assert torch.equal(out[1].image, out[2].image)
    assert not torch.equal(out[1].image, out[3].image)
    assert torch.allclose(out[4].image, style.image, atol=1e-5)


def test_snapshots(tiny_model):
    settings = BatchSettings(iterations=6, log_every=3, snapshot_every=2)
    [r] = run_batch(tiny_model, jobs_for(1), settings)
    assert [k for k, _ in r.snapshots] == [2, 4]
    assert r.snapshots[0][1].shape == (3, 32, 40)


def test_progress_gets_losses_at_log_points(tiny_model):
    seen = []
    settings = BatchSettings(iterations=4, log_every=2)
    run_batch(tiny_model, jobs_for(2), settings, progress=lambda it, losses: seen.append((it, losses)))
    assert [it for it, _ in seen] == [1, 2, 3, 4]
    assert seen[0][1] is not None and len(seen[0][1]) == 2 and seen[1][1] is None


def test_batch_must_be_one_size(tiny_model):
    mixed = jobs_for(1) + jobs_for(1, h=40, w=32)
    with pytest.raises(ValueError, match="one size"):
        run_batch(tiny_model, mixed, BatchSettings(iterations=1))


def test_resize_long_side_keeps_aspect():
    img = torch.rand(3, 300, 400)
    assert resize_long_side(img, 100).shape == (3, 75, 100)
    assert resize_long_side(img, 400).shape == (3, 300, 400)
    assert long_side_size(300, 400, 100) == (75, 100) and long_side_size(400, 300, 100) == (100, 75)


def test_checkpointing_and_channels_last_compute_the_same_thing(tiny_model):
    settings = BatchSettings(iterations=3, log_every=1)
    jobs = jobs_for(2, init="noise")
    plain = run_batch(tiny_model, jobs, settings, switches=Switches("fp32", channels_last=False))
    for switches in (Switches("fp32", checkpoint=True), Switches("fp32", channels_last=True)):
        other = run_batch(tiny_model, jobs, settings, switches=switches)
        for a, b in zip(plain, other):
            assert b.history[1]["total"] == pytest.approx(a.history[1]["total"], rel=1e-4)
            assert torch.allclose(a.image, b.image, atol=1e-3)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        Switches("fp8")


def test_auto_checkpoint_and_graph_follow_the_memory_estimate():
    cuda = torch.device("cuda")  # resolve only reads the device's type; no GPU needed

    def need(precision, checkpoint):
        return 30 if checkpoint else 50

    # Budget 80% of free. Fits, but a graph's second copy would not: eager, no recompute.
    r = resolve(Switches("fp32"), cuda, need, free=100)
    assert (r.checkpoint, r.cuda_graph) == (False, False)
    r = resolve(Switches("fp32"), cuda, need, free=200)
    assert (r.checkpoint, r.cuda_graph) == (False, True)
    r = resolve(Switches("fp32"), cuda, need, free=50)
    assert (r.checkpoint, r.cuda_graph) == (True, False)
    # What the config forces wins; without an estimate or a free figure nothing is decided by memory.
    r = resolve(Switches("fp32", checkpoint=False, cuda_graph=True), cuda, need, free=10)
    assert (r.checkpoint, r.cuda_graph) == (False, True)
    assert resolve(Switches("fp32"), cuda, need, free=None).checkpoint is False
    assert resolve(Switches("fp32"), torch.device("cpu"), need, free=200).cuda_graph is False


def test_a_batch_that_would_not_fit_is_checkpointed_and_says_so(tiny_model):
    settings = BatchSettings(iterations=2, log_every=1)
    jobs = jobs_for(2, init="noise")
    [roomy, _] = run_batch(tiny_model, jobs, settings, switches=Switches("fp32"), free=lambda: 10 << 30)
    [tight, _] = run_batch(tiny_model, jobs, settings, switches=Switches("fp32"), free=lambda: 1000)
    assert [r.checkpoint for r in roomy.runs] == [False]
    assert [r.checkpoint for r in tight.runs] == [True]
    assert tight.runs[0].size == (32, 40) and tight.runs[0].batch == 2
    assert tight.history[-1]["total"] == pytest.approx(roomy.history[-1]["total"], rel=1e-4)


def test_free_memory_on_the_cpu_is_what_linux_says_is_available():
    import os

    from nstd.engine.device import free_memory

    free = free_memory(torch.device("cpu"))
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # MemAvailable: at least the free pages, never more than the machine has.
    assert os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.9 <= free <= total


def test_an_image_whose_loss_is_not_finite_is_refused_and_its_batch_mates_are_not(tiny_model):
    from nstd.engine.memory import MemoryPlanner
    from nstd.engine.multiscale import Scale
    from nstd.engine.runner import Engine
    from nstd.engine.switches import Switches

    engine = Engine(MemoryPlanner(torch.device("cpu"), Switches("fp32"), lambda: None), Switches("fp32"))
    good, bad = jobs_for(2)
    from nstd.engine.session import Collect

    bad = TransferJob(bad.content, bad.styles, style_weight=float("nan"), id=1)  # a black image, before
    session = Collect()
    engine.run(tiny_model, session, [good, bad], [Scale(32, 3, 10)], BatchSettings(iterations=3))
    assert list(session.results) == [0]
    assert session.refusals == {1: "the loss became NaN or infinite; lower the weights or the learning rate"}


def test_odd_sizes_stylize_their_last_row_and_column_like_the_rest(tiny_model, monkeypatch):
    """VGG's pools drop the last row and column of an odd size; mirrored out to a multiple
    of 16 (and cropped back), they change about as much as the interior. The control,
    without the margin, shows the starved edge the test would catch."""
    from nstd.engine import transfer

    photo = rand_image(47, 63, seed=3)
    job = TransferJob(photo, (StyleImage(rand_image(48, 48, seed=9), key="s"),), style_weight=100.0, tv_weight=0.0)

    def edge_shares() -> tuple[float, float]:
        [r] = run_batch(tiny_model, [job], BatchSettings(iterations=10, log_every=10))
        assert r.image.shape == photo.shape
        change = (r.image - photo).abs().sum(0)
        inner = change[8:-8, 8:-8].mean()
        return float(change[-1].mean() / inner), float(change[:, -1].mean() / inner)

    assert min(edge_shares()) > 0.7
    monkeypatch.setattr(transfer, "pool_padding", lambda h, w: (0, 0, 0, 0))
    assert max(edge_shares()) < 0.6


def test_a_wide_painting_at_a_small_style_scale_keeps_what_the_pools_need(tiny_model):
    # 1:3 at a quarter of a 48 px photo is 12x4 px: VGG's four pools would leave nothing of it.
    painting = StyleImage(rand_image(30, 90, seed=7), key="wide", scale=0.25)
    job = TransferJob(rand_image(36, 48, seed=1), (painting,))
    [result] = run_batch(tiny_model, [job], BatchSettings(iterations=2))
    assert torch.isfinite(result.image).all() and result.image.shape == (3, 36, 48)
    assert long_side_size(30, 90, least_long_side(30, 90)) == (16, 48)
