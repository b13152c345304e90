"""What `nstd status` prints, as lines read from the journal: whether new work is
paused, the photo and job counts, each worker with its running batch and the time
left, batches no listed worker holds, and the recent failures. Plain functions over
an open journal; nothing here loads PyTorch."""

from __future__ import annotations

import time
from collections import defaultdict

from nstd.daemon import folders
from nstd.daemon.journal.records import State
from nstd.durations import say

SILENT_AFTER = 90.0  # seconds without a heartbeat before nstd status calls a worker silent
RECENT_FAILURES = 10  # failed photos nstd status lists
ALWAYS = (State.QUEUED, State.RUNNING, State.DONE, State.FAILED)  # said even at 0; cancelled only once there are any


def status(cfg, journal, now: float) -> list[str]:
    """Every line of `nstd status`, in order."""
    out = []
    trouble = folders.paused_now(*folders.watched(cfg))
    if trouble:
        out.append(f"paused: {trouble.reason}; new work waits until it is back")
    p = journal.input_counts()
    out.append(f"photos: {p[State.QUEUED]} in progress, {p[State.DONE]} done, {p[State.FAILED]} failed")
    c = journal.counts()
    out.append("jobs (photo x style): " + ", ".join(f"{c[s]} {s.value}" for s in State if c[s] or s in ALWAYS))
    return out + pauses(journal) + workers(journal, now) + failures(journal)


def status_line(counts: dict, trouble, held: list) -> str:
    """systemd's STATUS: the jobs by state, and why work is paused, if it is."""
    line = ", ".join(f"{s.value} {counts[s]}" for s in State if counts[s] or s in ALWAYS)
    if trouble:
        line += f"; paused: {trouble.reason}"
    if held:
        line += "; paused by operator: " + ", ".join(f"{p.device if p.device != '*' else 'all devices'}"
                                                     for p in held)
    return line


def pauses(journal) -> list[str]:
    """The operators' pauses in force (nstd pause), on every host."""
    return [f"paused by operator: host {p.host}, device {p.device}{f' by {p.by_whom}' if p.by_whom else ''} "
            f"since {time.strftime('%Y-%m-%d %H:%M', time.localtime(p.since))} (nstd resume)"
            for p in journal.pauses()]


def workers(journal, now: float) -> list[str]:
    """Each worker on every host, with its running batch; then batches of workers not listed."""
    batches = defaultdict(list)
    for job in journal.running():
        batches[job.batch_id].append(job)
    listed = journal.workers()
    out = ["workers:"] if listed else []
    for w in listed:
        age = now - w.heartbeat
        memory = f", {w.memory / 2**30:.0f} GiB" if w.memory else ""
        doing = f"silent for {say(age)}" if age > SILENT_AFTER else f"{w.doing}, heard {say(max(age, 0))} ago"
        out.append(f"  {w.host}  {w.device}{memory}: {doing}")
        for batch_id in sorted({j.batch_id for j in journal.running_of(w.owner)}):
            out += batch(journal, batch_id, batches.pop(batch_id, []), now, "    ")
    for batch_id, jobs in batches.items():
        out += batch(journal, batch_id, jobs, now, "")
    return out


def batch(journal, batch_id: str, jobs: list, now: float, indent: str) -> list[str]:
    """A running batch's heading, then one line per job; nothing for a batch that began
    after the listing of running jobs was read."""
    if not jobs:
        return []
    first = jobs[0]
    out = [f"{indent}running batch {batch_id}: {len(jobs)} × {first.width}x{first.height}"
           f"{eta(journal.batch_progress(batch_id), now)}"]
    return out + [f"{indent}  {job.id:>6}  {job.style:<14} {job.relpath}" for job in jobs]


def eta(progress, now: float) -> str:
    """", iteration 150 of 500, 2.1 it/s, about 3 min left" for a batch under way: the
    rate and the time left as its worker measured them (see speed.Pace), the time left
    counted down from when it reported."""
    if progress is None:
        return ", starting"
    out = f", iteration {progress.done} of {progress.total}"
    if progress.rate is None or progress.eta is None:
        return out  # too early to say, or a worker of an nstd that did not measure it
    return out + f", {progress.rate:.2f} it/s, about {say(max(progress.eta - now, 0.0))} left"


def failures(journal) -> list[str]:
    """The recent failed photos, newest first, each with its reason."""
    rows = journal.recent_failures(RECENT_FAILURES)
    out = ["recent failed photos:"] if rows else []
    for relpath, error, when in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when or 0))
        reason = (error or "").removeprefix(f"{relpath}: ")  # most reasons name the file already
        out.append(f"  {stamp}  {relpath}: {reason}")
    return out
