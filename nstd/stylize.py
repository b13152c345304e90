"""`nstd stylize`: the daemon's pipeline over photos named on the command line, into a folder."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

from nstd import images, masks, publish, weights
from nstd.config import DEFAULT_EXTENSIONS
from nstd.engine.device import free_memory, resolve_device, total_memory
from nstd.engine.switches import Switches
from nstd.engine.memory import MemoryPlanner
from nstd.engine.runner import Engine
from nstd.engine.session import Queued
from nstd.engine.types import Progress, TransferResult
from nstd.engine.vgg import VGGFeatures
from nstd.errors import ImageError, NstdError
from nstd.fsutil import fit_name
from nstd.params import TransferParams
from nstd.publish import STEM_ROOM
from nstd.guide import Guide, GuideSpec, regions_style, styled_regions
from nstd.faces import FaceFinder
from nstd.pipeline import LOADERS, Photo, Pipeline, Task, check_fits, load_guide, load_photo, output_exif, working_size
from nstd.style import Style, read_painting


@dataclass(frozen=True)
class Request:
    contents: list[Path]
    styles: list[Path]
    outdir: Path
    params: TransferParams
    device: str = "auto"
    fmt: str = "JPEG"
    quality: int = 92
    max_batch: int = 4
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    models_dir: Path = field(default_factory=weights.default_models_dir)
    blend: tuple[float, ...] | None = None  # one blended style of all `styles`, with these weights
    mask: Path | None = None  # for every photo; else each photo's own photo.jpg.mask.png, if any
    regions: Path | None = None  # a region map for every photo; else each photo's own, if any
    colours: tuple[tuple[str, str], ...] = ()  # the region map's ("#rrggbb", style stem or keep)
    max_memory: int | None = None  # the most the engine plans for; a larger scale runs as tiles


def expand(paths: list[Path]) -> list[Path]:
    """Photos named, and the photos in folders named (not below them), in name order."""
    out = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DEFAULT_EXTENSIONS
                          and masks.kind_of(p.name) is None)
        else:
            out.append(path)
    return out


def _styles(req: Request) -> list[Style]:
    """One style per --style image, or one blend of them all. A bad image is fatal: every
    output needs it."""
    paintings = [read_painting(p.stem, p, req.max_pixels) for p in req.styles]
    if req.blend is None:
        return [Style(p.name, req.params, (p,)) for p in paintings]
    parts = tuple(replace(p, weight=w) for p, w in zip(paintings, req.blend))
    return [Style("+".join(p.name for p in paintings), req.params, parts)]


def run(req: Request, on_error: Callable[[str], None],
        make_progress: Callable[[str, int], Progress] | None = None, counts: dict | None = None) -> int:
    """Stylize every content with every style (or in its region map's styles); returns how
    many outputs failed, and fills `counts` with how many were written and expected."""
    sd, info = weights.load(req.models_dir, req.params.model)
    try:
        device = resolve_device(req.device)
    except ValueError as e:
        raise NstdError(f"--device: {e}") from None
    model = VGGFeatures(sd, info.preprocessing, req.params.settings().layers,
                        req.params.pooling, info.model_id).to(device)
    styles = _styles(req)
    by_name = {s.name: s for s in styles}
    groups, failures = _load(req, on_error, total_memory(device))
    switches = Switches()
    planner = MemoryPlanner(device, switches, partial(free_memory, device), limit=req.max_memory)
    pipeline = Pipeline(Engine(planner, switches),
                        lambda _params: (model, info), style_for=by_name.__getitem__)
    folder = _Folder(req, on_error)
    runs = []
    for group in groups.values():
        tasks = [Task(photo, style, req.params, str(path), sha, guide=guide)
                 for path, sha, photo, guide, spec in group
                 for style in ([regions_style(spec, req.params, by_name.__getitem__)]
                               if spec is not None and spec.kind == "regions" else styles)]
        # Photos with a mask batch apart: their regions shape the batch, and such a batch
        # takes no newcomers.
        runs += [part for part in ([t for t in tasks if t.guide is None], [t for t in tasks if t.guide]) if part]
    for n, tasks in enumerate(runs, 1):
        _, h, w = tasks[0].photo.pixels.shape
        while tasks:
            # max_batch places, the rest queued for the places that come free. A batch that
            # takes none (several scales, masks) leaves them for the next.
            label = f"{n}/{len(runs)}: {len(tasks)} × {w}x{h}"
            # Iterations of the loop: a ceiling when photos stop early.
            total = req.params.total_iterations(max(h, w)) * -(-len(tasks) // req.max_batch)
            progress = make_progress(label, total) if make_progress else None
            work = FolderBatch(tasks[req.max_batch:], progress, folder)
            pipeline.run(tasks[:req.max_batch], work)
            if progress is not None:
                progress(total, None)
            tasks = work.queue
    failed = failures * len(styles) + folder.failures
    if counts is not None:
        counts.update(written=folder.written, expected=folder.written + failed)
    return failed


@dataclass
class FolderBatch(Queued):
    """The command's batch session (pipeline.Work): newcomers from its queue, progress to
    the terminal, outcomes into the folder. It never stops a batch early."""

    folder: "_Folder | None" = None

    def publish(self, task: Task, result: TransferResult, log: dict) -> None:
        self.folder.publish(task, result, log)

    def refuse(self, task: Task, reason: str) -> None:
        self.folder.refuse(task, reason)


def _load(req: Request, on_error: Callable[[str], None], memory: int | None) -> tuple[dict[tuple, list], int]:
    """The photos by working size, as (path, sha256, Photo, Guide, GuideSpec); and how many
    could not be read. Photos are decoded side by side (decoding releases the GIL), their
    errors said in the order given."""
    groups: dict[tuple, list[tuple[Path, str, Photo, Guide | None, GuideSpec | None]]] = defaultdict(list)
    failures = 0
    with ThreadPoolExecutor(max(1, min(LOADERS, len(req.contents))), thread_name_prefix="load") as pool:
        for outcome in pool.map(partial(_read, req, memory, FaceFinder()), req.contents):
            if isinstance(outcome, ImageError):
                on_error(str(outcome))
                failures += 1
            else:
                groups[tuple(outcome[2].pixels.shape)].append(outcome)
    return groups, failures


def _read(req: Request, memory: int | None, finder: FaceFinder, path: Path) -> tuple | ImageError:
    """One photo at its working size, with its guide; or why it cannot be used."""
    try:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"{path}: cannot read ({e.strerror})") from None
        decoded = images.decode(data, str(path), req.max_pixels)
        size = working_size(str(path), *decoded.pixels.shape[-2:], req.params, req.max_pixels)
        spec, mask_data = _guide_spec(req, path)
        # Refused now, not after the others' compute.
        check_fits(str(path), size, req.params, memory, styled_regions(spec, req.params.protect))
        photo = load_photo(decoded, size)
        sha = hashlib.sha256(data).hexdigest()
        guide = load_guide(spec, mask_data, decoded, req.params, req.max_pixels, finder, sha, str(path))
    except ImageError as e:
        return e
    return path, sha, photo, guide, spec


def _guide_spec(req: Request, photo: Path) -> tuple[GuideSpec | None, bytes | None]:
    """The mask or region map for a photo: the one given, or its own beside it."""
    given = [(kind, p) for kind, p in (("mask", req.mask), ("regions", req.regions)) if p is not None]
    found = given or [(kind, p) for kind in masks.KINDS if (p := masks.own_file(photo, kind, links=True))][:1]
    if not found:
        return None, None
    kind, path = found[0]
    if kind == "regions" and not req.colours:
        raise ImageError(f"{path}: a region map needs its colours: --region '#rrggbb=STYLE' (or =keep)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    colours = req.colours if kind == "regions" else ()
    return GuideSpec(kind, str(path), hashlib.sha256(data).hexdigest(), colours), data


def output_stem(req: Request, photo_path: Path, sha256: str, style: Style) -> str:
    stem = fit_name(f"{photo_path.stem}.{style.name}", STEM_ROOM)
    same_stem = [p for p in req.contents if p.stem == photo_path.stem]
    return stem if len(same_stem) <= 1 else f"{stem}.{sha256[:8]}"


class _Folder:
    """The one-shot command's sink: every output into one folder, failures to stderr."""

    def __init__(self, req: Request, on_error: Callable[[str], None]):
        self.req, self.on_error = req, on_error
        self.failures = 0
        self.written = 0

    def publish(self, task: Task, result: TransferResult, log: dict) -> None:
        stem = self._keep_earlier(output_stem(self.req, Path(task.input_path), task.input_sha256, task.style), log)
        out = publish.Output(self.req.outdir / f"{stem}.{images.EXTENSIONS[self.req.fmt]}",
                             self.req.outdir / f"{stem}.json", self.req.fmt, self.req.quality)
        log = log | {"output": {"path": out.image.name, "format": self.req.fmt.lower()} | log["output"]}
        try:
            self.req.outdir.mkdir(parents=True, exist_ok=True)  # the user's own folder, named on the command line
            publish.write(out, result.image, log, f"{Path(task.input_path).name} × {task.style.parts[0].path.name}",
                          result.snapshots, output_exif(task.photo, task.style), task.photo.bits)
        except OSError as e:  # a full disk or a dropped share: this output is lost, say so and go on
            self.on_error(f"{out.image}: cannot write ({e.strerror})")
            self.failures += 1
            return
        self.written += 1

    def _keep_earlier(self, stem: str, log: dict) -> str:
        """The stem, or, where a run with other settings or inputs made that name, the stem
        with a short hash of these settings: a rerun never overwrites different work."""
        try:
            old = json.loads((self.req.outdir / f"{stem}.json").read_text())
        except (OSError, ValueError):
            return stem
        same = all(old.get(k) == log.get(k) for k in ("params", "styles")) and \
            old.get("input", {}).get("sha256") == log["input"]["sha256"]
        if same:
            return stem
        return f"{stem}.{hashlib.sha256(json.dumps(log['params'], sort_keys=True).encode()).hexdigest()[:8]}"

    def refuse(self, task: Task, reason: str) -> None:
        self.on_error(f"{task.input_path}: {reason}")
        self.failures += 1
