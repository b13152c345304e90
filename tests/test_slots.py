"""Per-image stopping and slot refill: a photo leaves the batch when its loss is flat, and
a queued one of the same size takes its place with a fresh optimiser."""

from dataclasses import replace

import pytest
import torch

from nstd.engine.loop import flat
from nstd.engine.memory import MemoryPlanner
from nstd.engine.multiscale import Scale
from nstd.engine.runner import Engine
from nstd.engine.session import Collect, Outcome, Verdict
from nstd.engine.switches import Switches
from nstd.engine.transfer import run, run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob

from harness.synthetic import rand_image

STYLE = StyleImage(rand_image(36, 36, seed=99), key="style-a")


def job(seed: int, **kw) -> TransferJob:
    return TransferJob(rand_image(32, 40, seed=seed), (STYLE,), init="noise", seed=seed, **kw)


def numbered(jobs: list[TransferJob], start: int = 0) -> list[TransferJob]:
    return [replace(j, id=start + i) for i, j in enumerate(jobs)]


class Asked(Collect):
    """A Collect that notes how many newcomers it was asked for, and checks each job
    comes back once."""

    def __init__(self, queue):
        super().__init__(queue=queue)
        self.asked = []

    def take(self, n):
        self.asked.append(n)
        return super().take(n)

    def finished(self, job, result):
        assert job.id not in self.results
        super().finished(job, result)


def test_flat_needs_a_full_window_and_a_small_gain():
    rule = BatchSettings(stop_tolerance=0.01, stop_window=20)
    assert not flat(rule, 10, [(5, 2.0), (10, 2.0)])  # no value a window back yet
    assert flat(rule, 25, [(5, 1.005), (25, 1.0)])  # 0.5% better over 20 iterations: flat
    assert not flat(rule, 25, [(5, 1.05), (25, 1.0)])  # 5% better: still improving
    assert not flat(rule, 25, [(10, 1.0), (25, 1.0)])  # the window reaches back only 15
    assert flat(rule, 25, [(5, 1.0), (25, float("nan"))])  # a broken image stops at once
    assert not flat(BatchSettings(stop_tolerance=0.0), 500, [(0, 1.0), (500, 1.0)])  # off


def test_a_flat_image_stops_before_the_cap_and_records_its_count(tiny_model):
    settings = BatchSettings(iterations=60, log_every=5, stop_tolerance=0.2, stop_window=5)
    [early] = run_batch(tiny_model, [job(0)], settings)
    [full] = run_batch(tiny_model, [job(0)], BatchSettings(iterations=60, log_every=5))
    its = early.runs[0].iterations
    assert 5 <= its < 60 and early.history[-1]["iteration"] == its
    assert full.runs[0].iterations == 60 and full.history[-1]["iteration"] == 60
    assert early.history[-1]["total"] > full.history[-1]["total"]  # it did stop short


@pytest.mark.parametrize("reproducible", [True, False])
def test_refilled_jobs_run_as_they_would_alone(tiny_model, reproducible):
    # Two places, five jobs: three join as places come free, each with its own targets,
    # start and optimiser state. Every result is handed over once, numbered in order given.
    switches = Switches("fp32", reproducible=reproducible)
    settings = BatchSettings(iterations=8, log_every=4)
    session = Asked(numbered([job(2), job(3, style_weight=30.0), job(4)], 2))
    assert run(tiny_model, session, numbered([job(0), job(1, tv_weight=1.0)]), settings,
               switches=switches) is Outcome.COMPLETE
    got = session.results
    assert sorted(got) == [0, 1, 2, 3, 4] and session.asked[-1] >= 1
    for i, j in enumerate([job(0), job(1, tv_weight=1.0), job(2), job(3, style_weight=30.0), job(4)]):
        [alone] = run_batch(tiny_model, [j], settings, switches=switches)
        assert [h["iteration"] for h in got[i].history] == [0, 4, 8]
        if reproducible:  # each image alone, interleaved: bit for bit its own
            assert torch.equal(got[i].image, alone.image)
        else:  # batched convolutions round differently, and L-BFGS amplifies it a little
            start, end = got[i].history[0], got[i].history[-1]
            for key in ("total", "content", "style", "tv"):  # its own targets and weights
                assert start[key] == pytest.approx(alone.history[0][key], rel=1e-5)
            assert end["total"] == pytest.approx(alone.history[-1]["total"], rel=2e-2)


def test_stopping_with_refill_keeps_the_batch_busy(tiny_model):
    settings = BatchSettings(iterations=40, log_every=5, stop_tolerance=0.2, stop_window=5)
    session = Collect(queue=numbered([job(s) for s in range(2, 6)], 2))
    run(tiny_model, session, numbered([job(0), job(1)]), settings)
    order = [(i, session.results[i].runs[0].iterations, session.results[i].runs[0].slot) for i in session.order]
    assert sorted(i for i, _, _ in order) == list(range(6))
    assert all(its < 40 for _, its, _ in order) and {slot for _, _, slot in order} == {0, 1}


def test_a_job_with_regions_never_joins_and_a_regions_batch_never_asks(tiny_model):
    from nstd.engine.types import Region

    masked = job(1, regions=(Region(torch.ones(32, 40), (STYLE,), "all"),))
    weighed = replace(job(1), content_map=torch.full((32, 40), 2.0))  # a content map alone, as well
    for guided in (masked, weighed):
        with pytest.raises(ValueError, match="regions or a content map cannot take a place"):
            run(tiny_model, Collect(queue=[replace(guided, id=1)]), [job(0)], BatchSettings(iterations=2))
        session = Asked([job(2)])
        run(tiny_model, session, [guided], BatchSettings(iterations=2))
        assert session.asked == []


def test_engine_reruns_unfinished_newcomers_after_out_of_memory(tiny_model):
    # The second refill runs out of memory: the newcomer of the first is not lost, and no
    # result is delivered twice.
    engine = Engine(MemoryPlanner(torch.device("cpu"), Switches(), lambda: None), Switches())

    class Failing(Asked):
        def take(self, n):
            if self.asked:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().take(n)

    session = Failing(numbered([job(5)], 2))
    settings = BatchSettings(iterations=4, log_every=2)
    assert engine.run(tiny_model, session, numbered([job(0), job(1)]), [Scale(40, 4, 100)],
                      settings) is Outcome.COMPLETE
    assert sorted(session.results) == [0, 1, 2] and session.refusals == {}


def test_a_compiled_iteration_matches_the_eager_one_and_is_reused_by_the_next_batch(vgg_sd):
    # A two-layer model keeps the compile short on a CPU; the second batch (a new
    # objective, new targets) must run the first one's compiled code.
    import torch._dynamo.utils

    from nstd.engine.vgg import VGGFeatures

    settings = BatchSettings(iterations=3, log_every=1, content_layers=("relu2_1",),
                             style_layers=(("relu1_1", 0.5), ("relu2_1", 0.5)))
    model = VGGFeatures(vgg_sd, "torchvision", settings.layers, model_id="random")
    small = [TransferJob(rand_image(16, 16, seed=s), (STYLE,)) for s in (1, 2)]
    torch._dynamo.utils.counters.clear()
    eager = [run_batch(model, [j], settings, switches=Switches("fp32"))[0] for j in small]
    fused = [run_batch(model, [j], settings, switches=Switches("fp32", compile=True))[0] for j in small]
    for e, f in zip(eager, fused):
        assert f.runs[0].compiled and not e.runs[0].compiled
        assert [h["total"] for h in f.history] == pytest.approx([h["total"] for h in e.history], rel=1e-4)
        assert torch.allclose(e.image, f.image, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_a_failing_compile_falls_back_to_the_eager_loss(tiny_model, monkeypatch):
    from nstd.engine import transfer

    def broken(*args, **kw):
        raise RuntimeError("BackendCompilerFailed: no C compiler")

    monkeypatch.setattr(transfer, "compiled_loss", lambda: broken)
    settings = BatchSettings(iterations=3, log_every=1)
    [fused] = run_batch(tiny_model, [job(0)], settings, switches=Switches("fp32", compile=True))
    [eager] = run_batch(tiny_model, [job(0)], settings, switches=Switches("fp32"))
    assert torch.equal(fused.image, eager.image)


def test_a_batch_left_with_few_working_images_goes_on_with_those_only(tiny_model, monkeypatch):
    # Four places end together; one newcomer takes a place, the other three are parked. The
    # batch then steps one image, not four, and the newcomer comes out as it would alone.
    from nstd.engine import transfer

    rows = []
    real = transfer._Problem.iteration

    def counted(self, loss):
        rows.append(self.x.shape[0])
        return real(self, loss)

    monkeypatch.setattr(transfer._Problem, "iteration", counted)
    switches = Switches("fp32", reproducible=False)
    settings = BatchSettings(iterations=8, log_every=4)
    session = Asked([replace(job(9, style_weight=30.0), id=4)])
    run(tiny_model, session, numbered([job(s) for s in range(4)]), settings, switches=switches)
    got = session.results
    assert rows == [4] * 8 + [1] * 8 and sorted(got) == [0, 1, 2, 3, 4]
    [alone] = run_batch(tiny_model, [job(9, style_weight=30.0)], settings, switches=switches)
    assert [h["iteration"] for h in got[4].history] == [0, 4, 8]
    assert got[4].history[-1]["total"] == pytest.approx(alone.history[-1]["total"], rel=1e-4)
    assert torch.allclose(got[4].image, alone.image, atol=1e-3)


@pytest.mark.parametrize("stop_at, asked", [(6, [2]), (4, [])])
def test_a_session_that_says_stop_ends_the_batch_and_keeps_what_had_finished(tiny_model, stop_at, asked):
    # Two places of four iterations and a newcomer waiting. Stopped at 6, the first two
    # came back and the newcomer, two iterations in, does not; stopped at 4, as the first
    # two finish, they come back all the same and no newcomer is asked for.
    class Stopping(Asked):
        def progress(self, iteration, losses):
            return Verdict.STOP if iteration >= stop_at else Verdict.GO

    session = Stopping(numbered([job(2)], 2))
    assert run(tiny_model, session, numbered([job(0), job(1)]), BatchSettings(iterations=4)) is Outcome.STOPPED
    assert sorted(session.results) == [0, 1] and session.asked == asked and session.refusals == {}


def test_a_dropped_job_leaves_unfinished_and_a_newcomer_takes_its_place(tiny_model):
    # Job 1 is cancelled three iterations in: it never comes back, and the newcomer that
    # takes its place comes out as it would alone.
    from nstd.engine.session import Drop

    class Cancelling(Asked):
        def progress(self, iteration, losses):
            return Drop(frozenset({1})) if iteration == 3 else Verdict.GO

    settings = BatchSettings(iterations=8, log_every=4)
    switches = Switches("fp32", reproducible=True)
    session = Cancelling(numbered([job(2)], 2))
    assert run(tiny_model, session, numbered([job(0), job(1)]), settings, switches=switches) is Outcome.COMPLETE
    assert sorted(session.results) == [0, 2] and session.asked[0] == 1 and session.refusals == {}
    [alone] = run_batch(tiny_model, [job(2)], settings, switches=switches)
    assert torch.equal(session.results[2].image, alone.image)


def test_a_job_dropped_at_one_scale_goes_no_further(tiny_model):
    from nstd.engine.multiscale import run as run_scales_session
    from nstd.engine.session import Drop

    seen = []

    class Cancelling(Collect):
        def progress(self, iteration, losses):
            seen.append(iteration)
            return Drop(frozenset({0})) if iteration == 2 else Verdict.GO

    session = Cancelling()
    scales = [Scale(20, 3, 10), Scale(40, 2, 10)]
    assert run_scales_session(tiny_model, session, numbered([job(0), job(1)]), scales,
                              BatchSettings(log_every=1)) is Outcome.COMPLETE
    assert list(session.results) == [1] and session.results[1].image.shape == (3, 32, 40)
    assert seen[-1] == 5  # both scales ran for the job that stayed
