"""The exactly-once audit's counting, shared by the fault harnesses (soak, share soak,
cluster): each reads an outbox and a failed/ folder the same way, whatever ran the daemon."""

from __future__ import annotations

import json
from pathlib import Path


def count_outputs(outbox: Path, styles) -> tuple[dict[tuple[str, str], int], list[str]]:
    """Outputs per (style, input sha256), by their loss logs; and the logs whose image is missing."""
    outputs: dict[tuple[str, str], int] = {}
    incomplete = []
    for style in styles:
        for js in sorted((outbox / style).rglob("*.json")) if (outbox / style).exists() else []:
            log = json.loads(js.read_text())
            if not (outbox / log["output"]["path"]).exists():
                incomplete.append(str(js))
            key = (style, log["input"]["sha256"])
            outputs[key] = outputs.get(key, 0) + 1
    return outputs, incomplete


def missing_and_twice(versions: list[tuple[str, str]], outputs: dict[tuple[str, str], int], failed: dict,
                      styles) -> tuple[list[str], list[str]]:
    """Each (label, sha256) dropped, in each style: the outputs that never came (and did
    not fail for a reason), and those that came more than once."""
    missing, duplicated = [], []
    for label, sha in versions:
        for style in styles:
            k = outputs.get((style, sha), 0)
            if k == 0 and sha not in failed:
                missing.append(f"{label} in {style}")
            if k > 1:
                duplicated.append(f"{label} in {style}: {k}")
    return missing, duplicated


def failed_reasons(failed: Path) -> dict[str | None, str | None]:
    """Input sha256 -> reason, from failed/'s error records."""
    out = {}
    for ej in failed.rglob("*.error.json"):
        rec = json.loads(ej.read_text())
        out[rec.get("sha256")] = rec.get("reason")
    return out
