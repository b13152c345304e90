"""Finding files in the inbox: events as hints, scans as the truth, settling, routing."""

from __future__ import annotations

import fnmatch
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from nstd.fsutil import SHARE_ERRNOS
from nstd.log import get

log = get("nstd.inbox")

# Names written by copy tools, sync clients, browsers and file managers while they work,
# or as their own bookkeeping; hidden names (rsync's .name.XXXXXX, ._*, .DS_Store) too.
DEFAULT_IGNORE_FILES = ("*.part", "*.partial", "*.crdownload", "*.filepart", "*.tmp", "~$*",
                        "Thumbs.db", "desktop.ini", "*.nstd.yaml", "*.error.json")
DEFAULT_IGNORE_DIRS = ("@eaDir", ".stfolder", "#recycle")
# Filesystems where another machine's writes raise no local events.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
              "davfs", "virtiofs", "vboxsf", "vmhgfs")


@dataclass(frozen=True)
class IgnoreRules:
    extensions: tuple[str, ...]
    patterns: tuple[str, ...] = ()

    def ignored(self, relpath: str) -> bool:
        parts = PurePosixPath(relpath).parts
        if any(p.startswith(".") for p in parts) or any(p in DEFAULT_IGNORE_DIRS for p in parts[:-1]):
            return True
        name = parts[-1]
        lower = name.lower()
        if any(fnmatch.fnmatch(lower, pat.lower()) for pat in DEFAULT_IGNORE_FILES):
            return True
        if any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(relpath, pat) for pat in self.patterns):
            return True
        return os.path.splitext(lower)[1] not in self.extensions

    def ignored_dir(self, name: str) -> bool:
        return name.startswith(".") or name in DEFAULT_IGNORE_DIRS


def mount_fs_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The filesystem type of the mount holding `path`, from the longest matching mount point."""
    return mount_of(path, mounts(mountinfo))[1]


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount: read once, for as many paths as asked."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            out.append((fields[4].replace("\\040", " "), right.split()[0]))
    return out


def mount_of(path: Path, table: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(mount point, filesystem type) of the mount in `table` (see mounts) holding `path`."""
    target = os.path.realpath(path)  # a link to a share is on the share
    best, best_type = None, None
    for point, fs in table:
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best or ""):
            best, best_type = point, fs
    return best, best_type


LOCAL_SETTLE_SECONDS = 5.0
# Shares report sizes and mtimes late and coarsely (SMB servers round mtimes to 1-2 s).
NETWORK_SETTLE_SECONDS = 15.0


def is_network_fs(fs: str | None) -> bool:
    return bool(fs) and (fs in NETWORK_FS or fs.startswith("fuse"))


def settle_seconds(configured: float | None, path: Path) -> float:
    if configured is not None:
        return configured
    return NETWORK_SETTLE_SECONDS if is_network_fs(mount_fs_type(path)) else LOCAL_SETTLE_SECONDS


def choose_mode(mode: str, path: Path) -> tuple[str, str | None]:
    """'native' or 'polling' for a watch root, and the filesystem type that decided it."""
    fs = mount_fs_type(path)
    if mode != "auto":
        return mode, fs
    if is_network_fs(fs):
        return "polling", fs
    return "native", fs


class Hints:
    """Paths that events suggest looking at; a thread-safe set, drained by the main loop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self.event = threading.Event()

    def add(self, path: str) -> None:
        with self._lock:
            self._paths.add(path)
        self.event.set()

    def drain(self) -> set[str]:
        with self._lock:
            out, self._paths = self._paths, set()
        self.event.clear()
        return out


class _Handler(FileSystemEventHandler):
    def __init__(self, hints: Hints, root: Path):
        self.hints, self.root = hints, os.fsencode(str(root))
        # The watched folder itself went (a share unmounted, the folder replaced): a new one
        # may reuse its inode number, so this is the surer sign that the watch is dead.
        self.root_gone = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        # An exception here would stop watchdog's dispatch thread for good.
        try:
            if event.event_type in ("deleted", "moved") and os.fsencode(event.src_path) == self.root:
                self.root_gone.set()
            if event.is_directory and event.event_type not in ("moved", "created"):
                return
            if event.event_type in ("created", "modified", "closed", "moved"):
                path = getattr(event, "dest_path", "") or event.src_path
                self.hints.add(os.fsdecode(path))
        except Exception:  # noqa: BLE001
            pass


class Watcher:
    """A watchdog observer on the inbox that can be checked and restarted."""

    def __init__(self, root: Path, mode: str, poll_interval: float, hints: Hints):
        self.root, self.mode, self.poll_interval, self.hints = root, mode, poll_interval, hints
        self._observer = None
        self._root_id: tuple[int, int] | None = None

    def start(self) -> None:
        obs = PollingObserver(timeout=self.poll_interval) if self.mode == "polling" else Observer()
        self._handler = _Handler(self.hints, self.root)
        obs.schedule(self._handler, str(self.root), recursive=True)
        obs.daemon = True
        obs.start()
        self._observer = obs
        self._root_id = _dir_id(self.root)

    def stop(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except Exception:  # noqa: BLE001 - a dead emitter may fail to stop
                pass
            self._observer = None

    def healthy(self) -> bool:
        """False when the observer or an emitter died, or the root was replaced or is gone."""
        obs = self._observer
        if obs is None or not obs.is_alive() or self._handler.root_gone.is_set():
            return False
        if not all(e.is_alive() for e in list(obs.emitters)):
            return False
        return _dir_id(self.root) == self._root_id and self._root_id is not None

    def restart(self) -> bool:
        self.stop()
        if not self.root.is_dir():
            return False
        try:
            self.start()
        except OSError as e:
            log.warning("watch_restart_failed", root=str(self.root), error=str(e))
            self._observer = None
            return False
        return True


def _dir_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def scan(root: Path, rules: IgnoreRules) -> list[str]:
    """Every candidate file under root, as relative POSIX paths; no symlinks followed."""
    found: list[str] = []

    def onerror(err: OSError) -> None:
        if err.errno in SHARE_ERRNOS:
            raise err  # the share went away: the scan ends, and nothing it missed is taken for gone
        log.warning("scan_error", path=getattr(err, "filename", None), error=err.strerror)

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        dirnames[:] = [d for d in dirnames if not rules.ignored_dir(d)]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            rel = rel.replace(os.sep, "/")
            if not rules.ignored(rel):
                found.append(rel)
    return found


def relative(root: Path, path: str) -> str | None:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return None
    if rel.startswith("..") or rel == ".":
        return None
    return rel.replace(os.sep, "/")


@dataclass
class _Seen:
    key: tuple[int, int, int]
    since: float


class SettleTracker:
    """A file is ready once its size, mtime_ns and inode have held still for `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._seen: dict[str, _Seen] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def watch(self, relpath: str) -> None:
        self._seen.setdefault(relpath, _Seen((-1, -1, -1), float("inf")))

    def poll(self, root: Path, now: float) -> list[tuple[str, tuple[int, int, int]]]:
        """Stat every watched file; return those that have settled, with their stat key."""
        ready = []
        for rel, seen in list(self._seen.items()):
            try:
                st = os.lstat(root / rel)
            except OSError:
                del self._seen[rel]  # gone before it settled: nothing to do
                continue
            if not stat.S_ISREG(st.st_mode):
                ready.append((rel, (-1, -1, -1)))  # a FIFO, socket or symlink: refused at intake
                del self._seen[rel]
                continue
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
            if key != seen.key:
                self._seen[rel] = _Seen(key, now)
            elif now - seen.since >= self.seconds:
                ready.append((rel, key))
                del self._seen[rel]
        return ready


@dataclass(frozen=True)
class Route:
    styles: tuple[str, ...]
    subpath: str  # the path below the style folder, which names the output
    error: str | None = None


def route(relpath: str, style_names: list[str]) -> Route:
    """inbox/<file> gets every style; inbox/<style>/<file> gets that style only."""
    parts = PurePosixPath(relpath).parts
    if len(parts) == 1:
        return Route(tuple(style_names), relpath)
    if parts[0] in style_names:
        return Route((parts[0],), "/".join(parts[1:]))
    known = ", ".join(style_names)
    return Route((), relpath, f"folder '{parts[0]}' names no style (known styles: {known})")
