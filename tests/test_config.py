import pytest

from nstd import config
from nstd.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = "styles: {a: {image: a.jpg}}\n"


def test_example_config_loads_and_documents_every_key():
    cfg = config.load(config.Path("config.example.yaml"))
    assert set(cfg.styles) == {"starry", "scream"}
    assert cfg.styles["scream"].params.style_weight == 20
    assert cfg.styles["starry"].params.style_weight == cfg.transfer.style_weight
    text = open("config.example.yaml").read()
    for key in ("content_weight", "tv_weight", "lbfgs_history", "settle_seconds", "rescan_interval",
                "max_batch", "batch_window", "stop_timeout", "on_success", "max_pixels", "snapshot_every",
                "precision", "cuda_graphs", "checkpoint", "multiscale_start", "multiscale_factor",
                "multiscale_iterations", "preserve_color", "reproducible", "history_precision", "lease", "host"):
        assert f"{key}:" in text


def test_size_original_and_multiscale_parse(tmp_path):
    cfg = config.load(write(tmp_path, BASE + "transfer: {size: original, multiscale_iterations: [300, 50]}\n"))
    p = cfg.transfer
    assert p.size == "original" and p.long_side(3000, 2000) == 3000
    assert [(s.long_side, s.iterations) for s in p.scales(3000)] == [(512, 500), (1024, 300), (2048, 50), (3000, 50)]


def test_fast_path_keys_default_to_auto_and_parse(tmp_path):
    cfg = config.load(write(tmp_path, BASE))
    s = cfg.worker.switches
    assert (s.precision, s.cuda_graph, s.checkpoint, s.reproducible, s.history_precision) == \
        ("auto", None, None, None, "fp32")
    cfg = config.load(write(tmp_path, BASE + "worker: {precision: fp32, cuda_graphs: false, checkpoint: true, "
                            "reproducible: true, history_precision: bf16}\n"))
    s = cfg.worker.switches
    assert (s.precision, s.cuda_graph, s.checkpoint, s.reproducible, s.history_precision) == \
        ("fp32", False, True, True, "bf16")


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    cfg = config.load(write(tmp_path, BASE + "inbox: in\n"))
    assert cfg.inbox == tmp_path / "in"
    assert cfg.styles["a"].image == tmp_path / "a.jpg"


@pytest.mark.parametrize("text,message", [
    ("inbx: x\n", "inbx: unknown key"),
    ("transfer: {iterations: many}\n", "transfer.iterations: expected int"),
    ("transfer: {optimizer: sgd}\n", "transfer.optimizer: must be one of lbfgs, adam"),
    ("transfer: {stop_tolerance: -0.1}\n", "transfer.stop_tolerance: must be at least 0 and under 1"),
    ("transfer: {stop_window: 0}\n", "transfer.stop_window: must be at least 1"),
    ("transfer: {style_layers: {relu9_1: 1}}\n", "transfer.style_layers: unknown VGG19 layer 'relu9_1'"),
    ("watch: {mode: inotify}\n", "watch.mode: must be one of auto, native, polling"),
    ("watch: {settle_seconds: -1}\n", "watch.settle_seconds: must be at least 0"),
    ("worker: {max_batch: 0}\n", "worker.max_batch: must be at least 1"),
    ("worker: {turbo: true}\n", "worker.turbo: unknown key"),
    ("transfer: {size: huge}\n", "transfer.size: expected int or 'original'"),
    ("transfer: {multiscale_iterations: [100, 0]}\n", "transfer.multiscale_iterations: needs one or more"),
    ("transfer: {preserve_color: sepia}\n", "transfer.preserve_color: must be one of none, luminance, histogram"),
    ("worker: {precision: fp8}\n", "worker.precision: must be one of auto, fp32, tf32, bf16"),
    ("worker: {cuda_graphs: maybe}\n", "worker.cuda_graphs: must be auto, true or false"),
    ("worker: {history_precision: fp16}\n", "worker.history_precision: must be one of fp32, bf16"),
    ("output: {format: gif}\n", "output.format:"),
    ("output: {quality: 101}\n", "output.quality: must be between 1 and 100"),
    ("on_success: shred\n", "on_success: must be one of move, delete, keep"),
    # Non-finite numbers would pass every range check and optimise to a black image.
    ("transfer: {style_weight: .nan}\n", "transfer.style_weight: must be a finite number"),
    ("transfer: {tv_weight: .inf}\n", "transfer.tv_weight: must be a finite number"),
    ("transfer: {lr: .nan}\n", "transfer.lr: must be a finite number"),
    ("transfer: {content_weight: 1e309}\n", "transfer.content_weight: must be a finite number"),
    ("transfer: {style_layers: {relu1_1: .nan}}\n", "transfer.style_layers: layer weights must be finite"),
    ("styles: {b: {image: b.jpg, style_weight: .inf}}\n", "styles.b.style_weight: must be a finite number"),
    ("worker: {batch_window: .nan}\n", "worker.batch_window: must be a finite number"),
    ("watch: {rescan_interval: .inf}\n", "watch.rescan_interval: must be a finite number"),
])
def test_bad_values_name_their_key_path(tmp_path, text, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        config.load(write(tmp_path, BASE + text))


def test_style_errors_name_the_style(tmp_path):
    with pytest.raises(ConfigError, match="^styles.b.style_wieght: unknown key"):
        config.load(write(tmp_path, "styles: {b: {image: b.jpg, style_wieght: 3}}\n"))
    with pytest.raises(ConfigError, match="^styles.c.image: missing"):
        config.load(write(tmp_path, "styles: {c: {style_weight: 3}}\n"))
    with pytest.raises(ConfigError, match="^styles.bad/name: a style name is a folder name"):
        config.load(write(tmp_path, "styles: {'bad/name': {image: x.jpg}}\n"))
    with pytest.raises(ConfigError, match="^styles: at least one style"):
        config.load(write(tmp_path, "inbox: x\n"))


def test_yaml_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: line [23] not valid YAML"):
        config.load(write(tmp_path, "styles:\n  a: [unclosed\n"))


def test_a_config_with_aliases_or_deep_nesting_is_one_line(tmp_path):
    bomb = "".join(f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    with pytest.raises(ConfigError, match=r"c.yaml: line 2 not valid YAML \(uses an alias \(\*a\)"):
        config.load(write(tmp_path, "a: &a [x, x, x, x, x, x, x, x, x]\n" + bomb + "transfer: {seed: *i}\n"))
    with pytest.raises(ConfigError, match=r"c.yaml: line 1 not valid YAML \(nested deeper than 16 levels\)$"):
        config.load(write(tmp_path, "transfer: " + "[" * 5000 + "]" * 5000 + "\n"))


def test_yaml_is_loaded_safely(tmp_path):
    with pytest.raises(ConfigError):
        config.load(write(tmp_path, "styles: !!python/object/apply:os.system ['true']\n"))


def test_style_shorthand_and_overrides(tmp_path):
    cfg = config.load(write(tmp_path, "styles: {a: a.jpg, b: {image: b.jpg, iterations: 7}}\n"
                                      "transfer: {iterations: 9, style_weight: 1e2}\n"))
    assert cfg.styles["a"].params.iterations == 9 and cfg.styles["b"].params.iterations == 7
    assert cfg.transfer.style_weight == 100.0


def test_a_binary_config_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    with pytest.raises(ConfigError, match=f"^{path}: not a UTF-8 text file"):
        config.load(path)


def test_nstd_init_writes_a_config_that_checks_and_never_overwrites(tmp_path, capsys):
    from nstd.cli import main

    target = tmp_path / "studio"
    assert main(["init", str(target)]) == 0
    assert "nstd run --config" in capsys.readouterr().out
    cfg = config.load(target / "config.yaml")
    assert sorted(cfg.styles) == ["scream", "starry"]
    assert all(s.image.is_file() and s.image.parent == target / "styles" for s in cfg.styles.values())
    assert all(p.is_dir() for p in (cfg.inbox, cfg.outbox, cfg.failed, cfg.processed, cfg.state_dir))
    (target / "config.yaml").write_text("# edited by hand\\n" + (target / "config.yaml").read_text())
    assert main(["init", str(target)]) == 1
    assert "exists already" in capsys.readouterr().err
    assert (target / "config.yaml").read_text().startswith("# edited by hand")
    # A folder that cannot be made (here: below a file) is one line naming it.
    (tmp_path / "a-file").write_text("x")
    assert main(["init", str(tmp_path / "a-file" / "studio")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nstd: error: {tmp_path / 'a-file' / 'studio'}") and err.count("\n") == 1
    assert "cannot write (Not a directory); name a folder you can write to" in err


def test_host_defaults_to_the_machines_name_and_is_checked(tmp_path):
    import socket

    assert config.load(write(tmp_path, BASE)).host == socket.gethostname()
    assert config.load(write(tmp_path, BASE + "host: gpu-b\n")).host == "gpu-b"
    for bad in ("'a:b'", "''", "'two words'", "[x]"):
        with pytest.raises(ConfigError, match="^host: a name of up to 64 characters"):
            config.load(write(tmp_path, BASE + f"host: {bad}\n"))
