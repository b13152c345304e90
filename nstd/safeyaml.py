"""YAML from users and from files others drop, read with limits at the door.

A sidecar comes from anyone who can write to the inbox, so what it may cost is bounded
before a value is built: no aliases (nine levels of `*a` expand a 1 KB file into
billions of items), a bounded count of values and a bounded nesting depth (a deep
`[[[…]]]` would exhaust the recursion of whoever walks it). Any failure is one
ConfigError line naming the file, never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import ComposerError

from nstd.errors import ConfigError, clip


@dataclass(frozen=True)
class Bounds:
    values: int  # scalars, lists and mappings, counted as they are read
    depth: int  # lists and mappings inside each other


SIDECAR = Bounds(values=2_000, depth=8)
CONFIG = Bounds(values=50_000, depth=16)
FLAG = Bounds(values=200, depth=4)


class _Loader(yaml.SafeLoader):
    def __init__(self, text: str, bounds: Bounds):
        super().__init__(text)
        self.bounds = bounds
        self.values = 0
        self.depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise ComposerError(None, None, f"uses an alias (*{clip(event.anchor, 40)}); nstd takes none, "
                                "write the value out", event.start_mark)
        self.values += 1
        if self.values > self.bounds.values:
            raise ComposerError(None, None, f"more than {self.bounds.values} values", event.start_mark)
        if self.depth >= self.bounds.depth:
            raise ComposerError(None, None, f"nested deeper than {self.bounds.depth} levels", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load(text: str | bytes, label: str, bounds: Bounds) -> Any:
    """The document in `text`, or a one-line ConfigError naming `label`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{label}: not UTF-8 text (byte {e.start})") from None
    loader = None
    try:
        loader = _Loader(text, bounds)  # its reader refuses control characters at once
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(error_line(label, e)) from None
    except Exception as e:  # noqa: BLE001 - e.g. an integer of 5,000 digits, a 13th month
        raise ConfigError(f"{label}: cannot be read ({type(e).__name__}: {clip(str(e), 120)})") from None
    finally:
        if loader is not None:
            loader.dispose()


def error_line(label: str, e: yaml.YAMLError) -> str:
    """One line naming the file and line of a YAML error."""
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return f"{label}:{where} not valid YAML ({clip(problem, 160)})"
