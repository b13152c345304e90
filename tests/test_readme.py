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


# Where a container-less test cannot go: accounts, the system's venv and systemd. These
# stand-ins record their calls; everything else in the steps runs for real, in a temporary
# root, from `git archive` of this checkout to `nstd check` on the written config.
STAND_INS = r'''
record() { printf '%s\n' "$*" >> "$CALLS"; }
sudo() { if [ "$1" = "-u" ]; then shift 2; fi; "$@"; }
useradd() { record useradd "$@"; }
usermod() { record usermod "$@"; }
systemctl() { record systemctl "$@"; }
install() {
    record install "$@"
    set -- $(printf '%s\n' "$@" | awk 'skip { skip = 0; next } /^-[og]$/ { skip = 1; next } { print }')
    command install "$@"
}
python3() {
    record python3 "$@"
    mkdir -p .venv/bin && cp "$FAKE_PIP" .venv/bin/pip && cp "$FAKE_NSTD" .venv/bin/nstd
}
'''
def has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


SYSTEM_PATHS = ("/etc/systemd/system", "/etc/nstd", "/opt/nstd", "/var/lib/nstd", "/var/cache/nstd", "/srv/nstd")


def test_the_service_steps_run_in_a_temporary_root_to_a_ready_check(tmp_path):
    import sys

    import torch

    from conftest import random_vgg_state_dict

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        raise AssertionError("the steps begin with git archive: run the suite from a git checkout")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    torch.save(random_vgg_state_dict(), tmp_path / "random.pth")
    calls = tmp_path / "calls"
    fake_pip = tmp_path / "pip"
    fake_pip.write_text(f'#!/bin/sh\nprintf "%s\\n" "pip $*" >> {calls}\n')
    fake_nstd = tmp_path / "nstd"
    fake_nstd.write_text(  # the real nstd; `weights fetch` stands for random weights (no network here)
        f'#!/bin/sh\nif [ "$1 $2" = "weights fetch" ]; then exec {sys.executable} -m nstd weights import '
        f'{tmp_path / "random.pth"} --name caffe --preprocessing caffe --models-dir "$NSTD_MODELS_DIR"; fi\n'
        f'exec {sys.executable} -m nstd "$@"\n')
    for f in (fake_pip, fake_nstd):
        f.chmod(0o755)
    steps = service_steps()
    for path in SYSTEM_PATHS:
        steps = steps.replace(path, f"{root}{path}")
    script = STAND_INS + "set -e\n" + steps
    sh = shutil.which("dash") or shutil.which("sh")
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "CALLS": str(calls), "FAKE_PIP": str(fake_pip),
           "FAKE_NSTD": str(fake_nstd), "HOME": str(tmp_path)}
    done = subprocess.run([sh, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("ready"), done.stdout
    recorded = calls.read_text().splitlines()
    assert f"useradd --system --home-dir {root}/var/lib/nstd --shell /usr/sbin/nologin nstd" in recorded
    assert "pip install ." in recorded and "systemctl enable --now nstd" in recorded
    # Only the GPU groups this host has: usermod fails on a missing one and adds none.
    assert [c for c in recorded if c.startswith("usermod")] == [f"usermod -aG {g} nstd" for g in ("video", "render")
                                                                if has_group(g)]
    assert any(c.startswith("install -d -o nstd -g nstd -m 2775") and f"{root}/srv/nstd/inbox" in c for c in recorded)
    # The unit as copied names what the steps made: its program, its config, its folders.
    unit = (root / "etc/systemd/system/nstd.service").read_text()
    program, _, _, conf = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
    assert (root / program.lstrip("/")).exists() and (root / conf.lstrip("/")).is_file()
    for path in re.search(r"^ReadWritePaths=(.*)$", unit, re.M).group(1).split():
        assert (root / path.lstrip("/")).is_dir(), path
    assert oct((root / "srv/nstd/inbox").stat().st_mode & 0o7777) == "0o2775"


def test_the_quick_starts_cpu_command_runs_the_example_at_a_cpus_size(tmp_path):
    """`make run CONFIG=…` as the Quick start pastes it: the Makefile makes that config from
    the example, changing the size and the iterations only."""
    from dataclasses import replace

    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 1)]
    name = re.search(r"^make run CONFIG=(\S+)", quick, re.M).group(1)
    for f in ("Makefile", "config.example.yaml"):
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / "nstd").symlink_to(ROOT / "nstd")  # the example's styles
    subprocess.run(["make", "-s", name], cwd=tmp_path, check=True, capture_output=True)
    cpu, example = config.load(tmp_path / name), config.load(tmp_path / "config.example.yaml")
    assert cpu.transfer == replace(example.transfer, size=256, iterations=200)
    assert (cpu.inbox, cpu.worker) == (example.inbox, example.worker)
    assert {n: s.image for n, s in cpu.styles.items()} == {n: s.image for n, s in example.styles.items()}
    assert f"/{name}\n" in (ROOT / ".gitignore").read_text()  # the user's own file, not a change to commit
