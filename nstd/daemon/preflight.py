"""Checks before the daemon starts; `nstd check` prints the same findings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nstd.config import Config
from nstd.daemon.inbox import choose_mode, is_network_fs, mount_fs_type, settle_seconds


@dataclass(frozen=True)
class Finding:
    ok: bool
    text: str


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def folders(cfg: Config) -> list[Finding]:
    out = []
    named = {"inbox": cfg.inbox, "outbox": cfg.outbox, "failed": cfg.failed, "processed": cfg.processed,
             "state_dir": cfg.state_dir}
    for key, path in named.items():
        if not path.exists():
            out.append(Finding(False, f"{key}: {path} does not exist (create it: mkdir -p {path})"))
        elif not path.is_dir():
            out.append(Finding(False, f"{key}: {path} is not a folder"))
        elif not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            out.append(Finding(False, f"{key}: {path} is not writable by this user"))
        else:
            out.append(Finding(True, f"{key}: {path}"))
    for key in ("outbox", "failed", "processed", "state_dir"):
        if _inside(named[key], cfg.inbox):
            out.append(Finding(False, f"{key}: {named[key]} is inside the inbox; it would be read as input"))
        if _inside(cfg.inbox, named[key]):
            out.append(Finding(False, f"inbox: {cfg.inbox} is inside {key} {named[key]}"))
    if cfg.state_dir.exists():
        fs = mount_fs_type(cfg.state_dir)
        if is_network_fs(fs):
            out.append(Finding(False, f"state_dir: {cfg.state_dir} is on {fs}; the journal needs a local "
                                      "disk (SQLite locking is unreliable on network filesystems)"))
    return out


def watch_plan(cfg: Config) -> Finding:
    mode, fs = choose_mode(cfg.watch.mode, cfg.inbox)
    why = f"{fs or 'unknown'} filesystem" + (", auto" if cfg.watch.mode == "auto" else ", configured")
    settle = settle_seconds(cfg.watch.settle_seconds, cfg.inbox)
    return Finding(True, f"watch: {mode} ({why}); settle {settle:g} s, full rescan every "
                         f"{cfg.watch.rescan_interval:g} s")
