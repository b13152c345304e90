"""Several hosts on one inbox and one PostgreSQL journal: two daemons in-process, each with
its own state folder, sharing the folders, the spool and a real database."""

import re
import threading
import time

import pytest
import torch

from nstd import config
from nstd.cli import main
from nstd.daemon.journal import SCHEMA_VERSION
from nstd.daemon.scheduler import Scheduler
from nstd.daemon.service import Service
from nstd.daemon.worker import Worker
from nstd.errors import ConfigError

from harness.daemon import files, photo_bytes, write_config
from harness.synthetic import random_vgg_state_dict


def make_hosts(tmp_path, url: str, names=("a", "b"), refill: bool = True, models=None) -> list[Service]:
    """Prepared daemons, one per name, each with its own state folder, sharing the folders,
    the spool and the database at `url`; their workers are driven by the test. `models`:
    a models folder holding "random" (the session's), or one is made here."""
    if models is None:
        models = tmp_path / "models"
        torch.save(random_vgg_state_dict(), tmp_path / "r.pth")
        assert main(["weights", "import", str(tmp_path / "r.pth"), "--name", "random", "--preprocessing",
                     "torchvision", "--models-dir", str(models)]) == 0
    share = tmp_path / "share"
    share.mkdir()
    (share / "spool").mkdir()
    services = []
    for name in names:
        root = tmp_path / name
        root.mkdir()
        folders = {f: str(share / f) for f in ("inbox", "outbox", "failed", "processed")}
        write_config(share, models)  # the shared folders and the style image
        cfg = config.load(write_config(root, models, **folders, journal=url, spool=str(share / "spool"), host=name,
                                       styles={"ink": {"image": str(share / "style.png")}},
                                       worker={"max_attempts": 2, "retry_backoff": 0, "max_batch": 4,
                                               "batch_window": 0, "refill": refill}))
        svc = Service(cfg)
        svc.prepare()
        svc.worker = Worker(cfg, lambda svc=svc: svc.styles, svc.load_weights, svc.devices[0], threading.Event())
        services.append(svc)
    return services


def test_two_hosts_on_one_inbox_make_each_output_once(hosts):
    a, b = hosts
    inbox = a.cfg.inbox
    for n in range(6):
        (inbox / f"p{n}.png").write_bytes(photo_bytes(40, 32, n, "PNG"))
    schedulers = [Scheduler(svc.journal, 0, lambda job: 2, clock=time.time, owner=f"{name}:1:cpu")
                  for svc, name in ((a, "a"), (b, "b"))]
    now = 1000.0
    for _ in range(12):  # settle, take in, run and move out: a round more than needed for each
        now += 10
        for svc, scheduler in zip(hosts, schedulers):  # both see every file, and both claim
            svc.inputs.step(now)
            batch = scheduler.next_batch()
            if batch:
                svc.worker.process(svc.journal, batch)
    images = [f for f in files(a.cfg.outbox) if f.endswith(".jpg") and "/." not in f and not f.startswith(".")]
    assert sorted(images) == sorted(f"ink/p{n}.jpg" for n in range(6))
    assert sorted(files(a.cfg.processed)) == sorted(f"p{n}.png" for n in range(6))  # each moved once
    assert files(inbox) == [] and files(a.cfg.failed) == []
    assert a.journal.counts() == {"queued": 0, "running": 0, "done": 6, "failed": 0, "cancelled": 0}
    owners = {r[0].split(":")[0] for r in a.journal.db.execute("SELECT claimed_by FROM jobs")}
    assert owners == {"a", "b"}  # the work was shared
    assert a.journal.input_counts()["done"] == 6


def test_a_shared_journal_needs_a_shared_spool(tmp_path):
    path = write_config(tmp_path, tmp_path / "models", journal="postgresql://nstd@db/nstd")
    with pytest.raises(ConfigError, match="^spool: with a shared journal"):
        config.load(path)
    path = write_config(tmp_path, tmp_path / "models", journal="postgresql://nstd@db/nstd", spool="state/spool")
    with pytest.raises(ConfigError, match="^spool: "):
        config.load(path)
    path = write_config(tmp_path, tmp_path / "models", journal="sqlite.db")
    with pytest.raises(ConfigError, match="^journal: a postgresql:// URL"):
        config.load(path)
    cfg = config.load(write_config(tmp_path, tmp_path / "models", journal="postgresql://nstd@db/nstd",
                                   spool="share/spool"))
    assert cfg.journal_target == "postgresql://nstd@db/nstd" and cfg.spool_dir == tmp_path / "share/spool"


def test_check_reports_the_database_its_schema_and_clock(hosts, capsys):
    a, _ = hosts
    assert main(["check", "--config", str(a.cfg.path)]) == 0
    out = capsys.readouterr().out
    assert "journal: postgresql://postgres@/" in out and f"schema {SCHEMA_VERSION}, clock within" in out


def test_check_compares_the_clocks_before_the_first_run_too(tmp_path, pg_server, capsys):
    """A new host runs nstd check before nstd run: the database has no tables yet, and
    the clock comparison the README promises is there all the same."""
    path = write_config(tmp_path, tmp_path / "models", journal=pg_server.new_database(), spool="share/spool")
    main(["check", "--config", str(path)])
    [line] = [line for line in capsys.readouterr().out.splitlines() if "journal:" in line]
    assert re.fullmatch(r"ok    journal: postgresql://\S+ \(no tables yet: nstd run makes them, "
                        r"clock within \d+\.\d\d s of the server's\)", line), line


def test_a_daemon_whose_database_is_down_says_so_in_one_line(tmp_path, capsys):
    path = write_config(tmp_path, tmp_path / "models", journal="postgresql://nstd@127.0.0.1:1/nstd",
                        spool="share/spool")
    assert main(["status", "--config", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "journal postgresql://nstd@127.0.0.1:1/nstd: cannot connect" in err


def test_the_journal_reconnects_after_the_database_cut_it_off(pg_server):
    """A server restart or a network cut ends the connection; the journal says so in one
    line (Unavailable) and connects again on its next statement."""
    import psycopg

    from nstd.daemon.database import Unavailable
    from nstd.daemon.journal import JobSpec, Journal

    url = pg_server.new_database()
    j = Journal(url)
    j.add_input("a.jpg", "s1", "/s", [JobSpec("x", "h", {}, 32, 24, "k1")], now=1)
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (j.db.conn.info.backend_pid,)).fetchone()[0]
    with pytest.raises(Unavailable) as e:
        j.counts()  # the cut shows on the first statement after it
    assert "\n" not in str(e.value) and str(e.value).startswith("journal postgresql://")
    assert j.counts()["queued"] == 1


def test_a_host_keeps_its_batch_through_a_database_outage_and_takes_nothing_new(tmp_path, monkeypatch):
    """The database stops while a batch runs: the batch's outcome waits for it (on the
    publisher's thread) and is recorded once it is back; the supervisor says so once, takes nothing in meanwhile,
    and judges no lease until the live hosts have had time to renew theirs."""
    from nstd.daemon import outage
    from nstd.daemon.outage import PatientJournal
    from harness.pg import PostgresServer

    monkeypatch.setattr(outage, "RETRY_SECONDS", 0.05)
    server = PostgresServer().start()
    try:
        [a] = make_hosts(tmp_path, server.new_database(), names=("a",))
        a.cfg.inbox.joinpath("p.png").write_bytes(photo_bytes(40, 32, 1, "PNG"))
        a.inputs.step(0.0)
        a.inputs.step(10.0)
        [job] = Scheduler(a.journal, 0, lambda job: 2, clock=time.time, owner="a:1:cpu").next_batch()
        waits = []

        class Watched(threading.Event):
            """The worker's stop event, whose waits are the outcome's waits for the database."""

            def wait(self, timeout=None):
                waits.append(timeout)
                return super().wait(timeout)

        a.worker.stopping = Watched()
        patient = PatientJournal(a.journal, give_up=lambda: False, wait=lambda s: time.sleep(s))
        a.next_health = float("inf")  # no watcher here; the lease judgement is asked of the outage below
        server.pause()
        a.cfg.inbox.joinpath("q.png").write_bytes(photo_bytes(40, 32, 2, "PNG"))
        a.step(20.0)  # the supervisor: no traceback, the outage noted
        a.step(30.0)
        assert a.outage.down_since == 20.0
        runner = threading.Thread(target=a.worker.process, args=(patient, [job]), daemon=True)  # no hang if it fails
        runner.start()
        deadline = time.monotonic() + 60
        while not waits and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # the batch has computed and waits to record its outcome
        assert waits and runner.is_alive()
        server.resume()
        runner.join(60)
        assert a.journal.get_jobs([job.id])[0].state.value == "done"
        assert files(a.cfg.outbox.joinpath("ink")) == ["p.jpg", "p.json", "p.loss.svg"]
        a.step(40.0)  # back: q.png is taken in now
        assert a.outage.down_since is None and not a.outage.settled(40.0)
        assert a.outage.settled(40.0 + a.outage.grace)
        a.step(50.0)
        a.step(60.0)
        assert sorted(j.relpath for j in a.journal.queued_jobs()) == ["q.png"]
        a.close()
    finally:
        server.stop()


def test_a_host_clears_only_the_temp_files_its_own_dead_processes_left(hosts, monkeypatch):
    """Temporary names carry host and pid: on a shared outbox, a restarting host removes
    what its crashed process half-wrote, never another host's write in progress."""
    import os
    import subprocess
    import sys

    from nstd.fsutil import atomic_write, host_tag

    a, _ = hosts
    ink = a.cfg.outbox / "ink"
    ink.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    mine_dead = ink / f".p.jpg.@{host_tag()}@{dead}.abc123.tmp"
    mine_alive = ink / f".q.jpg.@{host_tag()}@{os.getpid()}.abc123.tmp"
    other_host = ink / f".r.jpg.@{host_tag('gpu-b.studio.lan')}@{dead}.abc123.tmp"
    for p in (mine_dead, mine_alive, other_host):
        p.write_bytes(b"half")
    a.recover()
    assert not mine_dead.exists() and mine_alive.exists() and other_host.exists()
    # And atomic writes name their writer so.
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(os.path.basename(src)), real_replace(src, dst)))
    atomic_write(ink / "s.jpg", b"x")
    monkeypatch.undo()
    assert seen and seen[0].startswith(f".s.jpg.@{host_tag()}@{os.getpid()}.") and seen[0].endswith(".tmp")


def test_a_restarted_host_keeps_the_shared_spools_mask_copies(hosts):
    """On the shared spool, a host's start-up must not delete the mask copies of photos
    queued by any host."""
    from test_masks import half_mask, png

    a, b = hosts
    inbox = a.cfg.inbox
    for n in range(2):
        (inbox / f"p{n}.png").write_bytes(photo_bytes(40, 32, n, "PNG"))
        (inbox / f"p{n}.png.mask.png").write_bytes(png(half_mask(40, 32)))
    a.inputs.step(1000.0)
    a.inputs.step(1010.0)
    assert a.journal.counts()["queued"] == 2
    b.recover()
    a.recover()
    assert len(list(a.cfg.spool_dir.glob("*.mask-*"))) == 2
    scheduler = Scheduler(b.journal, 0, lambda job: 2, clock=time.time, owner="b:1:cpu")
    b.worker.process(b.journal, scheduler.next_batch())
    assert b.journal.counts() == {"queued": 0, "running": 0, "done": 2, "failed": 0, "cancelled": 0}
