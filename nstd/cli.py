"""Command line: `nstd run | stylize | check | status | retry | priority | cancel | pause |
resume | init | weights | bench`."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from nstd import __version__, images, steer, weights
from nstd.args import blend_weights, flag_metavar, flag_value, models_dir, ready_folder
from nstd.errors import NstdError
from nstd.params import FLAGS, TransferParams, validate


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
    steer.add(sub, _add_config)
    _add_init(sub)
    _add_weights(sub)
    _add_bench(sub)
    return p


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
    from nstd.daemon import checks

    cfg = config.load(args.config)
    print(f"config: {cfg.path} ok")
    findings = checks.findings(cfg)
    for f in findings:
        print(("ok    " if f.ok else "FAIL  ") + f.text)
    failed = sum(not f.ok for f in findings)
    print(f"{failed} problem(s)" if failed else "ready")
    return 1 if failed else 0


def cmd_status(args) -> int:
    import time

    from nstd import config
    from nstd.daemon import report
    from nstd.daemon.journal import Journal

    cfg = config.load(args.config)
    db = cfg.journal_target
    if not cfg.journal and not db.exists():
        raise NstdError(f"no journal at {db}; has the daemon run with this config?")
    journal = Journal(db, readonly=True)
    try:
        for line in report.status(cfg, journal, time.time()):
            print(line)
    finally:
        journal.close()
    return 0


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
    from nstd import config
    from nstd.daemon import dispose, retry
    from nstd.fsutil import printable

    if not (args.names or args.reason or args.all):
        raise NstdError("retry: name the photos, or give --reason TEXT, or --all")
    cfg = config.load(args.config)
    chosen, unknown = retry.choose(dispose.failed_records(cfg.failed), args.names, args.reason, args.all)
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
    p.add_argument("--blend", type=blend_weights, metavar="W1,W2,...",
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
        p.add_argument("--" + f.name.replace("_", "-"), type=partial(flag_value, f.name),
                       default=getattr(d, f.name), choices=f.metadata["choices"], metavar=flag_metavar(f),
                       help=f.metadata["help"] + " (default: %(default)s)")
    p.add_argument("--format", default="jpeg", choices=("jpeg", "png", "tiff"))
    p.add_argument("--quality", type=int, default=92, help="JPEG quality")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                   help="refuse larger images (decompression-bomb guard)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--max-memory", type=_memory, metavar="SIZE",
                   help="the most memory to plan for, e.g. 8GiB; a photo whose scale needs more runs as tiles")
    _add_models_dir(p)
    p.set_defaults(func=cmd_stylize)


def _memory(text: str) -> int:
    from nstd.units import size_in_bytes

    try:
        return size_in_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_stylize(args) -> int:
    from nstd import stylize
    from nstd.args import region_colours
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
    ready_folder(args.outdir, "-o")  # now, not after the first photo's compute
    req = stylize.Request(contents=contents, styles=args.style, outdir=args.outdir, params=params,
                          device=args.device, fmt=images.output_format(args.format),
                          quality=args.quality, max_batch=args.max_batch, max_pixels=args.max_pixels,
                          models_dir=models_dir(args.models_dir), blend=args.blend, mask=args.mask,
                          regions=args.regions, max_memory=args.max_memory,
                          colours=region_colours(args.region, args.style, args.mask, args.regions, args.blend))
    try:
        counts: dict = {}
        failures = stylize.run(req, on_error=lambda msg: print(f"nstd: error: {msg}", file=sys.stderr),
                               make_progress=_tqdm_progress, counts=counts)
    except ValueError as e:  # e.g. an unusable --device
        raise NstdError(str(e)) from None
    print(f"nstd: {counts['written']} of {counts['expected']} written to {args.outdir}", file=sys.stderr)
    return 1 if failures else 0


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

def _add_bench(sub) -> None:
    from nstd.bench import options

    p = sub.add_parser("bench", help="measure nstd against the tutorial loop, side by side")
    options.add_to(p)
    _add_models_dir(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from nstd.bench import measure, options, suite

    device = options.device(args.device)
    plan = options.plan(args)
    content, style = options.pictures(args.content, args.style, (plan.size, *plan.sizes))
    models = models_dir(args.models_dir)
    ready_folder(args.out, "--out")  # now, not after the bench has run
    model = measure.stored_model(device, args.model, models)

    def latency():
        return measure.drop_to_output(models, args.model, args.content, args.style, str(device))

    out = suite.run(model, content, style, plan, latency, say=lambda line: print(line, flush=True))
    json_path, md_path = suite.write(out, args.out)
    print()
    print(md_path.read_text())
    print(f"nstd: results in {json_path} and {md_path}", file=sys.stderr)
    return 0


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
    folder = ready_folder(models_dir(args.models_dir), "--models-dir")
    info = weights.fetch(folder, args.model, force=args.force)
    print(f"{info.model_id}: ready in {folder} (sha256 {info.file_sha256[:12]}…, "
          f"from {info.source})")
    return 0


def cmd_weights_import(args) -> int:
    folder = ready_folder(models_dir(args.models_dir), "--models-dir")
    info = weights.import_file(folder, args.file, args.name, args.preprocessing)
    print(f"{info.model_id}: imported from {args.file} ({info.preprocessing} preprocessing)")
    return 0


def cmd_weights_verify(args) -> int:
    folder = models_dir(args.models_dir)
    ids = [args.model] if args.model else [i.model_id for i in weights.list_models(folder)]
    if not ids:
        raise NstdError(f"no weights in {folder}; run: nstd weights fetch")
    bad = 0
    for model_id in ids:
        try:
            weights.verify(folder, model_id)
            print(f"{model_id}: ok")
        except NstdError as e:
            print(f"{model_id}: {e}")
            bad += 1
    return 1 if bad else 0


def cmd_weights_list(args) -> int:
    folder = models_dir(args.models_dir)
    infos = weights.list_models(folder)
    if not infos:
        print(f"no weights in {folder}; run: nstd weights fetch")
    for info in infos:
        print(f"{info.model_id:12} {info.preprocessing:12} {info.file_sha256[:12]}  {info.source}")
    return 0
