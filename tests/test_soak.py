"""A short run of the soak harness: faults injected, then every file accounted for."""

import pytest

pytestmark = pytest.mark.slow


def test_short_soak_loses_nothing(tmp_path):
    from benchmarks.soak import soak

    # 32 px: a multiple of 16, so no margin is computed (engine/resize.pool_padding). Ten
    # iterations, half the harness's own: a batch still runs over a second, long enough for
    # the faults to meet work in flight, and the twelve photos drain in half the time.
    report = soak(tmp_path / "work", photos=12, kills=2, seed=3, size=32, iterations=10)
    assert report["ok"], report
    assert report["kills"] == 2 and report["remounts"] == 1 and report["replaced"] == 1
    # Every dropped version came out once per style (the replaced file counts twice).
    assert report["outputs"] == 2 * report["versions"] and report["versions"] == 12 + 1 + 2
    # The full-disk leg needs a tmpfs, which root can mount (CI runs as root here); where it
    # cannot, this fails and says why rather than pass with the leg left out.
    assert report["enospc"] == "tmpfs outbox filled", report["enospc"]
    assert report["retries"] >= 1  # the full disk was met, put off, and retried
