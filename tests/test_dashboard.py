"""The live dashboard (GET /, /api/status, /api/thumb/ID): its document read from a journal
filled here, the token and the thumbnails' containment, then the page itself in headless
Chromium (Debian's, driven by Playwright through its path) against a real daemon. The
docs' screenshots are made by harness/screenshots.py, whose studio is checked here."""

import json
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.daemon import Daemon, photo_bytes, wait_for, write_config
from harness.screenshots import chromium, serve, studio
from nstd.daemon.gallery import result_thumb
from nstd.daemon.journal import ANY, JobSpec, Journal, WorkerInfo
from nstd.web.status import retry_command

TOKEN = "a-studio-token-for-the-page"


def get(url: str, token: str | None = TOKEN) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# --- the document, from a journal filled here ----------------------------------------

@pytest.fixture
def filled(tmp_path):
    """A journal with a worker running a batch half way, three queued jobs, one done with
    its thumbnail, a photo refused and two operators' pauses; and an endpoint serving it
    with a token."""
    outbox, now = tmp_path / "outbox", time.time()
    journal = Journal(tmp_path / "journal.sqlite3")
    worker = WorkerInfo("studio-2:7:cuda:0", "studio-2", "cuda:0", 80 * 2**30)
    journal.beat(worker, "working", now - 4)
    spec = [JobSpec("ink", "p", {}, 32, 24, "k1")]
    journal.add_input("run/a.jpg", "a" * 64, "a.spool", spec, now=now - 100)
    [running] = journal.claim("k1", 4, "batch-1", now=now - 90, owner=worker.owner)
    journal.progress([running.id], 120, 500, 2.5, now + 150)
    for i, name in enumerate(["old.jpg", "<b>new</b>.jpg", "mid.jpg"]):
        journal.add_input(name, str(i) * 64, "s", [JobSpec("wash", "p", {}, 64, 48, "k2")], now=now - 60 + 10 * i)
    [mid] = journal.jobs_of(journal.find_input("mid.jpg", "2" * 64).id)
    journal.set_priority([mid.id], 5)
    journal.add_input("done.jpg", "d" * 64, "d.spool", [JobSpec("ink", "p", {}, 32, 32, "k3")], now=now - 50)
    [done] = journal.claim("k3", 1, "batch-2", now=now - 40)
    journal.finish(done.id, "ink/done.jpg", "batch-2")
    journal.fail_input("shoot/notes[1].jpg", "e" * 64, "shoot/notes[1].jpg: cannot decode: not an image", now=now)
    journal.pause("studio-2", ANY, "ana@studio-1", now - 600)
    journal.pause(ANY, "cuda:1", None, now - 30)
    journal.close()
    (outbox / ".gallery").mkdir(parents=True)
    (outbox / result_thumb(done.id)).write_bytes(photo_bytes(24, 32, 5))
    endpoint = serve(tmp_path / "journal.sqlite3", outbox, tmp_path / "config.yaml", TOKEN)
    yield f"http://127.0.0.1:{endpoint.port}", outbox, {"running": running.id, "done": done.id}
    endpoint.stop()


def test_the_status_document_says_what_the_journal_holds(filled):
    base, _, ids = filled
    status, headers, body = get(base + "/api/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["host"] == "studio-1" and doc["paused"] is None
    assert (doc["jobs"]["queued"], doc["jobs"]["running"], doc["jobs"]["done"]) == (3, 1, 1)
    [w] = doc["workers"]
    assert (w["host"], w["device"], w["state"], w["silent"]) == ("studio-2", "cuda:0", "working", False)
    assert 3 <= w["heartbeat_age"] < 60
    [b] = doc["batches"]
    assert (b["host"], b["size"], b["iteration"], b["total"], b["rate"]) == ("studio-2", "32x24", 120, 500, 2.5)
    assert 100 < b["left"] <= 150 and b["jobs"] == [{"id": ids["running"], "photo": "run/a.jpg", "style": "ink"}]
    # The order the scheduler takes them: the highest priority, then the oldest.
    queue = [(q["photo"], q["priority"]) for q in doc["queue"]]
    assert queue == [("mid.jpg", 5), ("old.jpg", 0), ("<b>new</b>.jpg", 0)]
    assert all(q["size"] == "64x48" for q in doc["queue"])
    [d] = doc["done"]
    assert (d["id"], d["photo"], d["output"], d["thumb"]) == (ids["done"], "done.jpg", "ink/done.jpg", True)
    [f] = doc["failures"]
    assert f["photo"] == "shoot/notes[1].jpg" and f["reason"] == "cannot decode: not an image"
    assert f["retry"] == retry_command(Path(filled[1].parent / "config.yaml"), "shoot/notes[1].jpg")
    assert [(p["host"], p["device"], p["by"]) for p in doc["pauses"]] == \
        [("*", "cuda:1", None), ("studio-2", "*", "ana@studio-1")]
    assert 600 <= doc["pauses"][1]["ago"] < 660


def test_each_pause_is_shown_with_the_command_that_lifts_it(filled, tmp_path):
    from nstd.cli import build_parser

    doc = json.loads(get(filled[0] + "/api/status")[2])
    config = str(tmp_path / "config.yaml")
    assert [p["resume"] for p in doc["pauses"]] == [f"nstd resume --config {config} --host all --device cuda:1",
                                                     f"nstd resume --config {config} --host studio-2 --device all"]
    # Pasted, it lifts that pause: nstd's own parser reads it, and the journal lifts it.
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        for p in doc["pauses"]:
            args = build_parser().parse_args(shlex.split(p["resume"])[1:])
            sides = [ANY if side == "all" else side for side in (args.host, args.device)]
            assert (args.config, journal.resume(*sides)) == (Path(config), 1)
        assert journal.pauses() == []
    finally:
        journal.close()
    assert json.loads(get(filled[0] + "/api/status")[2])["pauses"] == []


def test_the_retry_command_names_that_photo_alone_when_pasted():
    cmd = retry_command(Path("/etc/nstd/my config.yaml"), "it's [1].jpg")
    assert cmd == "nstd retry --config '/etc/nstd/my config.yaml' 'it'\"'\"'s [[]1].jpg'"
    from fnmatch import fnmatch
    import shlex
    pattern = shlex.split(cmd)[-1]
    assert fnmatch("it's [1].jpg", pattern) and not fnmatch("it's 1.jpg", pattern)


def test_the_page_is_served_to_anyone_and_its_data_only_with_the_token(filled):
    base, _, ids = filled
    status, headers, body = get(base + "/", token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"static/app.js" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for path in ("/static/app.js", "/static/app.css", "/static/icon.svg"):
        assert get(base + path, token=None)[0] == 200
    for path in ("/api/status", f"/api/thumb/{ids['done']}", "/metrics", "/static/nothing.js"):
        status, _, body = get(base + path, token=None)
        assert status == 401 and json.loads(body)["reason"] == "a bearer token is required"
    assert get(base + "/api/status", token="é-not-ascii-and-wrong")[0] == 401  # refused, not dropped


def test_thumbnails_come_only_from_the_gallery_by_job_id(filled, tmp_path):
    base, outbox, ids = filled
    status, headers, body = get(base + f"/api/thumb/{ids['done']}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    for path in ("/api/thumb/999", "/api/thumb/../../journal.sqlite3", "/api/thumb/1.jpg", "/api/thumb/-1",
                 "/api/thumb/%2e%2e", "/api/nothing"):
        status, _, body = get(base + path)
        assert status == 404 and body.count(b"\n") == 1, path
    # A gallery folder that a planted link leads out of the outbox is not read through.
    outside = tmp_path / "elsewhere"
    (outbox / ".gallery").rename(outside)
    (outbox / ".gallery").symlink_to(outside)
    assert get(base + f"/api/thumb/{ids['done']}")[0] == 404
    assert json.loads(get(base + "/api/status")[2])["done"][0]["thumb"] is False


def test_the_docs_studio_is_a_journal_the_page_reads(tmp_path):
    """The afternoon harness/screenshots.py pictures, as /api/status serves it: a change to
    the journal that breaks the script shows here, not when the docs are next redrawn."""
    studio(tmp_path / "journal.sqlite3", tmp_path / "outbox")
    endpoint = serve(tmp_path / "journal.sqlite3", tmp_path / "outbox", Path("/etc/nstd/config.yaml"), TOKEN)
    try:
        status, _, body = get(f"http://127.0.0.1:{endpoint.port}/api/status")
    finally:
        endpoint.stop()
    assert status == 200
    doc = json.loads(body)
    assert [w["state"] for w in doc["workers"]] == ["working", "working", "paused", "paused"]
    assert [(p["host"], p["device"]) for p in doc["pauses"]] == [("studio-2", "cuda:1")]
    assert len(doc["batches"]) == 2 and all(b["host"] for b in doc["batches"])
    assert doc["queue"][0]["priority"] == 10 and doc["queue"][0]["photo"].startswith("rush-acme/")
    assert len(doc["done"]) == 6 and all(d["thumb"] for d in doc["done"])
    assert len(doc["failures"]) == 2


# --- the page in Chromium, against a real daemon -------------------------------------

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon(tmp_path, session_models):
    """A daemon serving the dashboard with a token: `sketch` done in a few iterations,
    `starry` running far longer than the test looks at it (it is stopped at the end, its
    batch cut short after a second rather than the harness's five). A photo for `sketch`
    and a file that is no photo wait in the inbox when it starts."""
    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    config = write_config(tmp_path, session_models, http={"listen": f"127.0.0.1:{port}", "token_file": "token"},
                          styles={"sketch": {"image": "style.png"},
                                  "starry": {"image": "style.png", "iterations": 20000}},
                          limits={"iterations": 20000, "total_iterations": 20000}, worker={"stop_timeout": 1})
    inbox = tmp_path / "inbox"
    for style in ("sketch", "starry"):
        (inbox / style).mkdir()
    (inbox / "sketch" / "IMG_2041.jpg").write_bytes(photo_bytes(36, 48, 1))
    (inbox / "notes.jpg").write_bytes(b"meeting notes, not a photo\n")
    d = Daemon(config).start(wait=False)
    try:
        yield d, f"http://127.0.0.1:{port}", inbox
    finally:
        if d.alive():
            d.stop()


def _answers(base: str) -> bool:
    try:
        return get(base + "/readyz")[0] == 200
    except OSError:
        return False


POLL_MS = 3000  # the page's wait between polls of api/status (static/app.js)


def next_polls(page, expression: str, arg=None, timeout: float = 60):
    """Wait until `expression` holds in the page; each half second it does not, the page's
    clock is moved on to its next poll, rather than the test waiting out the 3 s between
    polls. What a poll shows still comes from the daemon, in real time."""
    from playwright.sync_api import TimeoutError as PageTimeout

    deadline = time.time() + timeout
    while True:
        try:
            return page.wait_for_function(expression, arg=arg, timeout=500)
        except PageTimeout:
            if time.time() > deadline:
                raise
            page.clock.fast_forward(POLL_MS)


def test_the_dashboard_in_chromium_shows_progress_outputs_and_failures(daemon):
    from playwright.sync_api import sync_playwright

    d, base, inbox = daemon
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            # The long batch goes in once the short one is out, so it cannot hold the only worker first.
            wait_for(lambda: list((d.root / "outbox" / ".gallery").glob("out-*.jpg")), 90, "the sketch's output")
            for i in range(3):
                (inbox / "starry" / f"IMG_21{i}0.jpg").write_bytes(photo_bytes(36, 48, 10 + i))
            wait_for(lambda: _answers(base), 30, "the dashboard to answer")
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.clock.install()  # its own pace, until the test moves it on to a poll
            page.goto(f"{base}/#token={TOKEN}")
            assert "token" not in page.url  # taken off the address bar, kept for the tab
            # A finished output's thumbnail, fetched with the token and loaded.
            page.wait_for_function("() => [...document.querySelectorAll('#done img.thumb')]"
                                   ".some(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
            assert "IMG_2041.jpg" in page.text_content("#done")
            # The refused file, with its reason and the command that retries it.
            page.wait_for_selector("#failures .failure", timeout=30_000)
            failure = page.text_content("#failures")
            assert "notes.jpg" in failure and "not a recognised image format" in failure
            assert f"nstd retry --config {d.config} notes.jpg" in failure
            # An operator's pause of another host on the shared journal, with the command that lifts it.
            journal = Journal(d.root / "state" / "journal.sqlite3")
            journal.pause("studio-9", ANY, "ana@studio-1", time.time())
            journal.close()
            next_polls(page, "() => document.querySelector('#pauses .pause')", timeout=30)
            assert f"nstd resume --config {d.config} --host studio-9 --device all" in page.text_content("#pauses")
            # A batch that runs a while: its iteration moves on between polls.
            next_polls(page, "() => document.querySelector('#batches .iteration')")
            first = page.get_attribute("#batches .iteration", "data-iteration")
            # A photo of another size, once the long batch holds the worker: it waits in the queue.
            (inbox / "starry" / "IMG_2200.jpg").write_bytes(photo_bytes(48, 36, 20))
            next_polls(page, "first => Number(document.querySelector('#batches .iteration')"
                             "?.dataset.iteration) > first", arg=int(first))
            assert "starry/IMG_21" in page.text_content("#batches")
            next_polls(page, "() => document.querySelector('#queue').textContent.includes('IMG_2200.jpg')",
                       timeout=30)
            assert errors == []
        finally:
            browser.close()
    assert d.stop() == 0
