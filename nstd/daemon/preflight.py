"""Checks before the daemon starts: its folders, how the inbox is watched, the journal,
and whether a daemon already runs on this config or another has its inbox. `nstd
check` prints the same findings (see checks.py for the rest of what it finds)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from nstd.config import Config
from nstd.daemon.database import redact
from nstd.daemon.inbox import choose_mode, is_network_fs, mount_fs_type, settle_seconds
from nstd.daemon.lock import InboxClaim, StateLock
from nstd.errors import NstdError

MAX_CLOCK_SKEW = 5.0  # seconds this host's clock may be off a shared journal's server


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


def journal(cfg: Config) -> Finding:
    """The journal: a SQLite file intact (or not made yet), or a shared database reachable."""
    from nstd.daemon.journal import Journal

    if cfg.journal:
        return shared_journal(cfg)
    db = cfg.journal_target
    if not db.exists() or db.stat().st_size == 0:
        return Finding(True, f"journal: {db} (new: none yet)")
    try:
        Journal(db, readonly=True).close()
    except NstdError as e:
        return Finding(False, f"journal: {e}")
    return Finding(True, f"journal: {db} (intact)")


def shared_journal(cfg: Config) -> Finding:
    """A PostgreSQL journal: reachable, its schema's version, and this host's clock
    against the server's (leases are times written by one host and read by others)."""
    from nstd.daemon.journal import SCHEMA_VERSION, Journal

    label = redact(cfg.journal)
    try:
        journal = Journal(cfg.journal, readonly=True)
    except NstdError as e:
        return Finding(False, f"journal: {e}")
    try:
        version = journal.schema_version()
        before = time.time()
        server = journal.server_time()
        skew = server - (before + time.time()) / 2
    finally:
        journal.close()
    if version is not None and version > SCHEMA_VERSION:
        return Finding(False, f"journal: {label} has schema version {version}, newer than this "
                              f"nstd's {SCHEMA_VERSION}; upgrade nstd on this host")
    if abs(skew) > MAX_CLOCK_SKEW:
        return Finding(False, f"journal: this host's clock is {skew:+.1f} s off the database "
                              f"server's; leases need clocks within a few seconds (run NTP)")
    schema = "no tables yet: nstd run makes them" if version is None else f"schema {version}"
    return Finding(True, f"journal: {label} ({schema}, clock within {abs(skew):.2f} s of the server's)")


def daemon(cfg: Config) -> list[Finding]:
    """Whether a daemon runs on this config, and whether another one has the inbox."""
    out = []
    holder = StateLock(cfg.state_dir).holder() if cfg.state_dir.is_dir() else None
    if holder:
        out.append(Finding(True, f"daemon: running on this state_dir ({holder})"))
    other = InboxClaim(cfg.inbox, cfg.state_dir.resolve()).other(time.time()) if cfg.inbox.is_dir() else None
    if other:
        out.append(Finding(False, f"inbox: another nstd ({other}) watches {cfg.inbox}; "
                                  f"a second daemon on it would take the same photos in again"))
    return out
