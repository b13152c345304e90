"""`nstd bench`'s options, and what they are made into before anything is measured:
the device and precision, the plan, and the photo and painting decoded and checked
against every size the plan runs. Whole numbers are checked as argparse parses them.
Importing this module loads no PyTorch: the parser is built from it."""

from __future__ import annotations

import argparse
from pathlib import Path

from nstd import images, weights
from nstd.errors import NstdError

EXAMPLES = Path(__file__).resolve().parents[1] / "styles"  # the default photo and painting


def at_least(least: int):
    """A whole number of at least `least`, or argparse's usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}")
        return value
    return parse


def int_list(least: int):
    """Whole numbers separated by commas, each at least `least`."""
    one = at_least(least)

    def parse(text: str) -> tuple[int, ...]:
        return tuple(one(v) for v in text.split(","))
    return parse


def add_to(p: argparse.ArgumentParser) -> None:
    """The bench's options (but --models-dir, which every command that reads weights has)."""
    p.add_argument("--content", type=Path, default=EXAMPLES / "shipwreck.jpg", help="photo to stylize")
    p.add_argument("--style", type=Path, default=EXAMPLES / "starry_night.jpg", help="style image")
    p.add_argument("--model", default=weights.DEFAULT_MODEL, help="weights id (see: nstd weights list)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--size", type=at_least(16), default=512, help="long side of the standard workload")
    p.add_argument("--iterations", type=at_least(1), default=500)
    p.add_argument("--sweep-iterations", type=at_least(1), help="iterations for the batch and scale sweeps "
                                                                 "(default: --iterations)")
    p.add_argument("--batches", type=int_list(1), help="batch sizes to sweep (default: 1, 2, 4, … up to what fits)")
    p.add_argument("--max-batch", type=at_least(1), default=64, help="largest batch the sweep tries")
    p.add_argument("--sizes", type=int_list(16), default=(256, 512, 768, 1024), help="long sides to sweep")
    p.add_argument("--precision", default="auto",
                   help="the fast path's convolutions, as worker.precision: auto, fp32, tf32 or bf16")
    p.add_argument("--stream-photos", type=at_least(0),
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


def device(name: str):
    """The device --device names, or a one-line error."""
    from nstd.engine.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise NstdError(str(e)) from None


def plan(opts: argparse.Namespace):
    """What the bench runs, from its options; --quick is a CPU-sized run."""
    from nstd.bench import suite
    from nstd.engine.switches import Switches

    try:
        Switches(opts.precision)
    except ValueError as e:
        raise NstdError(f"--precision: {e}") from None
    chosen = dict(baseline=not opts.no_baseline, time_to_quality=not opts.no_time_to_quality,
                  compile=not opts.no_compile, stream_photos=opts.stream_photos, precision=opts.precision)
    if opts.quick:
        return suite.Plan(size=256, iterations=20, batches=(1, 2), sizes=(128, 256), latency=False, **chosen)
    return suite.Plan(size=opts.size, iterations=opts.iterations, batches=opts.batches,
                      max_batch=opts.max_batch, sizes=opts.sizes, sweep_iterations=opts.sweep_iterations,
                      latency=not opts.no_latency, **chosen)


def pictures(content_path: Path, style_path: Path, sizes: tuple[int, ...]):
    """The photo and the painting decoded; a one-line error where a size would leave the
    photo too small."""
    content = images.decode(_read(content_path), str(content_path), images.DEFAULT_MAX_PIXELS).pixels
    style = images.decode(_read(style_path), str(style_path), images.DEFAULT_MAX_PIXELS).pixels
    _sizes_fit(content_path, content, sizes)
    return content, style


def _sizes_fit(name: Path, content, sizes: tuple[int, ...]) -> None:
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
