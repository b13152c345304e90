"""No file name, folder name or journal row can make nstd write outside its folders."""

import pytest

from nstd.daemon import dispose, outbox
from nstd.daemon.inbox import relative, route
from nstd.daemon.journal import Job
from nstd.fsutil import contained


def job(relpath, style="ink"):
    return Job(id=1, input_sha256="a" * 64, style=style, params_hash="p", relpath=relpath, spool="/s",
               width=32, height=32, batch_key="k", params={"format": "JPEG", "quality": 90},
               state="queued", attempts=0, queued=0.0)


@pytest.mark.parametrize("relpath", ["../escape.jpg", "ink/../../escape.jpg", "a/../../b.jpg"])
def test_outputs_stay_in_their_style_folder(tmp_path, relpath):
    with pytest.raises(ValueError, match="would leave"):
        outbox.targets(tmp_path / "outbox", job(relpath))


def test_an_absolute_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="would leave"):
        outbox.targets(tmp_path, job("/etc/passwd.jpg"))


def test_style_names_cannot_climb(tmp_path):
    with pytest.raises(ValueError, match="would leave"):
        outbox.targets(tmp_path / "outbox", job("a.jpg", style=".."))


@pytest.mark.parametrize("relpath", ["../x.jpg", "a/../../x.jpg"])
def test_moves_stay_in_processed_and_failed(tmp_path, relpath):
    with pytest.raises(ValueError, match="would leave"):
        dispose.free_name(tmp_path / "failed", relpath)


def test_odd_but_harmless_names_stay_inside(tmp_path):
    for name in ("..jpg", "a..b.jpg", "new\nline.jpg", "ünï 写真.jpg", "-rf.jpg"):
        assert contained(tmp_path, name).parent == tmp_path
        image, js = outbox.targets(tmp_path, job(name))
        assert image.parent == tmp_path / "ink" and js.parent == tmp_path / "ink"
        assert image.name not in ("ink.jpg", ".jpg") and js.name != ".json"


def test_event_paths_outside_the_inbox_are_dropped(tmp_path):
    inbox = tmp_path / "inbox"
    assert relative(inbox, str(tmp_path / "elsewhere" / "a.jpg")) is None
    assert relative(inbox, str(inbox / ".." / "a.jpg")) is None
    assert relative(inbox, str(inbox)) is None
    assert relative(inbox, str(inbox / "s" / "a.jpg")) == "s/a.jpg"


def test_a_folder_named_dotdot_is_no_style():
    assert route("../a.jpg", ["ink"]).error


def test_written_files_take_the_umask_mode_not_the_temporary_files_0600(tmp_path):
    import os
    import stat

    from nstd.fsutil import atomic_write, atomic_write_json

    old = os.umask(0o007)  # the unit's UMask: the studio group reads and writes
    try:
        atomic_write(tmp_path / "a.jpg", b"x")
        atomic_write_json(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("a.jpg", "a.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o660, name


def test_fit_name_keeps_short_names_and_shortens_long_ones_stably():
    import os

    from nstd.fsutil import NAME_MAX, fit_name

    assert fit_name("photo.jpg", 40) == "photo.jpg"
    long = "é" * 120 + ".jpeg"  # 245 bytes of two-byte characters
    short = fit_name(long, 40)
    assert len(os.fsencode(short)) + 40 <= NAME_MAX and short.endswith(".jpeg")
    assert short == fit_name(long, 40) and short != fit_name("è" + long[1:], 40)
    short.encode("utf-8")  # no half character left at the cut
