"""How fast things go, as nstd says it: the running batch's rate and time left (nstd
status), and a device's speed (nstd check). Every clock here is injected."""

import re

import pytest
import torch

from harness.daemon import photo_bytes, write_config
from nstd.engine import speed
from nstd.engine.memory import flops_per_iteration
from nstd.engine.types import BatchSettings


def _seconds(text: str) -> float:
    """The time left that `report.eta` printed, in seconds."""
    n, unit = re.search(r"about ([\d.]+) (s|min|h) left", text).groups()
    return float(n) * {"s": 1, "min": 60, "h": 3600}[unit]


def test_status_time_left_holds_steady_between_logged_losses(service):
    """Losses are logged every 50 iterations; the time left nstd status shows must not
    sag between them (it read "4.2 h" for a photo that was through in 11 minutes)."""
    from nstd.daemon.report import eta as _eta
    from nstd.daemon.batch import DaemonBatch
    from nstd.daemon.lease import LeaseKeeper
    from nstd.daemon.outcomes import Outcomes

    j = service.journal
    (service.cfg.inbox / "a.jpg").write_bytes(photo_bytes(40, 40, 1))
    service.inputs.step(0.0)
    service.inputs.step(10.0)
    [job] = j.claim(j.oldest_queued(1e12).batch_key, 4, "b1", now=1000.0)
    now = [1040.0]  # loading the photo and the style took 40 s
    keeper = LeaseKeeper(service.cfg.journal_target, "b1")  # not started: only `lost` is read
    outcomes = Outcomes(service.cfg, j, {job.id: job}, lambda: True, lambda s: None)
    session = DaemonBatch(j, outcomes, None, keeper, speed.Pace(200, clock=lambda: now[0]), lambda: None)
    total, readings = 200, []
    for it in range(1, total + 1):
        now[0] += 1.9 + (0.4 if it % 2 else -0.4)  # iterations of uneven length, 1.9 s on average
        session.progress(it, [{"iteration": it - 1, "total": 1.0}] if it % 50 == 1 else None)
        if it % 7 == 0 and 10 <= it <= 180:  # someone runs nstd status now and then
            at = now[0] + 1.0
            truly_left = sum(1.9 + (0.4 if k % 2 else -0.4) for k in range(it + 1, total + 1)) - 1.0
            readings.append((it, _eta(j.batch_progress("b1"), at), truly_left))
    for it, text, truly_left in readings:
        # Within what "N min" rounds away, and one report's worth of iterations.
        assert abs(_seconds(text) - truly_left) <= 30 + 5, (it, text, truly_left)
        assert re.search(r"0\.5\d it/s", text), text  # 1 / 1.9 s


def test_the_time_left_counts_a_later_scales_dearer_iterations():
    """Multi-scale: a later scale's iterations cost more, and the time left says so
    while the batch is still on the cheap ones."""
    layers = BatchSettings().layers
    scales = [(96, 128, 200), (192, 256, 100)]
    per_it = [flops_per_iteration(h, w, layers) / 1e10 for h, w, _ in scales]  # a 10 GFLOP/s device
    now, it = [0.0], 0
    pace = speed.Pace(300, scales, layers, clock=lambda: now[0], every=5.0)
    for at in (100, 250):
        while it < at:
            it += 1
            now[0] += per_it[0] if it <= 200 else per_it[1]
            pace.due(it)
        truly_left = max(200 - it, 0) * per_it[0] + min(300 - it, 100) * per_it[1]
        assert pace.rate(it) == pytest.approx(1 / per_it[0 if it < 200 else 1], rel=0.01)
        assert pace.left(it) == pytest.approx(truly_left, rel=0.01)
    # Counting every iteration alike would have said less than half at iteration 100.
    assert 200 * per_it[0] < (100 * per_it[0] + 100 * per_it[1]) / 2


def test_no_rate_before_the_batch_has_been_timed():
    now = [0.0]
    pace = speed.Pace(100, clock=lambda: now[0], every=5.0)
    now[0] = 30.0  # the first iteration carries the warm-up: it is not timed
    assert pace.due(1) and pace.rate(1) is None and pace.left(1) is None
    now[0] = 32.0
    assert not pace.due(2)  # reports are throttled
    now[0] = 36.0
    assert pace.due(4)
    assert pace.rate(4) == pytest.approx(0.5) and pace.left(4) == pytest.approx(192.0)


class LapClock:
    """Hands out the probe's times: its start, its first iteration (the warm-up), then
    one lap per iteration."""

    def __init__(self, warm_up: float, laps: list[float]):
        self.times = [0.0, warm_up]
        for lap in laps:
            self.times.append(self.times[-1] + lap)
        self.calls = 0

    def __call__(self) -> float:
        t = self.times[min(self.calls, len(self.times) - 1)]
        self.calls += 1
        return t


def test_load_during_the_probe_does_not_swing_the_measure(tiny_model):
    """Other processes' load slows some iterations: the probe goes by the unslowed ones."""
    clock = LapClock(5.0, [0.2, 4.0, 3.0, 0.2, 0.2, 0.2, 0.2, 0.2])
    measured = speed.measure(tiny_model, budget=1.0, clock=clock)
    side = speed.PROBE_SIDE["cpu"]
    assert measured.flops_per_second == pytest.approx(flops_per_iteration(side, side, BatchSettings().layers) / 0.2)
    # Three laps reached the budget: it stops there, and says how long it took.
    assert clock.calls == 1 + 1 + 3
    assert measured.seconds == pytest.approx(5.0 + 7.2)


def test_the_probe_times_laps_until_its_budget_is_spent(tiny_model):
    clock = LapClock(0.5, [0.25] * 10)
    measured = speed.measure(tiny_model, budget=1.0, clock=clock)
    assert clock.calls == 1 + 1 + 4
    assert measured.seconds == pytest.approx(0.5 + 1.0)


@pytest.fixture
def check_config(tmp_path, models):
    from nstd import config

    return config.load(write_config(tmp_path, models))


def test_check_quotes_the_speed_the_running_daemon_measured(check_config, models):
    import time

    from nstd.daemon.checks import speed as _speed_findings
    from nstd.daemon.report import SILENT_AFTER
    from nstd.daemon.journal import Journal, WorkerInfo
    from nstd.daemon.lease import owner_id
    from nstd.engine.device import describe

    cfg, cpu = check_config, torch.device("cpu")
    j = Journal(cfg.journal_target)
    here = WorkerInfo(owner_id(cfg.host, cpu, 7), cfg.host, describe(cpu), None)
    there = WorkerInfo(owner_id("elsewhere", cpu, 8), "elsewhere", describe(cpu), None)
    j.beat(here, "working", now=1000.0)
    j.note_speed(here.owner, 43e9, now=1000.0)
    j.beat(there, "working", now=1000.0)
    j.note_speed(there.owner, 99e9, now=1000.0)
    j.close()
    [finding] = _speed_findings(cfg, [cpu], models, now=1030.0)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(1000.0))
    assert finding.ok and finding.text.endswith(
        f"(43.0 GFLOP/s, measured by the running daemon on {cfg.host} at {stamp})"), finding.text
    # A daemon no longer heard from is not running: measured now, and said so.
    [finding] = _speed_findings(cfg, [cpu], models, now=1000.0 + SILENT_AFTER + 1)
    assert re.search(r"\(\d+\.\d GFLOP/s, measured now for \d+\.\d s\)$", finding.text), finding.text


def test_check_measures_when_no_daemon_has_said(check_config, models):
    from nstd.daemon.checks import speed as _speed_findings
    from nstd.daemon.journal import Journal, WorkerInfo
    from nstd.daemon.lease import owner_id
    from nstd.engine.device import describe

    cfg, cpu = check_config, torch.device("cpu")
    assert not cfg.journal_target.exists()
    [finding] = _speed_findings(cfg, [cpu], models, now=1000.0)  # no journal yet
    assert "measured now for" in finding.text
    # A worker of this host that has not measured yet (still starting), and another
    # host's that has: neither is this device's figure.
    j = Journal(cfg.journal_target)
    j.beat(WorkerInfo(owner_id(cfg.host, cpu, 7), cfg.host, describe(cpu), None), "starting", now=1000.0)
    there = WorkerInfo(owner_id("elsewhere", cpu, 8), "elsewhere", describe(cpu), None)
    j.beat(there, "working", now=1000.0)
    j.note_speed(there.owner, 99e9, now=1000.0)
    j.close()
    [finding] = _speed_findings(cfg, [cpu], models, now=1000.0)
    assert "measured now for" in finding.text and "99.0 GFLOP/s" not in finding.text


def test_what_a_starting_worker_measures_is_what_check_quotes(service):
    import time

    from nstd.daemon.checks import speed as _speed_findings

    worker, j = service.worker, service.journal
    j.beat(worker.info, "starting", time.time())  # as Worker.run does before it measures
    worker._say_speed(j)
    [me] = [w for w in j.workers() if w.owner == worker.info.owner]
    assert me.speed > 0 and me.speed_at >= me.started
    [finding] = _speed_findings(service.cfg, [worker.device], service.cfg.models_dir, now=me.heartbeat + 1)
    assert f"({me.speed / 1e9:.1f} GFLOP/s, measured by the running daemon on {service.cfg.host} at " \
        in finding.text, finding.text
