"""Transfer parameters as users set them, and their mapping onto the engine."""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields, replace

from nstd.engine.layers import LAYER_INDEX
from nstd.engine.sizes import Scale, long_side_size, schedule
from nstd.engine.types import (COLOR_MODES, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, INITS, BatchSettings,
                               Region, StyleImage, TransferJob)
from nstd import faces, safeyaml
from nstd.errors import ConfigError, clip, shown

OPTIMIZERS = ("lbfgs", "adam")
PROTECT = ("none", "faces")
POOLINGS = ("max", "avg")


def _flag(default, help: str, choices: tuple[str, ...] | None = None):
    """A setting users may also give `nstd stylize` as --name-with-dashes."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TransferParams:
    """Every transfer setting, declared once: the config's `transfer:` keys, the sidecars'
    keys and `nstd stylize`'s flags all come from these fields, and the engine's
    BatchSettings and TransferJob take theirs by name."""

    size: int | str = _flag(512, "long side in px, or 'original'")
    iterations: int = _flag(500, "iterations at the first (or only) scale; with --stop-tolerance, the most")
    multiscale_start: int = _flag(512, "above this size, optimise here first and grow by --multiscale-factor")
    multiscale_factor: float = _flag(2.0, "each scale this much larger than the last")
    multiscale_iterations: tuple[int, ...] = _flag((200, 100), "iterations at each later scale, "
                                                   "comma-separated; the last repeats")
    optimizer: str = _flag("lbfgs", "the optimiser", OPTIMIZERS)
    lr: float | None = _flag(None, "step size (1 for lbfgs, 0.02 for adam when not given)")
    lbfgs_history: int = 100
    content_weight: float = _flag(1.0, "weight of the content loss")
    style_weight: float = _flag(10.0, "weight of the style loss")
    tv_weight: float = _flag(5.0, "weight of the total-variation (smoothness) loss")
    init: str = _flag("content", "the starting image", INITS)
    seed: int = _flag(0, "seed of the noise start")
    preserve_color: str = _flag("none", "keep the photo's colours: transfer luminance only, or match the "
                                        "style's colours first", COLOR_MODES)
    style_scale: float = _flag(1.0, "style size relative to the photo's")
    protect: str = _flag("none", "hold the style back where something is found: faces (needs nstd[faces])",
                         PROTECT)
    protect_strength: float = _flag(0.3, "the style's strength on what --protect finds, from 0 (the photo "
                                         "as it is) to 1 (as everywhere else)")
    pooling: str = _flag("max", "VGG pooling", POOLINGS)
    model: str = _flag("caffe", "weights id (see: nstd weights list)")
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[tuple[str, float], ...] = DEFAULT_STYLE_LAYERS
    stop_tolerance: float = _flag(0.003, "stop a photo early once its loss improves by less than this share "
                                         "over --stop-window iterations (0: never)")
    stop_window: int = _flag(50, "iterations over which --stop-tolerance is judged")
    log_every: int = 50
    snapshot_every: int = _flag(0, "also save the image every K iterations (0: never)")

    def settings(self) -> BatchSettings:
        return BatchSettings(**{f.name: getattr(self, f.name) for f in fields(BatchSettings)})

    def long_side(self, h: int, w: int) -> int:
        """The output's long side for a photo of h x w."""
        return max(h, w) if self.size == "original" else int(self.size)

    def scales(self, long_side: int) -> list[Scale]:
        return schedule(long_side, self.multiscale_start, self.multiscale_factor, self.iterations,
                        self.multiscale_iterations, self.lbfgs_history)

    def typical_scales(self) -> list[tuple[int, int, int]]:
        """(height, width, iterations) of each scale for a typical 4:3 photo at this size
        (12 MP when the size is 'original'), for time estimates."""
        long_side = 4000 if self.size == "original" else int(self.size)
        return [(*long_side_size(3 * long_side // 4, long_side, s.long_side), s.iterations)
                for s in self.scales(long_side)]

    def total_iterations(self, long_side: int) -> int:
        return sum(s.iterations for s in self.scales(long_side))

    def batch_key(self) -> tuple:
        """Jobs may share a batch when these agree (and their images are the same size)."""
        return (self.size, self.model, self.settings())

    def job(self, content, styles: tuple[StyleImage, ...], regions: tuple[Region, ...] = (),
            content_map=None) -> TransferJob:
        own = {f.name: getattr(self, f.name) for f in fields(TransferJob) if f.name in FIELD_NAMES}
        return TransferJob(content=content, styles=styles, regions=regions, content_map=content_map, **own)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["content_layers"] = list(self.content_layers)
        d["style_layers"] = {name: w for name, w in self.style_layers}
        d["multiscale_iterations"] = list(self.multiscale_iterations)
        return d


FIELD_NAMES = tuple(f.name for f in fields(TransferParams))
FLAGS = tuple(f for f in fields(TransferParams) if "help" in f.metadata)


def parse_flag(key: str, text: str):
    """A command-line value for the setting `key`, read as the config would read it."""
    flag = "--" + key.replace("_", "-")
    value = safeyaml.load(text, flag, safeyaml.FLAG) if text.strip() else text
    if key == "multiscale_iterations" and isinstance(value, str):
        value = [safeyaml.load(v, flag, safeyaml.FLAG) for v in value.split(",")]
    return _coerce(key, value, flag)


def validate(p: TransferParams, where: str = "transfer") -> TransferParams:
    """Raise ConfigError naming the first bad key as `where.key`, or as `--key` for where="--"."""
    def bad(key: str, why: str) -> ConfigError:
        name = "--" + key.replace("_", "-") if where == "--" else f"{where}.{key}"
        return ConfigError(f"{name}: {why}")

    for f in fields(p):
        value = getattr(p, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f.name, f"must be a finite number, got {shown(value)}")
    if p.size != "original" and (not isinstance(p.size, int) or p.size < 16):
        raise bad("size", f"must be at least 16 px or 'original', got {shown(p.size)}")
    if p.multiscale_start < 16:
        raise bad("multiscale_start", f"must be at least 16 px, got {p.multiscale_start}")
    if not 1.1 <= p.multiscale_factor <= 4:
        raise bad("multiscale_factor", f"must be between 1.1 and 4, got {p.multiscale_factor}")
    if not p.multiscale_iterations or min(p.multiscale_iterations) < 1:
        raise bad("multiscale_iterations", "needs one or more iteration counts, each at least 1")
    if p.iterations < 1:
        raise bad("iterations", f"must be at least 1, got {p.iterations}")
    if p.optimizer not in OPTIMIZERS:
        raise bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {shown(p.optimizer)}")
    if p.lr is not None and p.lr <= 0:
        raise bad("lr", f"must be positive, got {p.lr}")
    if p.lbfgs_history < 1:
        raise bad("lbfgs_history", f"must be at least 1, got {p.lbfgs_history}")
    for key in ("content_weight", "style_weight", "tv_weight"):
        if getattr(p, key) < 0:
            raise bad(key, f"must not be negative, got {getattr(p, key)}")
    if p.init not in INITS:
        raise bad("init", f"must be one of {', '.join(INITS)}, got {shown(p.init)}")
    if p.preserve_color not in COLOR_MODES:
        raise bad("preserve_color", f"must be one of {', '.join(COLOR_MODES)}, got {shown(p.preserve_color)}")
    if not 0.05 <= p.style_scale <= 4:
        raise bad("style_scale", f"must be between 0.05 and 4, got {p.style_scale}")
    if p.protect not in PROTECT:
        raise bad("protect", f"must be one of {', '.join(PROTECT)}, got {shown(p.protect)}")
    if not 0 <= p.protect_strength <= 1:
        raise bad("protect_strength", f"must be from 0 (keep the photo) to 1 (the full style), "
                                      f"got {p.protect_strength}")
    if p.protect == "faces" and not faces.available():
        raise bad("protect", faces.missing())
    if p.pooling not in POOLINGS:
        raise bad("pooling", f"must be one of {', '.join(POOLINGS)}, got {shown(p.pooling)}")
    if not p.content_layers:
        raise bad("content_layers", "needs at least one layer")
    if not p.style_layers:
        raise bad("style_layers", "needs at least one layer")
    for name in list(p.content_layers) + [n for n, _ in p.style_layers]:
        if name not in LAYER_INDEX:
            raise bad("content_layers" if name in p.content_layers else "style_layers",
                      f"unknown VGG19 layer {shown(name)} (e.g. relu1_1 … relu5_4)")
    if any(not math.isfinite(w) or w < 0 for _, w in p.style_layers):
        raise bad("style_layers", "layer weights must be finite and not negative")
    _check_loop(p, bad)
    return p


def _check_loop(p: TransferParams, bad) -> None:
    """The keys that shape the loop rather than the picture."""
    if not 0 <= p.stop_tolerance < 1:
        raise bad("stop_tolerance", f"must be at least 0 and under 1, got {p.stop_tolerance}")
    if p.stop_window < 1:
        raise bad("stop_window", f"must be at least 1, got {p.stop_window}")
    if p.log_every < 1:
        raise bad("log_every", f"must be at least 1, got {p.log_every}")
    if p.snapshot_every < 0:
        raise bad("snapshot_every", f"must not be negative, got {p.snapshot_every}")


def with_overrides(base: TransferParams, overrides: dict, where: str) -> TransferParams:
    """Apply a mapping of user overrides, coercing YAML values and naming bad keys."""
    values = {}
    for key, value in overrides.items():
        if key not in FIELD_NAMES:
            raise ConfigError(f"{where}.{clip(str(key), 40)}: unknown key ({_known(str(key))})")
        values[key] = _coerce(key, value, f"{where}.{key}")
    return validate(replace(base, **values), where)


def _known(key: str) -> str:
    """The key meant, where one is close; else every key."""
    close = difflib.get_close_matches(key, FIELD_NAMES, 1)
    return f"did you mean {close[0]}?" if close else f"known: {', '.join(FIELD_NAMES)}"


def _coerce(key: str, value, where: str):
    current = getattr(TransferParams(), key)
    try:
        if key == "lr":
            return None if value is None else float(value)
        if key == "size" and value == "original":
            return value
        if key == "multiscale_iterations":
            items = [value] if isinstance(value, int) else list(value)
            if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
                raise TypeError
            return tuple(items)
        if key == "content_layers":
            items = [value] if isinstance(value, str) else list(value)
            return tuple(str(v) for v in items)
        if key == "style_layers":
            if isinstance(value, dict):
                return tuple((str(k), float(v)) for k, v in value.items())
            names = [value] if isinstance(value, str) else list(value)
            return tuple((str(n), 1.0 / len(names)) for n in names)
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):  # true is no size
            raise TypeError
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(value)
        if isinstance(current, float):
            return float(value)  # YAML reads 1e4 as a string; float() takes it
        return str(value)
    except (TypeError, ValueError):
        kind = {"style_layers": "a list or a mapping of layer: weight", "size": "int or 'original'",
                "multiscale_iterations": "a list of ints"}.get(key, type(current).__name__)
        raise ConfigError(f"{where}: expected {kind}, got {shown(value)}") from None


def from_dict(d: dict) -> TransferParams:
    """The inverse of `TransferParams.as_dict`, for parameters stored in the journal."""
    values = {k: d[k] for k in FIELD_NAMES if k in d}
    values["content_layers"] = tuple(values.get("content_layers", DEFAULT_CONTENT_LAYERS))
    layers = values.get("style_layers", dict(DEFAULT_STYLE_LAYERS))
    values["style_layers"] = tuple((k, float(v)) for k, v in layers.items())
    if "multiscale_iterations" in values:
        values["multiscale_iterations"] = tuple(values["multiscale_iterations"])
    return TransferParams(**values)
