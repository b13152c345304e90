from dataclasses import replace

from nstd.engine.memory import (TILE, Footprint, photo_state_bytes, MeasuredMemory, activation_elements, auto_batch, batch_bytes,
                               bytes_per_image, flops_per_iteration, least_bytes)
from nstd.engine.types import BatchSettings

LAYERS = BatchSettings().layers


def fp(optimizer="lbfgs", history=100, precision="fp32", **kw):
    return Footprint(LAYERS, optimizer, history, precision, **kw)


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
                n = auto_batch(free, h, w, fp(opt), budget=0.8, cap=1000)
                assert n == 1 or batch_bytes(n, h, w, fp(opt)) <= 0.8 * free
                assert batch_bytes(n + 1, h, w, fp(opt)) > 0.8 * free or n == 1000


def test_bigger_images_and_history_cost_more():
    assert bytes_per_image(768, 1024, fp()) > 3.9 * bytes_per_image(384, 512, fp())
    assert bytes_per_image(384, 512, fp()) > bytes_per_image(384, 512, fp("adam"))


def test_a_bf16_history_is_counted_at_half_its_fp32_bytes():
    # 100 pairs of 3 x 384 x 512 values: 472 MB in fp32, 236 MB in bf16.
    fp32 = bytes_per_image(384, 512, fp())
    bf16 = bytes_per_image(384, 512, fp(history_precision="bf16"))
    assert fp32 - bf16 == 2 * 100 * 3 * 384 * 512 * 2
    assert auto_batch(40 << 30, 384, 512, fp(history_precision="bf16")) > auto_batch(40 << 30, 384, 512, fp())


def test_the_estimate_stays_above_peaks_measured_on_an_h100():
    # Peak allocated memory per image of the bf16 fast path at batch 32 and 8, measured by
    # `nstd bench` on an H100 (benchmarks/RESULTS.md). The bf16 estimate must cover them;
    # fp32 activations take twice the bytes, so the fp32 estimate with room to spare.
    measured_mib = {(384, 512): 808, (576, 768): 1816, (768, 1024): 3223}
    for (h, w), mib in measured_mib.items():
        assert bytes_per_image(h, w, fp(precision="bf16")) > mib * 2**20
        assert bytes_per_image(h, w, fp()) > 1.2 * mib * 2**20


def test_the_estimate_covers_every_scale_of_a_24_megapixel_photo():
    # Peak allocated memory of each scale of one 6000x4000 photo with the default schedule,
    # bf16, measured on an H100 by benchmarks/fullres.py: (h, w, L-BFGS history): bytes.
    measured = {(341, 512, 100): 954_499_584, (683, 1024, 25): 1_848_465_408, (1365, 2048, 6): 5_793_232_896,
                (2731, 4096, 5): 22_589_732_864, (4000, 6000, 5): 48_309_193_728}
    for (h, w, history), peak in measured.items():
        estimate = batch_bytes(1, h, w, fp(history=history, precision="bf16"))
        assert peak < estimate < 1.25 * peak
    # The same with block checkpointing: 40% less at 6000 px.
    checkpointed = {(341, 512, 100): 613_912_064, (683, 1024, 25): 1_178_770_944, (1365, 2048, 6): 3_417_238_528,
                    (2731, 4096, 5): 13_389_014_528, (4000, 6000, 5): 28_711_203_840}
    for (h, w, history), peak in checkpointed.items():
        estimate = batch_bytes(1, h, w, fp(history=history, precision="bf16", checkpoint=True))
        assert peak < estimate < 1.5 * peak


def test_checkpointing_saves_memory_but_not_the_first_block():
    full = activation_elements(384, 512, LAYERS)
    ckpt = activation_elements(384, 512, LAYERS, checkpoint=True)
    # The first block runs at full resolution and is recomputed whole, so it stays held.
    first_block = 3 + 64 + 64 + 3 * 64 / 4  # input, conv1_1, conv1_2, pool1 with indices, per pixel
    assert first_block * 384 * 512 < ckpt < full


def test_a_measured_peak_sizes_later_batches_of_any_size():
    measured = MeasuredMemory()
    key = fp(precision="bf16")
    # 4 images of 100x100 peaked at 400 MB: 10 kB a pixel, 115 kB with the margin.
    measured.record(key, 400_000_000, 4, 100, 100)
    per = measured.bytes_per_image(key, 200, 200)
    assert per == int(10_000 * 200 * 200 * MeasuredMemory.MARGIN)
    free = 10 * per
    n = auto_batch(free, 200, 200, key, budget=0.8, measured=measured)
    assert n == 8 and n * per <= 0.8 * free
    # A smaller peak later does not lower the figure; another kind falls back to the estimate.
    measured.record(key, 100_000_000, 4, 100, 100)
    assert measured.bytes_per_image(key, 200, 200) == per
    assert auto_batch(free, 200, 200, fp("adam"), measured=measured) == auto_batch(free, 200, 200, fp("adam"))


def test_the_planner_sizes_batches_from_its_probe_and_learns_from_what_ran():
    import torch

    from nstd.engine.memory import MemoryPlanner, OomStep
    from nstd.engine.switches import Switches
    from nstd.engine.types import BatchSettings, RunStats

    free = {"bytes": 64 << 30}
    planner = MemoryPlanner(torch.device("cuda"), Switches("fp32"), lambda: free["bytes"], cap=1000)
    settings = BatchSettings()
    estimated = planner.max_batch(200, 200, settings, 100)
    assert estimated == auto_batch(64 << 30, 200, 200, fp(), cap=1000)
    free["bytes"] = 8 << 30  # what the engine and the batch sizing see comes from the probe alone
    assert planner.free() == 8 << 30 and planner.max_batch(200, 200, settings, 100) < estimated
    # A batch that peaked at 10 kB a pixel: the next batches of its kind are sized by that.
    run = RunStats((200, 200), 2, 10, 1.0, "fp32", True, False, False, peak_bytes=2 * 200 * 200 * 10_000)
    planner.observe(settings, 100, [run])
    per = int(10_000 * 200 * 200 * MeasuredMemory.MARGIN)
    assert planner.max_batch(200, 200, settings, 100) == int((8 << 30) * 0.8 // per)
    assert [planner.after_oom(4, None), planner.after_oom(1, None), planner.after_oom(1, True),
            planner.after_oom(1, True, 3)] == [OomStep.SPLIT, OomStep.CHECKPOINT, OomStep.SHRINK, OomStep.GIVE_UP]
    # Where nothing is known of the device's memory there is nothing to plan smaller for.
    blind = MemoryPlanner(torch.device("cpu"), Switches("fp32", checkpoint=True), lambda: None)
    assert blind.after_oom(1, True) is OomStep.GIVE_UP
    # A masked batch is another kind: the plain batch's peak does not size it.
    assert planner.max_batch(200, 200, settings, 100, regions=2) == auto_batch(8 << 30, 200, 200, fp(regions=2))
    # A tiled photo's peak is its tiles' passes': 4000 x 3000 in 480 x 512 px windows peaking at
    # 20 kB a window pixel is 20 kB a pixel for the next tiles, not the 0.4 kB a photo pixel it
    # would be; and a tile's kind, which holds no optimiser state, not the whole batches'.
    tiled = RunStats((3000, 4000), 1, 10, 1.0, "fp32", True, False, False, peak_bytes=480 * 512 * 20_000,
                     tiles={"side": 512, "window": [480, 512], "halo": 80, "tiles": 70, "at_once": 1})
    planner.observe(settings, 100, [tiled])
    assert planner.max_batch(200, 200, settings, 100) == int((8 << 30) * 0.8 // per)  # the 10 kB above
    tile_kind = replace(Footprint.of(settings, 100, Switches("fp32"), "fp32"), optimizer=TILE)
    assert planner.measured.bytes_per_image(tile_kind, 200, 200) == int(20_000 * 200 * 200 * MeasuredMemory.MARGIN)
    # Where the photo's own state stayed on the device its peak has that too, and a plan
    # reserves it apart: the tiles' kind is learned without it.
    fresh = MemoryPlanner(torch.device("cuda"), Switches("fp32"), lambda: 80 << 30, cap=1000)
    state = photo_state_bytes(3008, 4000, Footprint.of(settings, 100, Switches("fp32"), "fp32"), settings.content_layers)
    fresh.observe(settings, 100, [replace(tiled, peak_bytes=480 * 512 * 20_000 + state,
                                          tiles=tiled.tiles | {"state": "device"})])
    assert fresh.measured.bytes_per_image(tile_kind, 200, 200) == int(20_000 * 200 * 200 * MeasuredMemory.MARGIN)


def test_a_masked_batch_counts_its_region_products():
    # guided_gram keeps an fp32 copy of each captured layer and one weighted copy per region
    # for the backward pass, and a gradient's copy passes: at relu1_1 alone, 64 channels x
    # 4 bytes per pixel each.
    plain, one, three = (bytes_per_image(384, 512, fp(regions=r)) for r in (0, 1, 3))
    relu1_1 = 64 * 4 * 384 * 512
    assert one - plain > 3 * relu1_1 and three - one > 2 * relu1_1
    assert auto_batch(40 << 30, 384, 512, fp(regions=3)) < auto_batch(40 << 30, 384, 512, fp())


def test_a_photo_too_big_to_hold_whole_is_taken_and_only_a_device_without_room_for_a_tile_refuses():
    import pytest

    from nstd.engine.tiles import least_side
    from nstd.errors import ImageError
    from nstd.params import TransferParams
    from nstd.pipeline import check_fits

    params, size = TransferParams(size=4000), (3000, 4000)  # far more than `memory` holds whole
    side = least_side(80)  # relu5_1's halo on each side of a core as wide as it
    tile = least_bytes(side, side, Footprint(LAYERS, TILE, regions=3))  # its state can wait in host memory
    assert side == 240 and least_bytes(*size, Footprint(LAYERS)) > tile * 10
    check_fits("p.jpg", size, params, tile, regions=3)  # its tiles fit: it is taken
    check_fits("p.jpg", size, params, tile - 1)  # a plain tile needs less than a masked one
    with pytest.raises(ImageError, match=r"^p.jpg: even a 240x240 tile of it needs about .* GiB, more than the "
                                         r"largest device has \(.* GiB\)$"):
        check_fits("p.jpg", size, params, tile - 1, regions=3)


def test_a_pass_without_a_gradient_is_counted_by_hand_and_holds_more_pixels_than_a_tiles():
    from nstd.engine.memory import forward_bytes, read_scale

    fp = Footprint(BatchSettings().layers)
    # 16 x 16 px in fp32: the image (3 x 256), conv1_2 taking relu1_1 in and 64 channels out
    # (128 x 256, the widest step), the six captured layers handed back (64 x 256 + 128 x 64
    # + 256 x 16 + 2 x 512 x 4 + 512 x 1), 4 bytes each; and relu1_1 once more in fp32 for its Gram.
    elements = 3 * 256 + 128 * 256 + (64 * 256 + 128 * 64 + 256 * 16 + 2 * 512 * 4 + 512)
    assert forward_bytes(16, 16, fp) == 4 * elements + 4 * 64 * 256
    # Nothing is kept for a backward pass, so the same memory holds a larger window.
    assert read_scale(fp) > 2 and read_scale(replace(fp, precision="bf16", checkpoint=True)) > 1.5
