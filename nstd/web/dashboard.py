"""The live dashboard's side of the endpoint: its page, /api/status and the outputs'
thumbnails.

The page is four files shipped in the package (nstd/web/static), read once and served
from memory, so no part of a request's path ever names a file. They are the same for
every studio and hold none of its data, so they are served without the token; what
the page then fetches (/api/...) carries it, as every other request does."""

from __future__ import annotations

import json
import os
import re
import time
from importlib import resources
from typing import Callable

from nstd.web import status
from nstd.web.metrics import Reader
from nstd.web.server import one_line

# The page's files by address: file name and content type.
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/icon.svg": ("icon.svg", "image/svg+xml"),
}
# The page loads nothing from elsewhere and runs no inline script: a name that got into
# the markup despite textContent could still not run or call out.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
THUMB = re.compile(r"/api/thumb/([0-9]{1,12})")  # a job id, nothing else
MAX_THUMB = 1 << 20  # bytes: the gallery's thumbnails are 240 px JPEGs of a few KB

Reply = tuple[int, str, bytes]


class Dashboard:
    def __init__(self, reader: Reader, site: status.Site, clock: Callable[[], float] = time.time):
        self.reader, self.site, self.clock = reader, site, clock
        folder = resources.files("nstd.web") / "static"
        self.files = {path: (kind, (folder / name).read_bytes()) for path, (name, kind) in FILES.items()}

    def page(self, path: str) -> tuple[str, bytes, dict] | None:
        """One of the page's own files, as (content type, body, headers); None for any
        other path."""
        found = self.files.get(path)
        return None if found is None else (*found, PAGE_HEADERS)

    def answer(self, path: str) -> Reply:
        """/api/status or a thumbnail; a journal that does not answer is a 503 with why."""
        try:
            if path == "/api/status":
                return 200, "application/json", self.status()
            found = THUMB.fullmatch(path)
            if found:
                return self.thumb(int(found.group(1)))
        except Exception as e:  # noqa: BLE001 - whatever keeps the journal from answering: one line
            return 503, "application/json", refusal(f"{type(e).__name__}: {e}")
        return 404, "application/json", refusal("no such page; the dashboard has /api/status and /api/thumb/ID")

    def status(self) -> bytes:
        now = self.clock()
        doc = self.reader.read(lambda journal: status.read(journal, self.site, now))
        doc = status.thumbs(doc, self.site.outbox(), can_look=not self.site.paused())
        return json.dumps(doc, separators=(",", ":")).encode()

    def thumb(self, job_id: int) -> Reply:
        paused = self.site.paused()
        if paused:
            return 503, "application/json", refusal(f"paused: {paused}; thumbnails wait until it is over")
        path = status.thumb_path(self.site.outbox(), job_id)
        if path is None:
            return 404, "application/json", refusal(f"no thumbnail for job {job_id}")
        # The gallery's own names, its folder checked to lie in the outbox; a link put in
        # place of the file since is not followed.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                body = f.read(MAX_THUMB + 1)
        except OSError as e:
            return 404, "application/json", refusal(f"no thumbnail for job {job_id} ({e.strerror})")
        if len(body) > MAX_THUMB:
            return 404, "application/json", refusal(f"the thumbnail of job {job_id} is too large to be one")
        return 200, "image/jpeg", body


def refusal(reason: str) -> bytes:
    return one_line(False, reason)
