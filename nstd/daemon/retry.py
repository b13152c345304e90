"""Which photos in failed/ `nstd retry` takes back to the inbox: by the name the inbox
gave them (globs allowed), by a piece of their reason, or all of them."""

from __future__ import annotations

from fnmatch import fnmatch


def choose(records: list[tuple], names: list[str], reason: str | None, every: bool) -> tuple[list, list[str]]:
    """The (file, record) pairs of failed/ chosen, and the names that match no photo there."""
    chosen = [(src, rec) for src, rec in records
              if (every or any(fnmatch(rec.get("input", ""), n) for n in names) or
                  (reason and reason in rec.get("reason", "")))]
    unknown = [n for n in names if not any(fnmatch(rec.get("input", ""), n) for _, rec in records)]
    return chosen, unknown
