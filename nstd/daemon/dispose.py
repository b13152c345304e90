"""Moving inputs out of the inbox once their fate is known: processed/, failed/ or deleted."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path, PurePosixPath

from nstd import faults, losslog, masks
from nstd.daemon.sidecar import PHOTO_SUFFIX
from nstd.fsutil import (atomic_write_json, contained, contained_name, fit_name, fsync_dir, make_folders, printable,
                         raise_if_folder_gone, sha256_file)


MOVE_SUFFIX = ".nstd.tmp"  # a cross-filesystem move in progress
ERROR_SUFFIX = ".error.json"


def stray_moves(folder: Path) -> list[Path]:
    """Half-copied files an interrupted cross-filesystem move left behind."""
    return [p for p in folder.rglob(f".*{MOVE_SUFFIX}") if p.is_file()] if folder.is_dir() else []


def free_name(folder: Path, relpath: str) -> Path:
    """folder/relpath, or with -1, -2 … before the suffix if that name is taken; a name
    with no room left for that is shortened (fsutil.fit_name)."""
    target = contained_name(folder, relpath)
    n = 1
    while os.path.lexists(target):
        stem, ext = os.path.splitext(target.name if n == 1 else os.path.basename(relpath))
        target = contained_name(folder, str(PurePosixPath(relpath).parent / fit_name(f"{stem}-{n}{ext}")))
        n += 1
    return target


def finished_before(src: Path, folder: Path, relpath: str, sha256: str | None) -> Path | None:
    """The copy an interrupted cross-filesystem move already completed (same name, same
    bytes), after removing the original it left behind; None when there is none."""
    if not sha256:
        return None
    done = contained_name(folder, relpath)
    try:
        if os.path.islink(done) or not os.path.isfile(done) or sha256_file(done) != sha256:
            return None
    except OSError:
        return None
    os.unlink(src)
    return done


def durable_move(src: Path, dst: Path) -> None:
    """Rename when on one filesystem; otherwise copy, fsync, and only then unlink. A folder
    of either end that went meanwhile (a share's mount) is the share's trouble: FolderGone."""
    try:
        _move(src, dst)
    except FileNotFoundError as e:
        raise_if_folder_gone(e, src.parent, dst.parent)
        raise


def _move(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
        faults.point("mid_move")  # moved, but neither the folder fsynced nor the journal told
    except OSError as e:
        if e.errno != 18:  # EXDEV: another filesystem (a share and a local disk)
            raise
        tmp = dst.with_name(f".{fit_name(dst.name, 1 + len(MOVE_SUFFIX))}{MOVE_SUFFIX}")
        if os.path.islink(src):
            os.symlink(os.readlink(src), tmp)
        else:
            shutil.copy2(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
        faults.point("mid_move")  # copied, the original not yet removed
        os.unlink(src)
    fsync_dir(dst.parent)


def to_failed(inbox: Path, failed: Path, relpath: str, reason: str, sha256: str | None,
              attempts: int = 0, moved_from: Path | None = None, finishing: bool = False) -> Path | None:
    """Move an input to failed/ beside `<name>.error.json`. Returns the new path, if moved.
    `finishing`: this input's own disposal, perhaps begun before a crash (not a re-drop)."""
    src = moved_from or inbox / relpath
    if finishing and os.path.lexists(src) and finished_before(src, failed, relpath, sha256):
        return contained_name(failed, relpath)
    target = free_name(failed, relpath)
    record = {"input": printable(relpath), "file": printable(target.name), "reason": reason,
              "attempts": attempts, "sha256": sha256,
              "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "versions": losslog.versions()}
    make_folders(failed, target.parent)
    atomic_write_json(error_record(target), record)
    if os.path.lexists(src):
        durable_move(src, target)
        if moved_from is None:
            _take_sidecar(inbox, relpath, target, "move")
        return target
    return None


def _take_sidecar(inbox: Path, relpath: str, moved_to: Path | None, mode: str) -> None:
    """A photo's own sidecar and masks follow it; folder sidecars and the masks they name
    stay for the folder's next photos."""
    if mode == "keep":
        return
    own = [relpath + PHOTO_SUFFIX] + [m for kind in masks.KINDS for m in masks.own_names(relpath, kind)]
    for rel in own:
        side = inbox / rel
        if not os.path.isfile(side) or os.path.islink(side):
            continue
        if mode == "delete" or moved_to is None:
            os.unlink(side)
        else:
            durable_move(side, moved_to.with_name(moved_to.name + rel[len(relpath):]))


def on_success(inbox: Path, processed: Path, relpath: str, mode: str, sha256: str | None = None) -> Path | None:
    """Dispose of a done input. `sha256`, given when finishing this input's own disposal,
    lets a move that a crash interrupted be completed rather than done twice."""
    src = inbox / relpath
    if not os.path.lexists(src):
        return None
    if mode == "keep":
        return src
    if mode == "delete":
        os.unlink(src)
        _take_sidecar(inbox, relpath, None, mode)
        return None
    done = finished_before(src, processed, relpath, sha256)
    if done is not None:
        return done
    target = free_name(processed, relpath)
    make_folders(processed, target.parent)
    durable_move(src, target)
    _take_sidecar(inbox, relpath, target, mode)
    return target



def error_record(target: Path) -> Path:
    """Where the reason for a failed input is written: beside it, `<name>.error.json`."""
    return target.with_name(fit_name(target.name, len(ERROR_SUFFIX)) + ERROR_SUFFIX)


def failed_records(failed: Path) -> list[tuple[Path, dict]]:
    """Each input in failed/ with its error record, oldest name first."""
    out = []
    for record_path in sorted(failed.rglob(f"*{ERROR_SUFFIX}")) if failed.is_dir() else []:
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        source = record_path.with_name(record.get("file") or record_path.name.removesuffix(ERROR_SUFFIX))
        if not os.path.lexists(source):  # a record from before "file", or a name shown escaped
            source = record_path.with_name(record_path.name.removesuffix(ERROR_SUFFIX))
        if os.path.lexists(source):
            out.append((source, record))
    return out


def back_to_inbox(inbox: Path, source: Path, record: dict) -> Path:
    """Move a failed input back to its place in the inbox, where it is taken in again as
    if dropped anew; its error record goes. Raises FileExistsError if the name is taken."""
    target = contained(inbox, record["input"])
    if os.path.lexists(target):
        raise FileExistsError(f"{target} is there already")
    make_folders(inbox, target.parent)
    durable_move(source, target)
    error_record(source).unlink(missing_ok=True)
    return target
