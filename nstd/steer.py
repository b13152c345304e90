"""The studio's commands over work in progress, from any host that shares the journal:
`nstd priority`, `nstd cancel`, `nstd pause` and `nstd resume`. They write rows; the
daemons act on them (see journal/controls.py)."""

from __future__ import annotations

import getpass
import socket
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

from nstd.errors import NstdError

EVERY = "all"  # --host all, --device all


def add(sub, add_config) -> None:
    p = sub.add_parser("priority", help="set the priority of photos still queued or running (higher first)")
    p.add_argument("name", metavar="NAME", help="a photo as the inbox named it (globs allowed)")
    p.add_argument("priority", type=int, metavar="N", help="a whole number; 0 is the default, higher runs first")
    add_config(p)
    p.set_defaults(func=cmd_priority)
    p = sub.add_parser("cancel", help="cancel photos still queued or running; they go to failed/ as cancelled")
    p.add_argument("names", nargs="+", metavar="NAME", help="photos as the inbox named them (globs allowed)")
    p.add_argument("--style", help="only this style's output of them")
    add_config(p)
    p.set_defaults(func=cmd_cancel)
    for verb, said in (("pause", "take no new batch (the running one finishes) until nstd resume"),
                       ("resume", "lift a pause")):
        p = sub.add_parser(verb, help=f"workers {said}")
        p.add_argument("--host", help=f"a host as its config names it, or '{EVERY}' (default: this config's host)")
        p.add_argument("--device", default=EVERY, help=f"a device such as cuda:0 or cpu (default: {EVERY})")
        add_config(p)
        p.set_defaults(func=cmd_pause if verb == "pause" else cmd_resume)


def who() -> str:
    """user@host, as the journal records who cancelled or paused."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _journal(config: Path):
    from nstd import config as configuration
    from nstd.daemon.journal import Journal

    cfg = configuration.load(config)
    if not cfg.journal and not cfg.journal_target.exists():
        raise NstdError(f"no journal at {cfg.journal_target}; has the daemon run with this config?")
    return cfg, Journal(cfg.journal_target)


def cmd_priority(args) -> int:
    from nstd.daemon.journal.records import WAITING

    cfg, journal = _journal(args.config)
    try:
        found = {name: [j for j in jobs if j.state in WAITING] for name, jobs in journal.photos([args.name]).items()}
        jobs = [j.id for photo_jobs in found.values() for j in photo_jobs]
        if not jobs:
            raise NstdError(f"{args.name}: no photo of that name is queued or running")
        journal.set_priority(jobs, args.priority)
    finally:
        journal.close()
    for name, photo_jobs in found.items():
        if photo_jobs:
            print(f"{name}: priority {args.priority} ({len(photo_jobs)} job(s))")
    return 0


def cmd_cancel(args) -> int:
    cfg, journal = _journal(args.config)
    try:
        found = journal.photos(args.names, args.style)
        said = [_cancel(journal, name, jobs) for name, jobs in found.items()]
    finally:
        journal.close()
    unknown = [n for n in args.names if not any(fnmatch(name, n) for name in found)]
    for name in unknown:
        print(f"nstd: {name}: no photo of that name in the journal", file=sys.stderr)
    return 0 if all(said) and not unknown else 1


def _cancel(journal, name: str, jobs: list) -> bool:
    """One photo's jobs cancelled, and said; False where nothing could be."""
    from nstd.daemon.journal import State

    waiting = [j for j in jobs if j.state in (State.QUEUED, State.RUNNING)]
    if waiting:
        journal.cancel([j.id for j in waiting], who(), time.time())
        running = sum(j.state is State.RUNNING for j in waiting)
        print(f"{name}: cancelled {len(waiting)} job(s)" +
              (f"; {running} running leave their batch within seconds" if running else ""))
        return True
    if any(j.state is State.CANCELLED for j in jobs):
        print(f"{name}: already cancelled")
        return True
    print(f"nstd: {name}: nothing to cancel: its jobs are through", file=sys.stderr)
    return False


def _side(value: str | None, default: str) -> str:
    from nstd.daemon.journal import ANY

    value = default if value is None else value
    return ANY if value == EVERY else value


def cmd_pause(args) -> int:
    cfg, journal = _journal(args.config)
    host, device = _side(args.host, cfg.host), _side(args.device, EVERY)
    try:
        journal.pause(host, device, who(), time.time())
    finally:
        journal.close()
    print(f"paused: {_named(host, device)}; a running batch finishes, then nothing new until nstd resume")
    return 0


def cmd_resume(args) -> int:
    from nstd.daemon.journal import ANY

    cfg, journal = _journal(args.config)
    host, device = _side(args.host, cfg.host), _side(args.device, EVERY)
    try:
        lifted = journal.resume(host, device)
        # A pause of every host (or device) is not lifted by resuming one.
        still = [p for p in journal.pauses() if p.host in (ANY, host) and p.device in (ANY, device)]
    finally:
        journal.close()
    print(f"resumed: {_named(host, device)} ({lifted} pause(s) lifted)" if lifted else
          f"nothing was paused for {_named(host, device)}")
    for p in still:
        print(f"nstd: still paused by the pause of {_named(p.host, p.device)} (nstd resume --host "
              f"{EVERY if p.host == ANY else p.host} --device {EVERY if p.device == ANY else p.device})",
              file=sys.stderr)
    return 0


def _named(host: str, device: str) -> str:
    return ("every host" if host == "*" else f"host {host}") + (", every device" if device == "*" else f", {device}")

