"""Errors that reach a user as one line; each names the file, key or command involved."""

import reprlib


class NstdError(Exception):
    """Base for errors shown to the user without a traceback."""


class ConfigError(NstdError):
    pass


class WeightsError(NstdError):
    pass


class ImageError(NstdError):
    """A photo or style image that cannot be used. Deterministic: retrying will not help."""


class JournalError(NstdError):
    """The journal cannot be used as it is (damaged, or not a journal)."""


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 2, 60, 60, 40
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4


def shown(value) -> str:
    """A value as an error line may quote it: its repr, cut short, whatever its size or depth
    (a message must never format an unbounded value)."""
    try:
        return clip(_SHOWN.repr(value), 80)
    except Exception:  # noqa: BLE001 - a repr that fails (an int too long to print) is still named
        return f"a {type(value).__name__}"


def clip(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` characters."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1] + "…"
