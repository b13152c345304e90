"""Crash points for tests: `NSTD_FAULT=<point>` makes the process die at once there.

The points sit between the steps whose order keeps the outbox, the journal and the
folders consistent, so a test can kill nstd exactly there and check the restart.
"""

from __future__ import annotations

import os

POINTS = ("after_claim", "after_image", "after_json", "after_finish", "mid_move")
EXIT_CODE = 86  # what a test sees from a process that died at its crash point


def point(name: str) -> None:
    """Die here, as a kill -9 would (no cleanup, no flush), if the environment asks for it."""
    if os.environ.get("NSTD_FAULT") == name:
        os._exit(EXIT_CODE)
