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

    from harness.synthetic import random_vgg_state_dict

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


# --- The README as a guide, and the pages beside it in docs/ -------------------------
# Everything below reads the Markdown as a user would paste from it: the links must lead
# somewhere, the YAML must be a config (or sidecar) nstd accepts, and every command must
# name what exists and parse as the program itself parses it.

import argparse
import runpy
import shlex
import sys

import pytest
import yaml

README_LIMIT = 15_000  # bytes: a guide a new user reads in five minutes


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]


def fences(text: str, lang: str | None = None) -> list[str]:
    """The bodies of fenced code blocks (any indentation), of one language or all."""
    blocks = re.findall(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```", text, re.S | re.M)
    return [re.sub(rf"^{re.escape(indent)}", "", body, flags=re.M)
            for indent, tag, body in blocks if lang is None or tag == lang]


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where links are not links."""
    text = re.sub(r"^([ \t]*)```.*?^\1```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", prose_keep_headings(text), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def prose_keep_headings(text: str) -> str:
    return re.sub(r"^([ \t]*)```.*?^\1```", "", text, flags=re.S | re.M)


def broken_links(page: Path) -> list[str]:
    """Each relative link or image in `page` whose file or anchor does not exist."""
    text = page.read_text()
    bad = []
    for target in re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, file:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{page.name}: {target} (no such file)")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest.read_text())):
            bad.append(f"{page.name}: {target} (no such heading)")
    return bad


def test_the_readme_is_a_short_guide():
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_LIMIT, f"README.md is {size:,} bytes; move detail into docs/ (limit {README_LIMIT:,})"
    text = (ROOT / "README.md").read_text()
    for command in ("make run", "make test"):  # its two commands, in the quick start
        assert command in text[text.index("## Quick start"):], command


def test_every_relative_link_and_anchor_in_the_readme_and_docs_resolves():
    assert len(pages()) > 5, "the docs pages are missing"
    bad = [b for page in pages() for b in broken_links(page)]
    assert not bad, "\n".join(bad)


def test_the_link_check_catches_a_missing_file_or_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A heading: with `code`, 6000×4000\n\n## Twice\n\n## Twice\n")
    page.write_text("[ok](other.md#a-heading-with-code-60004000) [ok](other.md#twice-1) [ok](#self)\n\n# Self\n"
                    "`[not a link](nowhere.md)`\n\n```sh\n[nor](this.md)\n```\n")
    assert broken_links(page) == []
    page.write_text("[gone](missing.md) [no anchor](other.md#nope) ![picture](img/none.png)\n")
    assert len(broken_links(page)) == 3


# A fragment of the config is checked as nstd reads it: merged into the example config
# and parsed; a sidecar (its first line names a .nstd.yaml) as the intake reads one; a
# Prometheus config (its first line names prometheus.yml) by Prometheus's own promtool.
def check_yaml_fragment(body: str) -> None:
    from nstd.daemon import sidecar
    from nstd.params import TransferParams, with_overrides

    data = yaml.safe_load(body)
    assert isinstance(data, dict) and data, f"not a mapping:\n{body}"
    first = body.lstrip().splitlines()[0]
    if first.startswith("#") and "prometheus.yml" in first:
        import subprocess
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            f.write(body)
            f.flush()
            check = subprocess.run(["promtool", "check", "config", f.name], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        return
    if first.startswith("#") and ".nstd.yaml" in first:
        unknown = set(data) - set(TransferParams.__dataclass_fields__) - set(sidecar.GUIDE_KEYS)
        assert not unknown, f"sidecar keys nstd does not know: {unknown}\n{body}"
        with_overrides(TransferParams(), {k: v for k, v in data.items() if k not in sidecar.GUIDE_KEYS}, "sidecar")
        return
    unknown = set(data) - config.TOP_KEYS
    assert not unknown, f"top-level keys nstd does not know: {unknown}\n{body}"
    example = ROOT / "config.example.yaml"
    merged = yaml.safe_load(example.read_text())
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    config.parse(merged, example)  # a ConfigError names the key


def yaml_blocks() -> list[tuple[str, str]]:
    return [(page.name, body) for page in pages() for body in fences(page.read_text(), "yaml")]


def test_every_yaml_fragment_is_a_config_or_sidecar_that_nstd_accepts():
    blocks = yaml_blocks()
    assert any(name == "README.md" for name, _ in blocks), "the README's watch settings for a NAS are gone"
    for name, body in blocks:
        try:
            check_yaml_fragment(body)
        except Exception as e:
            raise AssertionError(f"{name}: {e}\n{body}") from None


def test_the_yaml_check_refuses_a_misspelt_key_or_a_bad_value():
    with pytest.raises(AssertionError):
        check_yaml_fragment("wach:\n  mode: polling\n")
    with pytest.raises(config.ConfigError):
        check_yaml_fragment("watch:\n  mode: sometimes\n")
    with pytest.raises(config.ConfigError):
        check_yaml_fragment("# inbox/.nstd.yaml\nstyle_weight: -3\n")


# Shell blocks, split into simple commands as the shell would run them.
PREFIXES = {"if", "then", "do", "else", "elif", "while", "until", "!", "time", "exec"}


def simple_commands(block: str) -> list[list[str]]:
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        command: list[str] = []
        for token in list(lexer) + [";"]:
            if token and set(token) <= set(";&|()"):
                if command:
                    out.append(command)
                command = []
            else:
                command.append(token)
    return [c for c in (program_and_args(c) for c in out) if c]


def program_and_args(tokens: list[str]) -> list[str]:
    """The program and its arguments: shell keywords, sudo -u X, env and VAR=value dropped,
    and redirections with their targets."""
    words, skip = [], False
    for t in tokens:
        if skip:
            skip = False
        elif t in ("<", ">", ">>"):
            skip = True
        elif not t.startswith(("<", ">")):
            words.append(t)
    while words:
        if words[0] in PREFIXES or re.match(r"\w+=", words[0]):
            words = words[1:]
        elif words[0] == "sudo":
            words = words[3:] if words[1:2] == ["-u"] else words[1:]
        elif words[0] == "env":
            words = words[1:]
        else:
            break
    return words


def shell_commands() -> list[tuple[str, list[str]]]:
    return [(page.name, c) for page in pages() for body in fences(page.read_text(), "sh") for c in simple_commands(body)]


def test_shell_commands_are_split_as_the_shell_runs_them():
    block = ("for g in video render; do if getent group $g >/dev/null; then sudo usermod -aG $g nstd; fi; done\n"
             "sudo -u nstd env NSTD_MODELS_DIR=/x .venv/bin/nstd weights fetch  # a comment\n"
             "sudo systemctl daemon-reload && sudo systemctl enable --now nstd\n")
    commands = simple_commands(block)
    assert ["getent", "group", "$g"] in commands and ["usermod", "-aG", "$g", "nstd"] in commands
    assert [".venv/bin/nstd", "weights", "fetch"] in commands
    assert ["systemctl", "enable", "--now", "nstd"] in commands


def test_every_nstd_command_in_the_readme_and_docs_parses():
    from nstd.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    found = [(name, c[1:]) for name, c in shell_commands() if Path(c[0]).name == "nstd"]
    assert {args[0] for _, args in found} >= {"stylize", "status", "retry", "check", "weights", "bench"}, found
    for name, args in found:
        assert args and args[0] in subcommands, f"{name}: nstd {' '.join(args)}: no such subcommand"
        try:
            build_parser().parse_args(args)
        except SystemExit:
            raise AssertionError(f"{name}: nstd {' '.join(args)}: nstd's parser refuses it") from None


class Parsed(Exception):
    pass


def test_every_other_pasted_command_names_what_exists(monkeypatch, capsys):
    """Benchmark scripts exist and their own parsers take the options given; make targets
    and gpu_campaign.sh stages exist; python is the project's, never a bare `python`."""
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    stages = set(re.findall(r"^\s+(\w+)\)", (ROOT / "benchmarks" / "gpu_campaign.sh").read_text(), re.M))
    parse_args = argparse.ArgumentParser.parse_args

    def stop_after_parsing(self, args=None, namespace=None):
        raise Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(sys, "path", list(sys.path))  # a script that edits it edits this copy
    before = set(sys.modules)
    scripts = 0
    for name, (program, *args) in shell_commands():
        where = f"{name}: {program} {' '.join(args)}"
        assert program not in ("python", "python3", "pip", "nstd") or name == "README.md" and program == "python3", \
            f"{where}: use .venv/bin/{program}, which has nstd and its dependencies"
        if program == "make":
            assert {a for a in args if "=" not in a} <= targets, f"{where}: no such make target"
        elif program == "sh" and args[0].endswith(".sh"):
            assert (ROOT / args[0]).is_file(), where
            if args[0].endswith("gpu_campaign.sh"):
                assert set(args[3:]) <= stages and args[3:], f"{where}: no such stage"
        elif program.endswith("/python") and (args[0].endswith(".py") or args[0] == "-m" and
                                              args[1].split(".")[0] in ("benchmarks", "harness")):
            module = args[1] if args[0] == "-m" else None
            script = ROOT / (f"{module.replace('.', '/')}.py" if module else args[0])
            assert script.is_file(), f"{where}: no such {'module' if module else 'script'}"
            if script.parent.name != "benchmarks":
                continue
            # Run by its path, a script has its own folder on the import path, not the
            # repository root: under pytest its import of the harness would pass all the same.
            assert module or not re.search(r"^\s*(from|import) (harness|benchmarks)\b", script.read_text(), re.M), \
                f"{where}: it imports from the repository root; run it as -m benchmarks.{script.stem}"
            monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parsing)
            monkeypatch.setattr(sys, "argv", [str(script), *args[2 if module else 1:]])
            try:
                if module:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(str(script), run_name="__main__")
            except Parsed:
                scripts += 1
            except SystemExit:
                raise AssertionError(f"{where}: its parser refuses it\n{capsys.readouterr().err}") from None
            finally:
                monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    for module in set(sys.modules) - before:  # what the scripts imported from benchmarks/
        if str(getattr(sys.modules[module], "__file__", "") or "").startswith(str(ROOT / "benchmarks")):
            del sys.modules[module]
    assert scripts >= 10, "the benchmark commands in docs/ were not found"


def test_every_extra_the_docs_install_exists():
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^(\w+) *=", section, re.M))
    named = {e for page in pages() for e in re.findall(r"pip install '\.\[(\w+)\]'", page.read_text())}
    assert named and named <= extras, named - extras


def test_the_architecture_page_names_only_modules_that_exist():
    """The map must stay true to the code: each module or folder it names is there."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    files = {p.relative_to(ROOT).as_posix() for top in ("nstd", "benchmarks", "tests") for p in (ROOT / top).rglob("*.py")}
    names = set(re.findall(r"(?<![\w/.])((?:[\w]+/)*\w+\.py)\b", text))
    assert len(names) > 10
    for name in names:
        assert any(f == name or f.endswith("/" + name) for f in files), f"docs/architecture.md names {name}"
    for folder in re.findall(r"`((?:nstd|benchmarks|tests|systemd)/(?:\w+/)*)`", text):
        assert (ROOT / folder).is_dir(), f"docs/architecture.md names {folder}"
