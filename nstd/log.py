"""structlog set-up: console output on a terminal, JSON lines otherwise (journald)."""

from __future__ import annotations

import logging
import sys

import structlog


def setup(level: str = "info", json_lines: bool | None = None) -> None:
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer = (structlog.processors.JSONRenderer() if json_lines
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Looked up per logger, not bound once: stderr may be replaced (tests, redirects).
        logger_factory=lambda *_: LineLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (watchdog, for one) log through the standard library: give them the
    # same renderer, so journald sees one format.
    handler = _StderrHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # watchdog's poller warns at every failed look at a share that is away; the daemon's
    # own look at its folders says so once (daemon/folders.py). Its other warnings (an
    # inotify queue that overflowed) still come through.
    logging.getLogger("watchdog.observers.polling").setLevel(logging.ERROR)


class LineLogger:
    """Writes each event as one line in a single write.

    Worker processes share the supervisor's stdout, and with PYTHONUNBUFFERED (the unit
    sets it) print() writes a message and its newline separately, so two processes'
    lines could run together into one that is neither's JSON."""

    def __init__(self, file):
        self._file = file

    def msg(self, message: str) -> None:
        self._file.write(message + "\n")
        self._file.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, like the structlog loggers."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def get(name: str | None = None):
    return structlog.get_logger(name) if name else structlog.get_logger()
