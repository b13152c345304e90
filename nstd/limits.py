"""What one job may ask of a worker, set by the operator (`limits:` in the config).

A sidecar comes from whoever can write to the inbox; without a bound, `iterations:
1000000000` with `stop_tolerance: 0` would hold the only worker for ever. Every job is
checked at intake, once its photo's size is known, and a job that asks more than both
the limit and the config's own settings is refused with one line naming the limit to
raise. Sizes are bounded by `max_pixels` already.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from nstd.errors import ConfigError
from nstd.params import TransferParams


@dataclass(frozen=True)
class Limits:
    iterations: int = 2_000  # at any one scale
    total_iterations: int = 5_000  # over all of a photo's scales
    lbfgs_history: int = 300  # each pair is two copies of the image
    snapshots: int = 50  # images a job may save along the way

    def check(self, name: str, params: TransferParams, long_side: int, base: TransferParams) -> None:
        """A ConfigError naming `name`, what it asks and the limit, if any limit is passed.
        What the config itself asks (`base`, before sidecars) is always allowed: the limits
        are the operator's bound on others, not on their own settings."""
        asked, given = _amounts(params, long_side), _amounts(base, long_side)
        for key, what in (("iterations", "iterations at one scale"),
                          ("total_iterations", "iterations over its scales"),
                          ("lbfgs_history", "L-BFGS history pairs"), ("snapshots", "snapshots")):
            bound = max(getattr(self, key), given[key])
            if asked[key] > bound:
                raise ConfigError(f"{name}: asks for {asked[key]:,} {what}, over limits.{key} "
                                  f"({bound:,}); ask for less or raise the limit in the config")


def _amounts(params: TransferParams, long_side: int) -> dict[str, int]:
    scales = params.scales(long_side)
    total = sum(s.iterations for s in scales)
    return {"iterations": max(s.iterations for s in scales), "total_iterations": total,
            "lbfgs_history": params.lbfgs_history,
            "snapshots": total // params.snapshot_every if params.snapshot_every else 0}


def parse(raw) -> Limits:
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        raise ConfigError(f"limits: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(Limits)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"limits.{str(key)[:60]}: unknown key (known: {', '.join(sorted(known))})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"limits.{key}: must be a whole number of at least 1")
        values[key] = value
    return Limits(**values)
