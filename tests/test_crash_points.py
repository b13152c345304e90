"""The daemon killed at each crash point (NSTD_FAULT), then restarted: nothing lost,
nothing twice, nothing partial, and the journal agrees with the folders."""

import sqlite3

import pytest

from nstd import faults

from harness.daemon import Daemon, files, photo_bytes, wait_for, write_config

pytestmark = pytest.mark.slow
STYLES = ("ink", "wash")


def journal_rows(root):
    db = sqlite3.connect(root / "state" / "journal.sqlite3")
    try:
        inputs = db.execute("SELECT relpath, state FROM inputs").fetchall()
        jobs = db.execute("SELECT style, state, output FROM jobs ORDER BY style").fetchall()
        return inputs, jobs
    finally:
        db.close()


@pytest.mark.parametrize("point", faults.POINTS)
def test_a_crash_at_each_point_then_a_restart_gives_everything_once(tmp_path, session_models, point):
    config = write_config(tmp_path, session_models, worker={"batch_window": 0, "stop_timeout": 5, "retry_backoff": 0.5})
    (tmp_path / "inbox" / "a.jpg").write_bytes(photo_bytes(40, 40, 7))
    first = Daemon(config).start(NSTD_FAULT=point)
    assert first.proc.wait(90) == faults.EXIT_CODE, first.log.read_text()[-2000:]
    first._out.close()

    second = Daemon(config).start()
    try:
        wait_for(lambda: files(tmp_path / "processed") == ["a.jpg"], 90, "the input processed")
        wait_for(lambda: journal_rows(tmp_path)[0] == [("a.jpg", "done")], 30, "the input closed")
    finally:
        assert second.stop() == 0

    results = [f for f in files(tmp_path / "outbox") if not f.startswith(".gallery/") and f != "index.html"]
    assert results == sorted(f"{s}/a.{e}" for s in STYLES for e in ("jpg", "json", "loss.svg"))
    # No temporary or partial file anywhere: the gallery's folder is the only hidden name.
    assert [p.name for p in (tmp_path / "outbox").rglob(".*")] == [".gallery"]
    assert [p.name for p in (tmp_path / "processed").rglob(".*")] == []
    assert files(tmp_path / "inbox") == [] and files(tmp_path / "failed") == []
    inputs, jobs = journal_rows(tmp_path)
    assert jobs == [(s, "done", f"{s}/a.jpg") for s in STYLES]
