"""A photo's mask or region map in the inbox: found beside it or named by a sidecar,
waited for until it has settled, and turned into the GuideSpec its jobs carry."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from nstd import masks
from nstd.daemon.sidecar import PHOTO_SUFFIX, guide_keys
from nstd.errors import ConfigError, shown
from nstd.guide import GuideSpec

# The stat key a settled file had when the inbox watcher last saw it, or None if it has not settled.
Settled = Callable[[str], "tuple[int, int, int] | None"]


@dataclass(frozen=True)
class Found:
    spec: GuideSpec | None = None
    data: bytes | None = None
    relpath: str | None = None  # the mask file, in the inbox
    waiting: str | None = None  # a mask file still arriving: take the photo in once it has settled


def spool_path(photo_spool: Path, photo_sha: str, spec: GuideSpec) -> Path:
    """Where a job's mask is kept beside its photo's spool copy (and removed with it)."""
    return photo_spool.with_name(f"{photo_sha}.mask-{spec.sha256[:16]}{PurePosixPath(spec.name).suffix.lower()}")


def mask_copies(photo_spool: Path) -> list[Path]:
    """The mask copies kept beside a spooled photo (named `<photo sha>.mask-…` by spool_path)."""
    return list(photo_spool.parent.glob(f"{photo_spool.stem}.mask-*"))


def find(inbox: Path, relpath: str, sidecars: list[tuple[str, dict]], styles: list[str], settled: Settled,
         read: Callable[[str, tuple[int, int, int]], bytes]) -> Found:
    """The photo's guide, if any. A ConfigError names a bad sidecar key; `read` may raise
    as intake's reads do (the file changed under it, say)."""
    keys = guide_keys(sidecars)
    chosen = {kind: rel for kind in masks.KINDS if (rel := _own(inbox, relpath, kind) or _named(keys, kind))}
    if len(chosen) > 1:
        raise ConfigError(f"{relpath}: has both a mask ({chosen['mask']}) and a region map ({chosen['regions']}); "
                          f"keep one")
    if not chosen:
        _no_map(relpath, keys)
        return Found()
    kind, rel = next(iter(chosen.items()))
    colours = _colours(keys, styles, rel) if kind == "regions" else ()
    key = settled(rel)
    if key is None:
        return Found(waiting=rel)
    data = read(rel, key)
    return Found(GuideSpec(kind, rel, hashlib.sha256(data).hexdigest(), colours), data, rel)


def _own(inbox: Path, relpath: str, kind: str) -> str | None:
    found = masks.own_file(inbox / relpath, kind)
    return None if found is None else str(PurePosixPath(relpath).parent / found.name)


def _named(keys: dict, kind: str) -> str | None:
    """A mask file a sidecar names, beside the sidecar."""
    key = "mask" if kind == "mask" else "region_map"
    if key not in keys:
        return None
    side, value = keys[key]
    name = value if isinstance(value, str) else ""
    if not name or "/" in name or "\\" in name or name in (".", "..") or masks.kind_of(name) != kind:
        raise ConfigError(f"{side}.{key}: {shown(value)} must be a file name in the sidecar's folder ending "
                          f"in .{kind}.png (or .tif, .jpg), so that it is never taken for a photo")
    return str(PurePosixPath(side).parent / name)


def _colours(keys: dict, styles: list[str], map_rel: str) -> tuple[tuple[str, str], ...]:
    if "regions" not in keys:
        raise ConfigError(f"{map_rel}: a region map needs its colours in a sidecar (.nstd.yaml), e.g. "
                          f"regions: {{\"#ff0000\": {styles[0] if styles else 'STYLE'}, \"#000000\": keep}}")
    side, mapping = keys["regions"]
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"{side}.regions: expected a mapping of \"#rrggbb\": style or keep")
    if len(mapping) > masks.MAX_COLOURS:
        raise ConfigError(f"{side}.regions: {len(mapping)} colours; a region map takes at most "
                          f"{masks.MAX_COLOURS}")
    out = []
    for colour, target in mapping.items():
        rgb = masks.parse_colour(colour, f"{side}.regions")
        if not isinstance(target, str):
            raise ConfigError(f"{side}.regions.{colour}: {shown(target)} is not a configured style or keep "
                              f"(styles: {', '.join(styles)})")
        try:
            name, _ = masks.split_target(target)
        except ValueError as e:
            raise ConfigError(f"{side}.regions.{colour}: {e}") from None
        if name != masks.KEEP and name not in styles:
            raise ConfigError(f"{side}.regions.{colour}: {shown(name)} is not a configured style or keep "
                              f"(styles: {', '.join(styles)})")
        out.append(("#%02x%02x%02x" % rgb, str(target)))
    return tuple(out)


def _no_map(relpath: str, keys: dict) -> None:
    """Colours in the photo's own sidecar but no map to use them: say so rather than
    make plain outputs the user did not ask for."""
    side = keys.get("regions", (None,))[0]
    if side == relpath + PHOTO_SUFFIX:
        raise ConfigError(f"{side}.regions: no region map; drop {PurePosixPath(relpath).name}.regions.png "
                          f"beside the photo or name one with region_map")
