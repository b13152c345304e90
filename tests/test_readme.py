"""The README's service steps: plain POSIX shell, and a config that holds once copied."""

import re
import shutil
import subprocess
from pathlib import Path

from nstd import config

ROOT = Path(__file__).resolve().parent.parent


def service_steps() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Running as a service"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_service_steps_are_posix_shell_with_no_placeholders():
    steps = service_steps()
    sh = shutil.which("dash") or shutil.which("sh")
    assert subprocess.run([sh, "-n"], input=steps, text=True).returncode == 0
    assert not re.search(r"\{[^}]*,[^}]*\}", steps), "brace expansion: bash only"
    assert "<" not in steps.replace("<<", ""), "a placeholder is left"
    unit = (ROOT / "systemd" / "nstd.service").read_text()
    assert "Documentation=file:///opt/nstd/README.md" in unit


def test_the_config_the_steps_write_names_the_service_folders_and_absolute_styles(tmp_path):
    steps = service_steps()
    sed = re.search(r"(sed -e .*?config\.example\.yaml)", steps, re.S).group(1).replace("\\\n", " ")
    written = subprocess.run(sed, shell=True, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for key, where in (("inbox", "/srv/nstd/inbox"), ("outbox", "/srv/nstd/outbox"), ("failed", "/srv/nstd/failed"),
                       ("processed", "/srv/nstd/processed"), ("state_dir", "/var/lib/nstd"),
                       ("models_dir", "/var/cache/nstd")):
        assert re.search(rf"^{key}: {re.escape(where)}\b", written, re.M), key
    # Copied to /etc/nstd, the styles must not depend on where the file sits: read it
    # from elsewhere with /opt/nstd standing for this checkout.
    (tmp_path / "config.yaml").write_text(written.replace("/opt/nstd/", f"{ROOT}/"))
    cfg = config.load(tmp_path / "config.yaml")
    assert all(style.image.is_file() for style in cfg.styles.values())
