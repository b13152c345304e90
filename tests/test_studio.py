"""The studio's controls: priority, cancel and pause, on one host and across two hosts
sharing a PostgreSQL journal."""

import itertools
import json

from structlog.testing import capture_logs

from nstd.cli import main
from nstd.daemon import batch as batch_mod
from nstd.daemon.journal import ANY, Journal, JobSpec, State
from nstd.daemon.scheduler import Scheduler

from harness.daemon import accept, files, photo_bytes, run_once, take


def spec(style="ink", priority=0, key="k"):
    return JobSpec(style=style, params_hash=style, params={}, width=32, height=32, batch_key=key, priority=priority)


def test_the_queue_takes_the_highest_priority_then_the_oldest(tmp_path):
    j = Journal(tmp_path / "j.db")
    for n, priority in enumerate([0, 0, 5, 0, 5]):
        j.add_input(f"p{n}.jpg", f"sha{n}", "spool", [spec(priority=priority)], now=100.0 + n)
    assert j.oldest_queued(1e9).relpath == "p2.jpg"
    assert [x.relpath for x in j.claim("k", 3, "b1", 1e9)] == ["p2.jpg", "p4.jpg", "p0.jpg"]  # in the order taken
    assert [x.relpath for x in j.claim("k", 1, "b2", 1e9)] == ["p1.jpg"]  # p2, p4 first, then the oldest


def test_cancel_queued_and_running_once_and_a_redrop_starts_afresh(tmp_path):
    j = Journal(tmp_path / "j.db")
    j.add_input("a.jpg", "sa", "spool", [spec()], now=1.0)
    j.add_input("b.jpg", "sb", "spool", [spec("wash")], now=2.0)
    [running] = j.claim("k", 1, "b1", 10.0)
    assert running.relpath == "a.jpg"
    ids = [x.id for jobs in j.photos(["*.jpg"]).values() for x in jobs]
    assert j.cancel(ids, "ann@studio", 20.0) == 2 and j.cancel(ids, "ann@studio", 21.0) == 0
    assert j.cancelled_among([running.id, 999]) == {running.id}
    a, b = j.get_jobs(ids)
    assert (a.state, a.cancelled_by, a.cancelled_at, a.error) == (State.CANCELLED, "ann@studio", 20.0,
                                                                  "cancelled by ann@studio")
    assert b.state is State.CANCELLED and not j.holds(a.id, "b1")  # the claim no longer holds it
    assert [i.relpath for i, _ in j.inputs_settled()] == ["a.jpg", "b.jpg"]
    j.add_input("a.jpg", "sa", "spool", [spec(priority=3)], now=30.0)  # nstd retry: dropped again
    again = j.get_jobs([a.id])[0]
    assert (again.state, again.cancelled_by, again.priority) == (State.QUEUED, None, 3)


def test_pauses_cover_their_host_and_device_and_outlast_the_connection(tmp_path):
    j = Journal(tmp_path / "j.db")
    j.pause("h1", ANY, "ann@studio", 5.0)
    j.pause(ANY, "cuda:1", None, 6.0)
    j.close()
    j = Journal(tmp_path / "j.db")
    assert j.pause_of("h1", "cpu").reason == "paused by ann@studio (nstd resume)"
    assert j.pause_of("h2", "cuda:1") is not None and j.pause_of("h2", "cuda:0") is None
    assert j.resume("h1", ANY) == 1 and j.pause_of("h1", "cpu") is None
    assert j.resume(ANY, ANY) == 1 and j.pauses() == []


def _finished_order(svc) -> list[str]:
    rows = svc.journal.db.execute("SELECT relpath FROM jobs WHERE state = ? ORDER BY finished, id",
                                  (State.DONE,)).fetchall()
    return [r[0] for r in rows]


def test_a_rush_photo_overtakes_every_photo_still_queued_when_it_arrived(service):
    names = [f"q{n:02d}.jpg" for n in range(20)]
    take(service, *names)
    first = service.journal.claim(service.journal.oldest_queued(1e12).batch_key, 4, "b0", 1e12)
    (service.cfg.inbox / "rush.jpg.nstd.yaml").write_text("priority: 10\n")
    assert accept(service, "rush.jpg", 7).kind.name == "QUEUED"
    service.worker.process(service.journal, first)  # the batch running when it arrived
    while service.journal.oldest_queued(1e12) is not None:
        run_once(service)
    order = _finished_order(service)
    waiting = [n for n in names if n not in {j.relpath for j in first}]
    assert len(order) == 21 and order.index("rush.jpg") < min(order.index(n) for n in waiting)


def test_priority_command_reorders_the_queue(service, capsys):
    take(service, "a.jpg", "b.jpg")
    capsys.readouterr()
    assert main(["priority", "b.jpg", "7", "--config", str(service.cfg.path)]) == 0
    assert "b.jpg: priority 7 (1 job(s))" in capsys.readouterr().out
    assert service.journal.oldest_queued(1e12).relpath == "b.jpg"
    assert main(["priority", "nope.jpg", "7", "--config", str(service.cfg.path)]) == 1
    assert capsys.readouterr().err.strip() == "nstd: error: nope.jpg: no photo of that name is queued or running"


def test_a_cancelled_queued_photo_goes_to_failed_and_retry_brings_it_back(service, capsys):
    cfg = ["--config", str(service.cfg.path)]
    take(service, "a.jpg", "b.jpg")
    capsys.readouterr()
    assert main(["cancel", "a.jpg", *cfg]) == 0
    assert capsys.readouterr().out.startswith("a.jpg: cancelled 1 job(s)")
    assert main(["cancel", "a.jpg", *cfg]) == 0  # idempotent
    assert capsys.readouterr().out.strip() == "a.jpg: already cancelled"
    run_once(service)
    service.inputs.finalize(1e12)
    assert files(service.cfg.failed) == ["a.jpg", "a.jpg.error.json"] and files(service.cfg.processed) == ["b.jpg"]
    record = json.loads((service.cfg.failed / "a.jpg.error.json").read_text())
    assert record["reason"].startswith("ink: cancelled by ")
    assert not any(f.startswith("ink/a.") for f in files(service.cfg.outbox))
    assert main(["retry", "a.jpg", *cfg]) == 0
    st = (service.cfg.inbox / "a.jpg").stat()
    assert service.intake.accept("a.jpg", (st.st_size, st.st_mtime_ns, st.st_ino)).kind.name == "QUEUED"
    run_once(service)
    assert "ink/a.jpg" in files(service.cfg.outbox)
    assert main(["cancel", "zzz.jpg", *cfg]) == 1
    assert "zzz.jpg: no photo of that name in the journal" in capsys.readouterr().err


def cancel_at(monkeypatch, service, name: str, iteration: int):  # the fixture runs 4 iterations
    """Cancel `name` from the command line when its batch reaches `iteration`, as an
    operator would mid-batch; each look at the clock moves it a second on."""
    real = batch_mod.DaemonBatch.progress
    ticks = itertools.count(1000)
    service.worker.clock = lambda: float(next(ticks))

    def progress(self, it, losses):
        if it == iteration:
            assert main(["cancel", name, "--config", str(service.cfg.path)]) == 0
        return real(self, it, losses)

    monkeypatch.setattr(batch_mod.DaemonBatch, "progress", progress)


def test_a_running_photo_cancelled_leaves_its_batch_and_the_others_finish(service, monkeypatch, capsys):
    take(service, "a.jpg", "b.jpg", "c.jpg")
    cancel_at(monkeypatch, service, "b.jpg", 2)
    with capture_logs() as logs:
        batch = run_once(service)
    assert len(batch) == 3
    assert "b.jpg: cancelled 1 job(s); 1 running leave their batch within seconds" in capsys.readouterr().out
    # It left the batch when its worker looked, rather than being computed to the end and refused.
    events = [(e["event"], e.get("input")) for e in logs]
    assert ("cancelled", "b.jpg") in events and not any(e == "not_published" for e, _ in events)
    states = {j.relpath: j.state for j in service.journal.get_jobs([j.id for j in batch])}
    assert states == {"a.jpg": State.DONE, "b.jpg": State.CANCELLED, "c.jpg": State.DONE}
    outputs = files(service.cfg.outbox)
    assert "ink/a.jpg" in outputs and "ink/c.jpg" in outputs
    assert not any(f.startswith("ink/b.") for f in outputs)  # neither image nor loss log
    service.inputs.finalize(1e12)
    assert "b.jpg" in files(service.cfg.failed) and sorted(files(service.cfg.processed)) == ["a.jpg", "c.jpg"]


def test_a_paused_worker_takes_no_new_batch_and_the_pause_outlasts_a_restart(service, capsys):
    cfg = ["--config", str(service.cfg.path)]
    take(service, "a.jpg")
    assert main(["pause", *cfg]) == 0
    assert "paused: host" in capsys.readouterr().out
    worker = service.worker
    worker.start()
    try:
        from harness.daemon import wait_for

        wait_for(lambda: worker.held is not None, 30, "the worker to see the pause")
        assert service.journal.counts()["running"] == 0 and service.journal.counts()["queued"] == 1
        assert main(["status", *cfg]) == 0
        out = capsys.readouterr().out
        assert "paused by operator: host" in out and ": paused: paused by " in out
    finally:
        worker.stopping.set()
        worker.join(30)
    reopened = Journal(service.cfg.journal_target)  # as a restarted daemon finds it
    assert reopened.pause_of(service.cfg.host, "cpu") is not None
    reopened.close()
    # /readyz says so: no worker here takes work.
    from types import SimpleNamespace

    from nstd.web.daemon import _ready
    from nstd.web.metrics import Reader

    service.pool.workers = [SimpleNamespace(alive=lambda: True, device=worker.device)]
    reader = Reader(service.cfg.journal_target)
    assert _ready(service, reader) == (False, "paused by operator: cpu (nstd resume)")
    assert main(["resume", *cfg]) == 0
    assert "(1 pause(s) lifted)" in capsys.readouterr().out
    assert service.journal.pause_of(service.cfg.host, "cpu") is None
    assert _ready(service, reader) == (True, "1 worker(s) running")
    reader.close()


def test_on_two_hosts_a_pause_holds_one_while_the_other_drains_and_a_cancel_reaches_across(hosts, capsys):
    a, b = hosts
    for n in range(4):
        (a.cfg.inbox / f"p{n}.png").write_bytes(photo_bytes(40, 32, n, "PNG"))
    now = 1000.0
    for _ in range(3):
        now += 10
        a.inputs.step(now)
    assert a.journal.counts()["queued"] == 4
    assert main(["pause", "--config", str(a.cfg.path)]) == 0  # host a, from a's config
    assert main(["cancel", "p3.png", "--config", str(b.cfg.path)]) == 0  # from the other host
    held = a.journal.pause_of(a.cfg.host, "cpu")
    assert held is not None and b.journal.pause_of(b.cfg.host, "cpu") is None
    scheduler = Scheduler(b.journal, 0, lambda job: 2, owner=f"{b.cfg.host}:1:cpu")
    while batch := scheduler.next_batch():
        b.worker.process(b.journal, batch)
    done = {j.relpath: j.state for j in b.journal._jobs("WHERE 1 = 1")}
    assert done == {"p0.png": State.DONE, "p1.png": State.DONE, "p2.png": State.DONE, "p3.png": State.CANCELLED}
    owners = {r[0].split(":")[0] for r in b.journal.db.execute("SELECT claimed_by FROM jobs WHERE claimed_by "
                                                                "IS NOT NULL")}
    assert owners == {b.cfg.host}
    assert main(["resume", "--config", str(a.cfg.path)]) == 0
    assert a.journal.pause_of(a.cfg.host, "cpu") is None
