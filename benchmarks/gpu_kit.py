"""Take the GPU benchmarks to a host with no network: pack here, unpack there.

A GPU box that can reach nothing has PyTorch but not nstd's smaller dependencies, the
peer, the Caffe weights or the pictures. `pack` puts them in one folder; copy the folder
and the checkout there, then run `benchmarks/gpu_campaign.sh`, which unpacks it.

    python benchmarks/gpu_kit.py pack --images ../shared/images --out .gpukit
    python benchmarks/gpu_kit.py unpack --kit .gpukit --models-dir /tmp/nstd-models

The weights travel up to conv5_1 only: nstd's objective and the peer's default layers end
at relu5_1, and both build the network no further, so the three convolutions after it
(35% of the file) are never read. `unpack` stores them back as zeros, under the id
`caffe` (its record names the cut file as its source, and `unpack` prints the
original's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from nstd import weights
from nstd.engine.layers import LAYER_INDEX, weight_shapes

# The wheels a PyTorch image lacks: nstd's own small dependencies and the peer.
WHEELS = ("watchdog>=4.0", "structlog>=24.1", "neural-style==0.5.7")
# The target host's interpreter, as pip names its wheels.
PYTHON_VERSION, PLATFORMS = "3.12", ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# The photos and paintings the staged benchmarks are written for.
PICTURES = ("tubingen", "golden_gate", "starry_night", "the_scream", "shipwreck")
LAST_CONV = "conv5_1"
WEIGHTS_NAME = f"caffe-to-{LAST_CONV}.pth"


def kept(key: str) -> bool:
    """A `features.N.*` weight of a layer at or before the last one the objectives read."""
    return int(key.split(".")[0]) <= LAYER_INDEX[LAST_CONV]


def pack(images: Path, out: Path, models_dir: Path) -> None:
    missing = [f"{name}.jpg" for name in PICTURES if not (images / f"{name}.jpg").is_file()]
    if missing:
        sys.exit(f"{images}: the benchmarks need {', '.join(missing)} there")
    (out / "wheels").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms,
                    "-d", str(out / "wheels"), *WHEELS], check=True)
    for name in PICTURES:
        shutil.copyfile(images / f"{name}.jpg", out / "images" / f"{name}.jpg")
    manifest = pack_weights(models_dir, out) | {
        "wheels": sorted(p.name for p in (out / "wheels").glob("*.whl")),
        "images": sorted(p.name for p in (out / "images").glob("*.jpg"))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed {out}: {size / 2**20:.1f} MiB")


def pack_weights(models_dir: Path, out: Path) -> dict:
    """The stored Caffe weights up to LAST_CONV in `out`; their manifest entries."""
    sd, info = weights.load(models_dir, "caffe")
    torch.save({k: v for k, v in sd.items() if kept(k)}, out / WEIGHTS_NAME)
    return {"weights": WEIGHTS_NAME, "last_conv": LAST_CONV, "source": info.source,
            "source_sha256": info.source_sha256, "full_file_sha256": info.file_sha256}


def unpack(kit: Path, models_dir: Path) -> None:
    manifest = json.loads((kit / "manifest.json").read_text())
    part = torch.load(kit / manifest["weights"], map_location="cpu", weights_only=True)
    full = {k: part[k] if kept(k) else torch.zeros(shape) for k, shape in weight_shapes().items()}
    staged = models_dir / manifest["weights"]  # the name the stored record gives as its source
    models_dir.mkdir(parents=True, exist_ok=True)
    torch.save(full, staged)
    try:
        info = weights.import_file(models_dir, staged, "caffe", "caffe")
    finally:
        staged.unlink()
    print(f"weights 'caffe' in {models_dir} from {manifest['source']} (to {manifest['last_conv']}; "
          f"sha256 of the full file {manifest['full_file_sha256'][:12]}…, of this one {info.file_sha256[:12]}…)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--images", type=Path, required=True, help="a folder of " + ", ".join(f"{n}.jpg" for n in PICTURES))
    p.add_argument("--out", type=Path, default=Path(".gpukit"))
    p.add_argument("--models-dir", type=Path, default=weights.default_models_dir())
    u = sub.add_parser("unpack")
    u.add_argument("--kit", type=Path, default=Path(".gpukit"))
    u.add_argument("--models-dir", type=Path, required=True)
    args = ap.parse_args()
    if args.verb == "pack":
        pack(args.images, args.out, args.models_dir)
    else:
        unpack(args.kit, args.models_dir)


if __name__ == "__main__":
    main()
