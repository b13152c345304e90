"""The daemon's folders when their share goes: paused once, resumed once, and nothing ever
written to the disk below a mount point whose share has gone."""

import os
from types import SimpleNamespace

import pytest
import torch

from nstd.daemon import dispose, outbox
from nstd import fsutil
from nstd.daemon.folders import Folders
from nstd.fsutil import FolderGone, is_share_error

from test_paths import job

FOLDERS = ("inbox", "outbox", "failed", "processed", "spool", "state")


@pytest.fixture
def nas(tmp_path):
    """Folders on a 'share' at tmp/mnt/nas; taking it away leaves the empty mount point."""
    share = tmp_path / "mnt" / "nas"
    for name in FOLDERS:
        (share / name).mkdir(parents=True)
    cfg = SimpleNamespace(**{n: share / n for n in FOLDERS if n not in ("spool", "state")},
                          spool_dir=share / "spool", state_dir=tmp_path / "state", journal=None)
    cfg.state_dir.mkdir()
    away = tmp_path / "away"
    return share, cfg, lambda: share.rename(away), lambda: away.rename(share)


def test_nothing_is_written_below_a_mount_point_whose_share_went(nas, tmp_path):
    share, cfg, unmount, _ = nas
    local_inbox = tmp_path / "local-inbox"
    local_inbox.mkdir()
    (local_inbox / "p.jpg").write_bytes(b"photo")
    unmount()
    with pytest.raises(FolderGone) as e:
        outbox.write(cfg.outbox, job("p.jpg"), torch.zeros(3, 32, 32), {"history": []})
    assert is_share_error(e.value)
    with pytest.raises(FolderGone):
        dispose.on_success(local_inbox, cfg.processed, "p.jpg", "move")
    with pytest.raises(FolderGone):
        dispose.to_failed(local_inbox, cfg.failed, "p.jpg", "a reason", None)
    assert not share.exists()  # no outbox, processed/ or failed/ made on the local disk
    assert (local_inbox / "p.jpg").read_bytes() == b"photo"  # and the photo waits where it was


def test_a_share_that_goes_while_a_file_is_written_is_the_shares_trouble(nas, monkeypatch):
    """Its mount went after the temporary file was made and before the rename (seen on a
    real SMB share): the rename's 'no such file' is the share's, not the page's."""
    share, cfg, unmount, _ = nas
    real_fsync = os.fsync

    def unmounting(fd):
        real_fsync(fd)
        unmount()

    monkeypatch.setattr(fsutil.os, "fsync", unmounting)
    with pytest.raises(FolderGone) as e:
        fsutil.atomic_write(cfg.outbox / "index.html", b"<html>")
    assert is_share_error(e.value) and str(cfg.outbox) in str(e.value)


def test_a_share_that_goes_while_a_photo_is_moved_is_the_shares_trouble(nas, monkeypatch):
    share, cfg, unmount, mount = nas
    (cfg.inbox / "p.jpg").write_bytes(b"photo")
    real_rename = os.rename

    def unmounting(src, dst):
        monkeypatch.undo()  # os.rename is the process's: the unmount below renames too
        unmount()
        real_rename(src, dst)

    monkeypatch.setattr(dispose.os, "rename", unmounting)
    with pytest.raises(FolderGone) as e:
        dispose.on_success(cfg.inbox, cfg.processed, "p.jpg", "move")
    assert is_share_error(e.value)
    mount()
    assert (cfg.inbox / "p.jpg").read_bytes() == b"photo"  # it waits where it was
    (cfg.inbox / "p.jpg").unlink()  # a photo taken away by hand, its folder there: its own trouble
    with pytest.raises(FileNotFoundError) as e:
        dispose.durable_move(cfg.inbox / "p.jpg", cfg.processed / "p.jpg")
    assert not is_share_error(e.value)


def test_a_share_away_pauses_once_and_resumes_once(nas):
    from structlog.testing import capture_logs

    share, cfg, unmount, mount = nas
    folders = Folders(cfg)
    with capture_logs() as logs:
        assert folders.check(0.0) is None and folders.reachable
        unmount()
        for t in (1.0, 2.0, 3.0):
            trouble = folders.check(t)
            assert trouble.unreachable
            assert trouble.reason == f"share unavailable: inbox {cfg.inbox}: No such file or directory"
        assert not folders.reachable
        mount()
        assert folders.check(4.0) is None and folders.reachable
    assert [(e["event"], e["log_level"]) for e in logs] == [("paused", "warning"), ("resumed", "info")]
    assert logs[1]["after_seconds"] == 3.0


def test_a_publish_that_finds_its_outbox_gone_waits_for_it(service):
    """A share unmounted while a batch runs: its outputs are deferred, no attempt spent,
    and written once the share is back (the share soak found them failed)."""
    import shutil

    from harness.daemon import run_once, take

    take(service, "a.jpg")
    away = service.cfg.outbox.with_name("outbox-away")
    service.cfg.outbox.rename(away)  # as an unmounted share's folder: not there at all
    run_once(service)
    [job] = service.journal.get_jobs([1])
    assert job.state == "queued" and "not there" in job.error and job.attempts == 0
    assert not service.cfg.outbox.exists()  # nothing made where the share was
    away.rename(service.cfg.outbox)
    shutil.rmtree(service.cfg.outbox / "ink", ignore_errors=True)
    service.journal.db.execute("UPDATE jobs SET not_before = 0")
    run_once(service)
    assert service.journal.get_jobs([1])[0].state == "done"
    assert (service.cfg.outbox / "ink" / "a.jpg").is_file()


def test_a_mount_that_goes_between_the_look_and_the_write_makes_nothing(tmp_path, monkeypatch):
    """The share may go after make_folders has seen its folder: each level below is made
    alone, and atomic_write makes no folder, so nothing is re-made under the mount point."""
    from pathlib import Path

    from nstd.fsutil import atomic_write, make_folders

    root = tmp_path / "mnt" / "nas" / "outbox"  # the share is not mounted: none of it is there
    monkeypatch.setattr(Path, "is_dir", lambda self: True)  # but it was, when looked at
    with pytest.raises(FolderGone):
        make_folders(root, root / "ink" / "trip")
    monkeypatch.undo()
    with pytest.raises(FolderGone):
        atomic_write(root / "ink" / "p.jpg", b"image")
    assert list(tmp_path.iterdir()) == []


def test_a_probe_an_outage_cut_short_is_cleared_by_the_next_that_succeeds(tmp_path):
    from nstd.fsutil import host_tag
    mine = tmp_path / f".nstd-probe.%40{host_tag()}%40{os.getpid()}.77.tmp"  # as smbnetfs lists it
    theirs = tmp_path / f".nstd-probe.@{host_tag()}@{os.getpid() + 1}.77.tmp"  # another process's
    mine.write_bytes(b"")
    theirs.write_bytes(b"")
    assert outbox.unwritable(tmp_path) is None
    assert not mine.exists() and theirs.exists()


def test_threads_probing_one_folder_never_see_it_unwritable(tmp_path):
    import threading
    seen: list[str | None] = []

    def probe():
        for _ in range(200):
            seen.append(outbox.unwritable(tmp_path))

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [None] * 800
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_gallery_write_an_outage_cut_short_leaves_nothing_once_the_outbox_is_back(service, monkeypatch):
    import errno as errnos

    from nstd.daemon import gallery
    from nstd.fsutil import host_tag

    from harness.daemon import run_once, take

    def away(outbox, journal):
        litter.write_bytes(b"half a page")  # as atomic_write leaves it when the share goes mid-write
        raise OSError(errnos.ENOTCONN, "Transport endpoint is not connected")

    litter = service.cfg.outbox / f".index.html.@{host_tag()}@{os.getpid()}.x1.tmp"
    monkeypatch.setattr(gallery, "write", away)
    take(service, "a.jpg")
    run_once(service)
    assert service.worker.littered and litter.exists()
    service.worker._tidy()
    assert not litter.exists() and not service.worker.littered


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_what_a_stop_cut_short_of_its_own_writes_is_cleared_as_it_stops(tmp_path, session_models, isolation):
    """A probe or a write of the stopping daemon that the stop (or an outage just before
    it) left half done: cleared on the way out, for the main process and a worker
    process alike; another process's is left to its owner."""
    from harness.daemon import Daemon, write_config
    from nstd.fsutil import host_tag

    d = Daemon(write_config(tmp_path, session_models, worker={"isolation": isolation})).start()
    try:
        children = [int(p) for p in os.popen(f"pgrep -P {d.proc.pid}").read().split()]
        workers = [p for p in children  # not multiprocessing's resource tracker
                   if b"resource_tracker" not in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(workers) == (1 if isolation == "process" else 0)
        pids = [d.proc.pid] + workers
        left = [tmp_path / "outbox" / f".nstd-probe.@{host_tag()}@{pid}.7.tmp" for pid in pids]
        other = tmp_path / "outbox" / f".nstd-probe.@{host_tag()}@{os.getpid()}.7.tmp"
        for path in left + [other]:
            path.write_bytes(b"")
    finally:
        assert d.stop() == 0
    assert [p.exists() for p in left] == [False] * len(left) and other.exists()
