"""Real network shares for the tests: an SMB share served by Debian's `samba` and mounted
through FUSE with `smbnetfs`, and an SFTP folder served by Debian's `openssh-server` and
mounted with `sshfs`. Each server runs from a temporary folder on loopback and can be
stopped and started under a mounted client, as a NAS that reboots would be.

smbnetfs reaches Samba only on port 445, so one SMB server runs at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

SMB_SHARE = "photos"


def _need(binary: str, package: str) -> str:
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if not found:
        raise RuntimeError(f"{binary} is not installed: install Debian's {package} (make test does, with "
                           f"apt-get install --no-install-recommends {package})")
    return found


def _wait_port(port: int, up: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            listening = s.connect_ex(("127.0.0.1", port)) == 0
        if listening == up:
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} still {'closed' if up else 'open'} after {timeout} s")


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (a connection's server may have left its group)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A server process that can be stopped and started again on the same folder."""

    port: int
    proc: subprocess.Popen | None = None
    own_session = True  # smbd makes its own (setsid), and fails if it leads one already

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is taken (a server another run left behind?)")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "server.log", "ab"),
                                     start_new_session=self.own_session)
        _wait_port(self.port, True)
        return self

    def stop(self) -> None:
        """The server gone, as a NAS that reboots or loses its network: its clients' calls fail."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in [self.proc.pid] + _descendants(self.proc.pid):  # each child serves a connection
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        _wait_port(self.port, False)


class SambaServer(_Server):
    own_session = False

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="nstd-smb-"))
        self.share = self.root / "share"
        self.share.mkdir()
        self.share.chmod(0o777)
        self.port = 445
        for d in ("private", "lock", "state", "cache", "pid", "log"):
            (self.root / d).mkdir()
        r = self.root
        (r / "smb.conf").write_text(f"""[global]
  interfaces = lo
  bind interfaces only = yes
  smb ports = 445
  disable netbios = yes
  server role = standalone server
  private dir = {r}/private
  lock directory = {r}/lock
  state directory = {r}/state
  cache directory = {r}/cache
  pid directory = {r}/pid
  ncalrpc dir = {r}/state/ncalrpc
  log file = {r}/log/log.%m
  passdb backend = tdbsam:{r}/private/passdb.tdb
  map to guest = Bad User
  guest account = root
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
[{SMB_SHARE}]
  path = {self.share}
  read only = no
  guest ok = yes
  force user = root
""")

    def command(self) -> list[str]:
        return [_need("smbd", "samba"), "--foreground", "-s", str(self.root / "smb.conf")]

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class SftpServer(_Server):
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="nstd-sftp-"))
        self.share = self.root / "share"
        self.share.mkdir()
        self.port = _free_port()
        self.key = self.root / "client_key"
        for path in (self.root / "host_key", self.key):
            subprocess.run([_need("ssh-keygen", "openssh-client"), "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                           check=True)
        (self.root / "authorized_keys").write_text((self.root / "client_key.pub").read_text())
        (self.root / "sshd_config").write_text(f"""ListenAddress 127.0.0.1
Port {self.port}
HostKey {self.root}/host_key
AuthorizedKeysFile {self.root}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
PidFile {self.root}/sshd.pid
""")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder

    def command(self) -> list[str]:
        return [_need("sshd", "openssh-server"), "-D", "-e", "-f", str(self.root / "sshd_config")]

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Mount:
    """A FUSE client's mount point; `path` is where the share's files appear."""

    def __init__(self, point: Path):
        self.point = point
        self.point.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def mounted(self) -> bool:
        return os.path.ismount(self.point)

    def unmount(self) -> None:
        """The mount gone under the daemon, as an administrator's `fusermount -u` does."""
        if self.mounted():
            subprocess.run(["fusermount", "-u", "-z", str(self.point)], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while self.mounted() and time.monotonic() < deadline:
            time.sleep(0.05)


class SmbMount(Mount):
    def __init__(self, point: Path, server: SambaServer):
        super().__init__(point)
        self.home = server.root / "client"
        (self.home / ".smb").mkdir(parents=True, exist_ok=True)
        conf = self.home / ".smb" / "smbnetfs.conf"
        conf.write_text('auth "guest" ""\nhost 127.0.0.1 visible=true\n')
        conf.chmod(0o600)  # smbnetfs ignores a config others may read
        (self.home / ".smb" / "smb.conf").touch()
        self.path = point / "127.0.0.1" / SMB_SHARE

    def mount(self) -> "SmbMount":
        env = os.environ | {"HOME": str(self.home)}
        subprocess.run([_need("smbnetfs", "smbnetfs"), str(self.point)], env=env, check=True, capture_output=True)
        _until(lambda: self.mounted() and self.path.is_dir(), "the SMB share to appear under the mount")
        return self


class SshfsMount(Mount):
    def __init__(self, point: Path, server: SftpServer):
        super().__init__(point)
        self.server = server
        self.path = point

    def mount(self) -> "SshfsMount":
        s = self.server
        subprocess.run([_need("sshfs", "sshfs"), f"root@127.0.0.1:{s.share}", str(self.point), "-p", str(s.port),
                        "-o", f"IdentityFile={s.key},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
                              "reconnect,ServerAliveInterval=2,ServerAliveCountMax=2,LogLevel=ERROR,"
                              "dcache_timeout=1"],  # its default, 20 s, hides a new photo as long
                       check=True, capture_output=True)
        _until(self.mounted, "the SFTP mount")
        return self


@contextmanager
def served(server: _Server, mount_class, point: Path):
    """The server started and its share mounted at `point`; both taken down again
    whatever happens, so that no server is left holding its port for the next test."""
    server.start()
    try:
        mount = mount_class(point, server).mount()
        try:
            yield server, mount
        finally:
            mount.unmount()
    finally:
        server.close()


def _until(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")
