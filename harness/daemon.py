"""Running the real daemon as a subprocess on temporary folders, with tiny settings."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml
from PIL import Image

from nstd.daemon.intake import Kind
from nstd.daemon.lock import CLAIM_NAME

from harness.synthetic import rand_image

FOLDERS = ("inbox", "outbox", "failed", "processed", "state")
STYLES = ("ink", "wash")  # what write_config gives every daemon, unless told otherwise


def photo_bytes(h: int, w: int, seed: int, fmt: str = "JPEG") -> bytes:
    import io
    arr = (rand_image(h, w, seed).permute(1, 2, 0).numpy() * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, quality=90)
    return buf.getvalue()


def write_config(root: Path, models: Path, **overrides) -> Path:
    for f in FOLDERS:
        (root / f).mkdir(exist_ok=True)
    style = root / "style.png"
    if not style.exists():
        style.write_bytes(photo_bytes(48, 48, 1234, "PNG"))
    cfg = {
        "inbox": "inbox", "outbox": "outbox", "failed": "failed", "processed": "processed",
        "state_dir": "state", "models_dir": str(models),
        "styles": {"ink": {"image": "style.png"}, "wash": {"image": "style.png", "style_weight": 50}},
        "transfer": {"size": 32, "iterations": 4, "model": "random", "log_every": 2},
        "watch": {"settle_seconds": 0.5, "rescan_interval": 3, "poll_interval": 0.2},
        # No speed probe: a second of CPU at each start, which only the speed tests need.
        "worker": {"batch_window": 0.3, "stop_timeout": 5, "retry_backoff": 0.5, "measure_speed": False},
        "http": {"listen": "off"},  # tests that serve it pick their own port
    }
    for key, value in overrides.items():
        if key in ("transfer", "watch", "worker"):
            cfg[key] = cfg[key] | value
        else:
            cfg[key] = value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Daemon:
    def __init__(self, config: Path):
        self.config = config
        self.root = config.parent
        self.log = self.root / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self._terminated = False

    def start(self, wait: bool = True, **extra_env) -> "Daemon":
        env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env.pop("NOTIFY_SOCKET", None)
        env.update(extra_env)
        # A restart appends to the same log: wait for this process's own "started".
        started_before = sum(e.get("event") == "started" for e in self.events()) if self.log.exists() else 0
        self._out = open(self.log, "ab")
        self._terminated = False
        self.proc = subprocess.Popen([sys.executable, "-m", "nstd", "run", "--config", str(self.config)],
                                     stdout=self._out, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_log("started", timeout=60, count=started_before + 1)
        return self

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "text": line})
        return out

    def wait_log(self, event: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(e.get("event") == event for e in self.events()) >= count:
                return
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} in the log after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM) without waiting: several daemons stop side by side,
        then stop() waits for each. A second SIGTERM is not sent."""
        if self.proc and self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.terminate()
            self.proc.wait(timeout)
        self._out.close()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def rss_kib(pid: int) -> int:
    """The process's resident memory, or 0 once it is gone (a harness samples it between kills)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def files(folder: Path) -> list[str]:
    """Every file below `folder`, but the inbox claim a running daemon keeps there."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != CLAIM_NAME)


def jobs(root: Path) -> list[tuple]:
    db = sqlite3.connect(root / "state" / "journal.sqlite3")
    try:
        return db.execute("SELECT relpath, style, state, attempts FROM jobs ORDER BY relpath, style").fetchall()
    finally:
        db.close()


def listening_sockets(pid: int) -> list[str]:
    """TCP sockets in LISTEN and bound UDP sockets that belong to the process."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            listening = cols[3] == "0A" if table.startswith("tcp") else cols[3] == "07"
            if listening and cols[9] in inodes:
                found.append(f"{table} {cols[1]}")
    return found


# --- in-process helpers for the `service` fixture (tests/conftest.py) ---------------

def accept(svc, name: str, seed: int):
    """A photo written to the inbox and handed to intake as settled: what became of it."""
    path = svc.cfg.inbox / name
    path.write_bytes(photo_bytes(40, 40, seed))
    st = path.stat()
    return svc.intake.accept(name, (st.st_size, st.st_mtime_ns, st.st_ino))


def take(svc, *names, seed=100):
    for i, name in enumerate(names):
        assert accept(svc, name, seed + i).kind is Kind.QUEUED


def run_once(svc):
    batch = svc.journal.claim(svc.journal.oldest_queued(1e12).batch_key, 4, "b", 1e12)
    svc.worker.process(svc.journal, batch)
    return batch
