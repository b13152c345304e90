import pytest
import torch

from nstd.engine import multiscale
from nstd.engine.multiscale import run_scales
from nstd.engine.sizes import Scale, schedule
from nstd.engine.types import BatchSettings, StyleImage, TransferJob

from harness.synthetic import rand_image


def test_schedule_grows_by_the_factor_and_ends_at_the_target():
    s = schedule(3000, 512, 2.0, 500, (200, 100), 100)
    assert [x.long_side for x in s] == [512, 1024, 2048, 3000]
    assert [x.iterations for x in s] == [500, 200, 100, 100]
    # History memory stays that of the first scale (and never below 5 pairs).
    assert [x.lbfgs_history for x in s] == [100, 25, 6, 5]
    assert schedule(400, 512, 2.0, 500, (200,), 100) == [Scale(400, 500, 100)]


def test_each_scale_starts_from_the_last_and_the_output_has_the_requested_size(tiny_model, monkeypatch):
    calls = []
    real = multiscale.transfer.run

    def spy(model, session, jobs, settings, cache, switches, free=None):
        calls.append((jobs[0].content.shape, None if jobs[0].init_image is None else jobs[0].init_image.clone(),
                      settings.iterations))
        out = real(model, session, jobs, settings, cache, switches, free)
        calls[-1] += (session.results[jobs[0].id].image.clone(),)
        return out

    monkeypatch.setattr(multiscale.transfer, "run", spy)
    photo = rand_image(90, 120, seed=1)
    job = TransferJob(photo, (StyleImage(rand_image(40, 40, seed=2), key="s"),), style_weight=50.0)
    scales = schedule(120, 30, 2.0, 6, (3,), 10)
    assert [s.long_side for s in scales] == [30, 60, 120]
    seen = []
    [result] = run_scales(tiny_model, [job], scales, BatchSettings(log_every=2), progress=lambda i, r: seen.append(i))
    assert [c[0] for c in calls] == [(3, 22, 30), (3, 45, 60), (3, 90, 120)]
    assert calls[0][1] is None
    for (_, _, _, prev_out), (shape, init, _, _) in zip(calls, calls[1:]):
        # Initialised from the previous scale's result, upsampled.
        expect = torch.nn.functional.interpolate(prev_out[None], size=shape[1:], mode="bicubic",
                                                 align_corners=False)[0].clamp(0, 1)
        assert torch.allclose(init, expect, atol=1e-6)
    assert result.image.shape == (3, 90, 120)
    its = [h["iteration"] for h in result.history]
    assert its == sorted(set(its)) and its[-1] == 6 + 3 + 3
    assert {h["scale"] for h in result.history} == {30, 60, 120}
    assert seen[-1] == 12
    # One record of how each scale ran, in order.
    assert [(r.size, r.iterations) for r in result.runs] == [((22, 30), 6), ((45, 60), 3), ((90, 120), 3)]


def test_progress_counts_the_iterations_run_where_a_scale_stops_early(tiny_model):
    job = TransferJob(rand_image(45, 60, seed=1), (StyleImage(rand_image(40, 40, seed=2), key="s"),))
    scales = schedule(60, 30, 2.0, 8, (8,), 10)
    seen = []
    settings = BatchSettings(log_every=1, stop_tolerance=1.0, stop_window=2)  # flat as soon as it can tell
    [result] = run_scales(tiny_model, [job], scales, settings, progress=lambda i, r: seen.append(i))
    ran = [r.iterations for r in result.runs]
    assert max(ran) < 8  # both scales stopped early
    assert seen == sorted(set(seen)) and seen[-1] == sum(ran) == result.history[-1]["iteration"]


def test_a_mismatched_init_image_is_refused(tiny_model):
    from nstd.engine.transfer import run_batch
    job = TransferJob(rand_image(32, 32, 1), (StyleImage(rand_image(32, 32, 2)),), init_image=torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="init_image"):
        run_batch(tiny_model, [job], BatchSettings(iterations=1))


def test_a_last_scale_at_the_same_size_runs_at_its_own_precision_from_the_result_as_is(tiny_model, monkeypatch):
    from nstd.engine.switches import Switches, resolve

    starts = []
    real = multiscale.transfer.run

    def spy(model, session, jobs, *args):
        starts.append(jobs[0].init_image)
        return real(model, session, jobs, *args)

    monkeypatch.setattr(multiscale.transfer, "run", spy)
    job = TransferJob(rand_image(30, 40, seed=1), (StyleImage(rand_image(40, 40, seed=2), key="s"),))
    bf16 = Switches("bf16", checkpoint=False)
    scales = [Scale(40, 3, 5), Scale(40, 2, 5, "fp32")]
    first = run_scales(tiny_model, [job], scales[:1], BatchSettings(log_every=1), switches=bf16)[0]
    [result] = run_scales(tiny_model, [job], scales, BatchSettings(log_every=1), switches=bf16)
    assert [r.precision for r in result.runs] == [resolve(bf16, torch.device("cpu")).precision, "fp32"]
    assert torch.equal(starts[-1], first.image)  # the same size: not resampled
    assert [r.iterations for r in result.runs] == [3, 2] and result.history[-1]["iteration"] == 5
