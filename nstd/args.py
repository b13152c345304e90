"""The commands' arguments, checked before any work: the transfer flags (the same
names and bounds as the config's `transfer:`), --blend weights, the --region pairs
checked against the --style names, the models folder, and output folders made ready.
A bad value is a one-line error naming the flag."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from nstd import weights
from nstd.errors import ConfigError, NstdError
from nstd.params import parse_flag


def flag_value(key: str, text: str):
    """A transfer flag's value, or argparse's usage error naming the flag."""
    try:
        return parse_flag(key, text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


def flag_metavar(f) -> str | None:
    """How --help names a transfer flag's value: its choices where it has them, else the
    last word of its name (--style-weight WEIGHT)."""
    return None if f.metadata["choices"] else f.name.split("_")[-1].upper()


def blend_weights(text: str) -> tuple[float, ...]:
    """--blend's weights: numbers separated by commas, finite, not negative, not all zero."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected weights separated by commas, not {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values) or not sum(values) > 0:
        raise argparse.ArgumentTypeError("weights must be finite, not negative, and not all zero")
    return values


def region_colours(pairs: list[str], styles: list[Path], mask: Path | None, regions: Path | None,
                   blend: tuple[float, ...] | None) -> tuple[tuple[str, str], ...]:
    """--region '#rrggbb=STYLE' (or STYLE@S, S its strength) pairs, checked against the
    --style names."""
    from nstd import masks

    if mask and regions:
        raise NstdError("--mask and --regions: give one of them")
    names = {p.stem for p in styles}
    out = []
    for text in pairs:
        colour, sep, target = text.partition("=")
        if not sep:
            raise NstdError(f"--region {text}: write it as '#rrggbb=STYLE' or '#rrggbb=keep'")
        masks.parse_colour(colour, f"--region {text}")
        try:
            name, _ = masks.split_target(target)
        except ValueError as e:
            raise NstdError(f"--region {text}: {e}") from None
        if name != masks.KEEP and (name not in names or blend):
            raise NstdError(f"--region {text}: {name!r} is not a --style name ({', '.join(sorted(names))}) "
                            f"or keep" + (" (a region map takes single styles, not --blend)" if blend else ""))
        out.append(("#" + colour.strip().lstrip("#").lower(), target))
    return tuple(out)


def models_dir(value: str | None) -> Path:
    """--models-dir, or where weights are kept by default."""
    return Path(value).expanduser() if value else weights.default_models_dir()


def ready_folder(path: Path, option: str) -> Path:
    """`path` made ready to write into, before any work; a one-line error naming the
    option where it is a file or cannot be made."""
    if path.exists() and not path.is_dir():
        raise NstdError(f"{option} {path}: a file, not a folder; name a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NstdError(f"{option} {path}: cannot create it ({e.strerror})") from None
    return path
