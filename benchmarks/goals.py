"""Issue 13's goals read off a campaign's results: each goal, its target, what was
measured, and whether it was met. Reads the files `gpu_campaign.sh` writes (ttq.json,
ttq-compiled.json and bench/bench.json in each folder given; a second folder, with a bench
at another precision, adds its stream) and prints a Markdown table.

    python benchmarks/goals.py gpu-results [gpu-results-tf32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PHOTOS_PER_HOUR = 10_000  # to the reference picture, at 512 px on one H100
PEAK_SHARE = 0.35  # of the bf16 peak, in the batch sweep
LATENCY_S = 11.8  # drop to output on an idle daemon, before the speed work (H100)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def rows(folders: list[Path]) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, met) for what the folders hold."""
    out = []
    for folder in folders:
        bench = _load(folder / "bench" / "bench.json")
        if bench is None:
            continue
        precision = bench["fast_path"]["precision"]
        if "stream" in bench:
            s = bench["stream"]
            met = s["photos_per_hour"] >= PHOTOS_PER_HOUR and s["within_tolerance"] == 1
            out.append((f"photos/h to the reference, a stream at batch {s['batch']} ({precision})",
                        f"≥ {PHOTOS_PER_HOUR:,}, every output within {100 * s['tolerance']:.0f}%",
                        f"{s['photos_per_hour']:,.0f}; {100 * s['within_tolerance']:.0f}% within "
                        f"(worst {s['worst_vs_reference']:.3f})", _yes(met)))
        share = bench["summary"].get("best_fraction_of_peak")
        if share is not None:
            out.append((f"VGG pass, share of the bf16 peak ({precision})", f"≥ {100 * PEAK_SHARE:.0f}%",
                        f"{100 * share:.1f}% at batch {bench['summary']['best_batch']}", _yes(share >= PEAK_SHARE)))
        if "latency" in bench:
            seconds = bench["latency"]["seconds"]
            out.append(("drop to output, idle daemon", f"≤ {LATENCY_S} s", f"{seconds:.1f} s",
                        _yes(seconds <= LATENCY_S)))
    for folder in folders:
        # The eager contenders and the compiled ones run in separate calls, each with its
        # own reference run; the eager file's reference is kept.
        found = [t["time_to_quality"]["contenders"] for t in map(_load, ttq_files(folder)) if t is not None]
        if found:
            names = {c["name"] for c in found[0]}
            out += _peers(found[0] + [c for more in found[1:] for c in more if c["name"] not in names])
    return out


def ttq_files(folder: Path) -> list[Path]:
    return [folder / "ttq.json", folder / "ttq-compiled.json"]


def _peers(contenders: list[dict]) -> list[tuple[str, str, str, str]]:
    """nstd's fastest way to the reference against the tutorial and neural-style-pt."""
    by = {c["name"]: c for c in contenders}
    ours = [c for c in contenders if c["name"].startswith("nstd") and c["reached"]]
    if not ours:
        return [("nstd reaches the reference", "yes", "no contender did", _yes(False))]
    best = min(ours, key=lambda c: c["seconds"])
    out = []
    for peer, least, target in (("tutorial", 5.0, "≥ 5× (the CPU's goal)"), ("neural_style_pt", 1.0, "ahead")):
        p = by.get(peer)
        if p is None:
            continue
        if p["reached"]:
            ratio = p["seconds"] / best["seconds"]
            measured, met = f"{ratio:.1f}× ({best['name']}, {best['seconds']:.1f} s)", ratio >= least
        else:
            measured = (f"{peer} not there after {p['seconds']:.1f} s (best {p['best_vs_reference']:.3f}×); "
                        f"{best['name']} in {best['seconds']:.1f} s")
            met = True
        out.append((f"time to quality against {peer}", target, measured, _yes(met)))
    return out


def _yes(met: bool) -> str:
    return "yes" if met else "no"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+")
    args = ap.parse_args()
    print("| goal | target | measured | met |\n|---|---|---|---|")
    for row in rows(args.folders):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
