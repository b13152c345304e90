"""Masks, region maps and faces: decoded like photos, carried by the daemon, kept by the engine."""

import hashlib
import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from nstd import faces, masks
from nstd.daemon.journal import State
from nstd.errors import ConfigError, ImageError
from nstd.params import TransferParams, validate

from harness.daemon import files, photo_bytes
from test_service import drive, queued_inputs


def png(arr: np.ndarray, mode: str | None = None, exif=None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    im.save(buf, "PNG", **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def half_mask(h: int = 40, w: int = 40) -> np.ndarray:
    """White (stylize) on the left, black (keep) on the right."""
    arr = np.zeros((h, w), np.uint8)
    arr[:, : w // 2] = 255
    return arr


def region_map(h: int = 40, w: int = 40, third=(0, 0, 0)) -> np.ndarray:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 0)
    arr[: h // 3, w // 2:] = third
    return arr


# --- decoding -------------------------------------------------------------------------

def test_a_16bit_mask_keeps_its_precision_and_its_orientation_is_applied():
    arr = np.zeros((20, 40), np.uint16)
    arr[:, :10] = 65535
    arr[:, 10:] = 32768  # the middle of 16 bits: 8 bits would give 128/255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise, as the photo beside it is
    m = masks.decode_mask(png(arr, exif=exif), "p.jpg.mask.png", (40, 20), 10**6)
    assert m.shape == (40, 20)  # upright, like its photo
    assert float(m[-1, 5]) == pytest.approx(32768 / 65535, abs=1e-6)
    assert float(m[0, 5]) == 1.0 and float(m[-1, 5]) < 1.0  # the white band is now along the top


def test_a_mask_of_another_shape_than_its_photo_is_refused_by_name():
    with pytest.raises(ImageError, match=r"^p\.jpg\.mask\.png: 40x20 does not match its photo's shape \(30x30\)"):
        masks.decode_mask(png(np.zeros((20, 40), np.uint8)), "p.jpg.mask.png", (30, 30), 10**6)


def test_a_region_map_takes_the_nearest_colour_at_soft_edges_and_names_an_unmapped_one():
    arr = region_map()
    arr[:, 19] = (250, 12, 8)  # an anti-aliased edge
    found = dict(masks.decode_regions(png(arr), "m.png", (40, 40), {(255, 0, 0): "ink", (0, 0, 0): "keep"}, 10**6))
    assert float(found["ink"][:, :20].min()) == 1.0 and float(found["keep"][:, 20:].min()) == 1.0
    with pytest.raises(ImageError, match=r"^m\.png: colour #00ff00 covers 16\.\d% of the map and names no style"):
        masks.decode_regions(png(region_map(third=(0, 255, 0))), "m.png", (40, 40),
                             {(255, 0, 0): "ink", (0, 0, 0): "keep"}, 10**6)


def test_protect_faces_without_the_extra_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.setattr(faces, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"^transfer\.protect: 'faces' needs the face detector: from nstd's "
                                          r"checkout, \.venv/bin/pip install '\.\[faces\]'$"):
        validate(TransferParams(protect="faces"))


def test_names_tell_masks_from_photos():
    assert masks.kind_of("a/p.jpg.mask.png") == "mask" and masks.photo_of("a/p.jpg.mask.png") == "a/p.jpg"
    assert masks.kind_of("p.jpeg.regions.tif") == "regions" and masks.photo_of("p.jpeg.regions.tif") == "p.jpeg"
    assert masks.kind_of("vignette.mask.png") == "mask" and masks.photo_of("vignette.mask.png") is None
    assert masks.kind_of("the.mask.of.zorro.jpg") is None and masks.kind_of("p.jpg") is None


# --- the daemon -----------------------------------------------------------------------

def test_a_mask_beside_its_photo_shapes_each_output_and_travels_with_it(service, settle):
    inbox = service.cfg.inbox
    (inbox / "p.jpg").write_bytes(photo_bytes(40, 40, 1))
    mask = png(half_mask())
    (inbox / "p.jpg.mask.png").write_bytes(mask)
    service.inputs.step(0.0)
    drive(service, settle * 2)
    [job] = service.journal.get_jobs([1])
    assert job.state == State.DONE and job.params["guide"]["sha256"] == hashlib.sha256(mask).hexdigest()
    log = json.loads((service.cfg.outbox / "ink" / "p.json").read_text())
    assert log["guide"] == {"source": "mask", "file": "p.jpg.mask.png", "sha256": hashlib.sha256(mask).hexdigest()}
    assert set(log["history"][-1]["style_by_region"]) == {"ink"}
    assert files(service.cfg.processed) == ["p.jpg", "p.jpg.mask.png"] and files(inbox) == []
    assert (service.cfg.outbox / ".gallery" / "mask-1.jpg").is_file()
    assert "mask-1.jpg" in (service.cfg.outbox / "index.html").read_text()
    assert not list(service.cfg.spool_dir.glob("*.mask-*"))  # its spool copy went with the photo's


def test_a_mask_still_arriving_holds_its_photo_back(service, settle):
    inbox = service.cfg.inbox
    (inbox / "p.jpg").write_bytes(photo_bytes(40, 40, 1))
    service.inputs.step(0.0)
    (inbox / "p.jpg.mask.png").write_bytes(png(half_mask())[:100])  # the copy has begun
    service.inputs.next_rescan = settle * 1.1
    service.inputs.step(settle * 1.1)  # the photo has settled; its mask has not
    assert queued_inputs(service) == []
    (inbox / "p.jpg.mask.png").write_bytes(png(half_mask()))  # the copy ends
    service.inputs.step(settle * 1.5)
    assert queued_inputs(service) == []
    for k in range(3, 8):
        service.inputs.step(settle * k)
    assert queued_inputs(service) == ["p.jpg"]
    assert service.journal.get_jobs([1])[0].params["guide"]["name"] == "p.jpg.mask.png"


def test_a_mask_alone_or_a_bad_one_fails_with_its_reason_and_nothing_is_lost(service, settle):
    inbox = service.cfg.inbox
    (inbox / "q.jpg.mask.png").write_bytes(png(half_mask()))  # its photo never comes
    (inbox / "r.jpg").write_bytes(photo_bytes(40, 40, 2))
    (inbox / "r.jpg.mask.png").write_bytes(png(half_mask(20, 40)))  # cropped: another shape
    (inbox / "s.jpg").write_bytes(photo_bytes(40, 40, 3))  # fine, and unharmed
    service.inputs.step(0.0)
    drive(service, settle * 2)
    reasons = {p.name: json.loads(p.read_text())["reason"] for p in service.cfg.failed.glob("*.error.json")}
    assert reasons == {
        "q.jpg.mask.png.error.json": "no photo q.jpg beside it; a mask must arrive with its photo or before it",
        "r.jpg.error.json": "r.jpg.mask.png: 40x20 does not match its photo's shape (40x40); export the mask "
                            "from the photo as it is, uncropped"}
    assert set(files(service.cfg.failed)) >= {"q.jpg.mask.png", "r.jpg", "r.jpg.mask.png"}
    assert files(service.cfg.processed) == ["s.jpg"] and files(inbox) == []


def test_a_region_map_makes_one_output_in_its_regions(service, settle):
    inbox = service.cfg.inbox
    (inbox / "p.jpg").write_bytes(photo_bytes(40, 40, 1))
    (inbox / "p.jpg.regions.png").write_bytes(png(region_map()))
    (inbox / "p.jpg.nstd.yaml").write_text(yaml.safe_dump({"regions": {"#ff0000": "ink", "#000000": "keep"}}))
    (inbox / "t.jpg").write_bytes(photo_bytes(40, 40, 2))
    (inbox / "t.jpg.regions.png").write_bytes(png(region_map()))
    (inbox / "t.jpg.nstd.yaml").write_text(yaml.safe_dump({"regions": {"#ff0000": "oils", "#000000": "keep"}}))
    service.inputs.step(0.0)
    drive(service, settle * 2)
    [job] = [j for j in service.journal.get_jobs([1, 2]) if j.relpath == "p.jpg"]
    assert job.style == "regions" and job.state == State.DONE
    log = json.loads((service.cfg.outbox / "regions" / "p.json").read_text())
    assert log["guide"]["regions"] == {"#ff0000": "ink", "#000000": "keep"}
    assert set(log["history"][-1]["style_by_region"]) == {"ink"}
    assert files(service.cfg.processed) == ["p.jpg", "p.jpg.nstd.yaml", "p.jpg.regions.png"]
    [record] = service.cfg.failed.glob("t.jpg.error.json")
    assert json.loads(record.read_text())["reason"] == ("t.jpg.nstd.yaml.regions.#ff0000: 'oils' is not a "
                                                        "configured style or keep (styles: ink)")


def test_a_new_mask_for_a_photo_done_before_is_new_work(service, settle):
    inbox = service.cfg.inbox
    photo = photo_bytes(40, 40, 1)
    now = 0.0

    def drop(mask: bytes) -> None:
        nonlocal now
        (inbox / "p.jpg").write_bytes(photo)
        (inbox / "p.jpg.mask.png").write_bytes(mask)
        service.inputs.next_rescan = now
        service.inputs.step(now)
        now += settle * 2
        drive(service, now)
        now += settle * 2

    first, second = png(half_mask()), png(255 - half_mask())
    drop(first)
    drop(second)  # the same photo with another mask: new work
    drop(second)  # and that again: known, not recomputed
    done = service.journal.get_jobs([1, 2, 3])
    assert [(j.state, j.params["guide"]["sha256"]) for j in done] == [
        (State.DONE, hashlib.sha256(first).hexdigest()), (State.DONE, hashlib.sha256(second).hexdigest())]
    assert files(inbox) == []


# --- faces ----------------------------------------------------------------------------

def test_faces_at_strength_0_are_found_and_kept_by_the_one_shot_command(tmp_path, models):
    """The real detector on a real photo (NASA's portrait of Eileen Collins, public domain);
    strength 0 puts the photo's face back as it is."""
    from pathlib import Path

    from nstd.cli import main

    photo = Path(__file__).parent / "data" / "astronaut.jpg"
    style = tmp_path / "style.png"
    style.write_bytes(photo_bytes(48, 48, 7, "PNG"))
    out = tmp_path / "out"
    assert main(["stylize", str(photo), "--style", str(style), "-o", str(out), "--size", "64", "--iterations", "4",
                 "--model", "random", "--models-dir", str(models), "--format", "png", "--protect", "faces",
                 "--style-weight", "1000", "--protect-strength", "0"]) == 0
    log = json.loads((out / "astronaut.style.json").read_text())
    assert log["guide"] == {"source": "faces", "faces": 1, "strength": 0.0}
    with Image.open(out / "astronaut.style.png") as im, Image.open(photo) as src:
        result = np.asarray(im, np.float32) / 255
        before = np.asarray(src.convert("RGB").resize(im.size, Image.BICUBIC), np.float32) / 255
    face = np.abs(result[12:20, 26:32] - before[12:20, 26:32]).mean()  # inside the detected face
    elsewhere = np.abs(result[44:, :] - before[44:, :]).mean()  # the suit and the flag
    assert face < 0.04 and elsewhere > 2 * face


def test_the_one_shot_command_takes_a_mask_and_a_region_map(tmp_path, models, capsys):
    from nstd.cli import main

    photo, style = tmp_path / "p.png", tmp_path / "ink.png"
    photo.write_bytes(photo_bytes(40, 40, 1, "PNG"))
    style.write_bytes(photo_bytes(48, 48, 7, "PNG"))
    mask, regions = tmp_path / "any.png", tmp_path / "map.png"
    mask.write_bytes(png(half_mask()))
    regions.write_bytes(png(region_map()))
    common = ["--style", str(style), "--size", "32", "--iterations", "2", "--model", "random",
              "--models-dir", str(models), "--format", "png"]
    assert main(["stylize", str(photo), "-o", str(tmp_path / "a"), "--mask", str(mask), *common]) == 0
    log = json.loads((tmp_path / "a" / "p.ink.json").read_text())
    assert log["guide"]["source"] == "mask" and log["guide"]["sha256"] == hashlib.sha256(mask.read_bytes()).hexdigest()
    assert main(["stylize", str(photo), "-o", str(tmp_path / "b"), "--regions", str(regions),
                 "--region", "#ff0000=ink", "--region", "#000000=keep", *common]) == 0
    log = json.loads((tmp_path / "b" / "p.regions.json").read_text())
    assert log["guide"]["regions"] == {"#ff0000": "ink", "#000000": "keep"}
    assert capsys.readouterr().err.strip().endswith(f"nstd: 1 of 1 written to {tmp_path / 'b'}")
    assert main(["stylize", str(photo), "-o", str(tmp_path / "c"), "--regions", str(regions),
                 "--region", "#ff0000=oils", *common]) == 1
    assert capsys.readouterr().err.strip() == "nstd: error: --region #ff0000=oils: 'oils' is not a --style name " \
                                              "(ink) or keep"
    (tmp_path / "p.png.regions.png").write_bytes(png(region_map()))  # its own map, but no colours given
    assert main(["stylize", str(photo), "-o", str(tmp_path / "d"), *common]) == 1
    assert f"nstd: error: {tmp_path / 'p.png.regions.png'}: a region map needs its colours" in capsys.readouterr().err


def test_protect_faces_on_a_tiny_photo_or_a_failing_detector_is_no_traceback(tmp_path, models, capsys,
                                                                              monkeypatch):
    from nstd.cli import main

    photo, style = tmp_path / "tiny.png", tmp_path / "ink.png"
    photo.write_bytes(photo_bytes(18, 30, 1, "PNG"))  # smaller than any face MTCNN can find
    style.write_bytes(photo_bytes(48, 48, 7, "PNG"))
    common = [str(photo), "--style", str(style), "--size", "30", "--iterations", "2", "--model", "random",
              "--models-dir", str(models), "--protect", "faces"]
    assert main(["stylize", *common, "-o", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "tiny.ink.json").read_text())["guide"] == {"source": "faces", "faces": 0}

    def broken(self, pixels):
        raise RuntimeError("the detector broke")

    monkeypatch.setattr(faces.FaceFinder, "_detect", broken)
    photo.write_bytes(photo_bytes(18, 30, 2, "PNG"))  # a new photo: nothing remembered for it
    assert main(["stylize", *common, "-o", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert f"nstd: error: {photo}: face detection failed (RuntimeError: the detector broke); not stylized" in err
    assert "Traceback" not in err


def test_a_guides_styled_regions_are_known_before_it_is_loaded():
    from nstd.guide import GuideSpec, styled_regions

    regions = GuideSpec("regions", "map.png", "0" * 64, (("#ff0000", "starry"), ("#00ff00", "scream"),
                                                          ("#0000ff", "keep"), ("#ffff00", "starry")))
    assert styled_regions(regions, "none") == 2  # two paintings; keep is no styled region
    assert styled_regions(GuideSpec("mask", "m.png", "0" * 64), "faces") == 1
    assert (styled_regions(None, "none"), styled_regions(None, "faces")) == (0, 1)


def test_a_restart_keeps_the_mask_copies_of_queued_photos(service, settle):
    """Start-up's sweep of the spool must leave what queued jobs need: their photo's copy
    and the mask copies beside it (it took the masks for litter and failed every photo)."""
    inbox = service.cfg.inbox
    for n in range(3):
        (inbox / f"p{n}.jpg").write_bytes(photo_bytes(40, 40, n))
        (inbox / f"p{n}.jpg.mask.png").write_bytes(png(half_mask()))
    service.inputs.step(0.0)
    service.inputs.step(settle * 2)
    assert queued_inputs(service) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    (service.cfg.spool_dir / "stray.tmp").write_bytes(b"litter")  # a write a crash cut short
    service.recover()  # what a start after a stop or a kill -9 does first
    assert len(list(service.cfg.spool_dir.glob("*.mask-*"))) == 3
    assert not (service.cfg.spool_dir / "stray.tmp").exists()
    drive(service, settle * 3)
    assert files(service.cfg.failed) == []
    assert sorted(files(service.cfg.processed)) == sorted(f"p{n}.jpg{m}" for n in range(3) for m in ("", ".mask.png"))
    for job in service.journal.get_jobs([1, 2, 3]):
        assert job.state == State.DONE and job.params["guide"]["name"].endswith(".mask.png")


@pytest.mark.parametrize("what", ["link", "fifo", "folder"])
def test_a_photo_whose_mask_is_not_a_file_fails_with_the_masks_reason(service, settle, tmp_path, what):
    """The mask is refused (nothing is read through it), and so is its photo: painting it
    all over is not what a masked drop asked for."""
    import os

    inbox = service.cfg.inbox
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(half_mask()))
    mask = inbox / "p.jpg.mask.png"
    {"link": lambda: os.symlink(secret, mask), "fifo": lambda: os.mkfifo(mask), "folder": mask.mkdir}[what]()
    (inbox / "p.jpg").write_bytes(photo_bytes(40, 40, 1))
    (inbox / "q.jpg").write_bytes(photo_bytes(40, 40, 2))  # beside it, unharmed
    service.inputs.step(0.0)
    drive(service, settle * 2)
    reason = json.loads((service.cfg.failed / "p.jpg.error.json").read_text())["reason"]
    assert reason.startswith("p.jpg.mask.png: not a regular file") and "\n" not in reason
    assert (service.cfg.failed / "p.jpg").is_file() and not list(service.cfg.outbox.glob("*/p.*"))
    assert files(service.cfg.processed) == ["q.jpg"]


def test_a_mask_left_behind_by_its_photo_is_refused_while_running(service, settle):
    inbox = service.cfg.inbox
    (inbox / "a.jpg").write_bytes(photo_bytes(40, 40, 1))
    (inbox / "a.jpg.mask.png").write_bytes(png(half_mask()))
    (inbox / "a.jpg.mask.png.mask.png").write_bytes(png(half_mask()))  # a mask of the mask
    service.inputs.step(0.0)
    drive(service, settle * 2)
    assert files(service.cfg.processed) == ["a.jpg", "a.jpg.mask.png"]
    for k in range(3, 6):  # no rescan is due: the running daemon notices by itself
        service.inputs.step(settle * k)
    assert files(inbox) == []
    reason = json.loads((service.cfg.failed / "a.jpg.mask.png.mask.png.error.json").read_text())["reason"]
    assert reason.startswith("no photo a.jpg.mask.png beside it")


def test_a_region_map_made_mostly_of_unmapped_colours_is_refused():
    """300 unmapped colours of a third of a percent each: none alone passes the per-colour
    bound, together they are nearly the whole map."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (300, 3)).astype(np.uint8)
    arr = palette[np.arange(300 * 30) // 30].reshape(90, 100, 3)  # 300 bands of 30 px in 9,000
    arr[:2] = (255, 0, 0)
    arr[2:4] = (0, 0, 255)
    colours = {(255, 0, 0): "ink", (0, 0, 255): "keep"}
    far = [tuple(int(v) for v in c) for c in palette
           if min(np.linalg.norm(c.astype(float) - np.array(k, float)) for k in colours) > masks.NEAR]
    assert len(far) > 250
    with pytest.raises(ImageError, match=r"^m.regions.png: \d+ colours that name no style cover 9\d\.\d% of the map"):
        masks.decode_regions(png(arr), "m.regions.png", (90, 100), colours, 10**8)
    # The same map's colours near the mapped ones, as anti-aliasing makes them, still pass.
    soft = arr.copy()
    soft[4:] = (250, 5, 5)
    [(target, hit)] = masks.decode_regions(png(soft), "m.regions.png", (90, 100), colours, 10**8)[:1]
    assert target == "ink" and int(hit.sum()) == 88 * 100
