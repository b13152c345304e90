import json
import logging

from nstd.log import get, setup


def test_json_lines_for_our_logs_and_for_libraries(capsys):
    setup(json_lines=True)
    get("nstd.test").info("queued", input="a.jpg")
    logging.getLogger("watchdog.observers.inotify_buffer").warning("Inotify queue overflowed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["event"] == "queued" and lines[0]["input"] == "a.jpg" and lines[0]["level"] == "info"
    assert lines[1]["event"] == "Inotify queue overflowed" and lines[1]["level"] == "warning"
    assert lines[1]["logger"] == "watchdog.observers.inotify_buffer" and "timestamp" in lines[1]


def test_each_event_is_one_write_so_processes_sharing_stdout_never_split_a_line(monkeypatch):
    import sys

    from nstd.log import get, setup

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

        def isatty(self):
            return False

    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    setup("info", json_lines=True)
    get("nstd.test").info("one_event", detail="x" * 100)
    get("nstd.test").warning("another")
    assert len(recorder.writes) == 2 and all(w.endswith("\n") and w.count("\n") == 1 for w in recorder.writes)
