"""A short run of the cluster harness: three real daemons sharing one inbox and a real
PostgreSQL, with a kill -9, a host frozen past its lease and a database restart."""

import pytest

pytestmark = pytest.mark.slow


def test_short_cluster_run_loses_nothing_and_does_nothing_twice(tmp_path):
    from benchmarks.cluster import cluster_run

    report = cluster_run(tmp_path / "work", photos=10, hosts=3, kills=1, seed=5, lease=3.0, iterations=6)
    assert report["ok"], report
    assert report["exit_codes"] == [0, 0, 0]
    assert (report["kills"], report["db_restarts"]) == (1, 1) and report["frozen_seconds"] >= 7.5
    assert report["frozen_jobs"] >= 1  # the host froze holding a batch
    assert report["outputs"] == 2 * report["versions"] == 20  # no photo set aside on the way
    events = report["events"]
    # The faults were met, not dodged: the outage was seen and ended, the frozen host's
    # lease ran out and another host ran its jobs, and the thawed host published nothing.
    assert events["database_unavailable"] >= 1 and events["database_back"] >= 1
    assert events["leases_expired"] >= 1
