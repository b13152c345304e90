"""A throwaway PostgreSQL server from Debian's `postgresql` package, for the tests.

It listens on a Unix socket in its own folder only, so tests never meet another server.
As root it runs as the package's `postgres` user: the server refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: install Debian's postgresql "
                           "(make test does: apt-get install --no-install-recommends postgresql)")
    return found[-1]


class PostgresServer:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="nstd-pg-"))
        self.data = self.root / "data"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.proc: subprocess.Popen | None = None

    def _as_server_user(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def start(self) -> "PostgresServer":
        subprocess.run(self._as_server_user([_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                                             "--no-sync", "-E", "UTF8"]),
                       check=True, capture_output=True)
        return self.resume()

    def pause(self) -> None:
        """Stop the server, keeping its data: a database restart or an outage. Fast
        shutdown (SIGINT to the postmaster itself: runuser would not wait for a smart one)
        ends the clients' sessions, as a real restart does."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)
        except (OSError, ValueError, IndexError):
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def resume(self) -> "PostgresServer":
        """Start the server on its data (again)."""
        # fsync off: a test server's data need not survive a power cut, and it is 10x faster.
        self.proc = subprocess.Popen(self._as_server_user(
            [_bin("postgres"), "-D", str(self.data), "-k", str(self.root), "-c", "listen_addresses=",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"]),
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "wb"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = subprocess.run([_bin("pg_isready"), "-h", str(self.root), "-U", self.user, "-q"])
            if ready.returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.root}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        self.pause()
        shutil.rmtree(self.root, ignore_errors=True)
