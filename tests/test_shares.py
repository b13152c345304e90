"""The daemon on real network shares: an SMB share (Samba, mounted through smbnetfs) and
an SFTP folder (OpenSSH, mounted with sshfs), with the server stopped and the mount
taken down under it. Every folder the daemon writes is on the share; its state stays local."""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.daemon import Daemon, files, photo_bytes, wait_for, write_config
from harness.shares import SambaServer, SftpServer, SmbMount, SshfsMount, served

pytestmark = pytest.mark.slow
SHARED = ("inbox", "outbox", "failed", "processed", "spool")
STYLES = ("ink", "wash")


@pytest.fixture
def smb(tmp_path):
    with served(SambaServer(), SmbMount, tmp_path / "smb") as both:
        yield both


@pytest.fixture
def sftp(tmp_path):
    with served(SftpServer(), SshfsMount, tmp_path / "sftp") as both:
        yield both


def share_config(root: Path, share: Path, models: Path, **overrides) -> Path:
    for name in SHARED:
        (share / name).mkdir(exist_ok=True)
    return write_config(root, models, **{name: str(share / name) for name in SHARED},
                        watch={"settle_seconds": 1.0, "poll_interval": 0.3, "rescan_interval": 2},
                        worker={"batch_window": 0.3, "stop_timeout": 5, "retry_backoff": 0.5}, **overrides)


def done(share: Path, names) -> bool:
    want = {f"{s}/{n}.{e}" for s in STYLES for n in names for e in ("jpg", "json")}
    return want <= set(files(share / "outbox"))


def slow_copy(path: Path, data: bytes, pause: float) -> None:
    """A photographer's laptop copying over the network: chunks with pauses shorter than
    the settle time."""
    with open(path, "wb") as f:
        for i in range(0, len(data), len(data) // 4 + 1):
            f.write(data[i:i + len(data) // 4 + 1])
            f.flush()
            time.sleep(pause)


class WholeFiles(threading.Thread):
    """Another client reading the outbox on the server's side: every output it sees under
    its final name must be whole."""

    def __init__(self, outbox: Path):
        super().__init__(daemon=True)
        self.outbox, self.stop, self.partial, self.seen = outbox, threading.Event(), [], set()

    def run(self) -> None:
        while not self.stop.is_set():
            for path in list(self.outbox.rglob("*")):
                if path.name.startswith(".") or not path.is_file() or path in self.seen:
                    continue
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                whole = (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")) if path.suffix == ".jpg" \
                    else _json(data) if path.suffix == ".json" else True
                (self.seen.add if whole else self.partial.append)(path)
            time.sleep(0.02)


def _json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def audit(share: Path, names, d: Daemon) -> list[dict]:
    outputs = sorted(f for f in files(share / "outbox") if f.split("/")[0] in STYLES and not f.endswith(".svg"))
    assert outputs == sorted(f"{s}/{n}.{e}" for s in STYLES for n in names for e in ("jpg", "json"))
    assert sorted(files(share / "processed")) == sorted(f"{n}.jpg" for n in names)
    assert files(share / "failed") == [] and files(share / "inbox") == []
    hidden = [p.name for p in (share / "outbox").rglob(".*") if p.name != ".gallery" and ".gallery" not in p.parts]
    assert hidden == []  # no temporary name, even from a write the share's outage cut short
    events = d.events()
    assert not [e for e in events if e.get("level") == "error"], [e for e in events if e.get("level") == "error"]
    return events


def test_the_daemon_on_an_smb_share_survives_its_server_and_its_mount_going(tmp_path, session_models, smb):
    server, mount = smb
    share = mount.path
    sock_path = tmp_path / "notify.sock"
    notes = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notes.bind(str(sock_path))
    notes.settimeout(30)
    d = Daemon(share_config(tmp_path, share, session_models, transfer={"iterations": 8, "log_every": 4}))
    # A write a kill -9 cut short left a hidden temporary file on the share (named as
    # fsutil.atomic_write names them, by a process of this host now gone): the start clears it.
    (share / "outbox" / "ink").mkdir(parents=True)
    litter = share / "outbox" / "ink" / f".a.jpg.@{socket.gethostname()[:32]}@999999999.x1.tmp"
    litter.write_bytes(b"half an image")
    reader = WholeFiles(server.share / "outbox")
    reader.start()
    try:
        d.start(NOTIFY_SOCKET=str(sock_path))
        assert not litter.exists()
        # Written on the server's side, as another client would; and copied slowly through the mount.
        (server.share / "inbox" / "a.jpg").write_bytes(photo_bytes(32, 32, 1))
        slow_copy(share / "inbox" / "b.jpg", photo_bytes(32, 32, 2), pause=0.3)
        wait_for(lambda: done(share, ["a", "b"]), 120, "a and b")

        # The server goes away mid-batch and comes back.
        (share / "inbox" / "c.jpg").write_bytes(photo_bytes(32, 32, 3))
        d.wait_log("progress", timeout=60, count=_count(d, "progress") + 1)
        server.stop()
        d.wait_log("paused", timeout=60)
        status = subprocess.run([sys.executable, "-m", "nstd", "status", "--config", str(d.config)],
                                capture_output=True, text=True)
        assert status.stdout.startswith("paused: share unavailable: "), status.stdout + status.stderr
        assert _note_with(notes, "paused: share unavailable")
        server.start()
        d.wait_log("resumed", timeout=60)
        wait_for(lambda: done(share, ["a", "b", "c"]), 120, "c after the server came back")

        # The mount taken down (its empty mount point is left) and mounted again.
        mount.unmount()
        d.wait_log("paused", timeout=60, count=2)
        mount.mount()
        d.wait_log("resumed", timeout=60, count=2)
        (share / "inbox" / "e.jpg").write_bytes(photo_bytes(32, 32, 5))
        wait_for(lambda: done(share, ["a", "b", "c", "e"]), 120, "e after the remount")
        wait_for(lambda: len(files(share / "processed")) == 4, 60, "inputs moved out")
        assert d.stop() == 0
    finally:
        reader.stop.set()
        if d.alive():
            d.kill()
        notes.close()
    events = audit(share, ["a", "b", "c", "e"], d)
    kinds = [e.get("event") for e in events]
    # One line as each outage begins and one as it ends; no error every few seconds.
    assert kinds.count("paused") == 2 and kinds.count("resumed") == 2
    # Only the others are shown: a list with the pauses in it is cut before them.
    assert [e for e in events if e.get("level") == "warning" and e.get("event") != "paused"] == []
    assert reader.partial == [] and len(reader.seen) >= 16  # every output, seen only whole


def _count(d: Daemon, event: str) -> int:
    return sum(e.get("event") == event for e in d.events())


def _note_with(sock: socket.socket, text: str) -> bool:
    deadline = time.time() + 30
    while time.time() < deadline:
        if text in sock.recv(4096).decode():
            return True
    return False


def test_two_hosts_on_one_smb_share_and_one_postgresql_make_each_output_once(tmp_path, session_models, smb,
                                                                            pg_server):
    server, mount = smb
    share = mount.path
    url = pg_server.new_database()
    daemons = []
    for host in ("h1", "h2"):
        root = tmp_path / host
        root.mkdir()
        daemons.append(Daemon(share_config(root, share, session_models, journal=url, host=host,
                                           transfer={"iterations": 4, "log_every": 4})))
    try:
        for d in daemons:
            d.start()
        names = [f"p{n}" for n in range(4)]
        for n, name in enumerate(names):
            (server.share / "inbox" / f"{name}.jpg").write_bytes(photo_bytes(32, 32, 30 + n))
        wait_for(lambda: done(share, names), 180, "every photo")
        wait_for(lambda: len(files(share / "processed")) == 4, 60, "every photo moved out")
        for d in daemons:
            d.terminate()  # both wind down side by side
        for d in daemons:
            assert d.stop() == 0
    finally:
        for d in daemons:
            if d.alive():
                d.kill()
    for d in daemons:
        audit(share, names, d)
    published = [e["output"] for d in daemons for e in d.events() if e.get("event") == "done"]
    assert sorted(published) == sorted(set(published)) and len(published) == 8  # each once, by either host


def test_the_daemon_on_an_sftp_mount_survives_its_server_going(tmp_path, session_models, sftp):
    server, mount = sftp
    share = mount.path
    d = Daemon(share_config(tmp_path, share, session_models, transfer={"iterations": 4, "log_every": 4}))
    try:
        d.start()
        (server.share / "inbox" / "a.jpg").write_bytes(photo_bytes(32, 32, 11))  # another client's write
        wait_for(lambda: done(share, ["a"]), 120, "a")
        server.stop()
        d.wait_log("paused", timeout=60)
        server.start()
        d.wait_log("resumed", timeout=60)
        slow_copy(share / "inbox" / "b.jpg", photo_bytes(32, 32, 12), pause=0.3)
        wait_for(lambda: done(share, ["a", "b"]), 120, "b after the server came back")
        wait_for(lambda: len(files(share / "processed")) == 2, 60, "inputs moved out")
        assert d.stop() == 0
    finally:
        if d.alive():
            d.kill()
    events = audit(share, ["a", "b"], d)
    kinds = [e.get("event") for e in events]
    assert kinds.count("paused") == 1 and kinds.count("resumed") == 1
