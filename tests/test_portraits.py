"""Strength, not paste: grey masks, region strengths and protected faces act in the loss,
and only strength 0 (keep) puts the photo's own pixels back."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nstd import faces, images, masks
from nstd.cli import main
from nstd.guide import CONTENT_GAIN, FEATURE_GAIN, Guide, GuideSpec, Part, content_map, load, protect_faces

from harness.daemon import photo_bytes
from test_service import drive

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.jpg"


def grey_png(h: int, w: int, level: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w), level, np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / 255


def test_a_grey_mask_stylizes_between_black_and_white_and_more_with_each_level(tmp_path, models):
    """One photo under five uniform masks, in one run: black keeps it exactly, each lighter
    grey moves it further from the photo, white as far as no mask at all."""
    style = tmp_path / "ink.png"
    style.write_bytes(photo_bytes(48, 48, 7, "PNG"))
    photo = photo_bytes(40, 40, 1, "PNG")
    levels = (0, 64, 128, 192, 255)
    for level in levels:
        (tmp_path / f"g{level}.png").write_bytes(photo)
        (tmp_path / f"g{level}.png.mask.png").write_bytes(grey_png(40, 40, level))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "g.png").write_bytes(photo)
    common = ["--style", str(style), "--size", "40", "--iterations", "30", "--model", "random", "--models-dir",
              str(models), "--format", "png", "--style-weight", "5", "--stop-tolerance", "0"]
    assert main(["stylize", *[str(tmp_path / f"g{v}.png") for v in levels], "-o", str(tmp_path / "out"),
                 *common]) == 0
    assert main(["stylize", str(tmp_path / "plain" / "g.png"), "-o", str(tmp_path / "plain-out"), *common]) == 0
    original = pixels(tmp_path / "g0.png")
    moved = [float(np.abs(pixels(tmp_path / "out" / f"g{v}.ink.png") - original).mean()) for v in levels]
    assert moved[0] < 1 / 255  # black: the photo's own pixels
    assert all(b > a + 0.002 for a, b in zip(moved, moved[1:])), moved
    unmasked = float(np.abs(pixels(tmp_path / "plain-out" / "g.ink.png") - original).mean())
    assert moved[-1] == pytest.approx(unmasked, rel=0.05)


def test_a_masks_grey_is_its_strength_in_the_loss_and_only_black_is_pasted():
    """A mask's parts: its grey is the style part's weight, black alone is kept; the
    content weighs more where the style weighs less."""
    m = np.zeros((4, 8), np.uint8)
    m[:, 2:4], m[:, 4:6], m[:, 6:] = 3, 128, 255  # 3: a JPEG's black, as black
    buf = __import__("io").BytesIO()
    Image.fromarray(m, "L").save(buf, "PNG")
    guide = load(GuideSpec("mask", "m.png", "x"), buf.getvalue(), (4, 8), 10_000)
    styled, kept = guide.parts
    assert kept.style is None and kept.mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert styled.mask[0, :4].tolist() == [0, 0, 0, 0]
    assert styled.mask[0, 4].item() == pytest.approx(128 / 255, abs=1e-3) and styled.mask[0, 7].item() == 1
    cmap = content_map(guide, (4, 8))
    assert cmap[0, 0].item() == pytest.approx(1 + CONTENT_GAIN)
    assert cmap[0, 4].item() == pytest.approx(1 + CONTENT_GAIN * (1 - 128 / 255), abs=1e-3)
    assert cmap[0, 7].item() == pytest.approx(1.0)
    white = Guide((Part("", torch.ones(4, 8), ""),), {})
    assert content_map(white, (4, 8)) is None  # nothing held back: the plain content loss


def test_a_region_strength_is_read_checked_and_applied(tmp_path, models, capsys):
    assert masks.split_target("ink@0.5") == ("ink", 0.5)
    assert masks.split_target("ink") == ("ink", 1.0)
    assert masks.split_target("ink@0") == ("keep", 0.0)
    assert masks.split_target("keep") == ("keep", 0.0)
    for bad in ("ink@", "ink@1.5", "ink@-0.1", "keep@0.5", "@0.5", "ink@half"):
        with pytest.raises(ValueError):
            masks.split_target(bad)
    photo, style = tmp_path / "p.png", tmp_path / "ink.png"
    photo.write_bytes(photo_bytes(40, 40, 1, "PNG"))
    style.write_bytes(photo_bytes(48, 48, 7, "PNG"))
    red = np.zeros((40, 40, 3), np.uint8)
    red[..., 0] = 255
    regions = tmp_path / "map.png"
    Image.fromarray(red).save(regions)
    common = [str(photo), "--style", str(style), "--size", "40", "--iterations", "20", "--model", "random",
              "--models-dir", str(models), "--format", "png", "--regions", str(regions), "--style-weight", "100",
              "--stop-tolerance", "0"]
    assert main(["stylize", *common, "-o", str(tmp_path / "half"), "--region", "#ff0000=ink@0.5"]) == 0
    assert main(["stylize", *common, "-o", str(tmp_path / "full"), "--region", "#ff0000=ink"]) == 0
    before = pixels(photo)
    half = float(np.abs(pixels(tmp_path / "half" / "p.regions.png") - before).mean())
    full = float(np.abs(pixels(tmp_path / "full" / "p.regions.png") - before).mean())
    assert 0.002 < half < full
    assert json.loads((tmp_path / "half" / "p.regions.json").read_text())["guide"]["regions"] == {
        "#ff0000": "ink@0.5"}
    assert main(["stylize", *common, "-o", str(tmp_path / "bad"), "--region", "#ff0000=ink@2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "nstd: error: --region #ff0000=ink@2: 'ink@2': write STYLE@S with S from 0 (keep the photo) " \
                  "to 1 (the full style)"


class _Found:
    """A detector that reports one face, for the guide's arithmetic without MTCNN."""

    def detect(self, pixels, key=None, least=faces.MIN_PROBABILITY):
        return [faces.Face((0.25, 0.25, 0.75, 0.75), ((0.4, 0.4), (0.6, 0.4), (0.5, 0.5), (0.42, 0.62),
                                                      (0.58, 0.62)), 0.99)]


def test_a_protected_face_is_held_back_in_the_loss_and_pasted_only_at_strength_0():
    photo = torch.rand(3, 64, 64)
    painted = protect_faces(None, photo, _Found(), 0.3)
    (own,) = painted.parts  # one styled part; nothing kept
    assert own.style is not None and own.mask[32, 32].item() == pytest.approx(0.3, abs=1e-3)
    assert own.mask[2, 2].item() == 1.0 and painted.log == {"source": "faces", "faces": 1, "strength": 0.3}
    cmap = content_map(painted, (64, 64))
    eye = round(0.4 * 64), round(0.4 * 64)
    assert cmap[eye[1], eye[0]].item() > 1 + CONTENT_GAIN * 0.7 + 0.9 * FEATURE_GAIN  # on an eye: held most
    assert 1 + CONTENT_GAIN * 0.7 - 0.01 < cmap[32, 42].item() < 1 + CONTENT_GAIN * 0.7 + 0.2  # the cheek
    assert cmap[2, 2].item() == pytest.approx(1.0)  # away from the face: as without protection
    pasted = protect_faces(None, photo, _Found(), 0.0)
    assert [p.style for p in pasted.parts] == ["", None]  # the old paste: the face a kept part
    assert pasted.parts[1].mask[32, 32].item() == 1.0


def test_protect_strength_is_a_setting_with_a_one_line_error_naming_it():
    from nstd.errors import ConfigError
    from nstd.params import TransferParams, parse_flag, with_overrides

    assert with_overrides(TransferParams(), {"protect_strength": 0.6}, "a.jpg.nstd.yaml").protect_strength == 0.6
    assert parse_flag("protect_strength", "0") == 0.0
    with pytest.raises(ConfigError) as e:
        with_overrides(TransferParams(), {"protect_strength": 1.5}, "a.jpg.nstd.yaml")
    assert str(e.value) == "a.jpg.nstd.yaml.protect_strength: must be from 0 (keep the photo) to 1 (the full " \
                           "style), got 1.5"


@pytest.mark.slow
def test_the_astronauts_face_keeps_its_landmarks_painted_not_pasted(tmp_path, caffe_models):
    """The real network and the real detector on NASA's portrait of Eileen Collins (public
    domain), at a size the detector still finds her face in: protected, the output's face
    is found where the photo's is, its five landmarks within 5% of the face's width, and
    it is painted (not the photo's pixels); unprotected, at the same weights, the style
    takes the face apart."""
    from test_real_weights import swirls

    style = tmp_path / "swirls.png"
    images.to_pil(swirls(128, 128)).save(style)
    common = [str(ASTRONAUT), "--style", str(style), "--size", "224", "--iterations", "30", "--models-dir",
              str(caffe_models), "--format", "png", "--stop-tolerance", "0"]
    assert main(["stylize", *common, "-o", str(tmp_path / "protected"), "--protect", "faces"]) == 0
    assert main(["stylize", *common, "-o", str(tmp_path / "plain")]) == 0
    out = pixels(tmp_path / "protected" / "astronaut.swirls.png")
    with Image.open(ASTRONAUT) as src:
        before = np.asarray(src.convert("RGB").resize(out.shape[1::-1], Image.BICUBIC), np.float32) / 255
    finder = faces.FaceFinder()
    (face,) = finder.detect(torch.from_numpy(before).permute(2, 0, 1))

    def found(name: str) -> tuple[float, float]:
        """The probability of the face found where the photo's is, and its landmarks'
        worst move in % of the face's width (the photo is square)."""
        image = torch.from_numpy(pixels(tmp_path / name / "astronaut.swirls.png")).permute(2, 0, 1)
        seen = [f for f in finder.detect(image, least=0.0) if abs(f.box[0] - face.box[0]) < 0.1]
        if not seen:
            return 0.0, float("inf")
        return seen[0].probability, max(((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5 / face.width * 100
                                        for a, b in zip(seen[0].landmarks, face.landmarks))

    probability, worst = found("protected")
    assert probability >= 0.9 and worst <= 5.0, (probability, worst)
    assert found("plain")[1] > 10.0
    h, w = out.shape[:2]
    left, top, right, bottom = face.box
    inner = (slice(round((top + 0.2 * (bottom - top)) * h), round((bottom - 0.2 * (bottom - top)) * h)),
             slice(round((left + 0.2 * (right - left)) * w), round((right - 0.2 * (right - left)) * w)))
    assert np.abs(out[inner] - before[inner]).mean() > 0.01  # painted: not a copy of the photo's face


def test_the_daemon_paints_a_protected_face_at_its_sidecars_strength(service, settle):
    """protect and protect_strength from a photo's sidecar, through intake, the loader's
    face detection and the batch: the loss log says what was found and at what strength,
    and the face is painted, not the photo's pixels."""
    inbox = service.cfg.inbox
    (inbox / "astronaut.jpg").write_bytes(ASTRONAUT.read_bytes())
    (inbox / "astronaut.jpg.nstd.yaml").write_text("protect: faces\nprotect_strength: 0.5\nsize: 64\n"
                                                   "style_weight: 1000\n")
    service.inputs.step(0.0)
    drive(service, settle * 2)
    log = json.loads((service.cfg.outbox / "ink" / "astronaut.json").read_text())
    assert log["guide"] == {"source": "faces", "faces": 1, "strength": 0.5}
    assert set(log["history"][-1]["style_by_region"]) == {"ink"}  # one styled part: nothing pasted
    out = pixels(service.cfg.outbox / "ink" / "astronaut.jpg")
    with Image.open(ASTRONAUT) as src:
        before = np.asarray(src.convert("RGB").resize(out.shape[1::-1], Image.BICUBIC), np.float32) / 255
    face = (slice(14, 20), slice(26, 32))  # inside the face at 64 px
    assert np.abs(out[face] - before[face]).mean() > 0.025  # strength 0 (the paste) measured 0.009, 0.5 0.045
