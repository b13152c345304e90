"""Durable file writes: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path

# What a share's client answers while its server or network is away: the share's
# trouble, never a file's, so no attempt is spent and nothing is failed for it.
SHARE_ERRNOS = frozenset({errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.EBUSY, errno.ETIMEDOUT,
                          errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH,
                          errno.ECONNABORTED, errno.ECONNRESET, errno.ECONNREFUSED, errno.ENODEV})


class FolderGone(FileNotFoundError):
    """A configured folder is not there: a share's mount that went, leaving its mount point."""

    @classmethod
    def at(cls, folder: Path) -> "FolderGone":
        return cls(errno.ENOENT, "not there (its share unmounted?)", str(folder))


def raise_if_folder_gone(error: BaseException, *folders: Path) -> None:
    """A file that was not found where one of `folders` is no longer there either: the
    share's mount went meanwhile, the share's trouble and not the file's (FolderGone)."""
    if isinstance(error, FileNotFoundError):
        for folder in folders:
            if not folder.is_dir():
                raise FolderGone.at(folder) from error


def is_share_error(e: BaseException) -> bool:
    return isinstance(e, FolderGone) or (isinstance(e, OSError) and e.errno in SHARE_ERRNOS)


# Temporary names carry their writer, `@host@pid`, so that on folders several hosts share,
# each host clears only what its own dead processes left half-written.
# smbnetfs lists an "@" as "%40" (it URL-encodes names), and takes either back.
WRITER = re.compile(r"\.(?:@|%40)(?P<host>[A-Za-z0-9-]{1,32})(?:@|%40)(?P<pid>\d+)\.")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode() -> int:
    """The mode a plain new file gets under this process's umask (0644 under 022)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux says it in /proc; setting and restoring it would change it for every
    # thread for a moment.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


NAME_MAX = 255  # bytes in one file name, on every filesystem nstd meets


def fit_name(name: str, room: int = 0) -> str:
    """`name`, or a stable shorter form, so that `room` more bytes still fit in NAME_MAX.

    The shorter form keeps the start of the name and its extension, with a hash of the
    whole name between them: the same name always gives the same short one."""
    raw = os.fsencode(name)
    if len(raw) + room <= NAME_MAX:
        return name
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > 16:
        stem, ext = name, ""
    tag = "~" + hashlib.sha256(raw).hexdigest()[:8]
    keep = NAME_MAX - room - len(tag) - len(os.fsencode(ext))
    # Cut on a character boundary: half a UTF-8 character would make the name unreadable.
    head = os.fsencode(stem)[:max(1, keep)].decode("utf-8", "ignore")
    return head + tag + ext


def host_tag(host: str | None = None) -> str:
    """A host name as temporary names carry it."""
    return re.sub(r"[^A-Za-z0-9-]", "-", host or socket.gethostname())[:32] or "-"


def own_litter(folder: Path) -> list[Path]:
    """Temporary files below `folder` that this process began and could not remove: a
    write a share's outage cut short, whose clean-up failed for the same reason. Call it
    only where this process is not writing there at the same time."""
    try:
        return [p for p in folder.rglob(".*.tmp") if is_own(p)]
    except OSError:
        return []


def clear_own_litter(folder: Path) -> bool:
    """Remove what `own_litter` finds; whether the folder could be listed and cleared
    (False while its share is still away: try again later)."""
    try:
        found = [p for p in folder.rglob(".*.tmp") if is_own(p)]
        for path in found:
            path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def is_own(path: Path) -> bool:
    """Whether a temporary file's name says this process wrote it."""
    found = WRITER.search(path.name)
    return found is not None and (found["host"], found["pid"]) == (host_tag(), str(os.getpid()))


def left_by_dead_writer(path: Path, host: str | None = None) -> bool:
    """Whether a temporary file was written by a process of `host` (this one by default)
    that is no longer running: the litter of a crash, not another writer's work."""
    found = WRITER.search(path.name)
    if found is None or found["host"] != host_tag(host):
        return False
    try:
        os.kill(int(found["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


def make_folders(root: Path, folder: Path) -> None:
    """`folder` and the folders between it and `root`, but never `root` itself: a
    configured folder that is not there is a share whose mount went, and making it would
    put files on the disk below the empty mount point, where nobody looks."""
    if not root.is_dir():
        raise FolderGone.at(root)
    path = root
    for part in folder.relative_to(root).parts:  # one level at a time: if root goes meanwhile,
        path = path / part                       # the next level fails rather than re-make it
        try:
            path.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise FolderGone.at(root) from None


def atomic_write(path: Path, data: bytes) -> None:
    """Either the old file or the complete new one is visible, never a partial one.

    The file ends with the mode the umask gives, as any new file would: the temporary
    file is private while it is written, and a studio's group must read the results.

    Its folder must be there (make_folders): a folder that is not is a share whose mount
    went, and is never re-made here, where files would land under the empty mount point."""
    # A short temporary name: the final one may already be close to NAME_MAX.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{fit_name(path.name, 40)[:40]}.@{host_tag()}@{os.getpid()}.",
                                   suffix=".tmp")
    except FileNotFoundError:
        raise FolderGone.at(path.parent) from None
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # The share's mount may go between the temporary file and its rename.
        raise_if_folder_gone(e, path.parent)
        raise


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def contained(root: Path, relpath: str) -> Path:
    """root/relpath, refusing any path that would land outside root, or on root itself."""
    target = (root / relpath).resolve()
    base = root.resolve()
    if base not in target.parents:
        raise ValueError(f"{relpath!r} would leave {root}")
    return root / relpath


def contained_name(root: Path, relpath: str) -> Path:
    """root/relpath for a file about to be made: its folder must lie inside root, while the
    name itself is not followed, so a link planted there is a name taken, not a way out."""
    path = root / relpath
    base, folder = root.resolve(), path.parent.resolve()
    if path.name in ("", ".", "..") or (folder != base and base not in folder.parents):
        raise ValueError(f"{relpath!r} would leave {root}")
    return path


def printable(name: str) -> str:
    """A file name as text that can be stored and shown: bytes that are not UTF-8 (held
    as surrogates by Python) become \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
