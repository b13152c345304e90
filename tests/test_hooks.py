"""on_done: a command and a webhook after each input, which never delay, fail or repeat
the work whatever they do."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from structlog.testing import capture_logs

from nstd import config
from nstd.daemon.hooks import Hooks, HookConfig, Notice
from nstd.daemon.service import Service
from nstd.daemon.worker import Worker
from nstd.errors import ConfigError

from harness.daemon import files, run_once, take, wait_for, write_config


def make_service(tmp_path, models, on_done: dict) -> Service:
    cfg = config.load(write_config(tmp_path, models, styles={"ink": {"image": "style.png"}}, on_done=on_done,
                                   worker={"max_batch": 4, "batch_window": 0, "retry_backoff": 0}))
    svc = Service(cfg)
    svc.prepare()
    svc.worker = Worker(cfg, lambda: svc.styles, svc.load_weights, svc.devices[0], threading.Event())
    return svc


def script(tmp_path, name: str, body: str):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_the_command_hears_each_input_in_its_environment(tmp_path, session_models):
    seen = tmp_path / "seen"
    seen.mkdir()
    hook = script(tmp_path, "hook.sh", 'env | grep ^NSTD_ | sort > "$0.d/$(basename "$NSTD_INPUT")"\n'.replace(
        "$0.d", str(seen)))
    svc = make_service(tmp_path, session_models, {"command": str(hook)})
    try:
        take(svc, "a.jpg")
        (svc.cfg.inbox / "bad.jpg").write_bytes(b"not an image")
        st = (svc.cfg.inbox / "bad.jpg").stat()
        svc.intake.accept("bad.jpg", (st.st_size, st.st_mtime_ns, st.st_ino))
        run_once(svc)
        svc.inputs.finalize(1e12)
        assert svc.inputs.hooks.wait(30) and svc.intake.hooks.wait(30)
    finally:
        svc.close()
    done = dict(line.split("=", 1) for line in (seen / "a.jpg").read_text().splitlines())
    assert done["NSTD_OUTCOME"] == "done" and done["NSTD_INPUT"] == "a.jpg"
    assert done["NSTD_INPUT_PATH"] == str(svc.cfg.processed / "a.jpg")
    assert done["NSTD_OUTPUTS"] == str(svc.cfg.outbox / "ink" / "a.jpg") and done["NSTD_REASON"] == ""
    bad = dict(line.split("=", 1) for line in (seen / "bad.jpg").read_text().splitlines())
    assert bad["NSTD_OUTCOME"] == "failed" and "not a usable image" in bad["NSTD_REASON"]
    assert bad["NSTD_INPUT_PATH"] == str(svc.cfg.failed / "bad.jpg")


def test_a_hook_that_hangs_fails_or_floods_never_holds_or_fails_the_work(tmp_path, session_models):
    release = tmp_path / "release"
    ran = tmp_path / "ran"
    # It waits for the test to let it go, then floods its output and fails.
    hook = script(tmp_path, "hook.sh", f'echo "$NSTD_INPUT" >> {ran}\n'
                                       f'while [ ! -e {release} ]; do sleep 0.05; done\n'
                                       'head -c 20000000 /dev/zero\necho the last words\nexit 3\n')
    svc = make_service(tmp_path, session_models, {"command": str(hook), "timeout": 120})
    try:
        with capture_logs() as logs:
            take(svc, "a.jpg")
            run_once(svc)
            svc.inputs.finalize(1e12)  # returns at once: the hook runs on its own thread
            assert files(svc.cfg.processed) == ["a.jpg"]
            wait_for(lambda: ran.exists(), 30, "the hook to start")
            take(svc, "b.jpg", seed=7)  # the next photo goes through while the hook still waits
            run_once(svc)
            svc.inputs.finalize(1e12)
            assert sorted(files(svc.cfg.processed)) == ["a.jpg", "b.jpg"] and not release.exists()
            release.touch()
            assert svc.inputs.hooks.wait(60)
        assert [j.state for j in svc.journal.get_jobs([1, 2])] == ["done", "done"]  # neither failed nor redone
    finally:
        svc.close()
    failed = [e for e in logs if e["event"] == "hook_failed"]
    assert [(e["input"], e["exit_code"]) for e in failed] == [("a.jpg", 3), ("b.jpg", 3)]
    assert failed[0]["output"][-1].endswith("the last words")  # the tail of 20 MB, kept short


def test_a_hook_past_its_time_is_stopped(tmp_path):
    hook = script(tmp_path, "hook.sh", "sleep 600\n")
    hooks = Hooks(HookConfig(command=(str(hook),), timeout=0.5))
    with capture_logs() as logs:
        hooks.tell(Notice("a.jpg", "done", "x", None))
        assert hooks.wait(60)
    assert [e["event"] for e in logs] == ["hook_timed_out"]


class Receiver(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):
        self.got.append((self.headers["Content-Type"], json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_posts_json_and_a_silent_one_times_out(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = __import__("socket").socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts, never answers
    try:
        hooks = Hooks(HookConfig(webhook=f"http://127.0.0.1:{server.server_port}/nstd", timeout=5))
        hooks.tell(Notice("a.jpg", "done", "abc", "/p/a.jpg", ("/o/ink/a.jpg",), host="h1"))
        assert hooks.wait(30)
        [(kind, doc)] = Receiver.got
        assert kind == "application/json"
        assert doc == {"input": "a.jpg", "outcome": "done", "sha256": "abc", "input_path": "/p/a.jpg",
                       "outputs": ["/o/ink/a.jpg"], "reason": None, "host": "h1"}
        slow = Hooks(HookConfig(webhook=f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.5))
        with capture_logs() as logs:
            slow.tell(Notice("b.jpg", "failed", None, None, reason="x"))
            assert slow.wait(30)
        assert [(e["event"], e["input"]) for e in logs] == [("webhook_failed", "b.jpg")]
    finally:
        server.shutdown()
        silent.close()


@pytest.mark.parametrize("on_done, message", [
    ({"command": "no-such-program"}, r"^on_done\.command: .*no-such-program is not an executable file$"),
    ({"webhook": "ftp://x"}, r"^on_done\.webhook: expected an http:// or https:// URL, got 'ftp://x'$"),
    ({"timeout": 0}, r"^on_done\.timeout: expected seconds from 0 to 3600, got 0$"),
    ({"comand": "x"}, r"^on_done\.comand: unknown key \(known: command, webhook, timeout\)$"),
])
def test_a_bad_hook_setting_is_one_line_naming_its_key(tmp_path, on_done, message):
    with pytest.raises(ConfigError, match=message):
        config.load(write_config(tmp_path, tmp_path / "models", on_done=on_done))
