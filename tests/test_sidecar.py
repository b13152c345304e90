import json
import re
import os
import time

import pytest

from nstd.daemon.intake import Kind
from nstd.daemon import sidecar
from nstd.errors import ConfigError
from nstd.params import TransferParams

from harness.daemon import accept, photo_bytes, take


def test_paths_run_from_the_inbox_root_to_the_photo():
    assert sidecar.paths_for("a/b/p.jpg") == [".nstd.yaml", "a/.nstd.yaml", "a/b/.nstd.yaml", "a/b/p.jpg.nstd.yaml"]


def test_nearest_wins_and_bad_keys_name_file_and_key(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".nstd.yaml").write_text("style_weight: 20\ntv_weight: 1\n")
    (tmp_path / "a" / "p.jpg.nstd.yaml").write_text("style_weight: 50\n")
    found = sidecar.overrides_for(tmp_path, "a/p.jpg")
    p = sidecar.apply(TransferParams(), found, {"caffe"})
    assert (p.style_weight, p.tv_weight) == (50, 1)
    (tmp_path / "a" / "p.jpg.nstd.yaml").write_text("style_wieght: 50\n")
    with pytest.raises(ConfigError,
                       match=r"^a/p.jpg.nstd.yaml.style_wieght: unknown key \(did you mean style_weight\?\)$"):
        sidecar.apply(TransferParams(), sidecar.overrides_for(tmp_path, "a/p.jpg"), {"caffe"})


@pytest.mark.parametrize("text,message", [
    ("image: /etc/passwd\n", r"p.jpg.nstd.yaml.image: unknown key"),
    ("outbox: /tmp/elsewhere\n", r"p.jpg.nstd.yaml.outbox: unknown key"),
    ("style: scream\n", r"p.jpg.nstd.yaml.style: unknown key"),
    ("model: ../../etc/secret\n", r"p.jpg.nstd.yaml.model: '../../etc/secret' is not a model this config uses"),
    ("size: -3\n", r"p.jpg.nstd.yaml.size: must be at least 16"),
    ("- a list\n", r"p.jpg.nstd.yaml: expected a mapping"),
    ("a: [unclosed\n", r"p.jpg.nstd.yaml: line \d+ not valid YAML"),
])
def test_a_sidecar_cannot_escape(tmp_path, text, message):
    (tmp_path / "p.jpg.nstd.yaml").write_text(text)
    with pytest.raises(ConfigError, match="^" + message):
        sidecar.apply(TransferParams(), sidecar.overrides_for(tmp_path, "p.jpg"), {"caffe"})


def test_a_linked_sidecar_is_refused(tmp_path):
    (tmp_path / "secret.yaml").write_text("style_weight: 3\n")
    os.symlink(tmp_path / "secret.yaml", tmp_path / "p.jpg.nstd.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        sidecar.overrides_for(tmp_path, "p.jpg")


def test_the_daemon_applies_a_sidecar_and_refuses_a_bad_one(service):  # noqa: F811
    (service.cfg.inbox / "a.jpg.nstd.yaml").write_text("style_weight: 77\npreserve_color: luminance\n")
    take(service, "a.jpg")
    [job] = service.journal.get_jobs([1])
    assert job.params["style_weight"] == 77 and job.params["preserve_color"] == "luminance"
    (service.cfg.inbox / "b.jpg.nstd.yaml").write_text("style_weight: lots\n")
    path = service.cfg.inbox / "b.jpg"
    from harness.daemon import photo_bytes
    path.write_bytes(photo_bytes(40, 40, 3))
    st = path.stat()
    out = service.intake.accept("b.jpg", (st.st_size, st.st_mtime_ns, st.st_ino))
    assert out.kind is Kind.FAILED and "b.jpg.nstd.yaml.style_weight: expected float" in out.detail
    error = json.loads((service.cfg.failed / "b.jpg.error.json").read_text())
    assert "b.jpg.nstd.yaml.style_weight" in error["reason"]
    assert (service.cfg.failed / "b.jpg").exists()  # nothing lost


def test_a_photos_sidecar_follows_it_and_a_folders_stays(tmp_path):
    from nstd.daemon import dispose
    inbox, processed, failed = tmp_path / "in", tmp_path / "done", tmp_path / "failed"
    (inbox / "f").mkdir(parents=True)
    processed.mkdir()  # the daemon starts only with its folders there (preflight)
    failed.mkdir()
    for name in ("f/a.jpg", "f/a.jpg.nstd.yaml", "f/.nstd.yaml", "f/b.jpg", "f/b.jpg.nstd.yaml"):
        (inbox / name).write_text("x")
    dispose.on_success(inbox, processed, "f/a.jpg", "move")
    assert (processed / "f" / "a.jpg.nstd.yaml").exists() and not (inbox / "f" / "a.jpg.nstd.yaml").exists()
    dispose.to_failed(inbox, failed, "f/b.jpg", "bad", None)
    assert (failed / "f" / "b.jpg.nstd.yaml").exists()
    assert (inbox / "f" / ".nstd.yaml").exists()


def test_a_size_far_above_the_photo_is_refused_at_intake_not_run(service):
    # size: 20000 on a small photo asks for 300 MP: over max_pixels, however small the file.
    (service.cfg.inbox / "huge.jpg.nstd.yaml").write_text("size: 20000\n")
    path = service.cfg.inbox / "huge.jpg"
    path.write_bytes(photo_bytes(40, 30, 1))
    st = path.stat()
    out = service.intake.accept("huge.jpg", (st.st_size, st.st_mtime_ns, st.st_ino))
    assert out.kind is Kind.FAILED
    assert "huge.jpg: size 20000 makes it 15000x20000, 300,000,000 pixels, over the limit" in out.detail
    assert service.journal.queued_jobs() == []


def _least_tile(service) -> int:
    """The least a tile of a 4000 px photo needs on the device, as intake reckons it."""
    from nstd.engine.layers import halo
    from nstd.engine.memory import TILE, Footprint, least_bytes
    from nstd.engine.tiles import least_side

    settings = service.cfg.transfer.settings()
    side = least_side(halo(settings.layers))
    return least_bytes(side, side, Footprint(settings.layers, TILE))


def _drop_big(service, name: str, seed: int):
    (service.cfg.inbox / f"{name}.nstd.yaml").write_text("size: 4000\n")
    path = service.cfg.inbox / name
    path.write_bytes(photo_bytes(40, 30, seed))
    st = path.stat()
    return service.intake.accept(name, (st.st_size, st.st_mtime_ns, st.st_ino))


def test_a_size_no_device_can_hold_whole_is_taken_to_be_tiled_and_only_no_room_for_a_tile_refuses(service):
    from nstd.daemon.journal import WorkerInfo

    # The largest device that has said is too small even for a tile: refused, saying so.
    service.journal.beat(WorkerInfo("h:1:cuda:0", "h", "cuda:0", _least_tile(service) - 1), "idle",
                         time.time())
    out = _drop_big(service, "small.jpg", 2)
    assert out.kind is Kind.FAILED
    assert out.detail.startswith("small.jpg: even a 240x240 tile of it needs about ")
    assert out.detail.endswith(" GiB, more than the largest device has (0.3 GiB)")
    # A host with 8 GiB joins: far less than a 3000x4000 photo needs whole, but its tiles fit.
    service.journal.beat(WorkerInfo("g:1:cuda:0", "g", "cuda:0", 8 << 30), "idle", time.time())
    assert _drop_big(service, "big.jpg", 1).kind is Kind.QUEUED
    assert [(j.width, j.height) for j in service.journal.queued_jobs()] == [(3000, 4000)]


def _alias_bomb(key: str) -> str:
    """Nine levels of aliases: 1 KB of YAML whose value has 9**9 items when expanded."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + f"\n{key}: *i\n"


@pytest.mark.parametrize("text,message", [
    (_alias_bomb("style_weight"), r"p.jpg.nstd.yaml: line 2 not valid YAML \(uses an alias \(\*a\)"),
    (_alias_bomb("mask"), r"p.jpg.nstd.yaml: line 2 not valid YAML \(uses an alias"),
    ("base: &b {style_weight: 3}\n<<: *b\n", r"p.jpg.nstd.yaml: line 2 not valid YAML \(uses an alias"),
    ("style_weight: " + "[" * 20000 + "]" * 20000 + "\n", r"p.jpg.nstd.yaml: line 1 not valid YAML \(nested deeper than 8"),
    ("style_weight: " + "{a: " * 12000 + "1" + "}" * 12000 + "\n", r"p.jpg.nstd.yaml: line 1 not valid YAML \(nested deeper"),
    ("seed: [" + ", ".join(["1"] * 5000) + "]\n", r"p.jpg.nstd.yaml: line 1 not valid YAML \(more than 2000 values"),
    ("seed: 1" + "0" * 6000 + "\n", r"p.jpg.nstd.yaml: cannot be read \(ValueError: Exceeds the limit"),
    ("seed: 2024-13-45\n", r"p.jpg.nstd.yaml: cannot be read \(ValueError: month must be in 1..12"),
    ("? [a, b]\n: 1\n", r"p.jpg.nstd.yaml: line \d+ not valid YAML"),
    (b"style_weight: \xff\xfe\n", r"p.jpg.nstd.yaml: not UTF-8 text \(byte 14\)"),
])
def test_a_hostile_sidecar_is_one_line_before_any_value_is_built(tmp_path, text, message):
    path = tmp_path / "p.jpg.nstd.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match="^" + message) as e:
        sidecar.overrides_for(tmp_path, "p.jpg")
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("text,message", [
    ("style_weight: [" + ", ".join(["1"] * 1500) + "]\n",
     r"^p.jpg.nstd.yaml.style_weight: expected float, got \[1, 1, 1, 1, \.\.\.\]$"),
    ("mask: [" + ", ".join(["x" * 30] * 1500) + "]\n", r"^p.jpg.nstd.yaml.mask: \['xxx"),
    ("size: true\n", r"^p.jpg.nstd.yaml.size: expected int or 'original', got True$"),
    ("regions: {" + ", ".join(f'"#{n:06x}": keep' for n in range(65)) + "}\n",
     r"^p.jpg.nstd.yaml.regions: 65 colours; a region map takes at most 64$"),
    ("regions: {\"#ff0000\": [ink, ink]}\n", r"^p.jpg.nstd.yaml.regions.#ff0000: \['ink', 'ink'\] is not"),
    ("? " + "x" * 5000 + "\n: 1\n", r"^p.jpg.nstd.yaml.x+…: unknown key"),
])
def test_a_sidecars_bad_value_is_quoted_short(service, text, message):
    """Every refusal quotes the value cut short, however large it is."""
    (service.cfg.inbox / "p.jpg.nstd.yaml").write_text(text)
    if "regions" in text:
        (service.cfg.inbox / "p.jpg.regions.png").write_bytes(photo_bytes(40, 40, 4, "PNG"))
    service.inputs.settle.seconds = 0
    out = accept(service, "p.jpg", 3)
    assert out.kind is Kind.FAILED and re.match(message, out.detail), out.detail
    assert len(out.detail) < 400
    assert (service.cfg.failed / "p.jpg").exists()  # nothing lost


@pytest.mark.parametrize("text,message", [
    ("iterations: 1000000000\nstop_tolerance: 0\n",
     "p.jpg: asks for 1,000,000,000 iterations at one scale, over limits.iterations (2,000)"),
    ("lbfgs_history: 100000\n", "p.jpg: asks for 100,000 L-BFGS history pairs, over limits.lbfgs_history (300)"),
    ("snapshot_every: 1\n", "p.jpg: asks for 4 snapshots, over limits.snapshots (3)"),
    ("size: 64\nmultiscale_start: 16\nmultiscale_factor: 1.1\nmultiscale_iterations: [1500]\niterations: 10\n",
     "p.jpg: asks for 22,510 iterations over its scales, over limits.total_iterations (5,000)"),
])
def test_a_sidecar_cannot_hold_the_worker_for_ever(service, text, message):
    from dataclasses import replace
    from nstd.limits import Limits

    service.runtime = replace(service.runtime, cfg=replace(service.cfg, limits=Limits(snapshots=3)))
    (service.cfg.inbox / "p.jpg.nstd.yaml").write_text(text)
    out = accept(service, "p.jpg", 3)
    assert out.kind is Kind.FAILED and out.detail.startswith(message), out.detail
    assert service.journal.counts()["queued"] == 0


def test_limits_are_read_from_the_config(tmp_path):
    from nstd import config
    from harness.daemon import write_config

    cfg = config.load(write_config(tmp_path, tmp_path / "models", limits={"iterations": 50}))
    assert cfg.limits.iterations == 50 and cfg.limits.total_iterations == 5000
    for bad, message in (({"iterations": 0}, "limits.iterations: must be a whole number of at least 1"),
                         ({"iters": 5}, "limits.iters: unknown key"), ([1], "limits: expected a mapping")):
        with pytest.raises(ConfigError, match="^" + re.escape(message)):
            config.load(write_config(tmp_path, tmp_path / "models", limits=bad))


def test_the_configs_own_settings_are_never_over_its_limits(service):
    """An operator who sets 3,000 iterations in the config has them; a sidecar may not ask
    for more than that or the limit, whichever is larger."""
    from dataclasses import replace

    from nstd.daemon.runtime import Runtime

    transfer = replace(service.cfg.transfer, iterations=3000)
    cfg = replace(service.cfg, transfer=transfer,
                  styles={n: replace(s, params=replace(s.params, iterations=3000)) for n, s in service.cfg.styles.items()})
    service.runtime = Runtime.load(cfg)
    take(service, "a.jpg")
    (service.cfg.inbox / "b.jpg.nstd.yaml").write_text("iterations: 3001\n")
    out = accept(service, "b.jpg", 3)
    assert out.kind is Kind.FAILED and "over limits.iterations (3,000)" in out.detail
