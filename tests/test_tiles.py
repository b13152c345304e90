"""Tiles: a scale larger than the memory the engine may plan for runs as overlapping
tiles on a moving grid, stitched without seams, with colour and masks as whole."""

import json
from dataclasses import replace

import pytest
import torch

from nstd.engine import color, tilegrams, tiles, transfer
from nstd.engine.memory import Footprint, MemoryPlanner, batch_bytes
from nstd.engine.runner import Engine
from nstd.engine.session import Collect
from nstd.engine.sizes import Scale
from nstd.engine.switches import Switches, resolve
from nstd.engine.types import BatchSettings, Region, StyleImage, TransferJob

from harness.synthetic import rand_image

SETTINGS = BatchSettings(iterations=6, log_every=2)
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


def test_the_plan_tiles_only_what_does_not_fit_and_its_grid_covers_everything_and_moves():
    def fits(h, w, n):
        return n * h * w <= 128 * 128

    assert tiles.plan(100, 120, fits) is None  # fits whole
    plan = tiles.plan(300, 500, fits)
    assert plan.side == 128 and plan.overlap == 32 and plan.per_batch == 1 and plan.rounds == tiles.ROUNDS
    # Each round restarts L-BFGS: a short scale has fewer rounds, none under LEAST_ROUND iterations.
    assert [tiles.rounds_for(5, n) for n in (6, 30, 100)] == [1, 3, 5]
    grids = []
    for r in range(plan.rounds):
        covered = torch.zeros(300, 500, dtype=torch.bool)
        corners = plan.corners(300, 500, r)
        for y, x in corners:
            assert 0 <= y <= 300 - 128 and 0 <= x <= 500 - 128
            covered[y:y + 128, x:x + 128] = True
        assert covered.all()
        grids.append(set(corners))
    assert grids[0] != grids[1] != grids[2]  # no boundary stays in one place
    assert tiles.plan(300, 500, lambda h, w, n: n * h * w <= 32 * 32) is None  # no useful tile fits: run whole


def test_stitching_a_rounds_unchanged_tiles_gives_the_image_back():
    job = photo_job()
    image = rand_image(120, 160, seed=5)
    rnd = tiles.Round(job, image, tiles.Tiling(64, 16, 3, 1), 1)
    results = {k: type("R", (), {"image": j.init_image})() for k, j in enumerate(rnd.jobs())}
    assert torch.allclose(rnd.stitch(results), image, atol=1e-6)


def test_neighbours_cross_fade_over_their_overlap_where_a_pasted_tile_would_step():
    # A row of tiles whose results climb from 0.0 to 1.0, each flat: stitched, the image
    # climbs across the overlaps in steps no larger than the feathers' slopes.
    job = photo_job()
    rnd = tiles.Round(job, torch.zeros(3, H, W), tiles.Tiling(96, 32, 1, 1), 0)
    last = len(rnd.corners) - 1
    assert last >= 1
    results = {k: type("R", (), {"image": torch.full((3, 96, 96), k / last)})() for k in range(last + 1)}
    row = rnd.stitch(results)[0, H // 2]
    steps = (row[1:] - row[:-1]).abs()
    assert row[0] == 0.0 and row[-1] == 1.0 and steps.max() < 0.1
    assert steps.sum() == pytest.approx(1.0)


def halves_round(job: TransferJob) -> tiles.Round:
    """A 128 x 128 image, dark on the left and bright on the right, cut into four 64 px
    tiles that share no pixel: each owns its own wholly."""
    image = rand_image(128, 128, seed=3) * 0.3
    image[:, :, 64:] += 0.6
    rnd = tiles.Round(replace(job, content=image), image, tiles.Tiling(64, 1, 1, 2), 0)
    rnd.corners = [(0, 0), (0, 64), (64, 0), (64, 64)]
    return rnd


def shared_out(model, rnd: tiles.Round, per_batch: int = 2) -> list[dict[str, torch.Tensor]]:
    """Each tile's Gram offset from the whole photo, as a round takes them."""
    r = resolve(SWITCHES, torch.device("cpu"))
    jobs = rnd.jobs()
    photo = tilegrams.whole(model, jobs, rnd.owners(), SETTINGS.style_names, r, per_batch)
    return tilegrams.offsets(model, jobs, photo, SETTINGS.style_names, r)


def test_the_tiles_gram_targets_differ_by_their_own_character_and_average_to_the_paintings(tiny_model):
    rnd = halves_round(photo_job())
    shares = shared_out(tiny_model, rnd)
    assert all(torch.equal(o, torch.ones(64, 64)) for o in rnd.owners())
    # The whole photo's Gram is the same however many tiles are summed at once.
    one_at_a_time = shared_out(tiny_model, rnd, per_batch=1)
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for a, b in zip(shares, one_at_a_time) for n in a)
    for name in SETTINGS.style_names:
        # Equal areas, each position counted once: the offsets cancel over the photo, so the
        # tiles' targets average to the painting's Gram.
        total = sum(s[name] for s in shares)
        assert total.abs().max() <= 1e-4 * max(s[name].abs().max() for s in shares)
        # The dark tiles differ from the bright ones, and alike from alike.
        left, right, left2 = shares[0][name], shares[1][name], shares[2][name]
        assert (left - right).abs().max() > 10 * (left - left2).abs().max()
    # One tile that is the whole photo is the whole: no offset.
    whole = tiles.Round(rnd.job, rnd.image, tiles.Tiling(128, 16, 1, 1), 0)
    [alone] = shared_out(tiny_model, whole, per_batch=1)
    assert all(alone[n].abs().max() == 0 for n in SETTINGS.style_names)


def test_each_tile_starts_with_the_whole_photos_style_loss_not_its_own(tiny_model):
    rnd = halves_round(photo_job())
    shares = shared_out(tiny_model, rnd)

    def first_style(jobs):
        results = transfer.run_batch(tiny_model, jobs, replace(SETTINGS, iterations=1, log_every=1))
        return torch.tensor([res.history[0]["style"] for res in results])

    jobs = rnd.jobs()
    alone = first_style(jobs)
    shared = first_style([replace(j, gram_offset=o) for j, o in zip(jobs, shares)])
    # Against the painting alone a dark tile and a bright one are far apart; aiming off it by
    # their difference from the photo, every tile's style loss is the photo's own.
    assert alone.max() > 1.5 * alone.min()
    assert shared.max() - shared.min() < 0.02 * shared.mean()


def test_a_photo_over_the_limit_tiles_and_ends_at_its_size_with_one_history(tiny_model):
    job = photo_job()
    whole = run(tiny_model, job, None)
    tiled = run(tiny_model, job, limit_for(H, W))
    assert "tiles" not in whole.runs[0].as_dict()
    spec = tiled.runs[0].as_dict()["tiles"]
    assert spec["rounds"] == tiles.rounds_for(tiles.ROUNDS, SETTINGS.iterations) and spec["side"] < W
    assert tiled.image.shape == whole.image.shape == (3, H, W)
    assert all(rec.get("tiled") for rec in tiled.history) and tiled.history[-1]["iteration"] == SETTINGS.iterations
    # The tiles were optimised, not pasted back: the image moved from the photo as the whole
    # one did (each round restarts L-BFGS, so a short run gets less far; benchmarks/tiles.py
    # measures the losses).
    assert (tiled.image - job.content).abs().mean() > 0.5 * (whole.image - job.content).abs().mean()


def test_a_tiled_photos_progress_counts_the_scales_iterations_forward_through_every_tile(tiny_model):
    job = photo_job()
    seen = []
    engine = Engine(MemoryPlanner(torch.device("cpu"), SWITCHES, lambda: None, limit=limit_for(H, W)), SWITCHES)
    session = Collect(on_progress=lambda it, losses: seen.append(it))
    engine.run(tiny_model, session, [job], [Scale(W, SETTINGS.iterations, 100)], SETTINGS)
    assert "tiles" in session.results[job.id].runs[0].as_dict()
    # Several tiles a round, one at a time, yet the photo's count only goes forward, from
    # the first tile's iteration to the scale's last.
    assert seen == sorted(seen) and seen[0] <= 1 and seen[-1] == SETTINGS.iterations
    assert len(set(seen)) > SETTINGS.iterations // 2


def test_a_tiled_photo_keeps_snapshots_at_its_round_ends(tiny_model):
    job = photo_job()
    settings = replace(SETTINGS, iterations=20, snapshot_every=10)  # two rounds of ten
    engine = Engine(MemoryPlanner(torch.device("cpu"), SWITCHES, lambda: None, limit=limit_for(H, W)), SWITCHES)
    session = Collect()
    engine.run(tiny_model, session, [job], [Scale(W, settings.iterations, 100)], settings)
    result = session.results[job.id]
    assert result.runs[0].tiles["rounds"] == 2
    [(at, snap)] = result.snapshots
    assert at == 10 and snap.shape == (3, H, W)
    # Half way: moved from the photo, not yet where it ended.
    assert (snap - job.content).abs().mean() > 1e-3 and (snap - result.image).abs().mean() > 1e-3


def test_the_planner_tiles_a_photo_its_measured_peaks_say_will_not_fit_whole(tiny_model):
    from nstd.engine.memory import MeasuredMemory
    from nstd.engine.types import RunStats

    job = photo_job()
    limit = 2 * limit_for(H, W)  # the estimate says the photo fits whole, with room to spare
    planner = MemoryPlanner(torch.device("cpu"), SWITCHES, lambda: None, limit=limit)
    session = Collect()
    Engine(planner, SWITCHES).run(tiny_model, session, [job], [Scale(W, SETTINGS.iterations, 100)], SETTINGS)
    assert "tiles" not in session.results[job.id].runs[0].as_dict()
    # Batches of its kind were measured far above the estimate: now it does not fit whole.
    per_pixel = 1.5 * limit / (H * W)  # an image of H x W: one and a half times the limit
    planner.observe(SETTINGS, 100, [RunStats((H, W), 1, 6, 1.0, "fp32", False, False, True,
                                             peak_bytes=int(per_pixel * H * W / MeasuredMemory.MARGIN))])
    session = Collect()
    Engine(planner, SWITCHES).run(tiny_model, session, [replace(job, id=2)], [Scale(W, SETTINGS.iterations, 100)],
                                  SETTINGS)
    assert session.results[2].runs[0].tiles["side"] < W


def test_a_photo_the_estimate_let_run_whole_that_ran_out_of_memory_runs_as_tiles(tiny_model, monkeypatch):
    real, sizes = transfer.run, []

    def whole_too_big(model, session, jobs, *rest):
        sizes.append(tuple(jobs[0].content.shape[-2:]))
        if sizes[-1] == (H, W):  # the device holds less than the estimate said
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(model, session, jobs, *rest)

    monkeypatch.setattr(transfer, "run", whole_too_big)
    job = photo_job()
    result = run(tiny_model, job, 2 * limit_for(H, W))  # the estimate: it fits whole
    # Planned for half the memory on the retry, it tiles, from its start.
    assert sizes[0] == (H, W) and all(max(s) < W for s in sizes[1:])
    assert result.runs[0].tiles["side"] < W and result.image.shape == (3, H, W)


def test_colour_preservation_and_a_kept_region_hold_across_tiles(tiny_model):
    keep = torch.zeros(H, W)
    keep[:, :32] = 1.0  # the left quarter keeps the photo
    styled = StyleImage(rand_image(64, 64, seed=2), key="s")
    job = photo_job(preserve_color="luminance",
                    regions=(Region(keep, (), "keep"), Region(1 - keep, (styled,), "sky")))
    result = run(tiny_model, job, limit_for(H, W))
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
                                   transfer={"size": 96, "iterations": 6, "log_every": 3},
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
                          transfer={"size": 96, "iterations": 6, "log_every": 3},
                          worker={"max_memory": f"{limit_for(72, 96) // 2**20}MiB", "max_batch": 1,
                                  "precision": "fp32", "checkpoint": True})
    d = Daemon(config).start()
    try:
        (tmp_path / "inbox" / "a.jpg").write_bytes(photo_bytes(72, 96, 3))
        d.wait_log("progress", timeout=60)  # under way, one tile's round at a time
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
    features = partial(transfer._features, tiny_model, r=r)
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
