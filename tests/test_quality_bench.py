"""The quality benchmark's own parts: its evaluator agrees with nstd's Caffe features by
an independent route, and its matched weights make nstd minimise the peer's objective."""

import json

import torch

from nstd.cli import main

from harness.daemon import photo_bytes
from harness.synthetic import random_vgg_state_dict


def test_nstd_with_matched_weights_starts_at_the_evaluators_objective(tmp_path):
    from benchmarks import quality
    from nstd import stylize
    from nstd.params import TransferParams

    torch.save(random_vgg_state_dict(seed=3), tmp_path / "r.pth")
    models = tmp_path / "models"
    assert main(["weights", "import", str(tmp_path / "r.pth"), "--name", "caffe", "--preprocessing", "caffe",
                 "--models-dir", str(models)]) == 0
    photo, painting = tmp_path / "photo.png", tmp_path / "painting.png"
    photo.write_bytes(photo_bytes(48, 64, 1, "PNG"))
    painting.write_bytes(photo_bytes(64, 48, 2, "PNG"))
    ev = quality.Evaluator(torch.load(models / "caffe.pth", weights_only=True))
    pf, sf = ev.features(photo), ev.features(painting)
    start = quality.score(ev, photo, pf, sf)
    assert start["content"] == 0 and start["style"] > 0
    cw, layers = quality.matched_layers(pf, sf, scale=1 / start["objective"])
    params = TransferParams(size=64, iterations=1, content_weight=cw, style_weight=1.0, tv_weight=0.0,
                            init="content", model="caffe", style_layers=layers, log_every=1)
    req = stylize.Request(contents=[photo], styles=[painting], outdir=tmp_path / "out", params=params, fmt="PNG",
                          models_dir=models, device="cpu")
    assert stylize.run(req, on_error=print) == 0
    [log] = (tmp_path / "out").glob("*.json")
    first = json.loads(log.read_text())["history"][0]
    # From the photo, nstd's objective is the evaluator's, scaled to 1: the same features
    # (nstd's Caffe preprocessing against the evaluator's own) and the same weighting.
    assert abs(first["total"] - 1.0) < 0.02, first
