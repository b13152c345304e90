"""The channel convention of each weight set, pinned at the network's input.

The expected values are written out from the published conventions, not from nstd's
tables: Caffe's VGG19 takes B, G, R in 0-255 with the ImageNet mean (B 103.939,
G 116.779, R 123.68) subtracted; torchvision's takes R, G, B in 0-1, minus
(0.485, 0.456, 0.406) and divided by (0.229, 0.224, 0.225).
"""

import pytest
import torch

from nstd.bench import baseline
from nstd.engine import color
from nstd.engine.transfer import run_batch
from nstd.engine.types import BatchSettings, StyleImage, TransferJob
from nstd.engine.vgg import VGGFeatures

from harness.synthetic import random_vgg_state_dict

RGB = (200, 100, 50)  # a pixel, 0-255


def expected_input(weight_set: str, rgb=RGB) -> torch.Tensor:
    r, g, b = rgb
    if weight_set == "caffe":
        return torch.tensor([b - 103.939, g - 116.779, r - 123.68])
    return torch.tensor([(r / 255 - 0.485) / 0.229, (g / 255 - 0.456) / 0.224, (b / 255 - 0.406) / 0.225])


def flat(rgb=RGB, h=24, w=24) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255).view(3, 1, 1).expand(3, h, w).clone()


class FirstInput:
    """Records what the first convolution receives, call by call."""

    def __init__(self, model: VGGFeatures):
        self.seen: list[torch.Tensor] = []
        self.handle = model.features[0].register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.seen.append(args[0].detach().float().mean((2, 3)))

    def close(self):
        self.handle.remove()


@pytest.fixture(params=["caffe", "torchvision"])
def model(request, vgg_sd):
    return VGGFeatures(vgg_sd, request.param, BatchSettings().layers, model_id=request.param)


def test_a_known_pixel_reaches_the_network_in_its_convention(model):
    got = model.normalize(flat()[None]).mean((2, 3))[0]
    assert torch.allclose(got, expected_input(model.preprocessing), atol=1e-4), got


def test_the_engine_feeds_the_network_that_convention(model):
    probe = FirstInput(model)
    try:
        job = TransferJob(flat(), (StyleImage(flat((10, 20, 240)), key="blue"),))
        run_batch(model, [job], BatchSettings(iterations=1))
    finally:
        probe.close()
    # The first pass reads the photo, the second the style (for its Gram targets).
    assert torch.allclose(probe.seen[0][0], expected_input(model.preprocessing), atol=1e-3)
    assert torch.allclose(probe.seen[1][0], expected_input(model.preprocessing, (10, 20, 240)), atol=1e-3)


def test_the_benchmark_baseline_feeds_the_same_convention(model):
    probe = FirstInput(model)
    try:
        job = TransferJob(flat(), (StyleImage(flat((10, 20, 240))),))
        baseline.run(model, job, BatchSettings(iterations=1))
    finally:
        probe.close()
    assert torch.allclose(probe.seen[0][0], expected_input(model.preprocessing), atol=1e-3)


def test_colour_preservation_reads_rgb_and_feeds_grey_in_the_convention(model):
    # Luminance weights are for R, G, B in that order (NTSC): pure red is 0.299.
    assert color.luminance(flat((255, 0, 0)))[0, 0, 0].item() == pytest.approx(0.299, abs=1e-6)
    y = 0.299 * RGB[0] + 0.587 * RGB[1] + 0.114 * RGB[2]
    probe = FirstInput(model)
    try:
        job = TransferJob(flat(), (StyleImage(flat((10, 20, 240))),), preserve_color="luminance")
        run_batch(model, [job], BatchSettings(iterations=1))
    finally:
        probe.close()
    assert torch.allclose(probe.seen[0][0], expected_input(model.preprocessing, (y, y, y)), atol=1e-3)


def test_converted_caffe_kernels_read_blue_from_their_first_input_channel(tmp_path):
    # Keras' VGG19 file was trained on Caffe's BGR input: its input channel 0 is blue.
    # After conversion, a filter that reads only that channel must answer to the
    # photo's blue and to nothing else.
    from nstd import weights
    from test_weights import write_keras_h5

    sd = random_vgg_state_dict(2)
    sd["0.weight"].zero_()
    sd["0.bias"].zero_()
    sd["0.weight"][0, 0, 1, 1] = 1.0  # out 0 reads in-channel 0 at the centre tap
    write_keras_h5(tmp_path / "k.h5", sd)
    model = VGGFeatures(weights.convert_keras_h5(tmp_path / "k.h5"), "caffe", {"conv1_1"})
    base = model(flat()[None])["conv1_1"][0, 0].mean()
    more_blue = model(flat((RGB[0], RGB[1], RGB[2] + 40))[None])["conv1_1"][0, 0].mean()
    more_red = model(flat((RGB[0] + 40, RGB[1], RGB[2]))[None])["conv1_1"][0, 0].mean()
    assert base.item() == pytest.approx(RGB[2] - 103.939, abs=1e-3)
    assert more_blue.item() == pytest.approx(base.item() + 40, abs=1e-3)
    assert more_red.item() == pytest.approx(base.item(), abs=1e-3)
