import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from nstd.cli import main

from harness.synthetic import rand_image


def write_photo(path, h, w, seed):
    arr = (rand_image(h, w, seed).permute(1, 2, 0).numpy() * 255).astype("uint8")
    Image.fromarray(arr).save(path)
    return path


def test_stylize_writes_images_and_loss_logs(tmp_path, models, capsys):
    a = write_photo(tmp_path / "a.png", 40, 60, 1)
    b = write_photo(tmp_path / "b.png", 40, 60, 2)
    c = write_photo(tmp_path / "c.png", 60, 40, 3)
    style = write_photo(tmp_path / "style.png", 50, 50, 4)
    out = tmp_path / "out"
    rc = main(["stylize", str(a), str(b), str(c), "--style", str(style), "-o", str(out), "--size", "32",
               "--iterations", "4", "--model", "random", "--models-dir", str(models), "--format", "png"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.style.{e}" for s in "abc" for e in ("png", "json", "loss.svg"))
    log = json.loads((out / "a.style.json").read_text())
    assert log["input"]["path"] == str(a) and len(log["input"]["sha256"]) == 64
    assert log["styles"][0]["name"] == "style"
    assert log["params"]["iterations"] == 4 and log["params"]["size"] == 32
    assert log["weights"]["id"] == "random" and log["device"] == "cpu"
    # a and b share a size, so they ran as one batch; c ran alone.
    assert log["batch"]["size"] == 2
    assert json.loads((out / "c.style.json").read_text())["batch"]["size"] == 1
    assert log["history"][-1]["iteration"] == 4
    assert set(log["history"][0]) == {"iteration", "scale", "total", "content", "style", "style_by_layer", "tv"}
    assert log["history"][0]["scale"] == 32
    assert {"started", "finished", "seconds"} <= set(log["timings"])
    with Image.open(out / "a.style.png") as im:
        assert im.size == (32, 21)
        assert im.getexif()[0x0131].startswith("nstd ")  # Software


def test_stylize_feeds_waiting_photos_into_finished_places(tmp_path, models):
    photos = [write_photo(tmp_path / f"{n}.png", 40, 40, i) for i, n in enumerate("abc")]
    style = write_photo(tmp_path / "s.png", 40, 40, 9)
    assert main(["stylize", *map(str, photos), "-s", str(style), "-o", str(tmp_path / "o"), "--size", "32",
                 "--iterations", "2", "--model", "random", "--models-dir", str(models), "--max-batch", "1"]) == 0
    batches = [json.loads((tmp_path / "o" / f"{n}.s.json").read_text())["batch"] for n in "abc"]
    assert [b["size"] for b in batches] == [1, 1, 1] and len({b["id"] for b in batches}) == 1  # one run


def test_stylize_runs_every_photo_when_several_scales_take_no_newcomers(tmp_path, models):
    # Coarse to fine: a newcomer cannot join a schedule half done, so the rest wait for
    # the next batch instead of being dropped.
    photos = [write_photo(tmp_path / f"{n}.png", 40, 40, i) for i, n in enumerate("abc")]
    style = write_photo(tmp_path / "s.png", 40, 40, 9)
    assert main(["stylize", *map(str, photos), "-s", str(style), "-o", str(tmp_path / "o"), "--size", "40",
                 "--multiscale-start", "20", "--iterations", "2", "--multiscale-iterations", "1",
                 "--model", "random", "--models-dir", str(models), "--max-batch", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.jpg")) == ["a.s.jpg", "b.s.jpg", "c.s.jpg"]


def test_stylize_out_of_memory_splits_then_checkpoints_then_names_the_photo(tmp_path, models, capsys,
                                                                           monkeypatch):
    from nstd.engine import runner
    from nstd.engine.resize import resize_photo
    from nstd.images import decode

    photos = [write_photo(tmp_path / f"{n}.png", 40, 40, i) for i, n in enumerate("abc")]
    style = write_photo(tmp_path / "s.png", 40, 40, 9)
    real, tried = runner.multiscale.run, []
    c_pixels = resize_photo(decode(photos[2].read_bytes(), "c", 10**8).pixels, (32, 32))

    def tight(model, session, jobs, scales, settings, cache, switches, *rest):
        tried.append((len(jobs), switches.checkpoint))
        # Only one image fits, and only with checkpointing; photo c never fits.
        if len(jobs) > 1 or not switches.checkpoint or torch.equal(jobs[0].content, c_pixels):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(model, session, jobs, scales, settings, cache, switches, *rest)

    monkeypatch.setattr(runner.multiscale, "run", tight)
    rc = main(["stylize", *map(str, photos), "-s", str(style), "-o", str(tmp_path / "o"), "--size", "32",
               "--iterations", "2", "--model", "random", "--models-dir", str(models), "--max-batch", "3"])
    err = capsys.readouterr().err
    assert rc == 1
    assert tried[0] == (3, None) and (1, True) in tried and (1, None) in tried
    assert f"nstd: error: {photos[2]}: out of memory even alone at 32x32" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.jpg")) == ["a.s.jpg", "b.s.jpg"]
    log = json.loads((tmp_path / "o" / "a.s.json").read_text())
    assert [r["checkpoint"] for r in log["runs"]] == [True]


def test_a_bad_photo_is_one_line_and_the_rest_still_come_out(tmp_path, models, capsys):
    good = write_photo(tmp_path / "good.png", 40, 40, 1)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    style = write_photo(tmp_path / "s.png", 40, 40, 2)
    rc = main(["stylize", str(bad), str(good), "-s", str(style), "-o", str(tmp_path / "o"), "--size", "32",
               "--iterations", "2", "--model", "random", "--models-dir", str(models)])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"nstd: error: {bad}: not a usable image" in err
    assert "Traceback" not in err
    assert (tmp_path / "o" / "good.s.jpg").exists()


def test_missing_weights_is_one_line(tmp_path):
    photo = write_photo(tmp_path / "p.png", 40, 40, 1)
    proc = subprocess.run([sys.executable, "-m", "nstd", "stylize", str(photo), "-s", str(photo),
                           "-o", str(tmp_path / "o"), "--models-dir", str(tmp_path / "empty")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"nstd: error: VGG19 weights 'caffe' are not in {tmp_path / 'empty'}; run: nstd weights fetch --model caffe"]


def test_bad_parameter_names_the_flag(tmp_path, models, capsys):
    photo = write_photo(tmp_path / "p.png", 40, 40, 1)
    rc = main(["stylize", str(photo), "-s", str(photo), "-o", str(tmp_path / "o"), "--size", "8",
               "--models-dir", str(models)])
    assert rc == 1
    assert "nstd: error: --size: must be at least 16 px" in capsys.readouterr().err
    rc = main(["stylize", str(photo), "-s", str(photo), "-o", str(tmp_path / "o"), "--style-weight", "nan",
               "--models-dir", str(models)])
    assert rc == 1
    assert "nstd: error: --style-weight: must be a finite number, got nan" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["stylize", str(photo), "-s", str(photo), "-s", str(photo), "--blend", "1,inf", "-o",
              str(tmp_path / "o"), "--models-dir", str(models)])
    assert exit_.value.code == 2
    assert "argument --blend: weights must be finite, not negative" in capsys.readouterr().err


def test_stylize_multiscale_ends_at_the_requested_size(tmp_path, models):
    a = write_photo(tmp_path / "a.png", 48, 64, 1)
    style = write_photo(tmp_path / "style.png", 50, 50, 4)
    out = tmp_path / "out"
    assert main(["stylize", str(a), "--style", str(style), "-o", str(out), "--size", "64",
                 "--multiscale-start", "32", "--iterations", "3", "--multiscale-iterations", "2",
                 "--model", "random", "--models-dir", str(models), "--format", "png"]) == 0
    log = json.loads((out / "a.style.json").read_text())
    assert [(h["iteration"], h["scale"]) for h in log["history"]] == [(0, 32), (3, 32), (5, 64)]
    with Image.open(out / "a.style.png") as im:
        assert im.size == (64, 48)


def test_size_original_keeps_the_photos_size(tmp_path, models):
    a = write_photo(tmp_path / "a.png", 30, 44, 1)
    style = write_photo(tmp_path / "style.png", 50, 50, 4)
    out = tmp_path / "out"
    assert main(["stylize", str(a), "--style", str(style), "-o", str(out), "--size", "original",
                 "--iterations", "2", "--model", "random", "--models-dir", str(models), "--format", "png"]) == 0
    with Image.open(out / "a.style.png") as im:
        assert im.size == (44, 30)


def test_stylize_keeps_a_16bit_tiff_16bit(tmp_path, models):
    import numpy as np
    import tifffile
    arr = (np.random.default_rng(3).random((30, 40, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", arr, photometric="rgb")
    style = write_photo(tmp_path / "style.png", 50, 50, 4)
    out = tmp_path / "out"
    assert main(["stylize", str(tmp_path / "deep.tif"), "--style", str(style), "-o", str(out), "--size", "40",
                 "--iterations", "2", "--model", "random", "--models-dir", str(models), "--format", "tiff"]) == 0
    result = tifffile.imread(out / "deep.style.tif")
    assert result.dtype == np.uint16 and result.shape == (30, 40, 3)
    assert (out / "deep.style.loss.svg").read_text().lstrip().startswith("<?xml")


def stylize_args(models, *extra):
    return ["stylize", *map(str, extra), "--size", "32", "--iterations", "2", "--model", "random",
            "--models-dir", str(models), "--format", "png"]


def test_an_output_path_that_is_a_file_is_one_line_before_any_work(tmp_path, models, capsys):
    photo = write_photo(tmp_path / "a.png", 40, 40, 1)
    (tmp_path / "taken").write_text("a file")
    rc = main(stylize_args(models, photo, "-s", photo, "-o", tmp_path / "taken"))
    err = capsys.readouterr().err
    assert rc == 1 and err == f"nstd: error: -o {tmp_path / 'taken'}: a file, not a folder; name a folder\n"
    rc = main(stylize_args(models, photo, "-s", photo, "-o", tmp_path / "taken" / "out"))
    err = capsys.readouterr().err
    assert rc == 1 and err == f"nstd: error: -o {tmp_path / 'taken' / 'out'}: cannot create it (Not a directory)\n"


def test_an_output_that_cannot_be_written_is_one_line_and_the_others_still_come_out(tmp_path, models, capsys):
    a, b = write_photo(tmp_path / "a.png", 40, 40, 1), write_photo(tmp_path / "b.png", 40, 40, 2)
    style = write_photo(tmp_path / "s.png", 40, 40, 3)
    out = tmp_path / "out"
    (out / "a.s.png").mkdir(parents=True)  # a folder where a's image would go: the write fails, as on a full disk
    rc = main(stylize_args(models, a, b, "-s", style, "-o", out))
    err = capsys.readouterr().err
    assert rc == 1
    assert f"nstd: error: {out / 'a.s.png'}: cannot write (Is a directory)\n" in err
    assert "nstd: 1 of 2 written" in err and "Traceback" not in err
    assert (out / "b.s.png").is_file() and (out / "b.s.json").is_file() and not (out / "a.s.json").exists()


def test_a_folder_with_no_photos_is_one_line(tmp_path, models, capsys):
    style = write_photo(tmp_path / "s.png", 40, 40, 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    assert main(stylize_args(models, tmp_path / "empty", "-s", style, "-o", tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nstd: error: {tmp_path / 'empty'}: no photos to stylize (a folder's .jpg, ")
    assert err.count("\n") == 1


def test_folders_to_write_are_checked_before_any_work(tmp_path, models, capsys):
    (tmp_path / "taken").write_text("a file")
    below = tmp_path / "taken" / "x"
    for argv, option in ((["weights", "fetch", "--models-dir", str(below)], "--models-dir"),
                         (["bench", "--quick", "--models-dir", str(models), "--model", "random", "--out", str(below)],
                          "--out")):
        assert main(argv) == 1
        assert capsys.readouterr().err == f"nstd: error: {option} {below}: cannot create it (Not a directory)\n"


def test_a_rerun_with_other_settings_keeps_the_earlier_outputs(tmp_path, models):
    photo = write_photo(tmp_path / "a.png", 40, 40, 1)
    style = write_photo(tmp_path / "s.png", 40, 40, 2)
    out = tmp_path / "o"
    assert main(stylize_args(models, photo, "-s", style, "-o", out)) == 0
    first = (out / "a.s.png").read_bytes()
    assert main(stylize_args(models, photo, "-s", style, "-o", out, "--style-weight", "40")) == 0
    assert (out / "a.s.png").read_bytes() == first  # the earlier run's output is still there
    [other] = [p.name for p in out.glob("a.s.*.png")]
    assert json.loads((out / other).with_suffix(".json").read_text())["params"]["style_weight"] == 40
    assert main(stylize_args(models, photo, "-s", style, "-o", out, "--style-weight", "40")) == 0
    assert len(list(out.glob("*.png"))) == 2  # the same settings again: the same names


def test_folders_are_taken_as_their_photos_and_a_blend_is_one_output(tmp_path, models):
    folder = tmp_path / "shoot"
    folder.mkdir()
    write_photo(folder / "a.png", 40, 40, 1)
    write_photo(folder / "b.png", 40, 40, 2)
    (folder / "notes.txt").write_text("not a photo")
    s1, s2 = write_photo(tmp_path / "s1.png", 40, 40, 3), write_photo(tmp_path / "s2.png", 40, 40, 4)
    out = tmp_path / "o"
    assert main(stylize_args(models, folder, "-s", s1, "-s", s2, "--blend", "0.7,0.3", "-o", out)) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.s1+s2.png", "b.s1+s2.png"]
    log = json.loads((out / "a.s1+s2.json").read_text())
    assert [(s["name"], s["weight"]) for s in log["styles"]] == [("s1", 0.7), ("s2", 0.3)]


def test_retry_names_what_is_not_in_failed_and_still_moves_the_names_that_are(tmp_path, capsys):
    from harness.daemon import write_config
    from nstd.daemon import dispose

    config = write_config(tmp_path, tmp_path / "models")
    (tmp_path / "inbox" / "a.jpg").write_bytes(b"not a photo")
    dispose.to_failed(tmp_path / "inbox", tmp_path / "failed", "a.jpg", "a.jpg: cannot decode", None)
    args = ["--config", str(config)]
    for names in (["nonexistent.jpg"], ["../../../etc/passwd"]):
        assert main(["retry", *names, *args]) == 1
        assert capsys.readouterr().err == f"nstd: {names[0]}: no photo of that name in {tmp_path / 'failed'}\n"
    assert main(["retry", "a.jpg", "nonexistent.jpg", *args]) == 1
    err = capsys.readouterr().err
    assert "nonexistent.jpg: no photo of that name" in err and "1 of 1 photo(s) moved back" in err
    assert (tmp_path / "inbox" / "a.jpg").exists() and not list((tmp_path / "failed").iterdir())


def test_init_writes_the_paintings_its_help_names(tmp_path, capsys):
    import re

    with pytest.raises(SystemExit):
        main(["-h"])
    said = re.search(r"\n    init\s+write .*?(\w+)\s+paintings", capsys.readouterr().out, re.S).group(1)
    assert main(["init", str(tmp_path / "d")]) == 0
    written = sorted(p.name for p in (tmp_path / "d" / "styles").iterdir())
    assert {"two": 2, "three": 3, "four": 4}[said] == len(written), written


@pytest.mark.parametrize("command", ["stylize", "bench"])
def test_a_device_that_is_no_device_is_one_line(tmp_path, models, capsys, command):
    from harness.daemon import photo_bytes

    photo, style = tmp_path / "p.png", tmp_path / "s.png"
    photo.write_bytes(photo_bytes(32, 32, 1, "PNG"))
    style.write_bytes(photo_bytes(32, 32, 2, "PNG"))
    args = ([str(photo), "--style", str(style), "--model", "random", "--models-dir", str(models),
             "-o", str(tmp_path / "out")]
            if command == "stylize" else ["--models-dir", str(models)])
    assert main([command, *args, "--device", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope' is not a device; use auto, cpu, cuda, cuda:N or mps" in err
