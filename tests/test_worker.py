"""The worker's error handling, in-process, with the engine or the disk made to fail."""

import errno
import json
import os
import threading

import pytest
import torch

from nstd.daemon.intake import Kind
from nstd import config
from nstd.daemon import outbox, outcomes as outcomes_mod, worker as worker_mod
from nstd.engine import runner
from nstd.daemon.service import Service
from nstd.daemon.worker import Worker

from harness.daemon import photo_bytes, run_once, take, write_config


def states(svc):
    return [(j.relpath, j.state, j.attempts) for j in svc.journal.get_jobs(list(range(1, 20)))]


def test_disk_full_is_retried_then_succeeds(service, monkeypatch):
    take(service, "a.jpg")
    real_write = outbox.write
    calls = []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args, **kw)

    monkeypatch.setattr(outcomes_mod.outbox, "write", flaky)
    run_once(service)
    [job] = service.journal.get_jobs([1])
    # The outbox's trouble, not the photo's: back in the queue, no attempt used up.
    assert (job.state, job.attempts) == ("queued", 0) and "No space left" in job.error
    run_once(service)
    assert states(service) == [("a.jpg", "done", 1)]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EIO, errno.ESTALE, errno.ETIMEDOUT])
def test_an_outbox_that_cannot_be_written_never_fails_the_photo(service, monkeypatch, code):
    take(service, "a.jpg")

    def broken(*args, **kw):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(outcomes_mod.outbox, "write", broken)
    for _ in range(4):  # more than max_attempts
        run_once(service)
    [job] = service.journal.get_jobs([1])
    assert (job.state, job.attempts) == ("queued", 0) and os.strerror(code) in job.error


def test_a_lost_spool_file_is_retried_then_fails_after_max_attempts(service):
    take(service, "a.jpg")
    os.unlink(service.journal.get_jobs([1])[0].spool)
    run_once(service)
    run_once(service)
    [job] = service.journal.get_jobs([1])
    assert job.state == "failed" and "after 2 attempts" in job.error


def test_no_work_is_taken_while_the_outbox_cannot_be_written(service, capsys):
    import shutil

    from nstd.cli import main

    take(service, "a.jpg")
    shutil.rmtree(service.cfg.outbox)  # a share that is not mounted
    assert service.worker._outbox_unwritable(now=0.0)
    assert service.worker.paused == f"share unavailable: outbox {service.cfg.outbox}: No such file or directory"
    capsys.readouterr()
    assert main(["status", "--config", str(service.cfg.path)]) == 0
    assert "paused: " in capsys.readouterr().out
    assert service.worker._outbox_unwritable(now=1.0)  # still: looked at again while paused
    service.cfg.outbox.mkdir()
    assert not service.worker._outbox_unwritable(now=2.0) and service.worker.paused is None
    assert [j.state for j in service.journal.get_jobs([1])] == ["queued"]  # nothing was claimed or lost


def test_out_of_memory_halves_the_batch(service, monkeypatch):
    take(service, "a.jpg", "b.jpg", "c.jpg")
    real = runner.multiscale.run
    sizes = []

    def tight(model, session, jobs, *args, **kw):
        sizes.append(len(jobs))
        if len(jobs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, session, jobs, *args, **kw)

    monkeypatch.setattr(runner.multiscale, "run", tight)
    run_once(service)
    assert sizes == [3, 1, 2, 1, 1]
    assert [s for _, s, _ in states(service)] == ["done"] * 3


def test_out_of_memory_alone_retries_with_checkpointing_then_fails_the_job(service, monkeypatch):
    take(service, "a.jpg")
    tried = []

    def never(model, session, jobs, scales, settings, cache, switches, *rest):
        tried.append(switches.checkpoint)
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(runner.multiscale, "run", never)
    run_once(service)
    # Auto first, then activations recomputed, then planned for half, a quarter and an eighth
    # of the memory (where it would tile, smaller each time).
    assert tried == [None, True, True, True, True]
    [job] = service.journal.get_jobs([1])
    assert job.state == "failed" and "out of memory even alone" in job.error


def test_out_of_memory_alone_succeeds_with_checkpointing(service, monkeypatch):
    take(service, "a.jpg")
    real = runner.multiscale.run

    def needs_checkpoint(*args, **kw):
        if not args[6].checkpoint:  # (model, session, jobs, scales, settings, cache, switches, free)
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real(*args, **kw)

    monkeypatch.setattr(runner.multiscale, "run", needs_checkpoint)
    run_once(service)
    assert states(service) == [("a.jpg", "done", 1)]
    [job] = service.journal.get_jobs([1])
    log = json.loads((service.cfg.outbox / job.output).with_suffix(".json").read_text())
    assert [run["checkpoint"] for run in log["runs"]] == [True]
    assert log["runs"][0]["size"] == [job.height, job.width] and log["runs"][0]["seconds"] > 0


def test_an_undecodable_spool_fails_at_once(service):
    take(service, "a.jpg")
    [job] = service.journal.get_jobs([1])
    with open(job.spool, "r+b") as f:
        f.truncate(100)
    run_once(service)
    [job] = service.journal.get_jobs([1])
    assert job.state == "failed" and job.attempts == 1 and "cannot decode" in job.error


def test_restart_adopts_complete_outputs_without_recomputing(service, monkeypatch):
    take(service, "a.jpg")
    run_once(service)
    # As if the daemon died after writing the outputs but before recording them.
    service.journal.db.execute("UPDATE jobs SET state = 'running'")
    (service.cfg.outbox / "ink" / ".a.jpg.x.tmp").write_bytes(b"partial")
    monkeypatch.setattr(runner.multiscale, "run", lambda *a, **k: pytest.fail("recomputed"))
    service.recover()
    assert states(service) == [("a.jpg", "done", 1)]
    assert not (service.cfg.outbox / "ink" / ".a.jpg.x.tmp").exists()
    assert outbox.complete(service.cfg.outbox, service.journal.get_jobs([1])[0]) is not None


def test_a_name_taken_by_another_photo_gets_a_hash_suffix(service):
    take(service, "a.jpg")
    run_once(service)
    (service.cfg.inbox / "a.jpg").unlink()
    take(service, "a.jpg", seed=7)  # different content, same name
    run_once(service)
    names = sorted(p.name for p in (service.cfg.outbox / "ink").iterdir())
    [second] = service.journal.get_jobs([2])
    suffixed = f"a-{second.input_sha256[:8]}"
    assert names == sorted(["a.jpg", "a.json", "a.loss.svg", f"{suffixed}.jpg", f"{suffixed}.json",
                            f"{suffixed}.loss.svg"])


def test_recovery_sweeps_litter_but_keeps_queued_spools(service):
    take(service, "a.jpg")
    [queued] = service.journal.get_jobs([1])
    orphan = service.intake.spool_dir / ("0" * 64 + ".jpg")
    orphan.write_bytes(b"left by a crash after its input was closed")
    half_move = service.cfg.processed / "sub" / ".b.jpg.nstd.tmp"
    half_move.parent.mkdir()
    half_move.write_bytes(b"half")
    keep = service.cfg.processed / "sub" / "c.jpg"
    keep.write_bytes(b"a finished move")
    service.recover()
    assert not orphan.exists() and not half_move.exists()
    assert keep.exists() and os.path.exists(queued.spool)


def test_outputs_carry_the_photos_exif_and_say_what_made_them(service):
    from PIL import Image

    im = Image.new("RGB", (40, 30), (120, 90, 60))
    ex = Image.Exif()
    ex[0x0112], ex[0x010F], ex[0x8298] = 6, "Nikon", "(c) Studio"
    ex.get_ifd(0x8769)[0x9003] = "2023:01:02 03:04:05"
    im.save(service.cfg.inbox / "e.jpg", "JPEG", exif=ex.tobytes())
    st = (service.cfg.inbox / "e.jpg").stat()
    assert service.intake.accept("e.jpg", (st.st_size, st.st_mtime_ns, st.st_ino)).kind is Kind.QUEUED
    run_once(service)
    with Image.open(service.cfg.outbox / "ink" / "e.jpg") as out:
        tags = out.getexif()
        assert out.size[0] < out.size[1]  # turned upright once, not twice
    assert 0x0112 not in tags and tags[0x010F] == "Nikon" and tags[0x8298] == "(c) Studio"
    assert tags.get_ifd(0x8769)[0x9003] == "2023:01:02 03:04:05"
    assert tags[0x0131].startswith("nstd ") and "ink" in tags[0x010E]


def test_a_blend_folder_gets_a_blended_output(tmp_path, session_models):
    models = session_models
    (tmp_path / "other.png").write_bytes(photo_bytes(48, 48, 77, "PNG"))
    cfg = config.load(write_config(tmp_path, models, styles={"ink": {"image": "style.png"},
                                                             "wash": {"image": "other.png"}},
                                   blends={"mix": {"styles": {"ink": 3, "wash": 1}}},
                                   worker={"max_batch": 4, "batch_window": 0}))
    svc = Service(cfg)
    svc.prepare()
    svc.worker = Worker(cfg, lambda: svc.styles, svc.load_weights, svc.devices[0], threading.Event())
    try:
        (cfg.inbox / "mix").mkdir()
        (cfg.inbox / "mix" / "p.jpg").write_bytes(photo_bytes(40, 40, 5))
        st = (cfg.inbox / "mix" / "p.jpg").stat()
        assert svc.intake.accept("mix/p.jpg", (st.st_size, st.st_mtime_ns, st.st_ino)).kind is Kind.QUEUED
        run_once(svc)
        log = json.loads((cfg.outbox / "mix" / "p.json").read_text())
        assert [(s["name"], s["weight"]) for s in log["styles"]] == [("ink", 3.0), ("wash", 1.0)]
        assert (cfg.outbox / "mix" / "p.jpg").exists()
    finally:
        svc.close()


def test_each_photo_is_decoded_once_for_all_its_styles_and_photos_side_by_side(tmp_path, monkeypatch,
                                                                              session_models):
    models = session_models
    cfg = config.load(write_config(tmp_path, models, worker={"max_batch": 4, "batch_window": 0}))  # ink, wash
    svc = Service(cfg)
    svc.prepare()
    svc.worker = Worker(cfg, lambda: svc.styles, svc.load_weights, svc.devices[0], threading.Event())
    decodes, both = [], threading.Barrier(2, timeout=60)
    from nstd.daemon import loader

    real = loader.images.decode

    def spy(data, name, *rest):
        decodes.append(name)
        both.wait()  # each photo's decode waits for the other's: they only meet if side by side
        return real(data, name, *rest)

    try:
        take(svc, "a.jpg", "b.jpg")
        monkeypatch.setattr(loader, "LOADERS", 2)  # whatever this machine has
        monkeypatch.setattr(loader.images, "decode", spy)
        run_once(svc)
        assert sorted(decodes) == ["a.jpg", "b.jpg"]
        assert sorted(states(svc)) == [(n, "done", 1) for n in ("a.jpg", "a.jpg", "b.jpg", "b.jpg")]
    finally:
        svc.close()


def test_a_stop_after_an_out_of_memory_split_requeues_only_the_unfinished_half(service, monkeypatch):
    take(service, "a.jpg", "b.jpg")
    real = runner.multiscale.run
    halves = []

    def tight(model, session, jobs, scales, settings, cache, switches, *rest):
        if len(jobs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        halves.append(jobs)
        if len(halves) == 2:  # the second half: a stop arrives
            service.worker.deadline = 0.0
        return real(model, session, jobs, scales, settings, cache, switches, *rest)

    monkeypatch.setattr(runner.multiscale, "run", tight)
    run_once(service)
    # a.jpg finished before the stop and stays finished; b.jpg goes back, its attempt undone.
    assert states(service) == [("a.jpg", "done", 1), ("b.jpg", "queued", 0)]


class WorkerDied(BaseException):
    """Stands for a fault that ends the worker thread (nothing catches it below run())."""


def test_the_health_loop_requeues_only_what_a_dead_worker_left_running(service, monkeypatch):
    from nstd.daemon.inbox import Watcher
    from nstd.daemon.workers import ThreadWorker, WorkerPool

    take(service, "a.jpg", "b.jpg")
    real = runner.multiscale.run

    singles = []

    def dies_on_the_second_half(model, session, jobs, *args):  # noqa: the real signature, passed through
        if len(jobs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        singles.append(1)
        if len(singles) == 2:
            raise WorkerDied()
        return real(model, session, jobs, *args)

    monkeypatch.setattr(runner.multiscale, "run", dies_on_the_second_half)
    handle = ThreadWorker(lambda: service.runtime, service.load_weights, service.devices[0])
    handle.start()
    handle.join(60)
    assert not handle.alive() and "WorkerDied" in handle.error
    service.pool = WorkerPool("thread", lambda: service.runtime, service.load_weights)
    service.pool.workers = [handle]
    service.watcher = Watcher(service.cfg.inbox, "polling", 1.0, service.hints)
    service.watcher.start()
    restarted = []
    try:
        monkeypatch.setattr(runner.multiscale, "run", real)
        monkeypatch.setattr(service.pool, "_start_worker", lambda device: restarted.append(device) or handle)
        service.health()
    finally:
        service.watcher.stop()
    assert restarted == [service.devices[0]]
    assert states(service) == [("a.jpg", "done", 1), ("b.jpg", "queued", 0)]


def claim_one(svc, token="b"):
    return svc.journal.claim(svc.journal.oldest_queued(1e12).batch_key, 1, token, 1e12)


def test_queued_photos_of_the_size_take_finished_places_in_the_running_batch(service):
    take(service, "a.jpg", "b.jpg", "c.jpg")
    service.worker.process(service.journal, claim_one(service))  # a batch of one place
    assert [s for _, s, _ in states(service)] == ["done"] * 3
    logs = [json.loads((service.cfg.outbox / j.output).with_suffix(".json").read_text())
            for j in service.journal.get_jobs([1, 2, 3])]
    assert [log["batch"] for log in logs] == [{"id": "b", "size": 1, "index": 0}] * 3
    assert all(j.attempts == 1 for j in service.journal.get_jobs([1, 2, 3]))


def test_an_older_photo_of_another_size_keeps_its_turn(service):
    take(service, "a.jpg")
    path = service.cfg.inbox / "wide.jpg"
    path.write_bytes(photo_bytes(60, 40, 7))
    st = path.stat()
    assert service.intake.accept("wide.jpg", (st.st_size, st.st_mtime_ns, st.st_ino)).kind is Kind.QUEUED
    take(service, "b.jpg", seed=200)
    service.worker.process(service.journal, claim_one(service))
    assert states(service) == [("a.jpg", "done", 1), ("wide.jpg", "queued", 0), ("b.jpg", "queued", 0)]


def prefetched_first(monkeypatch, newcomers: int, hand_out=True):
    """Make the first `newcomers` refills wait until the prefetch thread has one ready, so
    which thread loaded a newcomer does not depend on the machine's speed; `hand_out`
    False keeps them from the batch."""
    from nstd.daemon.prefetch import Prefetch

    real = Prefetch.take
    calls = []

    def take(self, n):
        calls.append(n)
        if len(calls) <= newcomers:
            with self._cond:
                ready = self._cond.wait_for(lambda: self._ready, timeout=60)
            if not ready:
                pytest.fail("nothing was prefetched")  # raised in the batch: the job fails, the test sees it
        return real(self, n) if hand_out else []

    monkeypatch.setattr(Prefetch, "take", take)


def test_newcomers_are_claimed_and_loaded_ahead_off_the_batchs_thread(service, monkeypatch):
    take(service, "a.jpg", "b.jpg", "c.jpg")
    prefetched_first(monkeypatch, 2)
    loaded = {}
    real = worker_mod.Worker._load

    def spy(self, journal, jobs):
        loaded.update({job.relpath: threading.current_thread().name for job in jobs})
        return real(self, journal, jobs)

    monkeypatch.setattr(worker_mod.Worker, "_load", spy)
    service.worker.process(service.journal, claim_one(service))  # a batch of one place
    assert states(service) == [("a.jpg", "done", 1), ("b.jpg", "done", 1), ("c.jpg", "done", 1)]
    assert loaded == {"a.jpg": threading.current_thread().name, "b.jpg": "prefetch", "c.jpg": "prefetch"}


def test_a_photo_claimed_ahead_and_never_taken_goes_back_to_the_queue_untouched(service, monkeypatch):
    take(service, "a.jpg", "b.jpg")
    prefetched_first(monkeypatch, 1, hand_out=False)
    service.worker.process(service.journal, claim_one(service))
    assert states(service) == [("a.jpg", "done", 1), ("b.jpg", "queued", 0)]
    run_once(service)
    assert states(service) == [("a.jpg", "done", 1), ("b.jpg", "done", 1)]


@pytest.mark.parametrize("setting, chosen", [("thread", None), ("auto", "process"), ("process", "process")])
def test_several_gpus_never_share_one_process_s_backend_flags(tmp_path, models, monkeypatch, setting, chosen):
    from nstd.daemon import service as service_mod
    from nstd.errors import ConfigError

    # Two GPUs, as resolve_devices names them on such a host; nothing runs on them here.
    monkeypatch.setattr(service_mod, "resolve_devices", lambda name: [torch.device("cuda", 0),
                                                                       torch.device("cuda", 1)])
    svc = Service(config.load(write_config(tmp_path, models, worker={"isolation": setting})))
    if chosen is None:
        with pytest.raises(ConfigError, match=r"^worker.isolation: thread would run 2 devices' batches in one "
                                              r"process, .*; use process or auto$"):
            svc.prepare()
        return
    try:
        svc.prepare()
        assert svc.pool.isolation == chosen
    finally:
        svc.close()
