"""A corpus of awkward and hostile inputs, generated rather than committed.

`python -m harness.corpus DIR` writes it into DIR; the tests call `build(dir, outside)`.
Each entry says whether nstd should stylize it ("ok") or refuse it ("failed"), and
for refusals a phrase the reason must contain.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims huge dimensions, in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # only the first rows: the rest never comes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def build(root: Path, outside: Path) -> dict[str, tuple[str, str]]:
    """Write the corpus under root; return {relpath: (expected, reason phrase)}."""
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    expect: dict[str, tuple[str, str]] = {}

    def put(name: str, data: bytes, outcome: str, why: str = "") -> None:
        (root / name).write_bytes(data)
        expect[name] = (outcome, why)

    good = _save(_photo(64, 48, 1), "JPEG", quality=90)
    put("truncated.jpg", good[: len(good) // 2], "failed", "cannot decode")
    put("zero bytes.jpg", b"", "failed", "an empty file")
    put("random.jpg", os.urandom(4096), "failed", "not a recognised image format")
    put("bomb.png", png_bomb(40000, 40000), "failed", "over the limit")
    frames = [_photo(48, 48, s) for s in (2, 3, 4)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", buf.getvalue(), "ok")
    deep = (np.asarray(_photo(48, 40, 5).convert("L"), dtype=np.uint16) * 257)
    put("sixteen-bit.png", _save(Image.fromarray(deep), "PNG"), "ok")
    put("cmyk.jpg", _save(_photo(48, 40, 6).convert("CMYK"), "JPEG", quality=90), "ok")
    put("grey.jpg", _save(_photo(48, 40, 7).convert("L"), "JPEG"), "ok")
    pal = _photo(48, 40, 8).convert("P", palette=Image.ADAPTIVE, colors=16)
    put("palette-alpha.png", _save(pal, "PNG", transparency=0), "ok")
    put("one-pixel.png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "failed", "too small")
    put("panorama.png", _save(Image.new("RGB", (20000, 10), (10, 120, 200)), "PNG"), "failed", "too small")
    put("sliver.png", _save(Image.new("RGB", (4000, 20), (10, 120, 200)), "PNG"), "failed", "too narrow")
    put("name with spaces.jpg", good, "ok")
    put("ünïcødé 写真.jpg", _save(_photo(40, 48, 9), "JPEG"), "ok")
    put("new\nline.jpg", _save(_photo(48, 48, 10), "JPEG"), "ok")

    secret = outside / "secret.jpg"
    secret.write_bytes(_save(_photo(48, 48, 11), "JPEG"))
    (root / "link-out.jpg").symlink_to(secret)
    expect["link-out.jpg"] = ("failed", "follows no links")
    os.mkfifo(root / "fifo.jpg")
    expect["fifo.jpg"] = ("failed", "not a regular file")
    (root / "folder.jpg").mkdir()
    expect["folder.jpg"] = ("ignored", "")
    unreadable = root / "unreadable.jpg"
    unreadable.write_bytes(_save(_photo(48, 48, 12), "JPEG"))
    unreadable.chmod(0)
    # root reads any file whatever its mode; anyone else cannot.
    expect["unreadable.jpg"] = ("ok", "") if os.geteuid() == 0 else ("failed", "cannot read")
    return expect


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    for name, (outcome, why) in sorted(build(out, out.parent / f"{out.name}-outside").items()):
        print(f"{outcome:8} {name!r} {why}")
