"""`nstd init DIR`: a folder ready for a first run, for a user who installed nstd with pip
and so has no checkout (no config.example.yaml, no example styles beside it)."""

from __future__ import annotations

import shutil
from pathlib import Path

from nstd.errors import NstdError

PAINTINGS = Path(__file__).resolve().parent / "styles"
FOLDERS = ("inbox", "outbox", "failed", "processed", "state")

CONFIG = """\
# nstd configuration, written by `nstd init`. Paths are relative to this file.
# Check it with: nstd check --config {config}
# Every key is described in nstd's docs/configuration.md and in
# config.example.yaml in nstd's source.
inbox: ./inbox          # drop photos here; inbox/<style>/<photo> gets that style only
outbox: ./outbox        # results: outbox/<style>/<stem>.jpg and its .json loss log
failed: ./failed        # inputs that could not be processed, each with <name>.error.json
processed: ./processed  # inputs whose outputs are all written
state_dir: ./state      # the journal and a copy of queued inputs; keep it on a local disk

styles:
  starry:
    image: styles/starry_night.jpg
  scream:
    image: styles/the_scream.jpg
    style_weight: 20    # a stronger hand for Munch's broad bands of colour

transfer:
  size: 512             # the outputs' long side in px; 'original' keeps the photo's size
  iterations: 500       # on a CPU a photo takes minutes: try 256 and 200 for a first look
"""


def init(target: Path) -> Path:
    """Write target/config.yaml, its folders and three public-domain paintings; returns the
    config's path. An existing config is never overwritten."""
    config = target / "config.yaml"
    if config.exists():
        raise NstdError(f"{config} exists already; nstd init starts a new folder")
    try:
        for name in FOLDERS:
            (target / name).mkdir(parents=True, exist_ok=True)
        (target / "styles").mkdir(exist_ok=True)
        for painting in ("starry_night.jpg", "the_scream.jpg", "shipwreck.jpg"):
            shutil.copyfile(PAINTINGS / painting, target / "styles" / painting)
        config.write_text(CONFIG.format(config=config))
    except OSError as e:
        raise NstdError(f"{e.filename or target}: cannot write ({e.strerror}); "
                        "name a folder you can write to") from None
    return config
