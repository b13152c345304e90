"""The docs' pictures of the live dashboard: a studio's afternoon filled into a journal (two
hosts, four GPUs, an operator's pause, a queue, outputs cut from the docs' own pictures,
failures) and served as the daemon serves it, then the page in headless Chromium at a
laptop's and a phone's width.

`python -m harness.screenshots docs` writes docs/dashboard.png and docs/dashboard-phone.png;
the tests share the endpoint and the browser from here."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from nstd.daemon.gallery import result_thumb
from nstd.daemon.journal import JobSpec, Journal, State, WorkerInfo
from nstd.web.dashboard import Dashboard
from nstd.web.metrics import Reader
from nstd.web.server import Endpoint, Probe
from nstd.web.status import Site

ROOT = Path(__file__).resolve().parent.parent
SHOTS = (("dashboard.png", 1200), ("dashboard-phone.png", 390))  # file name, viewport width
MAX_BYTES = 200_000  # a picture in the docs; more is a sign the quantizing stopped working


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Chromium found: `make test` installs Debian's chromium package")


def serve(journal: Path, outbox: Path, config: Path, token: str | None) -> Endpoint:
    """The endpoint with its dashboard on a journal, as the daemon serves it."""
    site = Site(host="studio-1", outbox=lambda: outbox, config=lambda: config, paused=lambda: None)
    reader = Reader(journal)
    return Endpoint("127.0.0.1", 0, CollectorRegistry(), Probe(lambda: (True, ""), lambda: (True, "")), token,
                    on_stop=reader.close, dashboard=Dashboard(reader, site)).start()


def studio(path: Path, outbox: Path) -> None:
    """A studio's afternoon in the journal at `path`, and its outputs' thumbnails in `outbox`."""
    now, journal = time.time(), Journal(path)
    try:
        workers = _workers(journal, now)
        _queue(journal, now)
        _outputs(journal, outbox, now)
        for w, key in zip(workers[:2], ("scream-True", "shipwreck-True")):
            jobs = journal.claim(key, 4, f"batch-{w.device}", now=now - 120, owner=w.owner)
            journal.progress([j.id for j in jobs], 310 if key.startswith("scream") else 95, 500, 2.4, now + 80)
        journal.fail_input("wedding-0412/IMG_4188.CR3", "f" * 64, "wedding-0412/IMG_4188.CR3: not a usable image "
                           "(not a recognised image format)", now=now - 300)
        journal.fail_input("catalogue/scan 7.tif", "e" * 64, "catalogue/scan 7.tif: 21,000 x 14,000 pixels is over "
                           "max_pixels (50,000,000)", now=now - 60)
    finally:
        journal.close()


def _workers(journal: Journal, now: float) -> list[WorkerInfo]:
    """Two working, one paused by a full outbox, one drained for maintenance by an operator."""
    workers = [WorkerInfo(f"studio-{h}:1{d}:cuda:{d}", f"studio-{h}", f"cuda:{d}", 80 * 2**30) for h, d in
               ((1, 0), (1, 1), (2, 0), (2, 1))]
    for w in workers[:2]:
        journal.beat(w, "working", now - 2)
    journal.beat(workers[2], "paused", now - 4, reason="the outbox cannot be written (No space left on device)")
    journal.pause("studio-2", "cuda:1", "ana@studio-1", now - 1500)
    journal.beat(workers[3], "paused", now - 3, reason=journal.pause_of("studio-2", "cuda:1").reason)
    return workers


def _queue(journal: Journal, now: float) -> None:
    """Three shoots at two working sizes, the client's rush first."""
    shoots = [("rush-acme/", 6), ("wedding-0412/", 12), ("catalogue/", 8)]
    n = 0
    for (folder, count), style in zip(shoots, ("starry", "scream", "shipwreck")):
        for i in range(count):
            n += 1
            spec = JobSpec(style, "p", {}, 512, 384 if i % 3 else 341, f"{style}-{i % 3 != 0}")
            journal.add_input(f"{folder}IMG_{4100 + n}.jpg", f"{n:064x}", "s", [spec], now=now - 900 + 30 * n)
    journal.set_priority([j.id for j in journal.queue_head(50) if j.relpath.startswith("rush-")], 10)


def _outputs(journal: Journal, outbox: Path, now: float) -> None:
    """Six published, each thumbnail a tile of the docs' own contact sheets."""
    from PIL import Image

    pictures = sorted((ROOT / "docs" / "defaults").glob("*.jpg"))
    (outbox / ".gallery").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        [job] = journal.claim("starry-True" if i < 3 else "scream-True", 1, f"done-{i}", now=now - 800)
        journal.finish(job.id, f"{job.style}/{Path(job.relpath).name}", f"done-{i}")
        journal.close_input(journal.find_input(job.relpath, job.input_sha256).id, State.DONE)
        with Image.open(pictures[i % len(pictures)]) as grid:  # 3 x 3 tiles of 256 x 192, each captioned
            col, row = 1 + i % 2, i // 2
            tile = grid.crop((256 * col, 220 * row, 256 * col + 256, 220 * row + 192))
            tile.save(outbox / result_thumb(job.id), quality=85)


def shoot(folder: Path) -> list[Path]:
    """The studio's page at each width, written into `folder`; the files written."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="nstd-shots-") as tmp:
        journal, outbox = Path(tmp) / "journal.sqlite3", Path(tmp) / "outbox"
        studio(journal, outbox)
        endpoint = serve(journal, outbox, Path("/etc/nstd/config.yaml"), None)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
                try:
                    return _pictures(browser.new_page(viewport={"width": 1200, "height": 900}),
                                     f"http://127.0.0.1:{endpoint.port}/", folder)
                finally:
                    browser.close()
        finally:
            endpoint.stop()


def _pictures(page, url: str, folder: Path) -> list[Path]:
    page.goto(url)
    page.wait_for_function("() => [...document.querySelectorAll('#done img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
    page.wait_for_timeout(500)
    written = []
    for name, width in SHOTS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(300)  # the layout settles at the new width
        page.screenshot(path=str(folder / name), full_page=True)
        written.append(small(folder / name))
    return written


def small(png: Path) -> Path:
    """A screenshot in 128 colours, so the docs' pictures stay small."""
    from PIL import Image

    with Image.open(png) as im:
        im.convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            png, optimize=True)
    if png.stat().st_size > MAX_BYTES:
        raise RuntimeError(f"{png} is {png.stat().st_size:,} bytes, over {MAX_BYTES:,}")
    return png


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write dashboard.png and dashboard-phone.png (docs)")
    for path in shoot(parser.parse_args().folder):
        print(f"{path}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
