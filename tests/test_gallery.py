import html
import os
import re
import shutil
import subprocess
from pathlib import Path

from nstd.daemon.intake import Kind
from nstd.daemon import gallery

from harness.daemon import photo_bytes
from harness.daemon import run_once, take


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    raise AssertionError("no Chromium found: `make test` installs Debian's chromium package; "
                         "or run: apt-get install chromium")


def render_in_browser(page: Path) -> str:
    """The page's DOM after Chromium has loaded it and its images."""
    out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_gallery_renders_in_chromium_with_every_image_loaded(service):  # noqa: F811
    take(service, "a.jpg", "b&<c>.jpg")
    run_once(service)
    (service.cfg.inbox / "broken.jpg").write_bytes(photo_bytes(40, 40, 9)[:200])
    st = (service.cfg.inbox / "broken.jpg").stat()
    assert service.intake.accept("broken.jpg", (st.st_size, st.st_mtime_ns, st.st_ino)).kind is Kind.FAILED
    page = gallery.write(service.cfg.outbox, service.journal)

    dom = render_in_browser(page)
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == 2 * 3  # photo, style and result for each of two jobs
    assert all("data-loaded" in i and "data-broken" not in i for i in imgs), imgs
    assert "b&amp;&lt;c&gt;.jpg" in dom and "<c>" not in dom  # names are escaped, not markup
    failures = dom.split("<h2>Failures</h2>")[1]
    assert "broken.jpg" in failures and "cannot decode" in failures
    # Every link resolves to a file in the outbox: results, loss logs and loss curves.
    links = [html.unescape(h) for h in re.findall(r'<a href="([^"]+)"', dom)]
    assert len(links) == 2 * 3
    from urllib.parse import unquote
    for link in links:
        assert (service.cfg.outbox / unquote(link)).is_file(), link
    assert any(link.endswith(".loss.svg") for link in links)


def test_the_page_is_written_atomically_after_each_batch(service):  # noqa: F811
    take(service, "a.jpg")
    run_once(service)
    page = service.cfg.outbox / "index.html"
    assert page.exists() and "a.jpg" in page.read_text()
    assert not list(service.cfg.outbox.glob(".index.html*.tmp"))


def test_thumbnails_never_pass_through_a_planted_symlink(service, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, service.cfg.outbox / ".gallery")  # planted: the page's folder points out
    take(service, "a.jpg")
    run_once(service)
    assert service.journal.get_jobs([1])[0].state == "done"  # the output itself is unharmed
    assert list(outside.iterdir()) == []
