"""The daemon's YAML config, read into frozen dataclasses; every error names its key path."""

from __future__ import annotations

import math
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nstd import images, safeyaml
from nstd.daemon.database import is_postgres
from nstd.engine.types import HISTORY_PRECISIONS, PRECISIONS, Switches
from nstd.errors import ConfigError, clip, shown
from nstd.limits import Limits, parse as parse_limits
from nstd.daemon.hooks import HookConfig, parse as parse_hooks
from nstd.units import size_in_bytes
from nstd.web.settings import HttpConfig, parse as parse_http
from nstd.params import TransferParams, with_overrides

STYLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED = ("regions", "keep")  # the outbox folder of region-map outputs; a region that keeps the photo
WATCH_MODES = ("auto", "native", "polling")
ON_SUCCESS = ("move", "delete", "keep")
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")


@dataclass(frozen=True)
class Style:
    name: str
    image: Path
    params: TransferParams  # transfer settings with this style's overrides applied


@dataclass(frozen=True)
class BlendPart:
    style: str  # a configured style's name
    weight: float
    scale: float | None = None  # None: that style's own style_scale


@dataclass(frozen=True)
class Blend:
    """Several styles at once, weighted; used like a style (inbox folder, outbox folder)."""

    name: str
    parts: tuple[BlendPart, ...]
    params: TransferParams


@dataclass(frozen=True)
class WatchConfig:
    mode: str = "auto"
    settle_seconds: float | None = None  # None: 5 s on local disks, 15 s on network filesystems
    rescan_interval: float = 300.0
    poll_interval: float = 2.0
    ignore: tuple[str, ...] = ()
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS


@dataclass(frozen=True)
class WorkerConfig:
    device: str = "auto"
    max_batch: int | None = None  # None: sized from free memory
    batch_window: float = 2.0
    stop_timeout: float = 60.0
    max_attempts: int = 3
    retry_backoff: float = 30.0
    isolation: str = "auto"  # thread | process per device; auto: processes where there are several
    lease: float = 120.0  # seconds a claim holds without renewal before another worker may take it
    refill: bool = True  # queued jobs of a running batch's size take its finished photos' places
    measure_speed: bool = True  # time the device at start, to say how long a photo takes (about a second)
    max_memory: int | None = None  # bytes the engine may plan for; past it a photo's large scales tile
    # worker.precision, cuda_graphs, checkpoint, reproducible, compile, history_precision and
    # memory_budget: how batches run
    switches: Switches = Switches()


@dataclass(frozen=True)
class OutputConfig:
    format: str = "JPEG"
    quality: int = 92


@dataclass(frozen=True)
class Config:
    path: Path
    inbox: Path
    outbox: Path
    failed: Path
    processed: Path
    state_dir: Path
    models_dir: Path | None
    on_success: str
    max_pixels: int
    styles: dict[str, Style]
    transfer: TransferParams
    blends: dict[str, Blend] = field(default_factory=dict)
    output: OutputConfig = OutputConfig()
    watch: WatchConfig = WatchConfig()
    worker: WorkerConfig = WorkerConfig()
    limits: Limits = Limits()
    http: HttpConfig = HttpConfig()
    on_done: HookConfig = HookConfig()
    log_level: str = "info"
    log_format: str = "auto"
    # Seconds between the supervisor's looks at its folders, workers and other hosts'
    # leases (a share that went away, a dead worker, an expired claim).
    health_interval: float = field(default=5.0)
    journal: str | None = None  # a postgresql:// URL shared by several hosts; None: SQLite in state_dir
    spool: Path | None = None  # where accepted photos wait for their jobs; None: state_dir/spool
    host: str = field(default_factory=socket.gethostname)  # what this daemon's claims are made under

    @property
    def journal_target(self) -> Path | str:
        return self.journal or self.state_dir / "journal.sqlite3"

    @property
    def spool_dir(self) -> Path:
        return self.spool or self.state_dir / "spool"

    def model_ids(self) -> set[str]:
        """Every weight set the config's styles and blends use."""
        return ({self.transfer.model} | {s.params.model for s in self.styles.values()}
                | {b.params.model for b in self.blends.values()})


TOP_KEYS = {"inbox", "outbox", "failed", "processed", "state_dir", "models_dir", "on_success", "max_pixels",
            "styles", "blends", "transfer", "output", "watch", "worker", "log", "journal", "spool", "host",
            "limits", "http", "on_done", "health_interval"}


def load(path: Path) -> Config:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}); is it the YAML config?") from None
    return parse(safeyaml.load(text, str(path), safeyaml.CONFIG) or {}, Path(path))


def parse(raw: Any, path: Path) -> Config:
    root = path.resolve().parent
    m = _mapping(raw, "", TOP_KEYS)
    folders = {k: _path(m.get(k, f"./{k}" if k != "state_dir" else "./state"), k, root)
               for k in ("inbox", "outbox", "failed", "processed", "state_dir")}
    models_dir = _path(m["models_dir"], "models_dir", root) if m.get("models_dir") else None
    transfer = with_overrides(TransferParams(), _mapping(m.get("transfer", {}), "transfer"), "transfer")
    styles = _styles(m.get("styles"), transfer, root)
    on_success = _choice(m.get("on_success", "move"), "on_success", ON_SUCCESS)
    log = _mapping(m.get("log", {}), "log", {"level", "format"})
    return Config(
        path=path.resolve(), **folders, models_dir=models_dir, on_success=on_success,
        max_pixels=_int(m.get("max_pixels", images.DEFAULT_MAX_PIXELS), "max_pixels", 1),
        styles=styles,
        blends=_blends(m.get("blends"), styles, transfer),
        transfer=transfer,
        output=_output(m.get("output", {})),
        watch=_watch(m.get("watch", {})),
        worker=_worker(m.get("worker", {})),
        limits=parse_limits(m.get("limits")),
        http=parse_http(m.get("http"), root),
        on_done=parse_hooks(m.get("on_done"), root),
        health_interval=_float(m.get("health_interval", 5.0), "health_interval", 0.2, 60),
        log_level=_choice(log.get("level", "info"), "log.level", ("debug", "info", "warning", "error")),
        log_format=_choice(log.get("format", "auto"), "log.format", ("auto", "json", "console")),
        **_shared(m, folders["state_dir"], root),
    )


def _shared(m: dict, state_dir: Path, root: Path) -> dict:
    """The journal and the spool, which several hosts must share, and the name this one
    goes by there (set it where one machine runs several daemons on one journal)."""
    journal = m.get("journal")
    if journal is not None and not is_postgres(journal):
        raise ConfigError("journal: a postgresql:// URL shared by several hosts, or leave it out "
                          "for SQLite in state_dir")
    spool = _path(m["spool"], "spool", root) if m.get("spool") else None
    if journal and (spool is None or spool.resolve().is_relative_to(state_dir.resolve())):
        raise ConfigError("spool: with a shared journal, name a folder every host mounts (e.g. beside "
                          "the inbox on the share), not one in state_dir: any host may run a photo "
                          "another took in")
    host = m.get("host", socket.gethostname())
    if not isinstance(host, str) or not re.fullmatch(r"[^\s:]{1,64}", host):
        raise ConfigError("host: a name of up to 64 characters without spaces or ':' (the default is "
                          "this machine's host name)")
    return {"journal": journal, "spool": spool, "host": host}


def _blends(raw: Any, styles: dict[str, Style], transfer: TransferParams) -> dict[str, Blend]:
    out = {}
    for name, spec in _mapping(raw or {}, "blends").items():
        key = f"blends.{name}"
        if not isinstance(name, str) or not STYLE_NAME.match(name):
            raise ConfigError(f"{key}: a blend name is a folder name: letters, digits, '.', '_' and '-'")
        if name in RESERVED:
            raise ConfigError(f"{key}: '{name}' is reserved for masks; choose another name")
        if name in styles:
            raise ConfigError(f"{key}: a style has this name already")
        spec = dict(_mapping(spec, key))
        if "styles" not in spec:
            raise ConfigError(f"{key}.styles: missing (e.g. styles: {{starry: 0.7, scream: 0.3}})")
        parts = []
        for style, part in _mapping(spec.pop("styles"), f"{key}.styles").items():
            where = f"{key}.styles.{style}"
            if style not in styles:
                raise ConfigError(f"{where}: no such style (known: {', '.join(sorted(styles))})")
            part = {"weight": part} if not isinstance(part, dict) else _mapping(part, where, {"weight", "scale"})
            weight = _float(part.get("weight", 1.0), f"{where}.weight", 0)
            scale = part.get("scale")
            scale = None if scale is None else _float(scale, f"{where}.scale", 0.05, 4)
            parts.append(BlendPart(style, weight, scale))
        if len(parts) < 2:
            raise ConfigError(f"{key}.styles: a blend needs at least two styles")
        if sum(p.weight for p in parts) <= 0:
            raise ConfigError(f"{key}.styles: the weights must not all be zero")
        out[name] = Blend(name, tuple(parts), with_overrides(transfer, spec, key))
    return out


def _styles(raw: Any, transfer: TransferParams, root: Path) -> dict[str, Style]:
    if not raw:
        raise ConfigError("styles: at least one style is needed, e.g. styles: {starry: {image: starry.jpg}}")
    m = _mapping(raw, "styles")
    out = {}
    for name, spec in m.items():
        key = f"styles.{name}"
        if not isinstance(name, str) or not STYLE_NAME.match(name):
            raise ConfigError(f"{key}: a style name is a folder name: letters, digits, '.', '_' and '-'")
        if name in RESERVED:
            raise ConfigError(f"{key}: '{name}' is reserved for masks; choose another name")
        if isinstance(spec, str):
            spec = {"image": spec}
        spec = dict(_mapping(spec, key))
        if "image" not in spec:
            raise ConfigError(f"{key}.image: missing")
        image = _path(spec.pop("image"), f"{key}.image", root)
        params = with_overrides(transfer, spec, key)
        out[name] = Style(name, image, params)
    return out


def _output(raw: Any) -> OutputConfig:
    m = _mapping(raw, "output", {"format", "quality"})
    try:
        fmt = images.output_format(str(m.get("format", "jpeg")))
    except ValueError as e:
        raise ConfigError(f"output.format: {e}") from None
    return OutputConfig(fmt, _int(m.get("quality", 92), "output.quality", 1, 100))


def _watch(raw: Any) -> WatchConfig:
    m = _mapping(raw, "watch", {"mode", "settle_seconds", "rescan_interval", "poll_interval", "ignore",
                                "extensions"})
    d = WatchConfig()
    exts = m.get("extensions", list(d.extensions))
    if not isinstance(exts, list) or not all(isinstance(e, str) and e for e in exts):
        raise ConfigError("watch.extensions: expected a list such as [.jpg, .png]")
    ignore = m.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) and p for p in ignore):
        raise ConfigError("watch.ignore: expected a list of glob patterns such as ['*.xmp']")
    return WatchConfig(
        mode=_choice(m.get("mode", d.mode), "watch.mode", WATCH_MODES),
        settle_seconds=(None if m.get("settle_seconds") in (None, "auto")
                        else _float(m["settle_seconds"], "watch.settle_seconds", 0)),
        rescan_interval=_float(m.get("rescan_interval", d.rescan_interval), "watch.rescan_interval", 1),
        poll_interval=_float(m.get("poll_interval", d.poll_interval), "watch.poll_interval", 0.1),
        ignore=tuple(ignore),
        extensions=tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts),
    )


def _worker(raw: Any) -> WorkerConfig:
    m = _mapping(raw, "worker", {"device", "max_batch", "batch_window", "stop_timeout", "max_attempts",
                                 "retry_backoff", "isolation", "memory_budget", "precision", "cuda_graphs",
                                 "checkpoint", "reproducible", "compile", "history_precision", "lease",
                                 "refill", "measure_speed", "max_memory"})
    d = WorkerConfig()
    mb = m.get("max_batch", "auto")
    return WorkerConfig(
        device=str(m.get("device", d.device)),
        max_batch=None if mb == "auto" else _int(mb, "worker.max_batch", 1),
        batch_window=_float(m.get("batch_window", d.batch_window), "worker.batch_window", 0),
        stop_timeout=_float(m.get("stop_timeout", d.stop_timeout), "worker.stop_timeout", 0),
        max_attempts=_int(m.get("max_attempts", d.max_attempts), "worker.max_attempts", 1),
        retry_backoff=_float(m.get("retry_backoff", d.retry_backoff), "worker.retry_backoff", 0),
        isolation=_choice(m.get("isolation", d.isolation), "worker.isolation", ("auto", "thread", "process")),
        lease=_float(m.get("lease", d.lease), "worker.lease", 2),
        refill=_bool(m.get("refill", d.refill), "worker.refill"),
        measure_speed=_bool(m.get("measure_speed", d.measure_speed), "worker.measure_speed"),
        max_memory=_size(m.get("max_memory", "auto"), "worker.max_memory"),
        switches=Switches(
            precision=_choice(m.get("precision", d.switches.precision), "worker.precision", PRECISIONS),
            cuda_graph=_auto_bool(m.get("cuda_graphs", "auto"), "worker.cuda_graphs"),
            checkpoint=_auto_bool(m.get("checkpoint", "auto"), "worker.checkpoint"),
            reproducible=_auto_bool(m.get("reproducible", "auto"), "worker.reproducible"),
            compile=_auto_bool(m.get("compile", "auto"), "worker.compile"),
            history_precision=_choice(m.get("history_precision", d.switches.history_precision),
                                      "worker.history_precision", HISTORY_PRECISIONS),
            memory_budget=_float(m.get("memory_budget", d.switches.memory_budget), "worker.memory_budget", 0.05, 1.0)),
    )


def _size(raw: Any, key: str) -> int | None:
    if raw == "auto":
        return None
    try:
        return size_in_bytes(raw)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _auto_bool(raw: Any, key: str) -> bool | None:
    if raw == "auto":
        return None
    if isinstance(raw, bool):
        return raw
    raise ConfigError(f"{key}: must be auto, true or false, not {shown(raw)}")


# --- typed readers that name the key --------------------------------------------------


def _bool(raw: Any, key: str) -> bool:
    if isinstance(raw, bool):
        return raw
    raise ConfigError(f"{key}: must be true or false, not {shown(raw)}")

def _mapping(raw: Any, key: str, allowed: set[str] | None = None) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {type(raw).__name__}")
    if allowed is not None:
        for k in raw:
            if k not in allowed:
                name = f"{key}.{clip(str(k), 60)}" if key else clip(str(k), 60)
                raise ConfigError(f"{name}: unknown key (known: {', '.join(sorted(allowed))})")
    return raw


def _path(raw: Any, key: str, root: Path) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{key}: expected a path, got {shown(raw)}")
    p = Path(raw).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def _choice(raw: Any, key: str, options: tuple[str, ...]) -> str:
    if raw not in options:
        raise ConfigError(f"{key}: must be one of {', '.join(options)}, got {shown(raw)}")
    return raw


def _number(raw: Any, key: str, kind: type, lo: float | None, hi: float | None):
    if isinstance(raw, bool):
        raise ConfigError(f"{key}: expected a number, got {shown(raw)}")
    try:
        value = kind(raw)
        if kind is int and float(raw) != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {shown(raw)}") from None
    if not math.isfinite(value):  # .nan and .inf would pass every range check below
        raise ConfigError(f"{key}: must be a finite number, got {shown(raw)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"{key}: must be {bounds}, got {shown(raw)}")
    return value


def _int(raw: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
    return _number(raw, key, int, lo, hi)


def _float(raw: Any, key: str, lo: float | None = None, hi: float | None = None) -> float:
    return _number(raw, key, float, lo, hi)
