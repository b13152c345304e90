"""`nstd stylize` and the daemon run one pipeline: the same photo gives the same pixels."""

import json

import numpy as np
from PIL import Image

from nstd.cli import main

from harness.daemon import run_once, take


def test_stylize_and_the_daemon_give_bit_identical_pixels(service, tmp_path):
    take(service, "a.jpg")
    run_once(service)
    [job] = service.journal.get_jobs([1])
    assert job.state == "done"
    daemon_image = service.cfg.outbox / job.output

    photo = tmp_path / "a.jpg"
    photo.write_bytes((service.cfg.inbox / "a.jpg").read_bytes())
    out = tmp_path / "one-shot"
    # The daemon's settings (daemon_harness.write_config), named on the command line.
    assert main(["stylize", str(photo), "--style", str(tmp_path / "style.png"), "-o", str(out),
                 "--size", "32", "--iterations", "4", "--model", "random",
                 "--models-dir", str(service.cfg.models_dir)]) == 0
    one_shot = out / "a.style.jpg"

    with Image.open(daemon_image) as d, Image.open(one_shot) as o:
        assert d.size == o.size
        assert np.array_equal(np.asarray(d), np.asarray(o))
    daemon_log = json.loads(daemon_image.with_suffix(".json").read_text())
    one_shot_log = json.loads(one_shot.with_suffix(".json").read_text())
    assert daemon_log["history"][-1] == one_shot_log["history"][-1]
    # Everything that shapes the picture agrees; how often losses are logged is no flag.
    assert {k: v for k, v in daemon_log["params"].items() if k != "log_every"} == \
        {k: v for k, v in one_shot_log["params"].items() if k != "log_every"}


def test_a_photo_too_narrow_for_its_size_or_for_its_first_scale_is_one_line_naming_it():
    import pytest

    from nstd.errors import ImageError
    from nstd.params import TransferParams
    from nstd.pipeline import working_size

    with pytest.raises(ImageError, match=r"^p.jpg: 400x20 is too narrow to stylize at size 64 "):
        working_size("p.jpg", 20, 400, TransferParams(size=64), 10**8)
    # The output would be 1024x768; coarse to fine's first scale, 16 px long, would not.
    params = TransferParams(size="original", multiscale_start=16)
    with pytest.raises(ImageError, match=r"^p.jpg: its first scale \(multiscale_start 16\) would be 16x12, under "
                                         r"16 px on its short side; raise multiscale_start$"):
        working_size("p.jpg", 768, 1024, params, 10**8)
    assert working_size("p.jpg", 768, 1024, TransferParams(size="original", multiscale_start=32), 10**8) == (768, 1024)
