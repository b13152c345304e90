"""Sizes as people write them in a config or on a command line: 512MiB, 24GiB, 1.5GB.
No PyTorch here: the config reads it."""

from __future__ import annotations

import re

UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
         "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def size_in_bytes(text) -> int:
    """'512MiB', '1.5GiB', '24GB' or a number of bytes; a ValueError says what is wrong."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if not found or found[2].upper() not in UNITS:
            raise ValueError(f"expected a size such as 512MiB or 24GiB, got {str(text)[:40]!r}")
        value = int(float(found[1]) * UNITS[found[2].upper()])
    if value < 64 << 20:
        raise ValueError(f"{value} bytes is too little to stylize anything; at least 64MiB")
    return value
