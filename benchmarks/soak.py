"""Soak harness: the real daemon under faults, then a full audit of what came out.

    python -m benchmarks.soak --photos 200 --kills 10      # the full run (minutes, CPU)
    python -m benchmarks.soak --photos 20 --kills 2        # what the test suite runs

Tiny model settings on the CPU; random VGG19 weights (the engine is not under test).
Faults, at random moments: SIGKILL and restart; the inbox swapped for a fresh folder
and its files moved back (as a share remount looks); the outbox filled to ENOSPC for a
while (a small tmpfs, where this machine allows mounting one); a file replaced while it
is being processed; a file deleted before it settles. Exit status 0 when nothing is lost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.audit import count_outputs, failed_reasons, missing_and_twice
from harness.daemon import STYLES, Daemon, photo_bytes, rss_kib, write_config
from harness.synthetic import models_dir
from nstd.daemon.lock import CLAIM_NAME


@dataclass
class Tally:
    versions: dict[str, set[str]] = field(default_factory=dict)  # name -> sha256s dropped
    kills: int = 0
    remounts: int = 0
    enospc_seconds: float = 0.0
    enospc_mode: str = "not tried"
    replaced: int = 0
    deleted_before_read: int = 0
    rss_kib: list[int] = field(default_factory=list)

    def drop(self, inbox: Path, name: str, data: bytes) -> None:
        tmp = inbox / f".{name}.part"
        tmp.write_bytes(data)
        os.rename(tmp, inbox / name)  # as rsync does: a hidden name, then a rename
        self.versions.setdefault(name, set()).add(hashlib.sha256(data).hexdigest())


def try_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def soak(work: Path, photos: int, kills: int, seed: int, log=print, size: int = 40, iterations: int = 20) -> dict:
    rng = random.Random(seed)
    tally = Tally()
    outbox_tmpfs = try_tmpfs(work / "outbox", "32m")
    try:
        return _soak(work, photos, kills, seed, rng, tally, outbox_tmpfs, size, iterations)
    finally:  # whatever happened, no mount is left behind (a failed run left one in /tmp)
        if outbox_tmpfs:
            subprocess.run(["umount", "-l", str(work / "outbox")], capture_output=True)


def _soak(work: Path, photos: int, kills: int, seed: int, rng: random.Random, tally: "Tally", outbox_tmpfs: bool,
          size: int, iterations: int) -> dict:
    cfg = write_config(work, models_dir(work), transfer={"iterations": iterations, "size": size,
                                                         "log_every": max(1, iterations // 2)},
                       watch={"settle_seconds": 0.4, "rescan_interval": 3},
                       worker={"max_attempts": 50, "retry_backoff": 0.5, "stop_timeout": 2})
    inbox = work / "inbox"
    daemon = Daemon(cfg).start()
    started = time.time()
    count = 0
    for action, arg in _plan(rng, photos, kills):
        tally.rss_kib.append(rss_kib(daemon.proc.pid))
        if action == "burst":
            for _ in range(arg):
                tally.drop(inbox, f"p{count:04d}.jpg", photo_bytes(40, 40 + 8 * (count % 3), seed * 100000 + count))
                count += 1
        elif action == "kill":
            time.sleep(rng.uniform(0.2, 2.0))
            daemon.kill()
            tally.kills += 1
            daemon = Daemon(cfg).start()
        elif action == "enospc" and not outbox_tmpfs:
            tally.enospc_mode = "skipped: this machine refuses to mount a tmpfs"
        else:
            FAULTS[action](work, tally, seed)
        time.sleep(rng.uniform(0.1, 1.0))

    deadline = time.time() + 60 + photos * 6
    while time.time() < deadline and not _quiet(work):
        tally.rss_kib.append(rss_kib(daemon.proc.pid))
        time.sleep(0.2)
    tally.rss_kib.append(rss_kib(daemon.proc.pid))
    rc = daemon.stop()
    report = audit(work, tally)
    report.update(seconds=round(time.time() - started, 1), exit_code=rc, photos=photos,
                  kills=tally.kills, remounts=tally.remounts, replaced=tally.replaced,
                  deleted_before_read=tally.deleted_before_read, enospc=tally.enospc_mode,
                  enospc_seconds=round(tally.enospc_seconds, 1),
                  rss_mib={"first": round(tally.rss_kib[0] / 1024, 1),
                           "max": round(max(tally.rss_kib) / 1024, 1),
                           "last": round(tally.rss_kib[-1] / 1024, 1)},
                  retries=_retries(work))
    return report


def _plan(rng: random.Random, photos: int, kills: int) -> list[tuple[str, int | None]]:
    """Bursts of photos, kills and one of each other fault, shuffled over the dropping phase."""
    bursts, left = [], photos
    while left:
        n = min(left, rng.randint(5, 25))
        bursts.append(n)
        left -= n
    plan = [("burst", n) for n in bursts] + [("kill", None)] * kills + \
           [("remount", None), ("enospc", None), ("replace", None), ("delete", None)]
    rng.shuffle(plan)
    return plan


def _remount(work: Path, tally: Tally, seed: int) -> None:
    """The inbox goes away for a second and comes back with the same files, as a share does."""
    inbox, gone = work / "inbox", work / "inbox-unmounted"
    os.rename(inbox, gone)
    time.sleep(1.0)
    inbox.mkdir()
    for p in gone.iterdir():
        os.rename(p, inbox / p.name)
    gone.rmdir()
    tally.remounts += 1


def _fill_disk(work: Path, tally: Tally, seed: int) -> None:
    """The outbox's tmpfs full while a photo is dropped, until the daemon has noticed."""
    filler = work / "outbox" / "filler.bin"
    retries_before = _retries(work)
    tally.drop(work / "inbox", "during-enospc.jpg", photo_bytes(40, 40, seed * 100000 + 88888))
    t0 = time.time()
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # unbuffered: no flush on close that could fail too
        while os.write(fd, b"\0" * (1 << 20)):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    # Hold the disk full until the daemon has noticed: a write put off, or work paused.
    until = time.time() + 20
    while time.time() < until and _retries(work) == retries_before:
        time.sleep(0.2)
    filler.unlink()
    tally.enospc_seconds += time.time() - t0
    tally.enospc_mode = "tmpfs outbox filled"


def _replace(work: Path, tally: Tally, seed: int) -> None:
    """A file overwritten while its jobs are running."""
    name = "replaced.jpg"
    tally.drop(work / "inbox", name, photo_bytes(40, 40, seed * 100000 + 99998))
    until = time.time() + 30
    while time.time() < until and _running_input(work) != name:
        time.sleep(0.05)
    tally.drop(work / "inbox", name, photo_bytes(40, 40, seed * 100000 + 99999))
    tally.replaced += 1


def _fleeting(work: Path, tally: Tally, seed: int) -> None:
    """A file deleted before the daemon could read it."""
    (work / "inbox" / "fleeting.jpg").write_bytes(photo_bytes(40, 40, 7))
    time.sleep(0.1)
    (work / "inbox" / "fleeting.jpg").unlink()
    tally.deleted_before_read += 1


FAULTS = {"remount": _remount, "enospc": _fill_disk, "replace": _replace, "delete": _fleeting}


def _running_input(work: Path) -> str | None:
    try:
        db = sqlite3.connect(f"file:{work / 'state' / 'journal.sqlite3'}?mode=ro", uri=True, timeout=5)
        rows = db.execute("SELECT relpath FROM jobs WHERE state = 'running'").fetchall()
        db.close()
    except sqlite3.Error:
        return None
    names = [r[0] for r in rows]
    return "replaced.jpg" if "replaced.jpg" in names else (names[0] if names else None)


def _quiet(work: Path) -> bool:
    inbox_empty = not any(p for p in (work / "inbox").rglob("*") if p.is_file() and p.name != CLAIM_NAME)
    try:
        db = sqlite3.connect(f"file:{work / 'state' / 'journal.sqlite3'}?mode=ro", uri=True, timeout=5)
        busy = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]
        db.close()
    except sqlite3.Error:
        return False
    return inbox_empty and busy == 0


def _retries(work: Path) -> int:
    """How often the daemon put work off for the outbox's sake (a deferred write or a pause)."""
    n = 0
    for line in (work / "daemon.log").read_text(errors="replace").splitlines():
        n += any(f'"{event}"' in line for event in ("retry_later", "output_deferred", "paused"))
    return n


def audit(work: Path, tally: Tally) -> dict:
    """Every dropped version has exactly one complete output per style, or a failed/ entry."""
    outputs, incomplete = count_outputs(work / "outbox", STYLES)
    failed = failed_reasons(work / "failed")
    versions = [(n, s) for n, shas in tally.versions.items() for s in shas]
    missing, duplicated = missing_and_twice([(f"{n} ({s[:8]})", s) for n, s in versions], outputs, failed, STYLES)
    stray = [str(p) for p in (work / "outbox").rglob(".*") if p != work / "outbox" / ".gallery"]
    final_names = set(tally.versions)
    kept = {p.name for p in (work / "processed").rglob("*") if p.is_file()} | \
           {p.name for p in (work / "failed").rglob("*") if p.is_file() and not p.name.endswith(".error.json")}
    lost = sorted(n for n in final_names if n not in kept)
    left = sorted(str(p.relative_to(work)) for p in (work / "inbox").rglob("*")
                  if p.is_file() and p.name != CLAIM_NAME)
    db = sqlite3.connect(work / "state" / "journal.sqlite3")
    done = db.execute("SELECT input_sha256, style, output FROM jobs WHERE state = 'done'").fetchall()
    states = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    db.close()
    disagree = [f"{sha[:8]} {style}: {out}" for sha, style, out in done
                if not (work / "outbox" / out).exists() or outputs.get((style, sha), 0) != 1]
    disagree += [f"{s[:8]} {st}: output without a done job" for (st, s) in outputs
                 if (s, st) not in {(d[0], d[1]) for d in done}]
    ok = not (missing or duplicated or stray or lost or left or incomplete or disagree)
    return {"ok": ok, "versions": len(versions), "outputs": sum(outputs.values()),
            "failed_inputs": len(failed), "missing": missing, "duplicated": duplicated,
            "partial_or_temp_in_outbox": stray, "incomplete_outputs": incomplete, "lost_inputs": lost,
            "left_in_inbox": left, "journal_disagrees": disagree, "journal_states": states}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nstd-soak-"))
    report = soak(work, args.photos, args.kills, args.seed)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if report["ok"] and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
