import os
import time

import pytest

from nstd.daemon.inbox import IgnoreRules, SettleTracker, choose_mode, mount_fs_type, route, scan

RULES = IgnoreRules((".jpg", ".jpeg", ".png"), ("*.xmp", "drafts/*"))


@pytest.mark.parametrize("rel", [
    ".hidden.jpg", ".photo.jpg.Ab12Cd", "._photo.jpg", ".DS_Store", "a.jpg.part", "a.partial",
    "a.jpg.crdownload", "a.filepart", "a.tmp", "~$a.jpg", "Thumbs.db", "desktop.ini",
    "@eaDir/a.jpg", ".stfolder/a.jpg", "#recycle/a.jpg", "x/.sub/a.jpg", "a.gif", "a.xmp",
    "drafts/a.jpg", "a.jpg.nstd.yaml",
])
def test_ignored(rel):
    assert RULES.ignored(rel)


@pytest.mark.parametrize("rel", ["a.jpg", "A.JPG", "style/b.jpeg", "x y/é ñ.png"])
def test_taken(rel):
    assert not RULES.ignored(rel)


def test_route():
    assert route("a.jpg", ["s1", "s2"]).styles == ("s1", "s2")
    r = route("s2/sub/a.jpg", ["s1", "s2"])
    assert r.styles == ("s2",) and r.subpath == "sub/a.jpg"
    bad = route("other/a.jpg", ["s1", "s2"])
    assert bad.styles == () and "known styles: s1, s2" in bad.error


def test_mount_type_from_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:40 / /mnt/share rw,relatime shared:2 - cifs //nas/photos rw\n"
        "41 22 0:41 / /mnt/share\\040two rw - nfs4 nas:/x rw\n")
    assert mount_fs_type(tmp_path / "x", str(info)) is not None
    from pathlib import Path
    assert mount_fs_type(Path("/mnt/share/inbox"), str(info)) == "cifs"
    assert mount_fs_type(Path("/mnt/share two/in"), str(info)) == "nfs4"
    assert mount_fs_type(Path("/mnt/sharex"), str(info)) == "ext4"


def test_auto_mode_polls_network_filesystems(monkeypatch, tmp_path):
    import nstd.daemon.inbox as inbox
    for fs, mode in (("cifs", "polling"), ("nfs4", "polling"), ("fuse.sshfs", "polling"), ("ext4", "native")):
        monkeypatch.setattr(inbox, "mount_fs_type", lambda p, fs=fs: fs)
        assert choose_mode("auto", tmp_path) == (mode, fs)
    assert choose_mode("native", tmp_path)[0] == "native"


def test_settle_waits_for_the_file_to_hold_still(tmp_path):
    t = SettleTracker(seconds=1.0)
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x" * 10)
    t.watch("a.jpg")
    assert t.poll(tmp_path, 100.0) == []
    assert t.poll(tmp_path, 100.5) == []
    with open(f, "ab") as fh:
        fh.write(b"more")  # still being copied
    assert t.poll(tmp_path, 101.2) == []  # changed: the clock starts again
    assert t.poll(tmp_path, 102.0) == []
    ready = t.poll(tmp_path, 102.3)
    st = os.stat(f)
    assert ready == [("a.jpg", (14, st.st_mtime_ns, st.st_ino))]
    assert len(t) == 0


def test_settle_forgets_deleted_and_flags_non_regular_files(tmp_path):
    t = SettleTracker(seconds=0)
    (tmp_path / "gone.jpg").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.jpg")
    t.watch("gone.jpg")
    t.watch("pipe.jpg")
    (tmp_path / "gone.jpg").unlink()
    assert t.poll(tmp_path, time.time()) == [("pipe.jpg", (-1, -1, -1))]


def test_scan_follows_no_links_and_skips_ignored(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "b.png").write_bytes(b"x")
    (tmp_path / "@eaDir").mkdir()
    (tmp_path / "@eaDir" / "c.jpg").write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    (tmp_path / "link").symlink_to(outside)
    assert sorted(scan(tmp_path, RULES)) == ["a.jpg", "s/b.png"]


def test_settle_defaults_longer_on_shares(monkeypatch, tmp_path):
    import nstd.daemon.inbox as inbox
    monkeypatch.setattr(inbox, "mount_fs_type", lambda p: "cifs")
    assert inbox.settle_seconds(None, tmp_path) == 15.0
    assert inbox.settle_seconds(2.0, tmp_path) == 2.0
    monkeypatch.setattr(inbox, "mount_fs_type", lambda p: "ext4")
    assert inbox.settle_seconds(None, tmp_path) == 5.0
