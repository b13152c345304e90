import threading

import pytest

from nstd.daemon.journal import SILENT_SECONDS, JobSpec, Journal, WorkerInfo
from nstd.daemon.scheduler import Scheduler


def spec(style, w=32, h=24, key="k1"):
    return JobSpec(style=style, params_hash=f"h-{style}", params={"format": "JPEG", "quality": 90},
                   width=w, height=h, batch_key=key)


def test_same_photo_twice_shares_jobs(journal_target):
    j = Journal(journal_target)
    a = j.add_input("a.jpg", "sha1", "/s/sha1.jpg", [spec("x"), spec("y")], now=1)
    b = j.add_input("copy/a.jpg", "sha1", "/s/sha1.jpg", [spec("x"), spec("y")], now=2)
    assert a.id != b.id
    assert j.counts()["queued"] == 2
    assert [x.id for x in j.jobs_of(a.id)] == [x.id for x in j.jobs_of(b.id)]
    # Adding the same input again changes nothing.
    j.add_input("a.jpg", "sha1", "/s/sha1.jpg", [spec("x"), spec("y")], now=3)
    assert j.counts()["queued"] == 2


def test_a_done_job_is_made_again_only_by_a_drop_that_saw_its_last_finish(journal_target):
    # Two hosts take the same drop in; each saw the job done with its image gone. The first
    # queues it again; it is made and done again; the second, acting on what it saw before,
    # must not queue it a third time.
    j = Journal(journal_target)
    j.add_input("a.jpg", "sha1", "/s/sha1.jpg", [spec("x")], now=1)
    (claimed,) = j.claim("k1", 8, "b1", now=2)
    assert j.finish(claimed.id, "x/a.jpg", "b1")
    (done,) = j.photo_jobs("sha1")
    assert (done.state.value, done.output) == ("done", "x/a.jpg") and j.photo_jobs("other") == []
    seen = {done.id: done.finished}
    j.add_input("again.jpg", "sha1", "/s/sha1.jpg", [spec("x")], now=3, again=seen)
    (queued,) = j.photo_jobs("sha1")
    assert (queued.state.value, queued.relpath, queued.output) == ("queued", "again.jpg", None)
    (claimed,) = j.claim("k1", 8, "b2", now=4)
    assert j.finish(claimed.id, "x/again.jpg", "b2")
    j.add_input("again.jpg", "sha1", "/s/sha1.jpg", [spec("x")], now=5, again=seen)  # the second host, late
    assert [(x.state.value, x.output) for x in j.photo_jobs("sha1")] == [("done", "x/again.jpg")]
    j.add_input("b.jpg", "sha1", "/s/sha1.jpg", [spec("x")], now=6)  # without `again`, a done job stays done
    assert [x.state.value for x in j.photo_jobs("sha1")] == ["done"]


def test_claim_recover_and_finish(journal_target):
    j = Journal(journal_target)
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    j.add_input("b.jpg", "s2", "/s", [spec("x")], now=2)
    claimed = j.claim("k1", 8, "b1", now=5)
    assert [c.relpath for c in claimed] == ["a.jpg", "b.jpg"]
    assert j.counts()["running"] == 2
    assert j.recover() == 2  # a crash: back to the queue
    again = j.claim("k1", 1, "b2", now=6)
    assert [c.attempts for c in again] == [1]  # the run a crash cut short was not an attempt
    j.finish(again[0].id, "x/a.jpg")
    settled = j.inputs_settled()
    assert [(i.relpath, [job.state for job in js]) for i, js in settled] == [("a.jpg", ["done"])]


def test_retry_waits_for_its_time(journal_target):
    j = Journal(journal_target)
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    [job] = j.claim("k1", 1, "b", now=2)
    j.retry(job.id, "EIO", delay=1000)
    assert j.oldest_queued(now=2) is None
    assert j.oldest_queued(now=10**12).id == job.id


def test_scheduler_waits_for_company_but_not_forever(journal_target):
    j = Journal(journal_target)
    clock = [100.0]
    s = Scheduler(j, window=2.0, max_batch_for=lambda job: 4, clock=lambda: clock[0])
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=100)
    assert s.next_batch() == []  # alone and fresh: wait for others of its size
    j.add_input("b.jpg", "s2", "/s", [spec("x")], now=100.5)
    clock[0] = 102.1
    assert [x.relpath for x in s.next_batch()] == ["a.jpg", "b.jpg"]


def test_scheduler_oldest_first_never_starves_an_odd_size(journal_target):
    j = Journal(journal_target)
    clock = [100.0]
    s = Scheduler(j, window=1.0, max_batch_for=lambda job: 2, clock=lambda: clock[0])
    j.add_input("odd.jpg", "odd", "/s", [spec("x", 50, 20, key="odd")], now=100)
    for i in range(6):
        j.add_input(f"c{i}.jpg", f"c{i}", "/s", [spec("x", key="common")], now=100 + i * 0.01)
    clock[0] = 100.1
    assert s.next_batch() == []  # the odd one is oldest: it leads, after its window
    clock[0] = 100.2
    assert s.next_batch() == []
    clock[0] = 101.0
    assert [x.relpath for x in s.next_batch()] == ["odd.jpg"]
    assert [x.relpath for x in s.next_batch()] == ["c0.jpg", "c1.jpg"]  # full batch goes at once


def test_kills_do_not_use_up_attempts(journal_target):
    j = Journal(journal_target)
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    for n in range(5):  # five kill -9s in a row, each mid-run
        j.claim("k1", 1, f"b{n}", now=2)
        j.recover()
    [job] = j.claim("k1", 1, "last", now=3)
    assert job.attempts == 1


def test_a_job_its_worker_dies_under_twice_is_set_aside(journal_target):
    j = Journal(journal_target)
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    j.add_input("b.jpg", "s2", "/s", [spec("y", key="k2")], now=1)
    j.claim("k1", 1, "b1", now=2, owner="host:1:cuda:0")
    assert j.requeue_claimed_by("host:1:cuda:0") == (1, [])
    j.claim("k1", 1, "b3", now=3, owner="host:3:cuda:0")
    [k2] = j.claim("k2", 1, "b4", now=3, owner="host:4:cuda:1")
    requeued, quarantined = j.requeue_claimed_by("host:3:cuda:0")
    assert requeued == 0 and [q.relpath for q in quarantined] == ["a.jpg"]
    [a] = j.get_jobs([quarantined[0].id])
    assert a.state == "failed" and "stopped 2 times" in a.error
    # Another device's batch is not touched.
    assert j.get_jobs([k2.id])[0].state == "running"


def test_claims_from_many_connections_never_share_a_job(journal_target):
    """Four workers claiming at once, each on its own connection: every job once."""
    j = Journal(journal_target)
    for n in range(60):
        j.add_input(f"p{n}.jpg", f"s{n}", "/s", [spec("x")], now=1)
    claimed: list[list[int]] = [[] for _ in range(4)]

    def work(k):
        mine = Journal(journal_target)
        while batch := mine.claim("k1", 3, f"w{k}-{len(claimed[k])}", now=2, owner=f"h{k}:1:cpu"):
            claimed[k].extend(job.id for job in batch)
        mine.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in claimed for i in ids]
    assert sorted(every) == sorted(job.id for job in j.running()) and len(every) == len(set(every)) == 60


def test_a_lost_lease_frees_the_jobs_and_its_holder_cannot_settle_them(journal_target):
    j = Journal(journal_target)
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    [job] = j.claim("k1", 1, "old", now=100, owner="a:1:cuda:0", lease=30)
    assert j.renew("old", now=120, lease=30) == 1  # holds until 150
    assert j.requeue_expired(now=149) == (0, [])
    assert j.requeue_expired(now=151) == (1, [])  # host a went quiet: the job is free again
    assert not j.holds(job.id, "old") and j.renew("old", now=152) == 0
    [again] = j.claim("k1", 1, "new", now=152, owner="b:1:cuda:0")
    assert again.attempts == 1  # a lost host is not the job's failure
    # Host a comes back and tries to record its result: refused, b's claim stands.
    assert not j.finish(job.id, "x/a.jpg", token="old")
    assert not j.fail(job.id, "late", token="old")
    assert j.get_jobs([job.id])[0].state == "running"
    assert j.finish(job.id, "x/a.jpg", token="new")
    assert j.get_jobs([job.id])[0].state == "done"


def test_a_job_that_loses_three_leases_is_set_aside(journal_target):
    j = Journal(journal_target)
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    j.claim("k1", 1, "b1", now=10, lease=5)
    assert j.requeue_expired(now=20) == (1, [])
    j.claim("k1", 1, "b2", now=20, lease=5)
    assert j.requeue_expired(now=30) == (1, [])  # a second host freezing is not the job's fault yet
    j.claim("k1", 1, "b3", now=30, lease=5)
    back, aside = j.requeue_expired(now=40)
    assert back == 0 and [job.relpath for job in aside] == ["a.jpg"]
    assert "stopped 3 times" in j.get_jobs([aside[0].id])[0].error


def test_a_dead_worker_and_a_lost_lease_count_together(journal_target):
    j = Journal(journal_target)
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    j.claim("k1", 1, "b1", now=10, owner="h:1:cpu", lease=5)
    assert j.requeue_claimed_by("h:1:cpu") == (1, [])
    j.claim("k1", 1, "b2", now=20, lease=5)
    assert j.requeue_expired(now=30) == (1, [])
    j.claim("k1", 1, "b3", now=30, owner="h:2:cpu", lease=5)
    back, aside = j.requeue_claimed_by("h:2:cpu")  # a second dead worker under it: set aside
    assert back == 0 and [job.relpath for job in aside] == ["a.jpg"]


def test_recover_for_a_host_leaves_other_hosts_running(journal_target):
    j = Journal(journal_target)
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    j.add_input("b.jpg", "s2", "/s", [spec("y", key="k2")], now=1)
    [a] = j.claim("k1", 1, "b1", now=2, owner="gpu1:10:cuda:0")
    [b] = j.claim("k2", 1, "b2", now=2, owner="gpu10:11:cuda:0")  # a host name that gpu1 prefixes
    assert j.recover("gpu1") == 1
    assert [x.state for x in j.get_jobs([a.id, b.id])] == ["queued", "running"]


def test_one_host_at_a_time_moves_an_input_out(journal_target):
    j = Journal(journal_target)
    inp = j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    assert j.claim_disposal(inp.id, "gpu1", now=10, lease=30)
    assert not j.claim_disposal(inp.id, "gpu2", now=20, lease=30)
    assert j.claim_disposal(inp.id, "gpu1", now=25, lease=30)  # its own retry after a failed move
    assert j.claim_disposal(inp.id, "gpu2", now=60, lease=30)  # gpu1 went quiet mid-move
    j.close_input(inp.id, "done")
    assert not j.claim_disposal(inp.id, "gpu1", now=100)  # moved and closed: nothing left to do


def test_the_schema_version_is_recorded(journal_target):
    from nstd.daemon.journal import SCHEMA_VERSION

    assert Journal(journal_target).schema_version() == SCHEMA_VERSION
    assert Journal(journal_target).schema_version() == SCHEMA_VERSION  # opening again adds no row
    # A newer nstd's journal is not written back down to this version by an older one.
    Journal(journal_target).db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    assert Journal(journal_target).schema_version() == SCHEMA_VERSION + 1


def test_a_journal_from_before_claims_and_leases_is_brought_up_to_date(tmp_path):
    import sqlite3

    from nstd.daemon.journal import SCHEMA, SCHEMA_VERSION

    old = SCHEMA.format(pk="INTEGER PRIMARY KEY", real="REAL")
    for column in ("claimed_by TEXT,", "crashes INTEGER NOT NULL DEFAULT 0,", "progress INTEGER,",
                   "progress_total INTEGER,", "progress_rate REAL,", "progress_eta REAL,", "lease_until REAL,",
                   "disposer TEXT,", "dispose_until REAL,"):
        old = "\n".join(line for line in old.splitlines() if not line.strip().startswith(column))
    old = old.split("CREATE TABLE IF NOT EXISTS schema_version")[0]  # and the workers table after it
    db = sqlite3.connect(tmp_path / "j.db")
    db.executescript(old)
    db.execute("INSERT INTO jobs (input_sha256, style, params_hash, relpath, spool, width, height, batch_key, "
               "params, state, created, queued) VALUES ('s', 'x', 'h', 'a.jpg', '/s', 32, 24, 'k1', '{}', "
               "'queued', 1, 1)")
    db.commit()
    assert {"claimed_by", "lease_until"}.isdisjoint(r[1] for r in db.execute("PRAGMA table_info(jobs)"))
    db.close()
    # nstd status from a newer nstd reads it as it is, before any daemon has migrated it.
    assert Journal(tmp_path / "j.db", readonly=True).workers() == []
    assert Journal(tmp_path / "j.db", readonly=True).batch_progress("b1") is None
    j = Journal(tmp_path / "j.db")
    assert j.schema_version() == SCHEMA_VERSION
    [job] = j.claim("k1", 1, "b1", now=5, owner="h:1:cpu", lease=10)
    assert j.requeue_expired(now=20) == (1, [])
    j.beat(WorkerInfo("h:1:cpu", "h", "cpu", 1 << 30), "idle", now=20)
    assert [w.owner for w in j.workers()] == ["h:1:cpu"]
    j.note_speed("h:1:cpu", 4e10, now=21)
    assert (j.workers()[0].speed, j.workers()[0].speed_at) == (4e10, 21)


def test_a_journal_from_before_measured_speeds_is_read_and_brought_up_to_date(tmp_path):
    """A version 3 journal: its workers table has no speeds, its jobs no rates."""
    import sqlite3

    from nstd.daemon.journal import SCHEMA, SCHEMA_VERSION

    old = SCHEMA.format(pk="INTEGER PRIMARY KEY", real="REAL")
    old = "\n".join(line for line in old.splitlines()
                    if not line.strip().startswith(("progress_rate", "progress_eta", "speed", "speed_at", "reason")))
    old = old.replace("heartbeat REAL NOT NULL,", "heartbeat REAL NOT NULL")
    db = sqlite3.connect(tmp_path / "j.db")
    db.executescript(old)
    db.execute("INSERT INTO schema_version VALUES (3)")
    db.execute("INSERT INTO jobs (input_sha256, style, params_hash, relpath, spool, width, height, batch_key, "
               "params, state, created, queued, batch_id, progress, progress_total) VALUES ('s', 'x', 'h', "
               "'a.jpg', '/s', 32, 24, 'k1', '{}', 'running', 1, 1, 'b1', 51, 200)")
    db.execute("INSERT INTO workers VALUES ('h:1:cpu', 'h', 'cpu', NULL, 'working', 1, 2)")
    db.commit()
    db.close()
    # nstd status and nstd check from a newer nstd, while an older daemon still runs.
    ro = Journal(tmp_path / "j.db", readonly=True)
    assert ro.batch_progress("b1") == (51, 200, None, None)
    assert [(w.owner, w.speed) for w in ro.workers()] == [("h:1:cpu", None)]
    ro.close()
    j = Journal(tmp_path / "j.db")
    assert j.schema_version() == SCHEMA_VERSION
    j.progress([1], 101, 200, rate=0.5, eta=300.0)
    assert j.batch_progress("b1") == (101, 200, 0.5, 300.0)
    j.note_speed("h:1:cpu", 4e10, now=21)
    assert j.workers()[0].speed == 4e10


def damaged_journal(path):
    j = Journal(path)
    for n in range(200):
        j.add_input(f"p{n}.jpg", f"s{n}", "/s", [spec(f"style{n}")], now=1)
    j.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    j.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a checkpointed journal cut in half


def test_a_damaged_journal_is_one_line_saying_what_to_do(tmp_path):
    from nstd.errors import JournalError

    damaged_journal(tmp_path / "j.db")
    for readonly in (False, True):
        with pytest.raises(JournalError, match="the journal is damaged .*move it aside") as e:
            Journal(tmp_path / "j.db", readonly=readonly)
        assert "\n" not in str(e.value)


def test_status_check_and_run_say_so_without_a_traceback(service, capsys):
    from nstd.cli import main

    service.close()  # as if stopped: its lock and inbox claim go with it
    damaged_journal(service.cfg.state_dir / "journal.sqlite3")
    capsys.readouterr()
    for command in ("status", "run", "check"):
        assert main([command, "--config", str(service.cfg.path)]) == 1, command
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert "the journal is damaged" in text and "Traceback" not in text, command



def test_workers_are_listed_by_heartbeat_and_forgotten_when_silent(journal_target):
    j = Journal(journal_target)
    gpu = WorkerInfo("a:10:cuda:0", "a", "cuda:0 (H100)", 80 << 30)
    cpu = WorkerInfo("b:20:cpu", "b", "cpu", 24 << 30)
    j.beat(gpu, "idle", now=100)
    j.beat(cpu, "idle", now=100)
    j.beat(gpu, "working", now=130)  # a second beat updates the row, keeping its start
    listed = {w.owner: w for w in j.workers()}
    assert listed["a:10:cuda:0"].state == "working"
    assert (listed["a:10:cuda:0"].started, listed["a:10:cuda:0"].heartbeat) == (100, 130)
    assert j.largest_memory(now=140) == 80 << 30
    # A worker silent for long no longer counts toward what a job may need, and is forgotten.
    assert j.largest_memory(now=115 + SILENT_SECONDS) == 80 << 30
    assert j.largest_memory(now=131 + SILENT_SECONDS) is None
    assert j.forget_workers(now=120 + SILENT_SECONDS) == 1
    assert [w.owner for w in j.workers()] == ["a:10:cuda:0"]
    # A host starting again forgets its own earlier rows; a clean stop removes its own.
    j.beat(cpu, "idle", now=200)
    assert j.forget_workers(now=200, host="a") == 1
    j.leave("b:20:cpu")
    assert j.workers() == []


def test_progress_and_measured_speeds_round_trip(journal_target):
    j = Journal(journal_target)
    j.add_input("p.jpg", "s1", "/s", [spec("x"), spec("y")], now=1)
    first, second = j.claim("k1", 4, "b1", now=2, owner="a:1:cpu")
    assert j.batch_progress("b1") is None
    j.progress([first.id], 1, 200)
    assert j.batch_progress("b1") == (1, 200, None, None)
    j.progress([first.id], 120, 200, rate=0.5, eta=500.0)
    j.progress([second.id], 20, 200, rate=0.5, eta=700.0)  # it joined the batch later
    assert j.batch_progress("b1") == (120, 200, 0.5, 500.0)  # the furthest job's
    j.requeue([first.id, second.id])
    [again, _] = j.claim("k1", 4, "b2", now=3, owner="a:1:cpu")
    assert j.batch_progress("b2") is None  # a new claim starts afresh
    worker = WorkerInfo("a:1:cpu", "a", "cpu", None)
    j.beat(worker, "starting", now=10)
    assert j.workers()[0].speed is None
    j.note_speed(worker.owner, 4.3e10, now=11)
    j.beat(worker, "idle", now=12)  # heartbeats keep it
    assert (j.workers()[0].speed, j.workers()[0].speed_at) == (4.3e10, 11)


def test_a_workers_running_jobs_are_its_own_claims(journal_target):
    j = Journal(journal_target)
    j.add_input("p.jpg", "s1", "/s", [spec("x"), spec("y", key="k2")], now=1)
    j.claim("k1", 4, "b1", now=2, owner="a:1:cpu")
    j.claim("k2", 4, "b2", now=2, owner="b:1:cpu")
    assert [job.style for job in j.running_of("a:1:cpu")] == ["x"]


def _version_4_journal(target):
    """A journal as nstd made it at schema 4: a worker's pause was one text, "paused: why"."""
    from nstd.daemon.database import connect
    from nstd.daemon.journal import SCHEMA

    db = connect(target)
    old = SCHEMA.format(pk=db.pk, real=db.real)
    old = "\n".join(line for line in old.splitlines() if not line.strip().startswith("reason"))
    for statement in old.split(";"):
        db.execute(statement)
    db.execute("INSERT INTO schema_version VALUES (4)")
    db.execute("INSERT INTO workers (owner, host, device, memory, state, started, heartbeat) VALUES "
               "('a:1:cpu', 'a', 'cpu', NULL, 'paused: share unavailable: outbox /o', 1, 2), "
               "('b:1:cpu', 'b', 'cpu', NULL, 'working', 1, 2)")
    db.close()


def test_a_version_4_journal_is_read_as_it_is_and_brought_up_to_date(journal_target):
    from nstd.daemon.journal import SCHEMA_VERSION, WorkerState

    _version_4_journal(journal_target)
    # nstd status from this nstd, while an older daemon still runs and writes "paused: why".
    ro = Journal(journal_target, readonly=True)
    assert ro.schema_version() == 4
    listed = [(w.owner, w.state, w.reason, w.doing) for w in ro.workers()]
    assert listed == [("a:1:cpu", WorkerState.PAUSED, "share unavailable: outbox /o",
                       "paused: share unavailable: outbox /o"),
                      ("b:1:cpu", WorkerState.WORKING, None, "working")]
    ro.close()
    j = Journal(journal_target)
    assert j.schema_version() == SCHEMA_VERSION and "reason" in j._columns("workers")
    assert [w.state for w in j.workers()] == ["paused", "working"]  # the older rows, still read
    b = WorkerInfo("b:1:cpu", "b", "cpu", None)
    j.beat(b, WorkerState.PAUSED, now=3, reason="outbox /o is full")
    assert [(w.state, w.reason) for w in j.workers() if w.owner == b.owner] == [("paused", "outbox /o is full")]
    j.beat(b, WorkerState.IDLE, now=4)
    assert [(w.doing, w.heartbeat) for w in j.workers() if w.owner == b.owner] == [("idle", 4)]
    with pytest.raises(ValueError):
        j.beat(b, "paused: why", now=5)  # a state is one of WorkerState; the reason goes apart


class _Away:
    """A journal's connection whose database is away for its next `calls` statements."""

    def __init__(self, db, calls):
        self.db, self.calls = db, calls

    def _call(self, name, *args):
        from nstd.daemon.database import Unavailable

        if self.calls > 0:
            self.calls -= 1
            raise Unavailable("journal: cannot connect")
        return getattr(self.db, name)(*args)

    def execute(self, *args):
        return self._call("execute", *args)

    def executemany(self, *args):
        return self._call("executemany", *args)

    def begin(self):
        return self._call("begin")

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_a_worker_waits_out_an_outage_for_its_outcomes_and_not_for_new_work(tmp_path):
    from nstd.daemon.database import Unavailable
    from nstd.daemon.outage import RETRY_SECONDS, PatientJournal

    j = Journal(tmp_path / "j.db")
    j.add_input("a.jpg", "s1", "/s", [spec("x"), spec("y")], now=1)
    waits = []
    patient = PatientJournal(j, give_up=lambda: False, wait=waits.append)
    real = j.db
    j.db = _Away(real, calls=1)
    assert patient.claim("k1", 1, "b1", now=2) == [] and waits == [RETRY_SECONDS]  # nothing now: ask again
    assert patient.oldest_queued(now=2).relpath == "a.jpg"  # it is back
    [job] = patient.claim("k1", 1, "b1", now=2)
    waits.clear()
    j.db = _Away(real, calls=2)
    patient.beat(WorkerInfo("h:1:cpu", "h", "cpu", None), "working", now=3)  # a report: skipped, no wait
    patient.progress([job.id], 10, 100)
    assert waits == []
    j.db = _Away(real, calls=3)
    assert patient.finish(job.id, "x/a.jpg", token="b1") and waits == [RETRY_SECONDS] * 3  # waited out
    assert j.get_jobs([job.id])[0].state == "done"
    # A stop whose grace is over no longer waits: the outcome is left to the lease.
    stopping = PatientJournal(j, give_up=lambda: True, wait=waits.append)
    j.db = _Away(real, calls=1)
    with pytest.raises(Unavailable):
        stopping.fail(job.id, "late", token="b1")


def test_the_journal_spells_no_state_as_a_quoted_literal():
    """States are bound from their Enums, never written into a statement or a comparison by hand."""
    import re
    from pathlib import Path

    from nstd.daemon import journal
    from nstd.daemon.journal import State, WorkerState

    states = "|".join(s.value for s in (*State, *WorkerState))
    for path in Path(journal.__file__).parent.glob("*.py"):
        text = path.read_text()
        if path.name == "records.py":
            text = re.sub(r'^ +[A-Z]+ = "[a-z]+"', "", text, flags=re.M)  # the Enums' own members
        assert not re.findall(rf"[\'\"]({states})[\'\"]", text), path
