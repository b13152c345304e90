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
