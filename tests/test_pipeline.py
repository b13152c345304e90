"""`nstd stylize` and the daemon run one pipeline: the same photo gives the same pixels."""

import json

import numpy as np
from PIL import Image

from nstd.cli import main

from daemon_harness import run_once, take


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
                 "--models-dir", str(tmp_path / "models")]) == 0
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
