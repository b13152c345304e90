"""The load stage of a batch: each job's spooled photo at the size intake recorded, with
its mask or region map and its faces, or why it cannot be loaded. Each input is decoded
once however many styles it has, and inputs are decoded side by side (decoding and
resizing release the GIL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from nstd import images
from nstd.daemon import companions
from nstd.daemon.journal import Job
from nstd.daemon.styles import StyleBook
from nstd.errors import ImageError
from nstd.faces import FaceFinder
from nstd.fsutil import is_share_error
from nstd.guide import REGIONS_STYLE, GuideSpec, regions_style
from nstd.params import from_dict
from nstd.pipeline import LOADERS, Task, load_guide, load_photo


@dataclass(frozen=True)
class Unread:
    """Why a job could not be loaded; `transient` where trying again later may work."""

    error: str
    transient: bool = False
    share: bool = False  # the spool's share is away: the job waits without spending an attempt


class Loader:
    def __init__(self, max_pixels: int, faces: FaceFinder):
        self.max_pixels, self.faces = max_pixels, faces

    def read_batch(self, book: StyleBook, batch: list[Job]) -> dict[int, Task | Unread]:
        """Every job of `batch` by id: its Task, or why it could not be loaded."""
        inputs: dict[str, list[Job]] = {}
        for job in batch:
            inputs.setdefault(job.spool, []).append(job)
        with ThreadPoolExecutor(max(1, min(LOADERS, len(inputs))), thread_name_prefix="load") as pool:
            outcomes = pool.map(partial(self.read, book), inputs.values())
            return {job.id: o for jobs, outs in zip(inputs.values(), outcomes) for job, o in zip(jobs, outs)}

    def read(self, book: StyleBook, jobs: list[Job]) -> list[Task | Unread]:
        """One input's jobs from one decode of its spooled photo."""
        decoded = None
        out: list[Task | Unread] = []
        for job in jobs:
            spec = GuideSpec.from_dict(job.params.get("guide"))
            names = spec.styles() if job.style == REGIONS_STYLE and spec else [job.style]
            gone = [n for n in names if not book.has(n)]
            if gone:
                out.append(Unread(f"style '{gone[0]}' is no longer configured"))
                continue
            params = from_dict(job.params)
            try:
                decoded = decoded or images.decode(Path(job.spool).read_bytes(), job.relpath, self.max_pixels)
                data = None if spec is None else \
                    companions.spool_path(Path(job.spool), job.input_sha256, spec).read_bytes()
                guide = load_guide(spec, data, decoded, params, self.max_pixels, self.faces, job.input_sha256,
                                   job.relpath)
            except ImageError as e:
                out.append(Unread(str(e)))
                continue
            except OSError as e:
                out.append(Unread(f"cannot read spooled input: {e}", transient=True, share=is_share_error(e)))
                continue
            style = regions_style(spec, params, book.get) if job.style == REGIONS_STYLE else book.get(job.style)
            # Exactly the size intake recorded, so every job of a batch matches.
            out.append(Task(load_photo(decoded, (job.height, job.width)), style, params, job.relpath,
                            job.input_sha256, job.id, job.queued, job.batch_id, guide))
        return out
