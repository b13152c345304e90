"""One daemon per journal and per inbox.

The state folder is locked with flock: a second `nstd run` on the same config is
refused at once, naming the first one's pid. An inbox is claimed with a small file in
it (`.nstd-daemon.json`: host, pid, state folder), refreshed by the health loop: a
daemon with another state folder but the same inbox would take in the same photos
into a second journal, so it is refused while the claim is fresh.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from nstd.errors import ConfigError
from nstd.fsutil import atomic_write_json

LOCK_NAME = "nstd.lock"
CLAIM_NAME = ".nstd-daemon.json"
CLAIM_FRESH_SECONDS = 120.0  # a claim not refreshed for this long belongs to a dead daemon


class StateLock:
    def __init__(self, state_dir: Path):
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the daemon that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"state_dir: another nstd ({holder}) is running on {self.path.parent}; "
                              f"stop it first (systemctl stop nstd)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def holder(self) -> str | None:
        """Who holds the lock now, or None (for `nstd check`)."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


@dataclass(frozen=True)
class InboxClaim:
    inbox: Path
    state_dir: Path

    @property
    def path(self) -> Path:
        return self.inbox / CLAIM_NAME

    def other(self, now: float) -> str | None:
        """A fresh claim of this inbox by a daemon with another state folder, described."""
        try:
            st = os.lstat(self.path)
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if now - st.st_mtime > CLAIM_FRESH_SECONDS or data.get("state_dir") == str(self.state_dir):
            return None
        if data.get("host") == socket.gethostname() and not _alive(data.get("pid")):
            return None
        return f"pid {data.get('pid')} on {data.get('host')}, state_dir {data.get('state_dir')}"

    def take(self, now: float) -> None:
        """Claim the inbox, or raise ConfigError if another daemon has it."""
        other = self.other(now)
        if other:
            raise ConfigError(f"inbox: another nstd ({other}) watches {self.inbox}; one inbox takes one "
                              f"daemon with one journal (several hosts need the shared PostgreSQL journal)")
        self.refresh()

    def refresh(self) -> None:
        atomic_write_json(self.path, {"host": socket.gethostname(), "pid": os.getpid(),
                                      "state_dir": str(self.state_dir), "refreshed": time.time()})

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True
