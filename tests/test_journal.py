from nstd.daemon.journal import JobSpec, Journal
from nstd.daemon.scheduler import Scheduler


def spec(style, w=32, h=24, key="k1"):
    return JobSpec(style=style, params_hash=f"h-{style}", params={"format": "JPEG", "quality": 90},
                   width=w, height=h, batch_key=key)


def test_same_photo_twice_shares_jobs(tmp_path):
    j = Journal(tmp_path / "j.db")
    a = j.add_input("a.jpg", "sha1", "/s/sha1.jpg", [spec("x"), spec("y")], now=1)
    b = j.add_input("copy/a.jpg", "sha1", "/s/sha1.jpg", [spec("x"), spec("y")], now=2)
    assert a.id != b.id
    assert j.counts()["queued"] == 2
    assert [x.id for x in j.jobs_of(a.id)] == [x.id for x in j.jobs_of(b.id)]
    # Adding the same input again changes nothing.
    j.add_input("a.jpg", "sha1", "/s/sha1.jpg", [spec("x"), spec("y")], now=3)
    assert j.counts()["queued"] == 2


def test_claim_recover_and_finish(tmp_path):
    j = Journal(tmp_path / "j.db")
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    j.add_input("b.jpg", "s2", "/s", [spec("x")], now=2)
    claimed = j.claim("k1", 8, "b1", now=5)
    assert [c.relpath for c in claimed] == ["a.jpg", "b.jpg"]
    assert j.counts()["running"] == 2
    assert j.recover() == 2  # a crash: back to the queue
    again = j.claim("k1", 1, "b2", now=6)
    assert [c.attempts for c in again] == [2]
    j.finish(again[0].id, "x/a.jpg")
    settled = j.inputs_settled()
    assert [(i.relpath, [job.state for job in js]) for i, js in settled] == [("a.jpg", ["done"])]


def test_retry_waits_for_its_time(tmp_path):
    j = Journal(tmp_path / "j.db")
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=1)
    [job] = j.claim("k1", 1, "b", now=2)
    j.retry(job.id, "EIO", delay=1000)
    assert j.oldest_queued(now=2) is None
    assert j.oldest_queued(now=10**12).id == job.id


def test_scheduler_waits_for_company_but_not_forever(tmp_path):
    j = Journal(tmp_path / "j.db")
    clock = [100.0]
    s = Scheduler(j, window=2.0, max_batch_for=lambda job: 4, clock=lambda: clock[0])
    j.add_input("a.jpg", "s1", "/s", [spec("x")], now=100)
    assert s.next_batch() == []  # alone and fresh: wait for others of its size
    j.add_input("b.jpg", "s2", "/s", [spec("x")], now=100.5)
    clock[0] = 102.1
    assert [x.relpath for x in s.next_batch()] == ["a.jpg", "b.jpg"]


def test_scheduler_oldest_first_never_starves_an_odd_size(tmp_path):
    j = Journal(tmp_path / "j.db")
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
