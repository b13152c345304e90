"""Tiles: a scale larger than the memory the engine may plan for runs a tile at a time,
the whole photo's objective and one optimiser, with colour and masks as whole."""

import json
from dataclasses import replace

import pytest
import torch

from nstd.engine import color, tiles, transfer
from nstd.engine.layers import halo
from nstd.engine.memory import Footprint, MemoryPlanner, batch_bytes
from nstd.engine.runner import Engine
from nstd.engine.session import Collect
from nstd.engine.sizes import Scale
from nstd.engine.switches import Switches, resolve
from nstd.engine.types import BatchSettings, Region, StyleImage, TransferJob

from harness.synthetic import rand_image

# VGG to relu2_1 only: its activations see 5 px, so a tile needs a halo of 16 and photos
# of a hundred pixels tile (the full network's relu5_1 needs 80, and tiles of 240 px).
SETTINGS = BatchSettings(iterations=6, log_every=2, content_layers=("relu2_1",),
                         style_layers=(("relu1_1", 0.5), ("relu2_1", 0.5)))
LAYERS = {"content_layers": ["relu2_1"], "style_layers": {"relu1_1": 0.5, "relu2_1": 0.5}}
SWITCHES = Switches("fp32", checkpoint=True)
H, W = 96, 128  # the photo: a little more than the limits below let run whole


def limit_for(h: int, w: int) -> int:
    """A memory limit just under what an h x w photo needs whole (as the planner reckons)."""
    fp = Footprint(SETTINGS.layers, "lbfgs", 100, precision="fp32", checkpoint=True)
    return int((batch_bytes(1, h, w, fp) - 1) / SWITCHES.memory_budget)


def run(model, job: TransferJob, limit: int | None):
    engine = Engine(MemoryPlanner(torch.device("cpu"), SWITCHES, lambda: None, limit=limit), SWITCHES)
    session = Collect()
    engine.run(model, session, [job], [Scale(max(job.content.shape[-2:]), SETTINGS.iterations, 100)], SETTINGS)
    return session.results[job.id]


def photo_job(**kw) -> TransferJob:
    kw.setdefault("content", rand_image(H, W, seed=1))
    return TransferJob(styles=(StyleImage(rand_image(64, 64, seed=2), key="s"),), style_weight=50.0, **kw)


def test_the_plan_tiles_only_what_does_not_fit_and_its_cores_share_the_photo_out_once():
    def fits(h, w, n, reserved=0, tile=False):
        return n * h * w + reserved <= 256 * 256

    assert tiles.plan(200, 240, fits, 80) is None  # fits whole
    plan = tiles.plan(600, 1000, fits, 80)
    assert plan.side == 256 and plan.halo == 80 and plan.per_batch == 1
    (wh, ww), grid = tiles.grid(608, 1008, plan)  # the photo mirrored out to a multiple of 16
    assert wh <= 256 and ww <= 256 and len(grid) > 1
    owned = torch.zeros(608, 1008, dtype=torch.int32)
    for t in grid:
        y0, y1, x0, x1 = t.core
        assert all(v % 16 == 0 for v in (t.top, t.left, *t.core))  # the activations line up
        assert 0 <= t.top and t.top + wh <= 608 and 0 <= t.left and t.left + ww <= 1008
        # The window holds its core and the halo around it, wherever the photo goes on.
        assert t.top <= max(0, y0 - plan.halo) and t.top + wh >= min(608, y1 + plan.halo)
        assert t.left <= max(0, x0 - plan.halo) and t.left + ww >= min(1008, x1 + plan.halo)
        owned[y0:y1, x0:x1] += 1
    assert (owned == 1).all()  # every pixel answered for by exactly one tile
    assert tiles.plan(600, 1000, lambda h, w, n, reserved=0, tile=False: n * h * w <= 224 * 224, 80) is None  # all halo
    # The reads take no more than the tiles: `read_scale` times their pixels, the whole photo at most.
    assert plan.read_side == plan.side  # by default, the tiles' windows
    read = tiles.plan(600, 1000, fits, 80, read_scale=4.0)
    assert read.read_side ** 2 <= 4 * wh * ww < (read.read_side + 16) ** 2
    assert tiles.plan(600, 1000, fits, 80, read_scale=100.0).read_side == 1008
    # A budget that holds the whole photo (608 x 1008 once padded, 9.35 windows of 256 x 256)
    # reads it whole, though no square of as many pixels would cover it.
    assert tiles.plan(600, 1000, fits, 80, read_scale=9.36).read_side == 1008


def test_tiles_recompute_their_blocks_only_where_the_halos_would_cost_more():
    # Bytes a pixel of a tile's pass in bf16 with and without recomputing VGG's blocks (the
    # estimate's). Recomputing gives larger tiles for a third more work: at print size on a
    # 24 GB card the halos of smaller tiles cost less; where even those tiles are small, not.
    def plans(room):
        return {c: tiles.plan(9000, 12000, lambda h, w, n, reserved=0, tile=False:
                              n * h * w * (1373 if c else 2271) + reserved <= room, 80) for c in (False, True)}

    large = plans(24e9)
    assert large[True].side > large[False].side
    chosen = tiles.cheaper(9000, 12000, large)
    assert chosen.checkpoint is False and chosen.side == large[False].side
    assert 3 < tiles.passes(9000, 12000, chosen, False) < tiles.passes(9000, 12000, large[True], True)
    assert tiles.cheaper(9000, 12000, plans(0.3e9)).checkpoint is True
    assert tiles.cheaper(9000, 12000, {False: None, True: large[True]}).checkpoint is True  # what fits at all
    assert tiles.cheaper(900, 1200, {False: None, True: None}) is None


def test_the_photos_own_state_stays_on_the_device_only_where_it_leaves_the_tiles_most_of_it():
    def fits(h, w, n, reserved=0, tile=False):
        return n * h * w * 1000 + reserved <= 2**30

    small = tiles.plan(2000, 3000, fits, 80, state=2**28, room=2**30, offload=True)
    assert small.state_on_device and small.side * small.side * 1000 <= 2**30 - 2**28
    large = tiles.plan(2000, 3000, fits, 80, state=2**28 + 1, room=2**30, offload=True)
    assert not large.state_on_device and large.side > small.side  # in host memory: the tiles get it all
    # A state that fits the quarter, but leaves no useful tile beside it, waits in host memory.
    def small_device(h, w, n, reserved=0, tile=False):
        return n * h * w * 1000 + reserved <= 64 * 10**6

    tight = tiles.plan(2000, 3000, small_device, 80, state=16 * 10**6, room=64 * 10**6, offload=True)
    assert not tight.state_on_device and tight.side == tiles.least_side(80) == 240
    # Where the device is the host (the CPU), the state is always counted in.
    cpu = tiles.plan(2000, 3000, fits, 80, state=2**28 + 1, room=2**30)
    assert cpu.state_on_device and cpu.side <= small.side


@pytest.fixture
def shallow_model(vgg_sd):
    from nstd.engine.vgg import VGGFeatures

    return VGGFeatures(vgg_sd, "torchvision", SETTINGS.layers, model_id="random-shallow")


def masked_job(h: int, w: int) -> TransferJob:
    mask = torch.zeros(h, w)
    mask[:, : w // 3] = 1
    return photo_job(content=rand_image(h, w, seed=1), content_map=torch.rand(h // 2, w // 2),
                     regions=(Region(mask, (StyleImage(rand_image(64, 64, seed=3), key="t"),), "a"),
                              Region(1 - mask, (StyleImage(rand_image(64, 64, seed=2), key="s"),), "b")))


def row_and_gradient(model, job: TransferJob, settings: BatchSettings, side: int | None, halo_: int | None = None,
                     read_side: int = 0):
    """The loss row and the gradient at a random image: untiled (`side` None), or by tiles
    (and reads of `read_side`)."""
    from functools import partial

    from nstd.engine.resize import pool_padding
    from nstd.engine.switches import running
    from nstd.engine.targets import GramCache

    r = resolve(SWITCHES, torch.device("cpu"))
    features = partial(transfer.activations, model, r=r)
    h, w = job.content.shape[-2:]
    ready = transfer.padded(job, pool_padding(h, w))
    x = rand_image(*ready.content.shape[-2:], seed=9)[None].requires_grad_(True)
    with running(r):
        if side is None:
            with torch.no_grad():
                objective = transfer._objective(model, features, [ready], settings, ready.content[None], GramCache(),
                                                r, max(h, w))
            total, row = objective(x, features(x))
            total.sum().backward()
            return row.detach(), x.grad, 1
        tiling = tiles.Tiling(side, 2, halo_ or halo(settings.layers), read_side=read_side)
        with torch.no_grad():
            photo = tiles.Photo(ready, features, settings, tiling, r.device, r.device,
                                tiles.style_grams(model, features, ready, max(h, w), settings, GramCache(), r, tiling))
        _, row = photo.evaluate(x, grad=True)
        return row, x.grad, (len(photo.tiles), len(photo.reads))


def test_with_the_deepest_layers_reach_around_each_core_the_tiles_objective_is_the_whole_photos(tiny_model):
    # The full network: relu5_1's 80 px halo, and tiles of 240 px on a photo that is not
    # a multiple of 16. The same losses (each style layer's) and gradient: the cores share
    # the photo out exactly once, each core sees what the whole image gives it, and every
    # window passes its gradient back to all the pixels it read.
    job = photo_job(content=rand_image(250, 300, seed=1))
    row, grad, _ = row_and_gradient(tiny_model, job, BatchSettings(), None)
    tiled_row, tiled_grad, count = row_and_gradient(tiny_model, job, BatchSettings(), 240)
    assert count == (4, 4) and row.shape[1] == 9
    assert torch.allclose(tiled_row, row, rtol=1e-5) and (tiled_grad - grad).norm() <= 1e-5 * grad.norm()
    # What the halo is for: with 32 px, short of relu5_1's reach, the gradient is off.
    _, short, _ = row_and_gradient(tiny_model, job, BatchSettings(), 240, halo_=32)
    assert (short - grad).norm() > 1e-2 * grad.norm()


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("read_side", [0, 112, 208])
def test_many_small_tiles_give_the_whole_photos_objective_and_gradient_masks_and_all(shallow_model, masked,
                                                                                  read_side):
    # The reads (the passes without a gradient) in the tiles' windows, in larger ones, and
    # in one window holding the whole photo.
    job = masked_job(150, 200) if masked else photo_job(content=rand_image(150, 200, seed=1))
    row, grad, _ = row_and_gradient(shallow_model, job, SETTINGS, None)
    tiled_row, tiled_grad, (count, reads) = row_and_gradient(shallow_model, job, SETTINGS, 64, read_side=read_side)
    assert count >= 9 and row.shape[1] == (8 if masked else 6)
    assert reads == {0: count, 112: 2 * 3, 208: 1}[read_side]  # the photo runs at 160 x 208
    assert torch.allclose(tiled_row, row, rtol=1e-5) and (tiled_grad - grad).norm() <= 1e-5 * grad.norm()


def test_a_tiled_run_is_the_whole_run(shallow_model):
    # The same objective and one optimiser over the whole photo: tiling changes nothing a
    # photo shows, seams least of all.
    from benchmarks.tiles import seam_figure

    job = photo_job(content=rand_image(150, 200, seed=1))
    whole = run(shallow_model, job, None)
    tiled = run(shallow_model, job, limit_for(150, 200))
    spec = tiled.runs[0].tiles
    assert spec["tiles"] > 1 and spec["state"] == "device"
    # To rounding (the gradients agree to 1e-8), which the steps' clamping to the displayable
    # range amplifies at a few pixels by the sixth iteration.
    diff = (tiled.image - whole.image).abs()
    assert diff.mean() < 1e-4 and diff.max() < 0.02, (diff.mean(), diff.max())
    assert tiled.history[-1]["total"] == pytest.approx(whole.history[-1]["total"], rel=1e-4)
    tiling = tiles.Tiling(spec["side"], spec["at_once"], spec["halo"])
    assert seam_figure(tiled.image, tiling) == pytest.approx(seam_figure(whole.image, tiling), rel=1e-3)


def test_a_photo_over_the_limit_tiles_and_ends_at_its_size_with_one_history(shallow_model):
    job = photo_job()
    whole = run(shallow_model, job, None)
    tiled = run(shallow_model, job, limit_for(H, W))
    assert "tiles" not in whole.runs[0].as_dict()
    spec = tiled.runs[0].as_dict()["tiles"]
    assert spec["tiles"] > 1 and spec["side"] < W and max(spec["window"]) <= spec["side"]
    assert tiled.image.shape == whole.image.shape == (3, H, W)
    assert all(rec.get("tiled") for rec in tiled.history) and tiled.history[-1]["iteration"] == SETTINGS.iterations
    # The image moved from the photo as the whole one did; the deep layers see past a small
    # tile's halo, so not exactly as far (benchmarks/tiles.py measures real sizes).
    moved, whole_moved = ((r.image - job.content).abs().mean() for r in (tiled, whole))
    assert 0.7 * whole_moved < moved < 1.3 * whole_moved
    assert tiled.history[-1]["total"] < 0.9 * tiled.history[0]["total"]


def test_a_tiled_photos_progress_counts_the_scales_iterations_forward_through_every_tile(shallow_model):
    job = photo_job()
    seen = []
    engine = Engine(MemoryPlanner(torch.device("cpu"), SWITCHES, lambda: None, limit=limit_for(H, W)), SWITCHES)
    session = Collect(on_progress=lambda it, losses: seen.append(it))
    engine.run(shallow_model, session, [job], [Scale(W, SETTINGS.iterations, 100)], SETTINGS)
    assert "tiles" in session.results[job.id].runs[0].as_dict()
    # Several tiles, one at a time, and the photo's count goes forward an iteration at a time.
    assert seen == list(range(1, SETTINGS.iterations + 1))


def test_a_tiled_photo_keeps_its_snapshots(shallow_model):
    job = photo_job()
    settings = replace(SETTINGS, iterations=20, snapshot_every=10)
    engine = Engine(MemoryPlanner(torch.device("cpu"), SWITCHES, lambda: None, limit=limit_for(H, W)), SWITCHES)
    session = Collect()
    engine.run(shallow_model, session, [job], [Scale(W, settings.iterations, 100)], settings)
    result = session.results[job.id]
    assert result.runs[0].tiles["tiles"] > 1
    [(at, snap)] = result.snapshots
    assert at == 10 and snap.shape == (3, H, W)
    # Half way: moved from the photo, not yet where it ended.
    assert (snap - job.content).abs().mean() > 1e-3 and (snap - result.image).abs().mean() > 1e-3


def test_the_planner_tiles_a_photo_its_measured_peaks_say_will_not_fit_whole(shallow_model):
    from nstd.engine.memory import MeasuredMemory
    from nstd.engine.types import RunStats

    job = photo_job()
    limit = 2 * limit_for(H, W)  # the estimate says the photo fits whole, with room to spare
    planner = MemoryPlanner(torch.device("cpu"), SWITCHES, lambda: None, limit=limit)
    session = Collect()
    Engine(planner, SWITCHES).run(shallow_model, session, [job], [Scale(W, SETTINGS.iterations, 100)], SETTINGS)
    assert "tiles" not in session.results[job.id].runs[0].as_dict()
    # Batches of its kind were measured far above the estimate: now it does not fit whole.
    per_pixel = 1.5 * limit / (H * W)  # an image of H x W: one and a half times the limit
    planner.observe(SETTINGS, 100, [RunStats((H, W), 1, 6, 1.0, "fp32", False, False, True,
                                             peak_bytes=int(per_pixel * H * W / MeasuredMemory.MARGIN))])
    session = Collect()
    Engine(planner, SWITCHES).run(shallow_model, session, [replace(job, id=2)], [Scale(W, SETTINGS.iterations, 100)],
                                  SETTINGS)
    assert session.results[2].runs[0].tiles["side"] < W


def test_a_photo_the_estimate_let_run_whole_that_ran_out_of_memory_runs_as_tiles(shallow_model, monkeypatch):
    real, tiled, sizes = transfer.run, tiles.run, []

    def whole_too_big(model, session, jobs, *rest):
        sizes.append(("whole", tuple(jobs[0].content.shape[-2:])))
        if sizes[-1][1] == (H, W):  # the device holds less than the estimate said
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(model, session, jobs, *rest)

    def by_tiles(model, session, job, *rest):
        sizes.append(("tiled", tuple(job.content.shape[-2:])))
        return tiled(model, session, job, *rest)

    monkeypatch.setattr(transfer, "run", whole_too_big)
    monkeypatch.setattr(tiles, "run", by_tiles)
    job = photo_job()
    result = run(shallow_model, job, 2 * limit_for(H, W))  # the estimate: it fits whole
    # Planned for half the memory on the retry, it tiles, from its start.
    assert sizes == [("whole", (H, W)), ("tiled", (H, W))]
    assert result.runs[0].tiles["side"] < W and result.image.shape == (3, H, W)


def test_colour_preservation_and_a_kept_region_hold_across_tiles(shallow_model):
    keep = torch.zeros(H, W)
    keep[:, :32] = 1.0  # the left quarter keeps the photo
    styled = StyleImage(rand_image(64, 64, seed=2), key="s")
    job = photo_job(preserve_color="luminance",
                    regions=(Region(keep, (), "keep"), Region(1 - keep, (styled,), "sky")))
    result = run(shallow_model, job, limit_for(H, W))
    assert "tiles" in result.runs[0].as_dict()
    photo_iq, out_iq = color.rgb_to_yiq(job.content)[1:], color.rgb_to_yiq(result.image)[1:]
    assert (out_iq - photo_iq)[:, :, 32:].abs().mean() < 0.02  # the photo's colour, where it was painted
    assert torch.allclose(result.image[:, :, :28], job.content[:, :, :28], atol=0.02)  # kept as it was
    assert set(result.history[-1]["style_by_region"]) == {"sky"}


def test_the_daemon_tiles_a_photo_its_limit_cannot_hold_and_says_so_in_the_loss_log(tmp_path, models):
    import threading

    from nstd import config
    from nstd.daemon.service import Service
    from nstd.daemon.worker import Worker

    from harness.daemon import photo_bytes, run_once, write_config

    cfg = config.load(write_config(tmp_path, models, styles={"ink": {"image": "style.png"}},
                                   transfer={"size": 96, "iterations": 6, "log_every": 3, **LAYERS},
                                   worker={"max_memory": f"{limit_for(72, 96) // 2**20}MiB", "max_batch": 1,
                                           "precision": "fp32", "checkpoint": True}))
    svc = Service(cfg)
    svc.prepare()
    svc.worker = Worker(cfg, lambda: svc.styles, svc.load_weights, svc.devices[0], threading.Event())
    try:
        (cfg.inbox / "a.jpg").write_bytes(photo_bytes(72, 96, 3))
        st = (cfg.inbox / "a.jpg").stat()
        assert svc.intake.accept("a.jpg", (st.st_size, st.st_mtime_ns, st.st_ino)).kind.name == "QUEUED"
        run_once(svc)
        [job] = svc.journal.get_jobs([1])
        assert job.state == "done"
        log = json.loads((cfg.outbox / job.output).with_suffix(".json").read_text())
        assert log["runs"][-1]["tiles"]["side"] < 96 and log["output"]["width"] == 96
        svc.inputs.finalize(1e12)
        assert (cfg.processed / "a.jpg").exists()
    finally:
        svc.close()


def test_a_daemon_killed_mid_tiled_photo_recomputes_it_and_publishes_it_once(tmp_path, session_models):
    from harness.daemon import Daemon, files, jobs, photo_bytes, wait_for, write_config

    config = write_config(tmp_path, session_models, styles={"ink": {"image": "style.png"}},
                          transfer={"size": 96, "iterations": 6, "log_every": 3, **LAYERS},
                          worker={"max_memory": f"{limit_for(72, 96) // 2**20}MiB", "max_batch": 1,
                                  "precision": "fp32", "checkpoint": True})
    d = Daemon(config).start()
    try:
        (tmp_path / "inbox" / "a.jpg").write_bytes(photo_bytes(72, 96, 3))
        d.wait_log("progress", timeout=60)  # under way, a tile at a time
        d.kill()
        assert [state for _, _, state, _ in jobs(tmp_path)] == ["running"]
        d = Daemon(config).start()
        d.wait_log("recovered", timeout=30)
        wait_for(lambda: files(tmp_path / "processed") == ["a.jpg"], 180, "the photo after the restart")
        assert d.stop() == 0
    finally:
        if d.alive():
            d.kill()
    assert [(state, attempts) for _, _, state, attempts in jobs(tmp_path)] == [("done", 1)]
    assert [f for f in files(tmp_path / "outbox") if f.startswith("ink/")] == ["ink/a.jpg", "ink/a.json",
                                                                                  "ink/a.loss.svg"]
    log = json.loads((tmp_path / "outbox" / "ink" / "a.json").read_text())
    assert log["runs"][-1]["tiles"]["side"] < 96


def test_a_painting_larger_than_a_tile_gives_its_grams_a_window_at_a_time(tiny_model):
    from functools import partial

    from nstd.engine import targets
    from nstd.engine.switches import running

    r = resolve(SWITCHES, torch.device("cpu"))
    features = partial(transfer.activations, tiny_model, r=r)
    painting = rand_image(200, 264, seed=7)  # not a multiple of 16: the last cores are ragged
    with torch.no_grad(), running(r):
        whole = targets.painting_grams(features, painting, SETTINGS.style_names, None)
        windowed = targets.painting_grams(features, painting, SETTINGS.style_names, 128)
    # Each position counted once, with 32 px of context (a quarter of the window): the early
    # layers' Grams are the whole image's to rounding, the deepest (whose field reaches past
    # the halo) close.
    for name in SETTINGS.style_names:
        error = (windowed[name] - whole[name]).abs().max() / whole[name].abs().max()
        assert error < (1e-4 if name in ("relu1_1", "relu2_1", "relu3_1") else 0.05), name


def test_nstd_stylize_tiles_a_photo_over_its_max_memory(tmp_path, models):
    from PIL import Image

    from nstd.cli import main

    for name, (h, w, seed) in {"p.png": (300, 400, 1), "s.png": (96, 96, 2)}.items():
        Image.fromarray((rand_image(h, w, seed).permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / name)
    # Just under what the photo needs whole at the full network's defaults: its 240 px tiles fit.
    precision = resolve(Switches(), torch.device("cpu")).precision
    whole = batch_bytes(1, 304, 400, Footprint(BatchSettings().layers, "lbfgs", 100, precision=precision,
                                               checkpoint=True))
    limit = int(whole / Switches().memory_budget) - 1
    assert main(["stylize", str(tmp_path / "p.png"), "-s", str(tmp_path / "s.png"), "-o", str(tmp_path / "out"),
                 "--size", "400", "--multiscale-start", "400", "--iterations", "2", "--model", "random",
                 "--models-dir", str(models), "--format", "png", "--max-memory", f"{limit // 1024}KiB"]) == 0
    log = json.loads((tmp_path / "out" / "p.s.json").read_text())
    assert log["runs"][-1]["tiles"]["tiles"] >= 2 and log["runs"][-1]["tiles"]["halo"] == 80
    assert all(rec["tiled"] for rec in log["history"])
    with Image.open(tmp_path / "out" / "p.s.png") as im:
        assert im.size == (400, 300)


def test_photos_tiled_in_turn_count_progress_forward_and_a_photo_cancelled_while_waiting_never_runs(shallow_model):
    from nstd.engine.session import Drop, Verdict

    class Cancelling(Collect):
        def progress(self, iteration, losses):
            self.seen.append(iteration)
            return Drop(frozenset({3})) if iteration == 2 else Verdict.GO

    jobs = [photo_job(content=rand_image(H, W, seed=s), id=s) for s in (1, 2, 3)]
    engine = Engine(MemoryPlanner(torch.device("cpu"), SWITCHES, lambda: None, limit=limit_for(H, W)), SWITCHES)
    session = Cancelling()
    session.seen = []
    engine.run(shallow_model, session, jobs, [Scale(W, SETTINGS.iterations, 100)], SETTINGS)
    # Photo 3 was cancelled while photo 1 ran: photos 1 and 2 came out, tiled, one after
    # the other, and the scale's count went forward through both to its end.
    assert sorted(session.results) == [1, 2] and all(r.runs[0].tiles for r in session.results.values())
    assert session.seen == sorted(session.seen) and session.seen[-1] == round(2 * SETTINGS.iterations / 3)
