"""The real daemon, as a process, on temporary folders."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


from harness.daemon import Daemon, files, jobs, listening_sockets, photo_bytes, wait_for, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path, session_models):
    started = []

    def make(**overrides) -> Daemon:
        d = Daemon(write_config(tmp_path, session_models, **overrides)).start()
        started.append(d)
        return d

    yield make
    for d in started:
        if d.alive():
            d.stop()


def outputs_done(root, names, styles=("ink", "wash")):
    want = {f"{s}/{n}.{ext}" for s in styles for n in names for ext in ("jpg", "json")}
    return want <= set(files(root / "outbox"))


def test_kill9_mid_batch_then_restart_loses_nothing(tmp_path, daemon):
    # Killed at the first progress line (iteration 0), seconds before the batch's end.
    d = daemon(transfer={"iterations": 10, "size": 48, "log_every": 5})
    names = [f"p{i}" for i in range(3)]
    for i, n in enumerate(names):
        (tmp_path / "inbox" / f"{n}.jpg").write_bytes(photo_bytes(48, 48, 10 + i))
    d.wait_log("progress", timeout=60)
    d.kill()
    assert any(state == "running" for _, _, state, _ in jobs(tmp_path))
    d2 = Daemon(d.config).start()
    try:
        d2.wait_log("recovered", timeout=30)
        wait_for(lambda: outputs_done(tmp_path, names), 180, "outputs after restart")
        wait_for(lambda: len(files(tmp_path / "processed")) == 3, 20, "inputs processed")
    finally:
        assert d2.stop() == 0
    out = files(tmp_path / "outbox")
    results = [f for f in out if not f.startswith(".gallery/") and f != "index.html"]
    assert results == sorted(f"{s}/{n}.{e}" for s in ("ink", "wash") for n in names
                             for e in ("jpg", "json", "loss.svg"))
    assert "index.html" in out and len([f for f in out if f.startswith(".gallery/out-")]) == 2 * len(names)
    # No temporary or partial files: the gallery's folder is the only hidden name.
    assert [p.name for p in (tmp_path / "outbox").rglob(".*")] == [".gallery"]
    assert files(tmp_path / "processed") == [f"{n}.jpg" for n in names]
    assert all(state == "done" for _, _, state, _ in jobs(tmp_path))


def test_sigterm_exits_cleanly_within_the_timeout(tmp_path, daemon):
    d = daemon(transfer={"iterations": 5000, "size": 48, "log_every": 10}, worker={"stop_timeout": 1})
    (tmp_path / "inbox" / "long.jpg").write_bytes(photo_bytes(48, 48, 8))
    d.wait_log("progress", timeout=60)
    d.signal(signal.SIGTERM)
    d.proc.wait(60)
    assert d.proc.returncode == 0
    # The stop's deadline cut the 5000-iteration batch short and handed it back.
    assert any(e.get("event") == "batch_requeued" and e.get("reason") == "stopping" for e in d.events())
    assert {state for _, _, state, _ in jobs(tmp_path)} == {"queued"}  # handed back, not lost
    assert files(tmp_path / "inbox") == ["long.jpg"]


def test_config_error_is_one_line_with_its_key_path(tmp_path, session_models):
    cfg = write_config(tmp_path, session_models, transfer={"iteratons": 5})
    proc = subprocess.run([sys.executable, "-m", "nstd", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("nstd: error: transfer.iteratons: unknown key")


def test_refuses_to_start_with_outbox_inside_inbox(tmp_path, session_models):
    (tmp_path / "inbox" / "out").mkdir(parents=True)
    cfg = write_config(tmp_path, session_models, outbox="inbox/out")
    proc = subprocess.run([sys.executable, "-m", "nstd", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "outbox:" in proc.stderr and "is inside the inbox" in proc.stderr


def test_sd_notify_ready_status_and_watchdog(tmp_path, session_models):
    import socket
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    # The speed probe on, as the service runs: the worker says how long a photo takes.
    d = Daemon(write_config(tmp_path, session_models, worker={"measure_speed": True})).start(
        NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000")
    try:
        seen = []
        deadline = time.time() + 30
        while time.time() < deadline and not (any("READY=1" in m for m in seen)
                                               and any("WATCHDOG=1" in m for m in seen)):
            seen.append(sock.recv(4096).decode())
        assert any(m == "READY=1" for m in seen)
        status = next(m for m in seen if m.startswith("STATUS="))
        assert "queued 0, running 0, done 0, failed 0" in status and "WATCHDOG=1" in status
        assert listening_sockets(d.proc.pid) == []  # no network listener
        d.wait_log("expected_speed", timeout=60)
    finally:
        assert d.stop() == 0
        sock.close()


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_sighup_reloads_the_style_set(tmp_path, daemon, isolation):
    import yaml
    d = daemon(worker={"isolation": isolation})
    cfg = yaml.safe_load(d.config.read_text())
    cfg["styles"]["third"] = {"image": "style.png", "style_weight": 3}
    d.config.write_text(yaml.safe_dump(cfg))
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded", timeout=30)
    (tmp_path / "inbox" / "third").mkdir()
    (tmp_path / "inbox" / "third" / "t.jpg").write_bytes(photo_bytes(40, 40, 12))
    # Made by the worker, which in a worker process read the new config itself.
    wait_for(lambda: (tmp_path / "outbox" / "third" / "t.json").exists(), 60, "new style output")
    # A broken config on reload keeps the old style set and the daemon running.
    d.config.write_text("styles: {broken: {}}\n")
    d.signal(signal.SIGHUP)
    d.wait_log("reload_failed", timeout=30)
    assert d.alive()


def test_bad_input_corpus(tmp_path, daemon, session_models):
    """Every awkward or hostile file is stylized or refused with a reason; nothing escapes."""
    from harness.corpus import build

    d = daemon(styles={"ink": {"image": "style.png"}}, transfer={"iterations": 2})
    staging = tmp_path / "staging"
    outside = tmp_path / "outside"
    expect = build(staging, outside)
    secret_before = (outside / "secret.jpg").read_bytes()
    for name in sorted(expect):
        os.rename(staging / name, tmp_path / "inbox" / name)

    def settled():
        failed = set(files(tmp_path / "failed"))
        done = set(files(tmp_path / "processed"))
        return all((f"{n}.error.json" in failed) if o == "failed" else (n in done)
                   for n, (o, _) in expect.items() if o != "ignored")

    wait_for(settled, 120, "every corpus file to be stylized or refused")
    assert d.alive()
    for name, (outcome, why) in expect.items():
        if outcome == "failed":
            reason = json.loads((tmp_path / "failed" / f"{name}.error.json").read_text())["reason"]
            assert why in reason, (name, reason)
            assert os.path.lexists(tmp_path / "failed" / name), name  # kept, not lost
        elif outcome == "ok":
            stem = name.rsplit(".", 1)[0]
            assert (tmp_path / "outbox" / "ink" / f"{stem}.json").exists(), name
    # The symlink was moved as a link; what it pointed at was neither read nor touched.
    assert os.path.islink(tmp_path / "failed" / "link-out.jpg")
    assert (outside / "secret.jpg").read_bytes() == secret_before
    assert not any("secret" in p for p in files(tmp_path / "outbox"))
    assert (tmp_path / "inbox" / "folder.jpg").is_dir()
    assert not any(e.get("event") == "raw" and "Traceback" in e.get("text", "") for e in d.events())


def test_a_worker_process_killed_mid_batch_is_restarted_and_its_jobs_run_once(tmp_path, daemon):
    # Killed at the first progress line (iteration 0), a second or two before the batch's end.
    d = daemon(transfer={"iterations": 20, "size": 48, "log_every": 10},
               worker={"isolation": "process", "batch_window": 0})
    [started] = [e for e in d.events() if e.get("event") == "worker_started"]
    assert started["pid"] != d.proc.pid
    (tmp_path / "inbox" / "a.jpg").write_bytes(photo_bytes(48, 48, 30))
    d.wait_log("progress", timeout=60)
    os.kill(started["pid"], signal.SIGKILL)
    d.wait_log("worker_restarted", timeout=30)
    [restart] = [e for e in d.events() if e.get("event") == "worker_restarted"]
    assert restart["requeued"] >= 1 and "-9" in restart["error"]
    wait_for(lambda: files(tmp_path / "processed") == ["a.jpg"], 120, "the input processed")
    assert d.alive()
    assert d.stop() == 0
    results = [f for f in files(tmp_path / "outbox") if not f.startswith(".gallery/") and f != "index.html"]
    assert results == sorted(f"{s}/a.{e}" for s in ("ink", "wash") for e in ("jpg", "json", "loss.svg"))
    assert [state for _, _, state, _ in jobs(tmp_path)] == ["done", "done"]


def test_a_full_state_dir_pauses_the_daemon_and_spends_no_attempt(tmp_path, session_models):
    """The SQLite journal on a full disk is waited out like a lost database: no crash and
    restart every few seconds, the running batch finishes once there is room, and no
    photo is set aside. A real full filesystem: a small tmpfs under the state folder."""
    # The disk filled at the first progress line (iteration 0): the batch's finish, a second
    # or two later, meets it.
    config = write_config(tmp_path, session_models, transfer={"iterations": 15, "size": 40, "log_every": 5})
    state = tmp_path / "state"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], capture_output=True)
    assert mounted.returncode == 0, f"this test needs to mount a tmpfs (as root): {mounted.stderr.decode()}"
    d = Daemon(config)
    try:
        d.start()
        names = ["p0", "p1"]
        for i, n in enumerate(names):
            (tmp_path / "inbox" / f"{n}.jpg").write_bytes(photo_bytes(40, 40, 20 + i))
        d.wait_log("progress", timeout=60)
        filler = state / "filler"
        with open(filler, "wb") as f:  # every free block taken
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        d.wait_log("database_unavailable", timeout=60)
        status = subprocess.run([sys.executable, "-m", "nstd", "status", "--config", str(config)],
                                capture_output=True, text=True)
        assert status.stdout.startswith(f"paused: {state} is full"), status.stdout + status.stderr
        filler.unlink()
        d.wait_log("database_back", timeout=60)
        wait_for(lambda: outputs_done(tmp_path, names), 120, "outputs once there was room")
        wait_for(lambda: len(files(tmp_path / "processed")) == 2, 30, "inputs processed")
        assert d.stop() == 0
        events = [e.get("event") for e in d.events()]
        assert "worker_crashed" not in events and "worker_restarted" not in events
        assert sorted(jobs(tmp_path)) == sorted((f"{n}.jpg", s, "done", 1) for n in names for s in ("ink", "wash"))
        assert files(tmp_path / "failed") == []
    finally:
        if d.alive():
            d.kill()
        subprocess.run(["umount", str(state)], capture_output=True)
