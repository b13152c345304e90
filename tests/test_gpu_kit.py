"""The kit that carries the benchmarks' weights to an offline GPU host: what arrives
there gives the objective's features exactly as the full weights do."""

import json

import torch

from nstd import weights
from nstd.engine.types import BatchSettings
from nstd.engine.vgg import VGGFeatures


def test_weights_cut_at_conv5_1_give_the_objective_s_features_exactly(tmp_path, vgg_sd):
    from benchmarks import gpu_kit

    here, there, kit = tmp_path / "here", tmp_path / "there", tmp_path / "kit"
    kit.mkdir()
    torch.save(vgg_sd, tmp_path / "full.pth")
    weights.import_file(here, tmp_path / "full.pth", "caffe", "caffe")
    (kit / "manifest.json").write_text(json.dumps(gpu_kit.pack_weights(here, kit)))
    carried = torch.load(kit / gpu_kit.WEIGHTS_NAME, weights_only=True)
    assert max(int(k.split(".")[0]) for k in carried) == 28  # conv5_1, the last the objective reads
    gpu_kit.unpack(kit, there)
    (full, info), (cut, cut_info) = weights.load(here, "caffe"), weights.load(there, "caffe")
    assert cut_info.preprocessing == info.preprocessing == "caffe"
    x = torch.rand(1, 3, 48, 64)
    ours, theirs = (VGGFeatures(sd, "caffe", BatchSettings().layers)(x) for sd in (full, cut))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
