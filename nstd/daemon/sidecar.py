"""Per-photo and per-folder transfer overrides dropped into the inbox beside the photos.

`photo.jpg.nstd.yaml` applies to that photo; `.nstd.yaml` in a folder applies to every
photo below it, the nearest folder winning and the photo's own file last. A sidecar
holds transfer keys, validated like the config's, `priority` (higher runs first), and
the guide keys: `mask` or
`region_map` (a mask file's name in the sidecar's own folder) and `regions` (a region
map's colours, each to a configured style or keep). It has no way to name a style image,
a path or a folder, so it can neither reach outside the configured styles and the inbox
nor write outside the outbox.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from nstd import safeyaml
from nstd.fsutil import NAME_MAX
from nstd.errors import ConfigError, shown
from nstd.params import TransferParams, with_overrides

PHOTO_SUFFIX = ".nstd.yaml"
FOLDER_NAME = ".nstd.yaml"
MAX_BYTES = 64 * 1024
GUIDE_KEYS = ("mask", "region_map", "regions")
PRIORITY = "priority"  # not a transfer setting: where the photo stands in the queue
NOT_TRANSFER = GUIDE_KEYS + (PRIORITY,)
PRIORITY_RANGE = (-1000, 1000)


def paths_for(relpath: str) -> list[str]:
    """The sidecars that may apply to an inbox photo, weakest first."""
    parts = PurePosixPath(relpath).parts[:-1]
    folders = [str(PurePosixPath(*parts[:i], FOLDER_NAME)) for i in range(len(parts) + 1)]
    own = relpath + PHOTO_SUFFIX
    # A photo whose name leaves no room for the suffix cannot have a sidecar of its own.
    return folders + ([own] if len(os.fsencode(PurePosixPath(own).name)) <= NAME_MAX else [])


def overrides_for(inbox: Path, relpath: str) -> list[tuple[str, dict]]:
    """(sidecar relpath, its mapping) for each sidecar present, weakest first."""
    found = []
    for rel in paths_for(relpath):
        data = _read(inbox / rel, rel)
        if data is not None:
            found.append((rel, data))
    return found


def apply(params: TransferParams, found: list[tuple[str, dict]], models: set[str]) -> TransferParams:
    """params with every sidecar's overrides; a bad key raises ConfigError naming file and key."""
    for rel, overrides in found:
        params = with_overrides(params, {k: v for k, v in overrides.items() if k not in NOT_TRANSFER}, rel)
        if params.model not in models:
            raise ConfigError(f"{rel}.model: {shown(params.model)} is not a model this config uses "
                              f"({', '.join(sorted(models))})")
    return params


def guide_keys(found: list[tuple[str, dict]]) -> dict[str, tuple[str, object]]:
    """Each guide key set by the sidecars, the nearest winning: key -> (sidecar relpath, value)."""
    out: dict[str, tuple[str, object]] = {}
    for rel, mapping in found:
        out |= {k: (rel, v) for k, v in mapping.items() if k in GUIDE_KEYS}
    return out


def priority(found: list[tuple[str, dict]]) -> int:
    """The photo's priority, the nearest sidecar's winning: higher runs first; 0 by default."""
    value, where = 0, None
    for rel, mapping in found:
        if PRIORITY in mapping:
            value, where = mapping[PRIORITY], rel
    low, high = PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}.{PRIORITY}: {shown(value)} is not a whole number from {low} to {high}")
    return value


def _read(path: Path, rel: str) -> dict | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{rel}: not a regular file (nstd follows no links)")
    if st.st_size > MAX_BYTES:
        raise ConfigError(f"{rel}: {st.st_size} bytes; a sidecar holds a few settings (at most {MAX_BYTES})")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{rel}: cannot read ({e.strerror})") from None
    raw = safeyaml.load(data, rel, safeyaml.SIDECAR) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{rel}: expected a mapping of transfer settings, e.g. style_weight: 20")
    return raw
