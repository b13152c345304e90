"""The commands that compute nothing load no PyTorch: importing it takes seconds (far more
on a loaded host), which `nstd status`, `nstd retry` and `nstd weights list` must not pay."""

import json
import subprocess
import sys
import time

import pytest

from harness.daemon import write_config

# Runs one command in a fresh interpreter and reports which heavy modules it loaded.
RUN = """
import sys
from nstd.cli import main
rc = main(sys.argv[1:])
print("LOADED", sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision"}))
sys.exit(rc)
"""


def run(*argv: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True)
    loaded = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded, done.stdout + done.stderr  # it ran to the end, without a traceback
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def daemon_folders(tmp_path):
    """A config whose journal has a worker with a running batch and a failed photo, a photo
    in failed/, and a models folder with one weight set."""
    from nstd import config
    from nstd.daemon import dispose
    from nstd.daemon.journal import JobSpec, Journal, WorkerInfo

    models = tmp_path / "models"
    models.mkdir()
    (models / "random.pth").write_bytes(b"weights")
    (models / "random.json").write_text(json.dumps({
        "model_id": "random", "source": "import:r.pth", "source_sha256": "0" * 64, "file_sha256": "1" * 64,
        "preprocessing": "torchvision", "created": "2026-01-01T00:00:00Z"}))
    path = write_config(tmp_path, models)
    cfg = config.load(path)
    journal = Journal(cfg.journal_target)
    now = time.time()
    worker = WorkerInfo("host:1:cpu", "host", "cpu", None)
    journal.beat(worker, "working", now - 5)
    journal.add_input("a.jpg", "a" * 64, "a.spool", [JobSpec("ink", "p", {}, 32, 32, "k")], now=now - 60)
    [job] = journal.claim("k", 4, "b1", now=now - 50, owner=worker.owner)
    journal.progress([job.id], 10, 40)
    journal.fail_input("bad.jpg", "b" * 64, "bad.jpg: not a usable image", now=now - 30)
    journal.close()
    (cfg.inbox / "bad.jpg").write_bytes(b"not a photo")
    dispose.to_failed(cfg.inbox, cfg.failed, "bad.jpg", "bad.jpg: not a usable image", "b" * 64)
    return path, cfg


def test_status_retry_and_weights_list_load_no_torch(daemon_folders):
    path, cfg = daemon_folders
    rc, out = run("status", "--config", str(path))
    assert rc == 0 and "running batch b1" in out and "bad.jpg: not a usable image" in out, out
    assert "LOADED []" in out, out
    rc, out = run("retry", "bad.jpg", "--config", str(path))
    assert rc == 0 and "bad.jpg: back in the inbox" in out and (cfg.inbox / "bad.jpg").exists(), out
    assert "LOADED []" in out, out
    rc, out = run("weights", "list", "--models-dir", str(cfg.models_dir))
    assert rc == 0 and "random" in out and "LOADED []" in out, out


def test_a_command_that_computes_still_loads_it(daemon_folders):
    """The probe above can fail: it sees torch where a command needs it."""
    path, _ = daemon_folders
    rc, out = run("stylize", "nothing.jpg", "-s", "nothing.jpg", "-o", str(path.parent / "out"))
    assert rc == 1 and "'torch'" in out.split("LOADED")[1], out
