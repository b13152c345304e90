"""After each input: `on_done.command`, a program run with what became of the photo in
its environment (as paperless-ngx runs a post-consume script), and `on_done.webhook`, a
JSON POST. A hook is told, never asked: it runs on a thread of its own, within a time
limit, its output kept to a few lines; its failure is logged and fails or repeats no
job, and a hook slower than the inbox loses notices (logged) rather than holding work.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nstd.errors import ConfigError, clip, shown
from nstd.log import get

log = get("nstd.hooks")
KEYS = ("command", "webhook", "timeout")
QUEUE = 1000  # notices waiting for a slow hook, at most
KEEP_OUTPUT = 2048  # bytes of a hook's output kept for the log


@dataclass(frozen=True)
class HookConfig:
    command: tuple[str, ...] = ()  # the program and its arguments; no shell
    webhook: str | None = None
    timeout: float = 60.0  # seconds a hook may take before it is stopped

    @property
    def on(self) -> bool:
        return bool(self.command or self.webhook)


@dataclass(frozen=True)
class Notice:
    """What became of one input."""

    input: str  # as the inbox named it
    outcome: str  # done | failed
    sha256: str | None
    path: str | None  # where the input is now (processed/ or failed/), or None where deleted
    outputs: tuple[str, ...] = ()  # absolute paths of the images made from it
    reason: str | None = None  # why it failed
    host: str = ""

    def environment(self) -> dict[str, str]:
        return {"NSTD_INPUT": self.input, "NSTD_OUTCOME": self.outcome, "NSTD_SHA256": self.sha256 or "",
                "NSTD_INPUT_PATH": self.path or "", "NSTD_OUTPUTS": "\n".join(self.outputs),
                "NSTD_REASON": self.reason or "", "NSTD_HOST": self.host}

    def document(self) -> bytes:
        return json.dumps({"input": self.input, "outcome": self.outcome, "sha256": self.sha256,
                           "input_path": self.path, "outputs": list(self.outputs), "reason": self.reason,
                           "host": self.host}).encode()


def parse(raw, root: Path) -> HookConfig:
    if raw is None:
        return HookConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"on_done: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - set(KEYS)
    if unknown:
        raise ConfigError(f"on_done.{str(sorted(unknown)[0])[:60]}: unknown key (known: {', '.join(KEYS)})")
    return HookConfig(_command(raw.get("command"), root), _webhook(raw.get("webhook")), _timeout(raw.get("timeout")))


def _command(raw, root: Path) -> tuple[str, ...]:
    if raw is None:
        return ()
    try:
        argv = shlex.split(raw) if isinstance(raw, str) else list(raw)
    except ValueError as e:
        raise ConfigError(f"on_done.command: {e}") from None
    if not argv or not all(isinstance(a, str) and a for a in argv):
        raise ConfigError(f"on_done.command: expected a program and its arguments, got {shown(raw)}")
    program = Path(argv[0]).expanduser()
    program = program if program.is_absolute() else root / program
    if not (program.is_file() and os.access(program, os.X_OK)):
        raise ConfigError(f"on_done.command: {program} is not an executable file")
    return (str(program), *argv[1:])


def _webhook(raw) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.startswith(("http://", "https://")):
        raise ConfigError(f"on_done.webhook: expected an http:// or https:// URL, got {shown(raw)}")
    return raw


def _timeout(raw) -> float:
    if raw is None:
        return HookConfig.timeout
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw <= 3600:
        raise ConfigError(f"on_done.timeout: expected seconds from 0 to 3600, got {shown(raw)}")
    return float(raw)


class Hooks:
    """Runs the configured hooks for each notice, one at a time, on a thread of its own."""

    def __init__(self, config: HookConfig):
        self.config = config
        self._queue: queue.Queue = queue.Queue(QUEUE)
        self._thread: threading.Thread | None = None

    def tell(self, notice: Notice, config: HookConfig | None = None) -> None:
        """Hand a notice over; never waits. `config`: the hooks as configured now (a reload)."""
        config = config or self.config
        if not config.on:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nstd-hooks", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((notice, config))
        except queue.Full:
            log.warning("hook_skipped", input=notice.input, reason=f"{QUEUE} notices already wait for the hooks")

    def wait(self, timeout: float | None = None) -> bool:
        """Whether every notice handed over has been run (for tests and a clean stop)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            notice, config = self._queue.get()
            try:
                if config.command:
                    run_command(config.command, notice, config.timeout)
                if config.webhook:
                    post(config.webhook, notice, config.timeout)
            except Exception as e:  # noqa: BLE001 - a hook never takes the daemon with it
                log.warning("hook_failed", input=notice.input, error=f"{type(e).__name__}: {clip(str(e), 200)}")
            finally:
                self._queue.task_done()


def run_command(argv: tuple[str, ...], notice: Notice, timeout: float) -> None:
    """The program, with the notice in its environment, stopped (its whole process group)
    past `timeout`; its output read as it comes so a chatty one never blocks, and only
    its last few lines kept for the log."""
    proc = subprocess.Popen(argv, env=os.environ | notice.environment(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    tail = bytearray()
    reader = threading.Thread(target=_drain, args=(proc.stdout, tail), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended as the time ran out
        proc.wait()
        log.warning("hook_timed_out", input=notice.input, command=argv[0], after_seconds=timeout)
        return
    finally:
        reader.join(5)
    said = tail.decode(errors="replace").strip().splitlines()[-3:]
    if code != 0:
        log.warning("hook_failed", input=notice.input, command=argv[0], exit_code=code, output=said)
    else:
        log.info("hook_ran", input=notice.input, command=argv[0])


def _drain(stream, tail: bytearray) -> None:
    for chunk in iter(lambda: stream.read(65536), b""):
        tail.extend(chunk)
        del tail[:-KEEP_OUTPUT]
    stream.close()


def post(url: str, notice: Notice, timeout: float) -> None:
    request = urllib.request.Request(url, data=notice.document(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "nstd"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(KEEP_OUTPUT)
            log.info("webhook_posted", input=notice.input, status=response.status)
    except urllib.error.HTTPError as e:
        log.warning("webhook_failed", input=notice.input, status=e.code)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        log.warning("webhook_failed", input=notice.input, error=clip(str(getattr(e, "reason", e)), 200))
