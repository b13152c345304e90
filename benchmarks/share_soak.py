"""The daemon on a real SMB share under a NAS's faults, then the exactly-once audit.

    python -m benchmarks.share_soak --photos 100 --restarts 3 --drops 2   # the full run (minutes, CPU)

Samba serves a temporary folder on 127.0.0.1:445 (as root; see harness/shares.py) and
smbnetfs mounts it; the inbox, outbox, failed/, processed/ and the spool are all on the
share, the journal in a local state folder. Photos arrive over the run, half written on
the server's side (another client) and half copied through the mount; meanwhile the
Samba server is stopped for a while and started again, and the mount is taken down and
mounted again. At the end every photo must have exactly one complete output per style,
nothing may be left in the inbox or failed, and the log must hold one warning per outage.
Random VGG19 weights and tiny settings: the share is under test, not the engine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from harness.audit import count_outputs, failed_reasons, missing_and_twice
from harness.daemon import STYLES, Daemon, photo_bytes, wait_for, write_config
from harness.shares import SambaServer, SmbMount, served
from harness.synthetic import models_dir
from nstd.bench.measure import machine

SHARED = ("inbox", "outbox", "failed", "processed", "spool")


def share_soak(work: Path, photos: int, restarts: int, drops: int, seed: int, outage: float = 8.0,
               log=print) -> dict:
    with served(SambaServer(), SmbMount, work / "mnt") as (server, mount):
        return _run(work, server, mount, photos, restarts, drops, seed, outage, log)


def _run(work: Path, server: SambaServer, mount: SmbMount, photos: int, restarts: int, drops: int, seed: int,
         outage: float, log) -> dict:
    rng = random.Random(seed)
    share = mount.path
    for name in SHARED:
        (share / name).mkdir(exist_ok=True)
    config = write_config(work, models_dir(work), **{n: str(share / n) for n in SHARED},
                          transfer={"size": 40, "iterations": 8, "model": "random", "log_every": 4},
                          watch={"settle_seconds": 1.0, "poll_interval": 0.3, "rescan_interval": 5},
                          worker={"batch_window": 0.3, "stop_timeout": 5, "retry_backoff": 0.5})
    faults = ["restart"] * restarts + ["drop"] * drops
    rng.shuffle(faults)
    # After which photo each fault comes: away from the run's ends where there is room.
    room = range(5, photos - 5) if photos - 10 >= len(faults) else range(photos)
    if len(room) < len(faults):
        raise ValueError(f"{photos} photos leave no room for {len(faults)} faults; drop more photos")
    at = sorted(rng.sample(room, len(faults)))
    versions: dict[str, str] = {}
    d = Daemon(config).start()
    started = time.monotonic()
    try:
        for n in range(photos):
            name = f"p{n:03d}.jpg"
            data = photo_bytes(40, 40, seed * 1000 + n)
            versions[name] = hashlib.sha256(data).hexdigest()
            _drop(server.share if n % 2 else share, name, data)
            while at and at[0] == n:
                at.pop(0)
                kind = faults.pop(0)
                log(f"after {n + 1} photos: {kind}")
                _fault(kind, server, mount, d, outage)
            time.sleep(rng.uniform(0.0, 0.3))
        wait_for(lambda: len(_outputs(share)) >= 2 * photos * len(STYLES), 60 + 6 * photos, "every output")
        wait_for(lambda: len(list((share / "processed").glob("*.jpg"))) == photos, 120, "every photo moved out")
        seconds = time.monotonic() - started
        code = d.stop()
    finally:
        if d.alive():
            d.kill()
    report = _audit(share, versions, d, code)
    return report | {"photos": photos, "server_restarts": restarts, "mount_drops": drops, "outage_seconds": outage,
                     "seconds": round(seconds, 1), "photos_per_hour": round(photos / seconds * 3600)}


def _drop(inbox_root: Path, name: str, data: bytes) -> None:
    tmp = inbox_root / "inbox" / f".{name}.part"
    tmp.write_bytes(data)
    tmp.rename(inbox_root / "inbox" / name)  # as rsync and most copy tools do


def _fault(kind: str, server: SambaServer, mount: SmbMount, d: Daemon, outage: float) -> None:
    paused = _count(d, "paused")
    if kind == "restart":
        server.stop()
    else:
        mount.unmount()
    d.wait_log("paused", timeout=60, count=paused + 1)
    time.sleep(outage)
    if kind == "restart":
        server.start()
    else:
        mount.mount()
    d.wait_log("resumed", timeout=60, count=paused + 1)


def _count(d: Daemon, event: str) -> int:
    return sum(e.get("event") == event for e in d.events())


def _outputs(share: Path) -> list[Path]:
    return [p for s in STYLES for p in (share / "outbox" / s).glob("*") if p.suffix in (".jpg", ".json")] \
        if all((share / "outbox" / s).is_dir() for s in STYLES) else []


def _audit(share: Path, versions: dict[str, str], d: Daemon, code: int) -> dict:
    outputs, incomplete = count_outputs(share / "outbox", STYLES)
    failed = failed_reasons(share / "failed")
    missing, duplicated = missing_and_twice(list(versions.items()), outputs, failed, STYLES)
    stray = [str(p) for p in (share / "outbox").rglob(".*") if ".gallery" not in p.parts]
    left = sorted(p.name for p in (share / "inbox").glob("*"))
    processed = sorted(p.name for p in (share / "processed").glob("*.jpg"))
    events = d.events()
    kinds = [e.get("event") for e in events]
    errors = [e for e in events if e.get("level") == "error"]
    warnings = [e.get("event") for e in events if e.get("level") == "warning"]
    ok = not (missing or duplicated or incomplete or stray or left or failed or errors) and code == 0 \
        and processed == sorted(versions)
    return {"ok": ok, "outputs": sum(outputs.values()), "missing": missing, "duplicated": duplicated,
            "incomplete": incomplete, "temporary_names_left": stray, "left_in_inbox": left,
            "failed": {k: v for k, v in failed.items()}, "error_lines": len(errors),
            "warning_lines": {w: warnings.count(w) for w in sorted(set(warnings))},
            "paused": kinds.count("paused"), "resumed": kinds.count("resumed"), "exit_code": code}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--drops", type=int, default=2)
    ap.add_argument("--outage", type=float, default=8.0, help="seconds each fault lasts")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results-share-soak-cpu.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nstd-share-soak-") as tmp:
        report = share_soak(Path(tmp), args.photos, args.restarts, args.drops, args.seed, args.outage)
    import torch

    result = {"machine": machine(torch.device("cpu")), "report": report}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
