from nstd.engine.memory import MeasuredMemory, auto_batch, bytes_per_image, flops_per_iteration
from nstd.engine.transfer import BatchSettings

LAYERS = BatchSettings().layers


def test_flops_match_a_hand_count_at_32px():
    # conv1_1..relu5_1 at 32x32: (cin, cout, side) of each conv before relu5_1.
    convs = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16),
             (128, 256, 8), (256, 256, 8), (256, 256, 8), (256, 256, 8),
             (256, 512, 4), (512, 512, 4), (512, 512, 4), (512, 512, 4), (512, 512, 2)]
    forward = sum(2 * 9 * cin * cout * s * s for cin, cout, s in convs)
    assert flops_per_iteration(32, 32, LAYERS) == 2 * forward


def test_flops_per_pixel_is_about_what_the_literature_says():
    per_pixel = flops_per_iteration(384, 512, LAYERS) / (384 * 512)
    assert 1.0e6 < per_pixel < 2.0e6


def test_auto_batch_never_exceeds_the_budget():
    for free in (1 << 28, 1 << 30, 8 << 30, 80 << 30):
        for h, w in ((64, 64), (384, 512), (768, 1024)):
            for opt in ("lbfgs", "adam"):
                n = auto_batch(free, h, w, LAYERS, opt, 100, budget=0.8, cap=1000)
                per = bytes_per_image(h, w, LAYERS, opt, 100)
                assert n == 1 or n * per <= 0.8 * free
                assert (n + 1) * per > 0.8 * free or n == 1000


def test_bigger_images_and_history_cost_more():
    assert bytes_per_image(768, 1024, LAYERS, "lbfgs", 100) > 3.9 * bytes_per_image(384, 512, LAYERS, "lbfgs", 100)
    assert bytes_per_image(384, 512, LAYERS, "lbfgs", 100) > bytes_per_image(384, 512, LAYERS, "adam", 100)


def test_the_estimate_stays_above_peaks_measured_on_an_h100():
    # Peak allocated memory per image of the bf16 fast path at batch 32 and 8, measured by
    # `nstd bench` on an H100 (benchmarks/RESULTS.md). fp32 activations take more, and the
    # estimate counts them in fp32, so it must cover these with room to spare.
    measured_mib = {(384, 512): 808, (576, 768): 1816, (768, 1024): 3223}
    for (h, w), mib in measured_mib.items():
        assert bytes_per_image(h, w, LAYERS, "lbfgs", 100) > 1.2 * mib * 2**20


def test_a_measured_peak_sizes_later_batches_of_any_size():
    measured = MeasuredMemory()
    key = ("lbfgs", "bf16")
    # 4 images of 100x100 peaked at 400 MB: 10 kB a pixel, 115 kB with the margin.
    measured.record(key, 400_000_000, 4, 100, 100)
    per = measured.bytes_per_image(key, 200, 200)
    assert per == int(10_000 * 200 * 200 * MeasuredMemory.MARGIN)
    free = 10 * per
    n = auto_batch(free, 200, 200, LAYERS, "lbfgs", 100, budget=0.8, measured=measured, key=key)
    assert n == 8 and n * per <= 0.8 * free
    # A smaller peak later does not lower the figure; another kind falls back to the estimate.
    measured.record(key, 100_000_000, 4, 100, 100)
    assert measured.bytes_per_image(key, 200, 200) == per
    assert auto_batch(free, 200, 200, LAYERS, "lbfgs", 100, measured=measured, key=("adam",)) == \
        auto_batch(free, 200, 200, LAYERS, "lbfgs", 100)
