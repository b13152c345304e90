"""outbox/index.html: a static page of recent results and failures, for any browser.

It needs no server: every link is relative, and the small pictures it shows live in
outbox/.gallery/. It is rewritten atomically after each batch, from the journal.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from urllib.parse import quote

import torch

from nstd import images
from nstd.daemon.journal import Journal
from nstd.engine.resize import resize_long_side
from nstd.fsutil import atomic_write, contained, is_share_error, make_folders
from nstd.guide import Guide, picture
from nstd.log import get
from nstd.plot import curve_name
from nstd.style import Style

log = get("nstd.gallery")

FOLDER = ".gallery"
THUMB = 240
SHOWN = 200


def photo_thumb(sha256: str) -> str:
    return f"{FOLDER}/in-{sha256[:16]}.jpg"


def style_thumb(sha256: str) -> str:
    return f"{FOLDER}/style-{sha256[:16]}.jpg"


def result_thumb(job_id: int) -> str:
    return f"{FOLDER}/out-{job_id}.jpg"


def mask_thumb(job_id: int) -> str:
    return f"{FOLDER}/mask-{job_id}.jpg"


def save_thumb(outbox: Path, rel: str, pixels: torch.Tensor) -> None:
    """Write a small JPEG once; names carry content hashes or job ids, so never stale.
    A path that a planted symlink would lead out of the outbox is refused (ValueError)."""
    path = contained(outbox, rel)
    if not path.exists():
        small = pixels.float().cpu()
        if max(small.shape[-2:]) > THUMB:  # shrink only; the page scales nothing up
            small = resize_long_side(small, THUMB)
        make_folders(outbox, path.parent)
        atomic_write(path, images.encode(small.clamp(0, 1), "JPEG", 85))


def job_done(outbox: Path, job_id: int, photo_sha256: str, photo: torch.Tensor, style: Style,
             result: torch.Tensor, guide: Guide | None = None) -> None:
    """The thumbnails of one finished job: its photo, its style, its mask and its result."""
    try:
        save_thumb(outbox, photo_thumb(photo_sha256), photo)
        save_thumb(outbox, style_thumb(style.sha256), style.parts[0].pixels)
        if guide is not None and guide.parts:
            save_thumb(outbox, mask_thumb(job_id), picture(guide, tuple(result.shape[-2:])))
        save_thumb(outbox, result_thumb(job_id), result)
    except (OSError, ValueError) as e:  # the page is a convenience; the outputs are what matter
        # A share that is away is said once by the supervisor, not at each thumbnail.
        (log.info if is_share_error(e) else log.warning)("gallery_thumbnail_not_written", job=job_id, error=str(e))


def write(outbox: Path, journal: Journal, now: float | None = None) -> Path:
    done = journal.recent_done(SHOWN)
    failures = journal.recent_failures(50)
    masked = {job.id for job in done if (outbox / mask_thumb(job.id)).is_file()}
    page = render(done, failures, now or time.time(), masked)
    target = outbox / "index.html"
    make_folders(outbox, outbox)
    atomic_write(target, page.encode())
    return target


def render(done, failures, now: float, masked: set[int] = frozenset()) -> str:
    rows = "\n".join(_row(job, job.id in masked) for job in done) or \
        '<tr><td colspan="5">Nothing finished yet.</td></tr>'
    fails = "\n".join(
        f"<li><b>{_e(rel)}</b> <span class=when>{_when(at)}</span><br>{_e(reason or 'unknown reason')}</li>"
        for rel, reason, at in failures) or "<li>None.</li>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nstd outbox</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 6px 10px; vertical-align: top; border-bottom: 1px solid #ddd; text-align: left; }}
img {{ max-width: {THUMB}px; max-height: {THUMB}px; display: block; }}
img[data-broken] {{ outline: 2px dashed #c00; min-width: 60px; min-height: 40px; }}
.when {{ color: #777; font-size: 12px; }}
</style></head><body>
<h1>nstd outbox</h1>
<p class=when>Updated {_when(now)}. Newest first; the last {SHOWN} results.</p>
<table>
<tr><th>Photo</th><th>Style</th><th>Mask</th><th>Result</th><th>Details</th></tr>
{rows}
</table>
<h2>Failures</h2>
<ul>
{fails}
</ul>
</body></html>
"""


def _row(job, masked: bool) -> str:
    out = job.output or ""
    stem = out.rsplit(".", 1)[0]
    style_sha = job.params.get("style_sha256", "")
    return (f"<tr><td>{_img(photo_thumb(job.input_sha256), job.relpath)}<div>{_e(job.relpath)}</div></td>"
            f"<td>{_img(style_thumb(style_sha), job.style)}<div>{_e(job.style)}</div></td>"
            f"<td>{_img(mask_thumb(job.id), 'mask') if masked else ''}</td>"
            f"<td><a href=\"{_u(out)}\">{_img(result_thumb(job.id), out)}</a></td>"
            f"<td><a href=\"{_u(stem + '.json')}\">loss log</a><br>"
            f"<a href=\"{_u(curve_name(stem + '.json'))}\">loss curve</a><br>"
            f"<span class=when>{_when(job.finished)}</span></td></tr>")


def _img(src: str, alt: str) -> str:
    return (f'<img src="{_u(src)}" alt="{_e(alt)}" '
            'onload="this.dataset.loaded=1" onerror="this.dataset.broken=1">')


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _u(path: str) -> str:
    return _e(quote(path))


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""
