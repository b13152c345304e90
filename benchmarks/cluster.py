"""Cluster harness: several real daemons on one machine sharing one inbox, one outbox and
one PostgreSQL journal, under faults; then an audit of everything that came out.

    python -m benchmarks.cluster --photos 200 --hosts 3 --kills 10   # the full run (minutes, CPU)
    python -m benchmarks.cluster --photos 12 --hosts 3 --kills 1     # what the test suite runs
    python -m benchmarks.cluster --scaling                           # throughput with 1..3 hosts,
                                                                     # and claims/s on 10,000 jobs

Each daemon has its own state folder and its own `host` name, as separate machines would.
Faults, at random moments: kill -9 of a random host, restarted a moment later; one host
frozen (SIGSTOP) for longer than the lease and then thawed, a stale host coming back;
the database restarted once. Tiny images on the CPU, random VGG19 weights (the engine is
not under test). Exit status 0 when the audit finds nothing lost, twice or partial.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.audit import count_outputs, missing_and_twice
from harness.audit import failed_reasons as failed_reasons_in
from harness.daemon import Daemon, photo_bytes, write_config
from harness.pg import PostgresServer
from harness.synthetic import models_dir

STYLES = ("ink", "wash")
FOLDERS = ("inbox", "outbox", "failed", "processed", "spool")


@dataclass
class Tally:
    versions: dict[str, str] = field(default_factory=dict)  # name -> sha256 dropped
    kills: int = 0
    frozen_seconds: float = 0.0
    frozen_jobs: int = 0  # running on the frozen host when it froze
    db_restarts: int = 0

    def drop(self, inbox: Path, name: str, data: bytes) -> None:
        tmp = inbox / f".{name}.part"
        tmp.write_bytes(data)
        tmp.rename(inbox / name)  # as rsync does: a hidden name, then a rename
        self.versions[name] = hashlib.sha256(data).hexdigest()


@dataclass
class Cluster:
    share: Path
    configs: list[Path]
    server: PostgresServer
    url: str
    daemons: list[Daemon] = field(default_factory=list)

    def start(self) -> None:
        self.daemons = [Daemon(c).start(wait=False) for c in self.configs]
        for d in self.daemons:
            d.wait_log("started", timeout=120)

    def restart(self, i: int, tries: int = 30) -> None:
        """Start host i again. A daemon that starts while the database is down exits with
        a one-line error; like systemd's Restart=on-failure, try again a moment later."""
        for _ in range(tries):
            try:
                self.daemons[i] = Daemon(self.configs[i]).start()
                return
            except AssertionError:
                time.sleep(1.0)
        raise RuntimeError(f"host h{i} did not start in {tries} tries")

    def stop(self) -> list[int]:
        for d in self.daemons:  # side by side: each winds down while the others do
            d.terminate()
        return [d.stop(timeout=60) for d in self.daemons]


def build(work: Path, hosts: int, lease: float, iterations: int = 4) -> Cluster:
    """The shared folders, a fresh PostgreSQL, and one config per host."""
    share = work / "share"
    for f in FOLDERS:
        (share / f).mkdir(parents=True, exist_ok=True)
    models = models_dir(work)
    server = PostgresServer().start()
    url = server.new_database()
    style = share / "style.png"
    style.write_bytes(photo_bytes(48, 48, 1234, "PNG"))
    configs = []
    for n in range(hosts):
        root = work / f"h{n}"
        root.mkdir(parents=True, exist_ok=True)
        configs.append(write_config(
            root, models, **{f: str(share / f) for f in FOLDERS if f != "spool"}, journal=url,
            spool=str(share / "spool"), host=f"h{n}",
            styles={"ink": {"image": str(style)}, "wash": {"image": str(style), "style_weight": 50}},
            transfer={"size": 32, "iterations": iterations, "model": "random", "log_every": 2},
            watch={"settle_seconds": 0.4, "rescan_interval": 2, "poll_interval": 0.2},
            worker={"max_attempts": 50, "retry_backoff": 0.5, "stop_timeout": 2, "lease": lease,
                    "batch_window": 0.2}))
    return Cluster(share, configs, server, url)


def run_faults(cluster: Cluster, tally: Tally, photos: int, kills: int, lease: float,
               rng: random.Random) -> None:
    """Photos in bursts, with kills, one long freeze and one database restart among them."""
    bursts, left = [], photos
    while left:
        n = min(left, rng.randint(5, 25))
        bursts.append(n)
        left -= n
    # Each fault comes right after a burst, while there is work to cut into.
    after: dict[int, list] = {}
    for fault in [("kill", None)] * kills + [("freeze", None), ("db_restart", None)]:
        after.setdefault(rng.randrange(len(bursts)), []).append(fault)
    order = {"freeze": 0, "kill": 1, "db_restart": 2}  # the freeze needs a running batch most
    plan = [step for i, n in enumerate(bursts)
            for step in [("burst", n)] + sorted(after.get(i, []), key=lambda f: order[f[0]])]
    count = 0
    inbox = cluster.share / "inbox"
    for action, arg in plan:
        if action == "burst":
            for _ in range(arg):
                tally.drop(inbox, f"p{count:04d}.jpg", photo_bytes(40, 40 + 8 * (count % 3), 500000 + count))
                count += 1
        elif action == "kill":
            time.sleep(rng.uniform(0.2, 2.0))
            i = busy_host(cluster, rng)
            cluster.daemons[i].kill()
            tally.kills += 1
            time.sleep(rng.uniform(0.0, 1.5))
            cluster.restart(i)
        elif action == "freeze":
            # A host that stops answering (a hung kernel, a cut cable) for longer than its
            # lease, until another host has taken its batch; then it comes back believing
            # it still holds it.
            i = busy_host(cluster, rng)
            held = _holding(cluster, i)
            t0 = time.time()
            cluster.daemons[i].signal(signal.SIGSTOP)
            time.sleep(2.5 * lease)
            deadline = time.time() + 60
            while held and _holding(cluster, i) & held and time.time() < deadline:
                time.sleep(0.2)
            cluster.daemons[i].signal(signal.SIGCONT)
            tally.frozen_seconds += time.time() - t0
            tally.frozen_jobs += len(held)
        elif action == "db_restart":
            cluster.server.pause()
            time.sleep(2.0)
            cluster.server.resume()
            tally.db_restarts += 1
        time.sleep(rng.uniform(0.1, 1.0))


def busy_host(cluster: Cluster, rng: random.Random, wait: float = 10.0) -> int:
    """A host running a batch now, as the journal says (a fault there costs the most),
    or after `wait` seconds with none, any host; at once when there is no work left that
    a host could take up (the inbox empty, nothing queued or running)."""
    from nstd.daemon.journal import Journal
    from nstd.errors import NstdError

    deadline = time.time() + wait
    while time.time() < deadline and not quiet(cluster):
        try:
            j = Journal(cluster.url, readonly=True)
            rows = j.db.execute("SELECT DISTINCT claimed_by FROM jobs WHERE state = 'running'").fetchall()
            j.close()
        except NstdError:
            rows = []
        hosts = sorted({int(r[0].split(":")[0][1:]) for r in rows if r[0]})
        if hosts:
            return rng.choice(hosts)
        time.sleep(0.1)
    return rng.randrange(len(cluster.daemons))


def _holding(cluster: Cluster, i: int) -> set[tuple[int, str]]:
    """(job, claim token) pairs host i is running now."""
    from nstd.daemon.journal import Journal
    from nstd.errors import NstdError

    try:
        j = Journal(cluster.url, readonly=True)
        rows = j.db.execute("SELECT id, batch_id FROM jobs WHERE state = 'running' AND claimed_by LIKE ?",
                            (f"h{i}:%",)).fetchall()
        j.close()
    except NstdError:
        return set()
    return {tuple(r) for r in rows}


def quiet(cluster: Cluster) -> bool:
    from nstd.daemon.journal import Journal
    from nstd.errors import NstdError

    inbox_empty = not any(p.is_file() for p in (cluster.share / "inbox").rglob("*"))
    try:
        j = Journal(cluster.url, readonly=True)
    except NstdError:
        return False
    try:
        c = j.counts()
        busy = c["queued"] + c["running"] + j.input_counts()["queued"]
    finally:
        j.close()
    return inbox_empty and busy == 0


def cluster_run(work: Path, photos: int, hosts: int, kills: int, seed: int, lease: float = 4.0,
                iterations: int = 30) -> dict:
    rng = random.Random(seed)
    tally = Tally()
    cluster = build(work, hosts, lease, iterations)
    started = time.time()
    try:
        cluster.start()
        run_faults(cluster, tally, photos, kills, lease, rng)
        deadline = time.time() + 120 + photos * 3
        while time.time() < deadline and not quiet(cluster):
            time.sleep(0.2)
        codes = cluster.stop()
        report = audit(cluster, tally)
        events = _events(cluster)
    finally:
        for d in cluster.daemons:
            if d.alive():
                d.kill()
        cluster.server.stop()
    report.update(seconds=round(time.time() - started, 1), exit_codes=codes, photos=photos, hosts=hosts,
                  kills=tally.kills, frozen_seconds=round(tally.frozen_seconds, 1),
                  frozen_jobs=tally.frozen_jobs, db_restarts=tally.db_restarts,
                  lease_seconds=lease, events=events)
    return report


def _events(cluster: Cluster) -> dict[str, int]:
    """How often the daemons met what the faults were meant to cause."""
    wanted = ("leases_expired", "claim_lost", "not_published", "finish_refused", "database_unavailable",
              "database_back", "recovered", "worker_restarted")
    out = dict.fromkeys(wanted, 0)
    for c in cluster.configs:
        for line in (c.parent / "daemon.log").read_text(errors="replace").splitlines():
            for event in wanted:
                out[event] += f'"event": "{event}"' in line
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def audit(cluster: Cluster, tally: Tally) -> dict:
    """Every photo x style exactly once (or the photo in failed/ with a reason), nothing
    partial in the outbox, every input moved out once, and the journal agrees."""
    from nstd.daemon.journal import Journal

    share = cluster.share
    outputs, incomplete = count_outputs(share / "outbox", STYLES)
    failed_reasons = failed_reasons_in(share / "failed")
    # Where each dropped version ended, by content: processed/ or failed/, once.
    ended: dict[str, int] = {}
    for folder in ("processed", "failed"):
        for p in (share / folder).rglob("*"):
            if p.is_file() and not p.name.endswith(".error.json"):
                sha = _sha(p)
                ended[sha] = ended.get(sha, 0) + 1
    missing, duplicated = missing_and_twice(list(tally.versions.items()), outputs, failed_reasons, STYLES)
    lost, disposed_twice = [], []
    for name, sha in tally.versions.items():
        if ended.get(sha, 0) == 0:
            lost.append(name)
        elif ended[sha] > 1:
            disposed_twice.append(name)
    stray = [str(p.relative_to(share)) for p in (share / "outbox").rglob(".*") if p.name != ".gallery"
             and ".gallery" not in p.relative_to(share / "outbox").parts]
    left = sorted(str(p.relative_to(share)) for p in (share / "inbox").rglob("*") if p.is_file())
    j = Journal(cluster.url, readonly=True)
    try:
        done = j.db.execute("SELECT input_sha256, style, output FROM jobs WHERE state = 'done'").fetchall()
        states = j.counts()
        inputs = j.input_counts()
    finally:
        j.close()
    done_keys = {(s, st) for s, st, _ in done}
    disagree = [f"{sha[:8]} {style}: {out}" for sha, style, out in done
                if not (share / "outbox" / out).exists() or outputs.get((style, sha), 0) != 1]
    disagree += [f"{s[:8]} {st}: output without a done job" for (st, s) in outputs if (s, st) not in done_keys]
    ok = not (missing or duplicated or lost or disposed_twice or stray or left or incomplete or disagree)
    return {"ok": ok, "versions": len(tally.versions), "outputs": sum(outputs.values()),
            "failed_inputs": len(failed_reasons), "failed_reasons": sorted(set(failed_reasons.values()))[:5],
            "missing": missing, "duplicated": duplicated, "lost_inputs": lost, "disposed_twice": disposed_twice,
            "partial_or_temp_in_outbox": stray, "incomplete_outputs": incomplete, "left_in_inbox": left,
            "journal_disagrees": disagree, "journal_jobs": states, "journal_inputs": inputs}


# --- throughput across hosts ----------------------------------------------------------

def scaling(work: Path, photos: int, max_hosts: int, iterations: int) -> list[dict]:
    """Photos per hour with 1..max_hosts daemons on this machine, no faults: each run
    drops the same photos into a fresh cluster and times the first intake to the last output."""
    rows = []
    for hosts in range(1, max_hosts + 1):
        run = work / f"scale-{hosts}"
        cluster = build(run, hosts, lease=30.0, iterations=iterations)
        try:
            cluster.start()
            t0 = time.time()
            for n in range(photos):
                Tally().drop(cluster.share / "inbox", f"s{n:04d}.jpg", photo_bytes(40, 40, 700000 + n))
            while not quiet(cluster):
                time.sleep(0.2)
            seconds = time.time() - t0
            cluster.stop()
        finally:
            for d in cluster.daemons:
                if d.alive():
                    d.kill()
            cluster.server.stop()
        rows.append({"hosts": hosts, "photos": photos, "jobs": photos * len(STYLES), "seconds": round(seconds, 1),
                     "photos_per_hour": round(photos * 3600 / seconds)})
    return rows


def claim_rate(jobs: int = 10_000, workers: int = 4, claims: int = 500, batch: int = 4) -> dict:
    """Claims per second against a queue of `jobs` queued jobs, from `workers` threads
    each on its own connection, as many hosts claiming at once would."""
    from nstd.daemon.journal import JobSpec, Journal

    server = PostgresServer().start()
    try:
        url = server.new_database()
        j = Journal(url)
        keys = [f"k{n}" for n in range(8)]  # eight sizes, as a mixed studio drop has
        for start in range(0, jobs, 1000):
            with j._tx():
                for n in range(start, min(jobs, start + 1000)):
                    spec = JobSpec("ink", f"h{n}", {}, 32, 24, keys[n % len(keys)])
                    j.add_input(f"p{n}.jpg", f"sha{n}", "/s", [spec], now=n)
        counts = [0] * workers

        def claimer(i: int) -> None:
            mine = Journal(url)
            for c in range(claims // workers):
                if mine.claim(keys[c % len(keys)], batch, f"b{i}-{c}", time.time(), owner=f"w{i}:1:cpu"):
                    counts[i] += 1
            mine.close()

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(workers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        claimed = j.counts()["running"]
        j.close()
    finally:
        server.stop()
    return {"queued_jobs": jobs, "threads": workers, "claims": sum(counts), "batch": batch,
            "jobs_claimed": claimed, "seconds": round(seconds, 3), "claims_per_second": round(sum(counts) / seconds)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lease", type=float, default=4.0, help="worker.lease for the run, seconds")
    ap.add_argument("--scaling", action="store_true", help="measure throughput and claim rate instead")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nstd-cluster-"))
    if args.scaling:
        report = {"throughput": scaling(work, args.photos, args.hosts, iterations=20), "claims": claim_rate()}
        ok = True
    else:
        report = cluster_run(work, args.photos, args.hosts, args.kills, args.seed, args.lease)
        ok = report["ok"]
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if ok and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
