"""Durations as nstd prints and logs them. No torch here: `nstd status` says how long is
left without loading PyTorch."""

from __future__ import annotations


def say(seconds: float) -> str:
    """A duration as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
