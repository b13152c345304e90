"""Command line: `nstd run | stylize | check | status | retry | init | weights | bench`."""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

from nstd import __version__, images, weights
from nstd.errors import ConfigError, NstdError
from nstd.params import FLAGS, TransferParams, parse_flag, validate


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NstdError as e:
        print(f"nstd: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nstd: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nstd", description="Neural style transfer daemon.")
    p.add_argument("--version", action="version", version=f"nstd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_check(sub)
    _add_status(sub)
    _add_stylize(sub)
    _add_retry(sub)
    _add_init(sub)
    _add_weights(sub)
    _add_bench(sub)
    return p


def _models_dir(args) -> Path:
    return Path(args.models_dir).expanduser() if args.models_dir else weights.default_models_dir()


def _folder(path: Path, option: str) -> Path:
    """`path` made ready to write into, before any work; a one-line error naming the
    option where it is a file or cannot be made."""
    if path.exists() and not path.is_dir():
        raise NstdError(f"{option} {path}: a file, not a folder; name a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NstdError(f"{option} {path}: cannot create it ({e.strerror})") from None
    return path


def _add_models_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", help="folder for converted weights (default: $NSTD_MODELS_DIR "
                                        "or ~/.cache/nstd)")


# --- daemon -----------------------------------------------------------------------

def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=Path("/etc/nstd/config.yaml"),
                   help="YAML config (default /etc/nstd/config.yaml)")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run the daemon: watch the inbox, stylize, write the outbox")
    _add_config(p)
    p.set_defaults(func=cmd_run)


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="validate config, folders, weights and device; print the plan")
    _add_config(p)
    p.set_defaults(func=cmd_check)


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="queue counts, the running batch and recent failures")
    _add_config(p)
    p.set_defaults(func=cmd_status)


def cmd_run(args) -> int:
    from nstd import config
    from nstd.daemon.service import Service
    from nstd.log import setup

    cfg = config.load(args.config)
    setup(cfg.log_level, None if cfg.log_format == "auto" else cfg.log_format == "json")
    return Service(cfg).run()


def cmd_check(args) -> int:
    from nstd import config
    from nstd.daemon import preflight
    from nstd.daemon.styles import StyleBook
    from nstd.engine.device import describe, resolve_devices

    cfg = config.load(args.config)
    print(f"config: {cfg.path} ok")
    findings = preflight.folders(cfg) + [preflight.watch_plan(cfg)]
    models_dir = cfg.models_dir or weights.default_models_dir()
    for model_id in sorted(cfg.model_ids()):
        try:
            info = weights.verify(models_dir, model_id)
            findings.append(preflight.Finding(True, f"weights: {model_id} ({info.preprocessing}, "
                                                    f"sha256 {info.file_sha256[:12]}…) in {models_dir}"))
        except NstdError as e:
            findings.append(preflight.Finding(False, f"weights: {e}"))
    findings.append(_journal_finding(cfg))
    findings += _daemon_findings(cfg)
    try:
        devices = resolve_devices(cfg.worker.device)
        findings.append(preflight.Finding(True, f"workers: one per device: {', '.join(map(describe, devices))}"))
        findings += _speed_findings(cfg, devices, models_dir)
    except ValueError as e:
        findings.append(preflight.Finding(False, f"worker.device: {e}"))
    try:
        book = StyleBook.load(cfg)
        for name in book.names():
            st = book.get(name)
            p = st.params
            paintings = " + ".join(f"{part.path.name} ({part.pixels.shape[2]}x{part.pixels.shape[1]})"
                                   + (f" x{part.weight:g}" if len(st.parts) > 1 else "") for part in st.parts)
            findings.append(preflight.Finding(True, f"{'blend' if len(st.parts) > 1 else 'style'} {name}: "
                                                    f"{paintings}, "
                                                    f"{p.size} px, {p.iterations} it, {p.optimizer}, "
                                                    f"style weight {p.style_weight:g}"))
    except NstdError as e:
        findings.append(preflight.Finding(False, str(e)))
    batch = "auto" if cfg.worker.max_batch is None else cfg.worker.max_batch
    findings.append(preflight.Finding(True, f"plan: inbox/<photo> gets every style, inbox/<style>/<photo> "
                                            f"one; outputs to {cfg.outbox}/<style>/; batches up to {batch}; "
                                            f"on success inputs are {_on_success_text(cfg.on_success)}"))
    for f in findings:
        print(("ok    " if f.ok else "FAIL  ") + f.text)
    failed = sum(not f.ok for f in findings)
    print(f"{failed} problem(s)" if failed else "ready")
    return 1 if failed else 0


def _speed_findings(cfg, devices, models_dir, now: float | None = None) -> list:
    """Per device, how long one photo in one style takes at the configured settings: at
    the rate the running daemon's worker measured there when it started, else measured
    now. A measurement now competes with that daemon for the device."""
    import time

    from nstd.daemon import preflight
    from nstd.engine import speed
    from nstd.engine.device import describe
    from nstd.engine.vgg import VGGFeatures

    p = cfg.transfer
    recorded = _recorded_speeds(cfg, time.time() if now is None else now)
    loaded = None
    out = []
    for device in devices:
        worker = recorded.get(describe(device))
        if worker is not None:
            rate = worker.speed
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(worker.speed_at))
            source = f"measured by the running daemon on {worker.host} at {stamp}"
        else:
            try:
                loaded = loaded or weights.load(models_dir, p.model)
            except NstdError:
                continue  # the weights finding says why
            sd, info = loaded
            model = VGGFeatures(sd, info.preprocessing, p.settings().layers, p.pooling, info.model_id).to(device)
            measured = speed.measure(model, cfg.worker.switches)
            rate, source = measured.flops_per_second, f"measured now for {measured.seconds:.1f} s"
        seconds = speed.photo_seconds(rate, p.typical_scales(), p.settings().layers)
        out.append(preflight.Finding(True, f"speed: {describe(device)}: about {speed.say(seconds)} per photo "
                                           f"and style at size {p.size}, {p.iterations} iterations "
                                           f"({rate / 1e9:.1f} GFLOP/s, {source})"))
    return out


def _recorded_speeds(cfg, now: float) -> dict:
    """This host's workers heard from lately that measured their device, by device."""
    from nstd.daemon.journal import Journal

    if not cfg.journal and not cfg.journal_target.exists():
        return {}
    try:
        journal = Journal(cfg.journal_target, readonly=True)
    except NstdError:
        return {}  # the journal finding says why
    try:
        workers = journal.workers()
    finally:
        journal.close()
    return {w.device: w for w in workers
            if w.host == cfg.host and w.speed and w.speed_at and now - w.heartbeat <= SILENT_AFTER}


SILENT_AFTER = 90.0  # seconds without a heartbeat before nstd status calls a worker silent


def _eta(progress, now: float) -> str:
    """", iteration 150 of 500, 2.1 it/s, about 3 min left" for a batch under way: the
    rate and the time left as its worker measured them (see speed.Pace), the time left
    counted down from when it reported."""
    from nstd.durations import say

    if progress is None:
        return ", starting"
    out = f", iteration {progress.done} of {progress.total}"
    if progress.rate is None or progress.eta is None:
        return out  # too early to say, or a worker of an nstd that did not measure it
    return out + f", {progress.rate:.2f} it/s, about {say(max(progress.eta - now, 0.0))} left"


def _journal_finding(cfg):
    from nstd.daemon import preflight
    from nstd.daemon.journal import Journal

    if cfg.journal:
        return _shared_journal_finding(cfg)
    db = cfg.journal_target
    if not db.exists() or db.stat().st_size == 0:
        return preflight.Finding(True, f"journal: {db} (new: none yet)")
    try:
        Journal(db, readonly=True).close()
    except NstdError as e:
        return preflight.Finding(False, f"journal: {e}")
    return preflight.Finding(True, f"journal: {db} (intact)")


def _shared_journal_finding(cfg):
    """A PostgreSQL journal: reachable, its schema's version, and this host's clock
    against the server's (leases are times written by one host and read by others)."""
    import time

    from nstd.daemon import preflight
    from nstd.daemon.journal import SCHEMA_VERSION, Journal

    try:
        journal = Journal(cfg.journal, readonly=True)
    except NstdError as e:
        return preflight.Finding(False, f"journal: {e}")
    try:
        label = journal.db.label
        version = journal.schema_version()
        before = time.time()
        server = journal.server_time()
        skew = server - (before + time.time()) / 2
    finally:
        journal.close()
    if version is not None and version > SCHEMA_VERSION:
        return preflight.Finding(False, f"journal: {label} has schema version {version}, newer than this "
                                        f"nstd's {SCHEMA_VERSION}; upgrade nstd on this host")
    if abs(skew) > 5:
        return preflight.Finding(False, f"journal: this host's clock is {skew:+.1f} s off the database "
                                        f"server's; leases need clocks within a few seconds (run NTP)")
    schema = "no tables yet: nstd run makes them" if version is None else f"schema {version}"
    return preflight.Finding(True, f"journal: {label} ({schema}, clock within {abs(skew):.2f} s of the server's)")


def _daemon_findings(cfg) -> list:
    """Whether a daemon runs on this config, and whether another one has the inbox."""
    import time

    from nstd.daemon import preflight
    from nstd.daemon.lock import InboxClaim, StateLock

    out = []
    holder = StateLock(cfg.state_dir).holder() if cfg.state_dir.is_dir() else None
    if holder:
        out.append(preflight.Finding(True, f"daemon: running on this state_dir ({holder})"))
    other = InboxClaim(cfg.inbox, cfg.state_dir.resolve()).other(time.time()) if cfg.inbox.is_dir() else None
    if other:
        out.append(preflight.Finding(False, f"inbox: another nstd ({other}) watches {cfg.inbox}; "
                                            f"a second daemon on it would take the same photos in again"))
    return out


def _on_success_text(mode: str) -> str:
    return {"move": "moved to processed/", "delete": "deleted", "keep": "left in the inbox"}[mode]


def cmd_status(args) -> int:
    import time

    from nstd import config
    from nstd.daemon import folders
    from nstd.daemon.journal import Journal

    cfg = config.load(args.config)
    db = cfg.journal_target
    if not cfg.journal and not db.exists():
        raise NstdError(f"no journal at {db}; has the daemon run with this config?")
    journal = Journal(db, readonly=True)
    try:
        trouble = folders.paused_now(cfg)
        if trouble:
            print(f"paused: {trouble.reason}; new work waits until it is back")
        p = journal.input_counts()
        print(f"photos: {p['queued']} in progress, {p['done']} done, {p['failed']} failed")
        c = journal.counts()
        print(f"jobs (photo x style): {c['queued']} queued, {c['running']} running, {c['done']} done, "
              f"{c['failed']} failed")
        _print_workers(journal, time.time())
        failures = journal.recent_failures(10)
        if failures:
            print("recent failed photos:")
            for relpath, error, when in failures:
                stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when or 0))
                reason = (error or "").removeprefix(f"{relpath}: ")  # most reasons name the file already
                print(f"  {stamp}  {relpath}: {reason}")
    finally:
        journal.close()
    return 0


def _print_workers(journal, now: float) -> None:
    """Each worker on every host, with its running batch; then batches of workers not listed."""
    from collections import defaultdict

    from nstd.durations import say

    batches = defaultdict(list)
    for job in journal.running():
        batches[job.batch_id].append(job)
    workers = journal.workers()
    if workers:
        print("workers:")
    for w in workers:
        age = now - w.heartbeat
        memory = f", {w.memory / 2**30:.0f} GiB" if w.memory else ""
        doing = f"silent for {say(age)}" if age > SILENT_AFTER else f"{w.doing}, heard {say(max(age, 0))} ago"
        print(f"  {w.host}  {w.device}{memory}: {doing}")
        for batch_id in sorted({j.batch_id for j in journal.running_of(w.owner)}):
            _print_batch(journal, batch_id, batches.pop(batch_id, []), now, "    ")
    for batch_id, jobs in batches.items():
        _print_batch(journal, batch_id, jobs, now, "")


def _print_batch(journal, batch_id: str, jobs: list, now: float, indent: str) -> None:
    if not jobs:
        return  # it began after the listing was read
    first = jobs[0]
    print(f"{indent}running batch {batch_id}: {len(jobs)} × {first.width}x{first.height}"
          f"{_eta(journal.batch_progress(batch_id), now)}")
    for job in jobs:
        print(f"{indent}  {job.id:>6}  {job.style:<14} {job.relpath}")


# --- init -------------------------------------------------------------------------

def _add_init(sub) -> None:
    p = sub.add_parser("init", help="write a starter config, its folders and three paintings into DIR")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.set_defaults(func=cmd_init)


def cmd_init(args) -> int:
    from nstd.starter import init

    config = init(args.dir)
    print(f"wrote {config}, its folders and styles/. Next:\n"
          f"  nstd weights fetch                 # the VGG19 weights, once (80 MB)\n"
          f"  nstd check --config {config}\n"
          f"  nstd run --config {config}         # then drop photos into {args.dir / 'inbox'}")
    return 0


# --- retry ------------------------------------------------------------------------

def _add_retry(sub) -> None:
    p = sub.add_parser("retry", help="move failed photos back into the inbox to be tried again",
                       description="Move photos from failed/ back to their place in the inbox; the "
                                   "daemon takes them in again as new drops.")
    p.add_argument("names", nargs="*", metavar="NAME", help="photos as the inbox named them (globs allowed)")
    p.add_argument("--reason", help="those whose reason contains this text, e.g. 'No space left'")
    p.add_argument("--all", action="store_true", help="every photo in failed/")
    _add_config(p)
    p.set_defaults(func=cmd_retry)


def cmd_retry(args) -> int:
    from fnmatch import fnmatch

    from nstd import config
    from nstd.daemon import dispose
    from nstd.fsutil import printable

    if not (args.names or args.reason or args.all):
        raise NstdError("retry: name the photos, or give --reason TEXT, or --all")
    cfg = config.load(args.config)
    records = dispose.failed_records(cfg.failed)
    chosen = [(src, rec) for src, rec in records
              if (args.all or any(fnmatch(rec.get("input", ""), n) for n in args.names) or
                  (args.reason and args.reason in rec.get("reason", "")))]
    unknown = [n for n in args.names if not any(fnmatch(rec.get("input", ""), n) for _, rec in records)]
    for name in unknown:
        print(f"nstd: {printable(name)}: no photo of that name in {cfg.failed}", file=sys.stderr)
    if unknown and not chosen:
        return 1
    moved = 0
    for src, rec in chosen:
        try:
            dispose.back_to_inbox(cfg.inbox, src, rec)
        except (OSError, ValueError) as e:
            print(f"nstd: {rec.get('input')}: not moved back ({e})", file=sys.stderr)
            continue
        print(f"{rec.get('input')}: back in the inbox (was: {rec.get('reason', '')[:100]})")
        moved += 1
    print(f"nstd: {moved} of {len(chosen)} photo(s) moved back to {cfg.inbox}", file=sys.stderr)
    return 0 if moved == len(chosen) and not unknown else 1


# --- stylize ----------------------------------------------------------------------

def _add_stylize(sub) -> None:
    d = TransferParams()
    p = sub.add_parser("stylize", help="stylize photos once and exit",
                       description="Stylize each CONTENT with each --style; outputs and JSON loss "
                                   "logs go to OUTDIR. Same-size photos run as one batch.")
    p.add_argument("contents", nargs="+", type=Path, metavar="CONTENT", help="photos, or folders of photos")
    p.add_argument("--blend", type=_weights, metavar="W1,W2,...",
                   help="one output per photo in a weighted blend of all the --style images")
    p.add_argument("--style", "-s", action="append", required=True, type=Path,
                   help="style image (repeat for several)")
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--mask", type=Path, metavar="FILE", help="white: stylize, black: keep the photo, grey: between "
                   "(default: each photo's own PHOTO.mask.png beside it, if any)")
    p.add_argument("--regions", type=Path, metavar="FILE", help="a map of flat colours, one style per colour "
                   "(default: each photo's own PHOTO.regions.png, if any)")
    p.add_argument("--region", action="append", default=[], metavar="#RRGGBB=STYLE",
                   help="what a region map's colour takes: a --style image's name (its file name without "
                        "extension) or keep; repeat for each colour")
    for f in FLAGS:
        p.add_argument("--" + f.name.replace("_", "-"), type=partial(parse_flag_or_usage, f.name),
                       default=getattr(d, f.name), choices=f.metadata["choices"], metavar=_metavar(f),
                       help=f.metadata["help"] + " (default: %(default)s)")
    p.add_argument("--format", default="jpeg", choices=("jpeg", "png", "tiff"))
    p.add_argument("--quality", type=int, default=92, help="JPEG quality")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                   help="refuse larger images (decompression-bomb guard)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_models_dir(p)
    p.set_defaults(func=cmd_stylize)


def cmd_stylize(args) -> int:
    from nstd import stylize
    from nstd.log import setup

    setup()
    # Losses every 10 iterations: the progress bar shows them, and a person watches it.
    params = validate(TransferParams(**{f.name: getattr(args, f.name) for f in FLAGS}, log_every=10), where="--")
    if args.max_batch < 1:
        raise NstdError("--max-batch must be at least 1")
    if args.blend is not None and len(args.blend) != len(args.style):
        raise NstdError(f"--blend: {len(args.blend)} weights for {len(args.style)} --style images")
    contents = stylize.expand(args.contents)
    if not contents:
        from nstd.config import DEFAULT_EXTENSIONS

        raise NstdError(f"{', '.join(map(str, args.contents))}: no photos to stylize "
                        f"(a folder's {', '.join(DEFAULT_EXTENSIONS)} files are taken)")
    _folder(args.outdir, "-o")  # now, not after the first photo's compute
    req = stylize.Request(contents=contents, styles=args.style, outdir=args.outdir, params=params,
                          device=args.device, fmt=images.output_format(args.format),
                          quality=args.quality, max_batch=args.max_batch, max_pixels=args.max_pixels,
                          models_dir=_models_dir(args), blend=args.blend, mask=args.mask, regions=args.regions,
                          colours=_region_colours(args))
    try:
        counts: dict = {}
        failures = stylize.run(req, on_error=lambda msg: print(f"nstd: error: {msg}", file=sys.stderr),
                               make_progress=_tqdm_progress, counts=counts)
    except ValueError as e:  # e.g. an unusable --device
        raise NstdError(str(e)) from None
    print(f"nstd: {counts['written']} of {counts['expected']} written to {args.outdir}", file=sys.stderr)
    return 1 if failures else 0


def _region_colours(args) -> tuple[tuple[str, str], ...]:
    """--region '#rrggbb=STYLE' pairs, checked against the --style names."""
    from nstd import masks

    if args.mask and args.regions:
        raise NstdError("--mask and --regions: give one of them")
    names = {p.stem for p in args.style}
    out = []
    for text in args.region:
        colour, sep, target = text.partition("=")
        if not sep:
            raise NstdError(f"--region {text}: write it as '#rrggbb=STYLE' or '#rrggbb=keep'")
        masks.parse_colour(colour, f"--region {text}")
        if target != masks.KEEP and (target not in names or args.blend):
            raise NstdError(f"--region {text}: {target!r} is not a --style name ({', '.join(sorted(names))}) "
                            f"or keep" + (" (a region map takes single styles, not --blend)" if args.blend else ""))
        out.append(("#" + colour.strip().lstrip("#").lower(), target))
    return tuple(out)


def _tqdm_progress(label: str, total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="it", leave=True, file=sys.stderr)
    closed = []

    def update(iteration: int, losses: list | None) -> None:
        if closed:  # the total is a ceiling: photos that stop early end the run sooner
            return
        bar.update(min(iteration, total) - bar.n)
        if losses:
            bar.set_postfix(loss=f"{sum(r['total'] for r in losses) / len(losses):.4g}")
        if iteration >= total:
            bar.close()
            closed.append(True)

    return update


# --- bench ------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent / "styles"


def _int_list(least: int):
    """Whole numbers separated by commas, each at least `least`."""
    one = _at_least(least)

    def parse(text: str) -> tuple[int, ...]:
        return tuple(one(v) for v in text.split(","))
    return parse


def _at_least(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}")
        return value
    return parse


def parse_flag_or_usage(key: str, text: str):
    """A transfer flag's value, or argparse's usage error naming the flag."""
    try:
        return parse_flag(key, text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


def _weights(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected weights separated by commas, not {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values) or not sum(values) > 0:
        raise argparse.ArgumentTypeError("weights must be finite, not negative, and not all zero")
    return values


def _metavar(f) -> str | None:
    return None if f.metadata["choices"] else f.name.split("_")[-1].upper()


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure nstd against the tutorial loop, side by side")
    p.add_argument("--content", type=Path, default=EXAMPLES / "shipwreck.jpg", help="photo to stylize")
    p.add_argument("--style", type=Path, default=EXAMPLES / "starry_night.jpg", help="style image")
    p.add_argument("--model", default=weights.DEFAULT_MODEL, help="weights id (see: nstd weights list)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--size", type=_at_least(16), default=512, help="long side of the standard workload")
    p.add_argument("--iterations", type=_at_least(1), default=500)
    p.add_argument("--sweep-iterations", type=_at_least(1), help="iterations for the batch and scale sweeps "
                                                                 "(default: --iterations)")
    p.add_argument("--batches", type=_int_list(1), help="batch sizes to sweep (default: 1, 2, 4, … up to what fits)")
    p.add_argument("--max-batch", type=_at_least(1), default=64, help="largest batch the sweep tries")
    p.add_argument("--sizes", type=_int_list(16), default=(256, 512, 768, 1024), help="long sides to sweep")
    p.add_argument("--precision", default="auto",
                   help="the fast path's convolutions, as worker.precision: auto, fp32, tf32 or bf16")
    p.add_argument("--stream-photos", type=_at_least(0),
                   help="photos in the stream at the best batch, with stopping and refill as the daemon runs "
                        "them (default: 3 batches; 0: none)")
    p.add_argument("--no-baseline", action="store_true", help="skip the tutorial loop")
    p.add_argument("--no-latency", action="store_true", help="skip the drop-to-output run of the daemon")
    p.add_argument("--no-time-to-quality", action="store_true",
                   help="skip the time each way of running takes to reach nstd fp32's picture")
    p.add_argument("--no-compile", action="store_true",
                   help="leave out the torch.compile contenders (each compiles VGG19 first: a minute on a CPU)")
    p.add_argument("--quick", action="store_true",
                   help="a CPU-sized run: 256 px, 20 iterations, batches 1 and 2, sizes 128 and 256")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench.json and bench.md")
    _add_models_dir(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from nstd.bench import measure, suite
    from nstd.engine.device import resolve_device
    from nstd.engine.switches import Switches

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise NstdError(str(e)) from None
    try:
        Switches(args.precision)
    except ValueError as e:
        raise NstdError(f"--precision: {e}") from None
    chosen = dict(baseline=not args.no_baseline, time_to_quality=not args.no_time_to_quality,
                  compile=not args.no_compile, stream_photos=args.stream_photos, precision=args.precision)
    if args.quick:
        plan = suite.Plan(size=256, iterations=20, batches=(1, 2), sizes=(128, 256), latency=False, **chosen)
    else:
        plan = suite.Plan(size=args.size, iterations=args.iterations, batches=args.batches,
                          max_batch=args.max_batch, sizes=args.sizes, sweep_iterations=args.sweep_iterations,
                          latency=not args.no_latency, **chosen)
    content = images.decode(_read(args.content), str(args.content), images.DEFAULT_MAX_PIXELS).pixels
    style = images.decode(_read(args.style), str(args.style), images.DEFAULT_MAX_PIXELS).pixels
    _bench_sizes_fit(args.content, content, (plan.size, *plan.sizes))
    models_dir = _models_dir(args)
    _folder(args.out, "--out")  # now, not after the bench has run
    model = measure.stored_model(device, args.model, models_dir)

    def latency():
        return measure.drop_to_output(models_dir, args.model, args.content, args.style, str(device))

    out = suite.run(model, content, style, plan, latency, say=lambda line: print(line, flush=True))
    json_path, md_path = suite.write(out, args.out)
    print()
    print(md_path.read_text())
    print(f"nstd: results in {json_path} and {md_path}", file=sys.stderr)
    return 0


def _bench_sizes_fit(name: Path, content, sizes: tuple[int, ...]) -> None:
    """A one-line error where a long side would leave the photo's short side too small."""
    from nstd.engine.resize import long_side_size
    from nstd.pipeline import MIN_SIDE

    for size in sizes:
        h, w = long_side_size(*content.shape[-2:], size)
        if min(h, w) < MIN_SIDE:
            raise NstdError(f"{name}: at a long side of {size} px it would be {w}x{h}, under {MIN_SIDE} px on a "
                            "side; use a larger --size or --sizes")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise NstdError(f"{path}: cannot read ({e.strerror})") from None


# --- weights ----------------------------------------------------------------------

def _add_weights(sub) -> None:
    p = sub.add_parser("weights", help="fetch, import, verify or list VGG19 weights")
    wsub = p.add_subparsers(dest="action", required=True)
    f = wsub.add_parser("fetch", help="download, check and convert known weights")
    f.add_argument("--model", default=weights.DEFAULT_MODEL, choices=("caffe", "torchvision"))
    f.add_argument("--force", action="store_true", help="fetch again even if present and intact")
    _add_models_dir(f)
    f.set_defaults(func=cmd_weights_fetch)
    i = wsub.add_parser("import", help="import a local .h5 or .pth (hosts with no network)")
    i.add_argument("file", type=Path)
    i.add_argument("--name", help="id to store it under (known files get theirs)")
    i.add_argument("--preprocessing", choices=("caffe", "torchvision"))
    _add_models_dir(i)
    i.set_defaults(func=cmd_weights_import)
    v = wsub.add_parser("verify", help="check stored weights against their sha256")
    v.add_argument("--model", help="one id (default: all stored)")
    _add_models_dir(v)
    v.set_defaults(func=cmd_weights_verify)
    ls = wsub.add_parser("list", help="list stored weights")
    _add_models_dir(ls)
    ls.set_defaults(func=cmd_weights_list)


def cmd_weights_fetch(args) -> int:
    models_dir = _folder(_models_dir(args), "--models-dir")
    info = weights.fetch(models_dir, args.model, force=args.force)
    print(f"{info.model_id}: ready in {models_dir} (sha256 {info.file_sha256[:12]}…, "
          f"from {info.source})")
    return 0


def cmd_weights_import(args) -> int:
    info = weights.import_file(_folder(_models_dir(args), "--models-dir"), args.file, args.name, args.preprocessing)
    print(f"{info.model_id}: imported from {args.file} ({info.preprocessing} preprocessing)")
    return 0


def cmd_weights_verify(args) -> int:
    models_dir = _models_dir(args)
    ids = [args.model] if args.model else [i.model_id for i in weights.list_models(models_dir)]
    if not ids:
        raise NstdError(f"no weights in {models_dir}; run: nstd weights fetch")
    bad = 0
    for model_id in ids:
        try:
            weights.verify(models_dir, model_id)
            print(f"{model_id}: ok")
        except NstdError as e:
            print(f"{model_id}: {e}")
            bad += 1
    return 1 if bad else 0


def cmd_weights_list(args) -> int:
    models_dir = _models_dir(args)
    infos = weights.list_models(models_dir)
    if not infos:
        print(f"no weights in {models_dir}; run: nstd weights fetch")
    for info in infos:
        print(f"{info.model_id:12} {info.preprocessing:12} {info.file_sha256[:12]}  {info.source}")
    return 0
