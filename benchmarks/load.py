"""Load: many files at once, a burst beyond the inotify queue, polling over 10,000 entries.

    python -m benchmarks.load [--files 2000] [--entries 10000] [--minutes 5]

Reports the time from drop to every file queued in the journal, and the daemon's
memory (RSS) and CPU time, and the RSS over a steady stream of photos. Tiny model settings
on the CPU: this measures the inbox, the intake and the journal, not the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from harness.daemon import Daemon, photo_bytes, rss_kib, write_config
from harness.synthetic import models_dir

QUEUE_SYSCTL = Path("/proc/sys/fs/inotify/max_queued_events")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def inputs_seen(work: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{work / 'state' / 'journal.sqlite3'}?mode=ro", uri=True, timeout=5)
        n = db.execute("SELECT COUNT(*) FROM inputs").fetchone()[0]
        db.close()
        return n
    except sqlite3.Error:
        return 0


def drop_many(work: Path, models: Path, n: int, mode: str, rescan: float) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # No worker competition: a batch window long enough that the queue only fills.
    cfg = write_config(work, models, transfer={"iterations": 1, "size": 32},
                       watch={"mode": mode, "settle_seconds": 0.5, "rescan_interval": rescan},
                       worker={"device": "cpu", "batch_window": 3600, "max_batch": 10**6})
    staging = work / "staging"
    staging.mkdir()
    data = [photo_bytes(32, 32, i) for i in range(50)]
    for i in range(n):
        (staging / f"f{i:05d}.jpg").write_bytes(data[i % 50] + i.to_bytes(4, "big"))  # distinct hashes
    d = Daemon(cfg).start()
    rss0 = rss_kib(d.proc.pid)
    t0 = time.time()
    for p in staging.iterdir():
        os.rename(p, work / "inbox" / p.name)
    peak = rss0
    while inputs_seen(work) < n and time.time() - t0 < 600:
        peak = max(peak, rss_kib(d.proc.pid))
        time.sleep(0.2)
    elapsed = time.time() - t0
    result = {"files": n, "mode": mode, "queued": inputs_seen(work), "seconds_to_queue_all": round(elapsed, 1),
              "per_second": round(n / elapsed, 1), "rss_mib_start": round(rss0 / 1024, 1),
              "rss_mib_peak": round(peak / 1024, 1), "daemon_cpu_seconds": round(cpu_seconds(d.proc.pid), 1)}
    d.stop()
    return result


def overflow(work: Path, models: Path, n: int) -> dict:
    try:
        old = QUEUE_SYSCTL.read_text().strip()
        QUEUE_SYSCTL.write_text("64\n")  # read when the inotify instance is created
    except OSError as e:
        return {"skipped": f"cannot shrink the inotify queue here ({e.strerror})"}
    try:
        result = drop_many(work, models, n, "native", rescan=10)
    finally:
        QUEUE_SYSCTL.write_text(old + "\n")
    result["inotify_max_queued_events"] = 64
    return result


def polling_entries(work: Path, models: Path, entries: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = write_config(work, models, transfer={"iterations": 1, "size": 32},
                       watch={"mode": "polling", "settle_seconds": 0.5, "rescan_interval": 300,
                              "poll_interval": 2})
    # A studio folder full of things that are not work: sidecars and notes, in subfolders.
    for i in range(entries):
        sub = work / "inbox" / f"shoot{i // 1000:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"IMG_{i:05d}.xmp").write_bytes(b"<x:xmpmeta/>")
    d = Daemon(cfg).start()
    cpu0, t_idle = cpu_seconds(d.proc.pid), time.time()
    time.sleep(20)
    idle_cpu = (cpu_seconds(d.proc.pid) - cpu0) / (time.time() - t_idle)
    t0 = time.time()
    (work / "inbox" / "new.jpg").write_bytes(photo_bytes(32, 32, 1))
    while inputs_seen(work) < 1 and time.time() - t0 < 120:
        time.sleep(0.05)
    latency = time.time() - t0
    rss = rss_kib(d.proc.pid)
    d.stop()
    return {"entries": entries, "poll_interval": 2, "settle_seconds": 0.5,
            "seconds_new_photo_to_queued": round(latency, 2),
            "idle_cpu_share_of_one_core": round(idle_cpu, 3), "rss_mib": round(rss / 1024, 1)}


def steady(work: Path, models: Path, minutes: float) -> dict:
    """Photos arriving without pause for `minutes`: is the daemon's memory flat?"""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = write_config(work, models, transfer={"iterations": 10, "size": 40},
                       watch={"settle_seconds": 0.3, "rescan_interval": 30})
    d = Daemon(cfg).start()
    samples, t0, i = [], time.time(), 0
    next_sample = t0
    while time.time() - t0 < minutes * 60:
        (work / "inbox" / f"s{i:05d}.jpg").write_bytes(photo_bytes(40, 40, 500000 + i))
        i += 1
        if time.time() >= next_sample:
            samples.append((round(time.time() - t0), round(rss_kib(d.proc.pid) / 1024, 1)))
            next_sample += 15
        time.sleep(0.5)
    done = sum(1 for _ in (work / "processed").iterdir())
    d.stop()
    warm = [m for t, m in samples if t >= 60] or [m for _, m in samples]
    return {"minutes": minutes, "photos_dropped": i, "photos_done": done,
            "rss_mib_samples_every_15s": [m for _, m in samples],
            "rss_mib_after_first_minute": {"min": min(warm), "max": max(warm), "last": warm[-1]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--entries", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the steady-load run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nstd-load-"))
    models = models_dir(base)
    report = {
        "drop_at_once": drop_many(base / "drop", models, args.files, "native", rescan=300),
        "beyond_inotify_queue": overflow(base / "overflow", models, args.files),
        "polling_10k_entries": polling_entries(base / "polling", models, args.entries),
        "steady_memory": steady(base / "steady", models, args.minutes),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
