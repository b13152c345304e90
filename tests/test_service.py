"""The daemon in-process, stepped by an injected clock: no sleeps, no subprocess.

`Service.inputs.step(now)` runs one round of the inbox side (rescan when due, events,
settling, intake, disposal) and `drive` runs queued batches through the worker, so
each test decides exactly how much time passes between what it does.
"""

import hashlib
import json
import os
import re
import threading
from pathlib import Path

import pytest

from nstd.daemon.inbox import Watcher
from nstd.daemon.journal import State
from nstd.daemon.scheduler import Scheduler
from nstd.daemon.workers import WorkerPool

from harness.daemon import files, photo_bytes, wait_for


def drive(svc, now: float, rounds: int = 20) -> None:
    """Step the inputs at `now` and run every batch there is, until nothing changes."""
    scheduler = Scheduler(svc.journal, 0, lambda job: 4, clock=lambda: 1e12)
    for _ in range(rounds):
        svc.inputs.step(now)
        batch = scheduler.next_batch()
        if not batch:
            svc.inputs.step(now)  # dispose of what the last batch finished
            return
        svc.worker.process(svc.journal, batch)
    raise AssertionError("the queue did not drain")


def queued_inputs(svc) -> list[str]:
    return sorted(r[0] for r in svc.journal.db.execute("SELECT relpath FROM inputs"))


def test_a_file_still_being_copied_is_taken_only_once_it_has_held_still(service, settle):
    inbox = service.cfg.inbox
    data = photo_bytes(40, 40, 2)
    chunks = [data[i:i + len(data) // 4 + 1] for i in range(0, len(data), len(data) // 4 + 1)]
    now = 0.0
    with open(inbox / "slow.jpg", "wb") as f:
        for chunk in chunks:  # a network copy: chunks with pauses shorter than the settle time
            f.write(chunk)
            f.flush()
            service.inputs.step(now)
            assert queued_inputs(service) == []
            now += settle * 0.6
    service.inputs.step(now)  # the last write, seen still for only 0.6 x settle
    assert queued_inputs(service) == []
    service.inputs.step(now + settle * 0.5)  # still for 1.1 x settle since the last change
    assert queued_inputs(service) == ["slow.jpg"]
    drive(service, now + settle)
    log = json.loads((service.cfg.outbox / "ink" / "slow.json").read_text())
    assert log["input"]["sha256"] == hashlib.sha256(data).hexdigest()  # never read half-written
    assert files(service.cfg.processed) == ["slow.jpg"] and files(inbox) == []


def test_a_temporary_name_renamed_into_place_is_taken_once_under_its_real_name(service, settle):
    inbox = service.cfg.inbox
    (inbox / ".renamed.jpg.x1y2").write_bytes(photo_bytes(40, 40, 3))  # rsync's temporary name
    service.inputs.step(0.0)
    service.inputs.step(settle * 2)
    assert queued_inputs(service) == []
    os.rename(inbox / ".renamed.jpg.x1y2", inbox / "renamed.jpg")
    service.hints.add(str(inbox / "renamed.jpg"))  # what the watcher reports for a rename
    service.inputs.step(settle * 3)
    service.inputs.step(settle * 5)
    assert queued_inputs(service) == ["renamed.jpg"]
    drive(service, settle * 6)
    assert files(service.cfg.processed) == ["renamed.jpg"]
    assert [(j.relpath, j.state) for j in service.journal.get_jobs([1])] == [("renamed.jpg", State.DONE)]


def test_folders_moved_in_whole_are_taken_from_events_unless_ignored(service, settle, tmp_path):
    inbox = service.cfg.inbox
    watcher = Watcher(inbox, "native", 0.2, service.hints)
    watcher.start()
    try:
        service.inputs.step(0.0)  # the first rescan, of an empty inbox; the next is minutes away
        for folder in ("ink", ".sync-temp", "@eaDir"):
            src = tmp_path / f"staging-{folder}"
            (src / "deeper").mkdir(parents=True)
            (src / "deeper" / "m.jpg").write_bytes(photo_bytes(40, 40, 20 + len(folder)))
            os.rename(src, inbox / folder)
        # Real events from the kernel: wait for them to arrive, not for time to pass.
        assert service.hints.event.wait(30)
        now = 1.0
        for _ in range(50):
            service.inputs.step(now)
            now += settle
            if queued_inputs(service):
                break
    finally:
        watcher.stop()
    drive(service, now + settle)
    assert queued_inputs(service) == ["ink/deeper/m.jpg"]
    assert files(service.cfg.processed) == ["ink/deeper/m.jpg"]
    assert (inbox / ".sync-temp" / "deeper" / "m.jpg").exists()
    assert (inbox / "@eaDir" / "deeper" / "m.jpg").exists()


def test_the_same_photo_again_is_recognised_and_an_edit_is_new_work(service, settle):
    inbox = service.cfg.inbox
    data = photo_bytes(40, 40, 6)
    now = 0.0

    def drop(name, content):
        nonlocal now
        (inbox / name).write_bytes(content)
        service.inputs.next_rescan = now  # the next step rescans, as the timer would
        service.inputs.step(now)
        now += settle * 2
        drive(service, now)

    drop("one.jpg", data)
    assert files(service.cfg.processed) == ["one.jpg"]
    drop("copy.jpg", data)
    assert files(service.cfg.processed) == ["copy.jpg", "one.jpg"]
    # One job, shared by both files, computed once.
    assert [(j.state, j.attempts) for j in service.journal.get_jobs([1, 2])] == [(State.DONE, 1)]
    # The very same file again, under its first name: recognised, moved on, not recomputed.
    drop("one.jpg", data)
    assert files(service.cfg.processed) == ["copy.jpg", "one-1.jpg", "one.jpg"]
    assert [(j.state, j.attempts) for j in service.journal.get_jobs([1, 2])] == [(State.DONE, 1)]
    drop("one.jpg", photo_bytes(40, 40, 7))  # an edit: new work
    assert [(j.state, j.attempts) for j in service.journal.get_jobs([1, 2])] == [(State.DONE, 1)] * 2


def dropper(svc, settle):
    """drop(name, content): a file dropped into the inbox, taken in and run to the end."""
    clock = [0.0]

    def drop(name, content):
        (svc.cfg.inbox / name).write_bytes(content)
        svc.inputs.next_rescan = clock[0]  # the next step rescans, as the timer would
        svc.inputs.step(clock[0])
        clock[0] += settle * 2
        drive(svc, clock[0])

    return drop


def images_in(svc) -> list[str]:
    return [name for name in files(svc.cfg.outbox / "ink") if name.endswith(".jpg")]


def clear_outbox(svc) -> None:
    for path in (svc.cfg.outbox / "ink").iterdir():
        path.unlink()


def test_a_photo_whose_outputs_left_the_outbox_comes_out_again_when_dropped_again(service, settle):
    # A studio clears the outbox once it has delivered, or deletes a result to have it made
    # again; the photo dropped again must come out, not be recognised and moved on.
    drop, data = dropper(service, settle), photo_bytes(40, 40, 6)
    drop("one.jpg", data)
    first = (service.cfg.outbox / "ink" / "one.jpg").read_bytes()
    clear_outbox(service)
    drop("again.jpg", data)  # under a new name: its output under that name
    assert images_in(service) == ["again.jpg"]
    assert (service.cfg.outbox / "ink" / "again.jpg").read_bytes() == first  # the same work, made again
    drop("third.jpg", data)  # its output is there: recognised, not made again
    assert images_in(service) == ["again.jpg"]
    clear_outbox(service)
    drop("one.jpg", data)  # its first name again, back after it was moved to processed/
    assert images_in(service) == ["one.jpg"] and (service.cfg.outbox / "ink" / "one.json").exists()
    assert files(service.cfg.processed) == ["again.jpg", "one.jpg", "third.jpg"]  # the same file kept once
    assert [(j.state, j.attempts) for j in service.journal.get_jobs([1, 2])] == [(State.DONE, 1)]
    # Two names at once, both known: the one taken in second waits for the output the first
    # asked for, rather than leave the inbox before it exists.
    clear_outbox(service)
    for name in ("again.jpg", "third.jpg"):
        (service.cfg.inbox / name).write_bytes(data)
    service.inputs.next_rescan = 100.0
    service.inputs.step(100.0)
    service.inputs.step(100.0 + settle * 2)  # both settled and taken in; nothing has run yet
    assert sorted(r[0] for r in service.journal.db.execute("SELECT relpath FROM inputs WHERE state = 'queued'")) \
        == ["again.jpg", "third.jpg"]
    assert files(service.cfg.inbox) == ["again.jpg", "third.jpg"] and images_in(service) == []
    drive(service, 100.0 + settle * 3)
    assert files(service.cfg.inbox) == [] and len(images_in(service)) == 1


def test_a_photo_kept_in_the_inbox_is_not_made_again_when_its_outputs_leave(tmp_path, session_models, settle):
    # With on_success: keep the photo stays, and a rescan (or a restart) sees the same drop
    # again: a hook that moves the outputs away must not have it made over and over.
    from nstd import config
    from nstd.daemon.service import Service
    from nstd.daemon.worker import Worker

    from harness.daemon import write_config

    (tmp_path / "kept").mkdir()
    cfg = config.load(write_config(tmp_path / "kept", session_models, styles={"ink": {"image": "style.png"}},
                                   on_success="keep", worker={"max_batch": 4, "batch_window": 0}))
    svc = Service(cfg)
    svc.prepare()
    svc.worker = Worker(cfg, lambda: svc.styles, svc.load_weights, svc.devices[0], threading.Event())
    try:
        drop = dropper(svc, settle)
        drop("one.jpg", photo_bytes(40, 40, 6))
        clear_outbox(svc)
        svc.inputs.accepted.clear()  # as after a restart: every file is looked at afresh
        svc.inputs.next_rescan = 0.0
        svc.inputs.step(settle * 10)
        drive(svc, settle * 12)
        assert images_in(svc) == [] and files(cfg.inbox) == ["one.jpg"]
        assert [(j.state, j.attempts) for j in svc.journal.get_jobs([1])] == [(State.DONE, 1)]
    finally:
        svc.close()


def test_bad_inputs_land_in_failed_with_reasons_and_good_ones_still_run(service, settle):
    inbox = service.cfg.inbox
    good = photo_bytes(64, 64, 5)
    (inbox / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "notes.jpg").write_bytes(b"these are not pixels\n" * 20)
    (inbox / "mystery").mkdir()
    (inbox / "mystery" / "m.jpg").write_bytes(good)
    (inbox / "fine.jpg").write_bytes(good)
    service.inputs.step(0.0)
    drive(service, settle * 2)
    reasons = {
        "truncated.jpg": "cannot decode",
        "empty.jpg": "an empty file",
        "notes.jpg": "not a recognised image format",
        "mystery/m.jpg": "folder 'mystery' names no style (known styles: ink)",
    }
    for name, why in reasons.items():
        record = json.loads((service.cfg.failed / f"{name}.error.json").read_text())
        assert why in record["reason"] and record["input"] == name
        assert (service.cfg.failed / name).exists()  # the input itself is kept, not lost
    assert files(service.cfg.processed) == ["fine.jpg"]
    assert (service.cfg.outbox / "ink" / "fine.json").exists()


def test_status_counts_photos_and_jobs_apart(service, settle, capsys):
    from nstd.cli import main

    (service.cfg.inbox / "s.jpg").write_bytes(photo_bytes(40, 40, 9))
    (service.cfg.inbox / "bad.jpg").write_bytes(b"nope")
    service.inputs.step(0.0)
    drive(service, settle * 2)
    capsys.readouterr()
    assert main(["status", "--config", str(service.cfg.path)]) == 0
    out = capsys.readouterr().out
    # The refused photo had no job: it counts as a failed photo, not as a failed job.
    assert "photos: 0 in progress, 1 done, 1 failed" in out
    assert "jobs (photo x style): 0 queued, 0 running, 1 done, 0 failed" in out
    assert "  bad.jpg: not a usable image (not a recognised image format)" in out


def test_a_name_that_is_not_utf8_fails_alone_and_its_neighbours_run(service, settle):
    inbox = service.cfg.inbox
    with open(os.path.join(os.fsencode(inbox), b"old-share-\xff.jpg"), "wb") as f:
        f.write(photo_bytes(40, 40, 1))
    (inbox / "good.jpg").write_bytes(photo_bytes(40, 40, 2))
    service.inputs.step(0.0)
    drive(service, settle * 2)
    assert files(service.cfg.processed) == ["good.jpg"]
    failed = os.listdir(os.fsencode(service.cfg.failed))
    assert sorted(failed) == [b"old-share-\xff.jpg", b"old-share-\xff.jpg.error.json"]
    record = json.loads((service.cfg.failed / os.fsdecode(b"old-share-\xff.jpg.error.json")).read_text())
    assert record["input"] == "old-share-\\xff.jpg" and "not valid UTF-8" in record["reason"]


def test_a_planted_link_in_failed_leaves_the_input_in_place_said_once(service, settle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, service.cfg.failed / "ink")  # failed/ink points out of failed/
    (service.cfg.inbox / "ink").mkdir()
    (service.cfg.inbox / "ink" / "bad.jpg").write_bytes(b"not a photo")
    (service.cfg.inbox / "good.jpg").write_bytes(photo_bytes(40, 40, 3))
    service.inputs.step(0.0)
    drive(service, settle * 2)
    for n in range(3):  # later rescans find it again, and leave it
        service.inputs.next_rescan = 0.0
        service.inputs.step(settle * (3 + n))
    assert list(outside.iterdir()) == []  # nothing written through the link
    assert (service.cfg.inbox / "ink" / "bad.jpg").exists()
    assert files(service.cfg.processed) == ["good.jpg"]
    [(relpath, reason)] = [(r, e) for r, e, _ in service.journal.recent_failures()]
    assert relpath == "ink/bad.jpg" and "left in the inbox" in reason


def test_a_polling_watch_finds_a_photo_in_a_style_subfolder(service, settle):
    inbox = service.cfg.inbox
    watcher = Watcher(inbox, "polling", 0.2, service.hints)
    watcher.start()
    try:
        service.inputs.step(0.0)  # the first rescan, of an empty inbox; the next is 3 s away
        (inbox / "ink" / "trip").mkdir(parents=True)
        (inbox / "ink" / "trip" / "p.png").write_bytes(photo_bytes(40, 40, 4, "PNG"))
        assert service.hints.event.wait(30)  # the poller's event, not a rescan
        for k in range(1, 4):
            service.inputs.step(settle * k)
    finally:
        watcher.stop()
    assert service.inputs.next_rescan == 3.0 and queued_inputs(service) == ["ink/trip/p.png"]
    drive(service, settle * 5)
    assert {"ink/trip/p.jpg", "ink/trip/p.json"} <= set(files(service.cfg.outbox))
    assert files(service.cfg.processed) == ["ink/trip/p.png"]


def test_an_inbox_deleted_and_recreated_like_a_remount_is_watched_again(service, settle):
    import shutil

    inbox = service.cfg.inbox
    service.watcher = Watcher(inbox, "native", 0.2, service.hints)
    service.watcher.start()
    service.pool = WorkerPool("thread", lambda: service.runtime, service.load_weights)
    try:
        service.inputs.step(0.0)
        shutil.rmtree(inbox)
        inbox.mkdir()
        # The watch hears of its folder's end on watchdog's thread; the new folder may
        # even have the old one's inode number.
        wait_for(lambda: not service.watcher.healthy(), 30, "the watch to see its folder go")
        service.health()  # the health check restarts the watch on the new folder
        assert service.watcher.healthy()
        service.hints.drain()
        (inbox / "after.jpg").write_bytes(photo_bytes(40, 40, 11))
        assert service.hints.event.wait(30)  # seen by the restarted watch; no rescan is due
        for k in range(1, 4):
            service.inputs.step(settle * k)
    finally:
        service.watcher.stop()
    assert queued_inputs(service) == ["after.jpg"]


def lose_spools(service):
    """The spool copies gone (a wiped state disk): the jobs fail after max_attempts, for a
    reason that is not the photo's own."""
    for job in service.journal.queued_jobs():
        Path(job.spool).unlink(missing_ok=True)


def test_a_photo_that_failed_for_a_passing_reason_is_new_work_when_dropped_again(service, settle):
    inbox = service.cfg.inbox
    data = photo_bytes(40, 40, 21)
    (inbox / "a.jpg").write_bytes(data)
    service.inputs.step(0.0)
    service.inputs.step(settle * 2)
    lose_spools(service)
    drive(service, settle * 3)
    drive(service, settle * 4)  # max_attempts is 2
    assert (service.cfg.failed / "a.jpg").exists()
    assert "after 2 attempts" in json.loads((service.cfg.failed / "a.jpg.error.json").read_text())["reason"]
    (inbox / "a.jpg").write_bytes(data)  # the same photo, the same name
    (inbox / "copy.jpg").write_bytes(data)  # and under a new one
    service.inputs.next_rescan = 0.0
    service.inputs.step(settle * 5)
    drive(service, settle * 7)
    assert files(service.cfg.processed) == ["a.jpg", "copy.jpg"]
    assert [(j.state, j.attempts) for j in service.journal.get_jobs([1])] == [(State.DONE, 1)]


def test_nstd_retry_moves_failed_photos_back_by_reason(service, settle, capsys):
    from nstd.cli import main

    (service.cfg.inbox / "a.jpg").write_bytes(photo_bytes(40, 40, 22))
    (service.cfg.inbox / "junk.jpg").write_bytes(b"not a photo")
    service.inputs.step(0.0)
    service.inputs.step(settle * 2)
    lose_spools(service)
    drive(service, settle * 3)
    drive(service, settle * 4)
    assert files(service.cfg.failed) == ["a.jpg", "a.jpg.error.json", "junk.jpg", "junk.jpg.error.json"]
    assert main(["retry", "--config", str(service.cfg.path)]) == 1  # nothing chosen: a one-line error
    assert main(["retry", "--reason", "cannot read spooled input", "--config", str(service.cfg.path)]) == 0
    assert "a.jpg: back in the inbox" in capsys.readouterr().out
    assert files(service.cfg.failed) == ["junk.jpg", "junk.jpg.error.json"]  # not chosen: stays
    service.inputs.next_rescan = 0.0
    service.inputs.step(settle * 5)
    drive(service, settle * 7)
    assert files(service.cfg.processed) == ["a.jpg"]


def test_names_near_name_max_come_out_and_fail_with_their_records(service, settle):
    inbox = service.cfg.inbox
    long_ok = "a" * 246 + ".jpg"  # 250 bytes: no room for "<name>.nstd.yaml" or a temp name
    near = "b" * 241 + ".jpg"  # 245 bytes
    broken = "c" * 246 + ".jpg"
    (inbox / long_ok).write_bytes(photo_bytes(40, 40, 31))
    (inbox / near).write_bytes(photo_bytes(40, 40, 32))
    (inbox / broken).write_bytes(b"not a photo")
    service.inputs.step(0.0)
    drive(service, settle * 2)
    assert files(service.cfg.processed) == sorted([long_ok, near])
    outputs = files(service.cfg.outbox / "ink")
    assert len([f for f in outputs if f.endswith(".jpg")]) == 2 and all(len(f) <= 255 for f in outputs)
    failed = files(service.cfg.failed)
    assert broken in failed and len(failed) == 2
    [record] = [f for f in failed if f.endswith(".error.json")]
    assert json.loads((service.cfg.failed / record).read_text())["file"] == broken
    assert service.inputs.deferred == {}  # nothing left retrying


def test_check_and_the_worker_say_how_long_a_photo_takes(service, capsys):
    import re

    from nstd.cli import main
    from nstd.engine import speed

    assert main(["check", "--config", str(service.cfg.path)]) == 0
    out = capsys.readouterr().out
    line = re.search(r"ok    speed: cpu: about (\d+) (s|min|h) per photo and style at size 32, 4 iterations "
                     r"\(([\d.]+) GFLOP/s, measured now for [\d.]+ s\)", out)
    assert line, out
    # The estimate is the FLOP count at the configured size over the measured rate.
    rate = float(line.group(3)) * 1e9
    p = service.cfg.transfer
    assert speed.say(speed.photo_seconds(rate, p.typical_scales(), p.settings().layers)).startswith(line.group(1))
    service.worker._say_speed()  # what a worker logs when it starts
    logged = capsys.readouterr()
    assert "expected_speed" in logged.err + logged.out and "per_photo_and_style" in logged.err + logged.out


def test_status_shows_the_running_batchs_iteration_rate_and_time_left(service, capsys):
    from nstd.cli import main
    from nstd.daemon.report import eta as _eta

    (service.cfg.inbox / "a.jpg").write_bytes(photo_bytes(40, 40, 1))
    service.inputs.step(0.0)
    service.inputs.step(10.0)
    [job] = service.journal.claim(service.journal.oldest_queued(1e12).batch_key, 4, "b1", now=1000.0)
    assert service.journal.batch_progress("b1") is None  # no report yet
    assert _eta(None, now=1000.0) == ", starting"
    service.journal.progress([job.id], 1, 500)  # the first report: too early for a rate
    assert _eta(service.journal.batch_progress("b1"), now=1001.0) == ", iteration 1 of 500"
    # At 1.5 it/s, the 350 iterations left take 233 s from the report: 4 min.
    service.journal.progress([job.id], 150, 500, rate=1.5, eta=1100.0 + 350 / 1.5)
    assert service.journal.batch_progress("b1") == (150, 500, 1.5, 1100.0 + 350 / 1.5)
    assert _eta(service.journal.batch_progress("b1"), now=1100.0) == \
        ", iteration 150 of 500, 1.50 it/s, about 4 min left"
    capsys.readouterr()
    assert main(["status", "--config", str(service.cfg.path)]) == 0
    assert "running batch b1: 1 × 32x32, iteration 150 of 500" in capsys.readouterr().out


def test_a_move_a_crash_interrupted_is_finished_not_done_twice(service, settle, monkeypatch):
    import shutil

    from nstd.daemon import dispose

    inbox = service.cfg.inbox
    (inbox / "a.jpg").write_bytes(photo_bytes(40, 40, 41))
    service.inputs.step(0.0)
    service.inputs.step(settle * 2)
    # The copy of a cross-filesystem move completed, then the process died before
    # removing the original and before the journal heard of it.
    real_move = dispose.durable_move

    def copy_then_die(src, dst):
        shutil.copy2(src, dst)
        raise SystemExit("killed mid-move")

    monkeypatch.setattr(dispose, "durable_move", copy_then_die)
    with pytest.raises(SystemExit):
        drive(service, settle * 3)
    monkeypatch.setattr(dispose, "durable_move", real_move)
    assert (inbox / "a.jpg").exists() and (service.cfg.processed / "a.jpg").exists()
    drive(service, settle * 4)  # as after a restart
    assert files(service.cfg.processed) == ["a.jpg"] and files(inbox) == []


def test_status_lists_each_worker_with_its_batch_and_says_which_went_silent(service, capsys):
    import time

    from nstd.cli import main
    from nstd.daemon.journal import WorkerInfo

    (service.cfg.inbox / "a.jpg").write_bytes(photo_bytes(40, 40, 1))
    service.inputs.step(0.0)
    service.inputs.step(10.0)
    now = time.time()
    gpu = WorkerInfo("gpu-a:7:cuda:0", "gpu-a", "cuda:0 (NVIDIA H100 80GB HBM3)", 80 << 30)
    service.journal.beat(gpu, "working", now - 5)
    service.journal.beat(WorkerInfo("gpu-b:9:cuda:0", "gpu-b", "cuda:0 (NVIDIA L4)", 24 << 30), "idle", now - 600)
    [job] = service.journal.claim(service.journal.oldest_queued(1e12).batch_key, 4, "b1", now=now,
                                  owner=gpu.owner)
    capsys.readouterr()
    assert main(["status", "--config", str(service.cfg.path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"  gpu-a  cuda:0 \(NVIDIA H100 80GB HBM3\), 80 GiB: working, heard [56] s ago\n"
                     r"    running batch b1: 1 × 32x32, starting\n"
                     rf"      +{job.id}  ink +a\.jpg\n", out), out
    assert "  gpu-b  cuda:0 (NVIDIA L4), 24 GiB: silent for 10 min" in out


@pytest.mark.parametrize("folder", ["processed", "failed"])
def test_a_link_planted_on_a_photos_name_is_a_name_taken(service, settle, tmp_path, folder):
    """A link in processed/ or failed/ on the photo's own name is not followed and not a
    reason to keep the photo in the inbox: the photo takes the next free name."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    name = "planted.jpg"
    os.symlink(outside / name, getattr(service.cfg, folder) / name)
    (service.cfg.inbox / name).write_bytes(photo_bytes(40, 40, 3) if folder == "processed" else b"not a photo")
    service.inputs.step(0.0)
    drive(service, settle * 2)
    assert list(outside.iterdir()) == []  # nothing written through the link
    assert files(service.cfg.inbox) == []
    moved = getattr(service.cfg, folder) / "planted-1.jpg"
    assert moved.is_file() and not moved.is_symlink()
    assert os.path.islink(getattr(service.cfg, folder) / name)  # the link itself left alone


def test_a_share_said_away_during_a_health_look_is_looked_at_again_without_error(service, monkeypatch):
    """The intake's thread says a share went away while the supervisor is in its health
    look: the supervisor neither trips over it nor forgets it."""
    from types import SimpleNamespace

    looks = []

    def health():
        looks.append(len(looks))
        if len(looks) == 1:
            service._share_away()  # from the other thread, mid-look
        service.folders.trouble = SimpleNamespace(reason="share unavailable: a test")

    monkeypatch.setattr(service, "health", health)
    service.claimed_at = 0.0
    service._supervise(1.0)
    service._supervise(1.1)  # looked at again at once, not after the interval
    assert looks == [0, 1]
