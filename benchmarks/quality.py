"""Image quality against neural-style-pt at equal work, scored by one independent evaluator.

    pip install --no-deps neural-style==0.5.7      # the peer, into the same environment
    python benchmarks/quality.py --images ../shared/images --out quality/   # 256 px, 300 iterations

Both tools get the same photo and painting, pre-sized identically (LANCZOS, long side
--size), the same original Caffe VGG19 weights (nstd's, converted to the peer's layout
here), neural-style-pt's defaults (content weight 5, style weight 100, TV 0, start from
the photo, L-BFGS) and the same number of evaluations (one forward and backward pass
each). nstd's per-layer normalisation is undone by its weights, so both minimise the same
objective. Every saved image is then scored by `Evaluator`, which builds its own Caffe
preprocessing (RGB to BGR, 0-255, minus the ImageNet mean) and shares no code with
nstd's engine. Writes quality.json, quality.md and a contact sheet PNG.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from nstd.bench.peer import convert_weights

PAIRS = (("tubingen.jpg", "starry_night.jpg"), ("golden_gate.jpg", "the_scream.jpg"),
         ("tubingen.jpg", "shipwreck.jpg"))
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PEER = {"content_weight": 5.0, "style_weight": 100.0}

# VGG19's conv layers in order, with the ReLU names after each (and the pools between).
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


def _relu_names() -> list[str | None]:
    """For each module of the feature stack, the relu name it ends, or None."""
    names, block, conv = [], 1, 0
    for v in _VGG19:
        if v == "M":
            names.append(None)
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [None, f"relu{block}_{conv}"]
    return names


class Evaluator:
    """Caffe VGG19 features of saved images, by its own preprocessing: the judge."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        layers, cin = [], 3
        for v in _VGG19:
            if v == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU()]
                cin = v
        self.net = torch.nn.Sequential(*layers).eval()
        convs = [m for m in self.net if isinstance(m, torch.nn.Conv2d)]
        weights = sorted((k for k in state_dict if k.endswith("weight")), key=lambda k: int(k.split(".")[-2]))
        for conv, key in zip(convs, weights):
            conv.weight.data.copy_(state_dict[key])
            conv.bias.data.copy_(state_dict[key.replace("weight", "bias")])
        self.names = _relu_names()

    @torch.no_grad()
    def features(self, path: Path) -> dict[str, torch.Tensor]:
        im = Image.open(path).convert("RGB")
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(im.height, im.width, 3)
        x = x.permute(2, 0, 1).float()  # 0-255 RGB
        bgr = x[[2, 1, 0]] - torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)
        out, y = {}, bgr.unsqueeze(0)
        for module, name in zip(self.net, self.names):
            y = module(y)
            if name in (CONTENT_LAYER, *STYLE_LAYERS):
                out[name] = y
        return out


def gram(f: torch.Tensor) -> torch.Tensor:
    """The peer's Gram: F F^T over all C*H*W elements."""
    _, c, h, w = f.shape
    flat = f.reshape(c, h * w)
    return flat @ flat.T / (c * h * w)


def score(ev: Evaluator, image: Path, photo: dict, painting: dict) -> dict:
    """The objective both tools minimise, evaluated on what the user receives."""
    f = ev.features(image)
    content = torch.mean((f[CONTENT_LAYER] - photo[CONTENT_LAYER]) ** 2).item()
    style = sum(torch.mean((gram(f[n]) - gram(painting[n])) ** 2).item() for n in STYLE_LAYERS)
    return {"content": content, "style": style,
            "objective": PEER["content_weight"] * content + PEER["style_weight"] * style}


def matched_layers(photo: dict, painting: dict, scale: float) -> tuple[float, tuple[tuple[str, float], ...]]:
    """nstd's content weight and per-layer style weights (style_weight 1) that make its
    normalised objective `scale` times the peer's: nstd divides each layer by its target's
    mean square and its Grams by H*W only, the peer's by C*H*W. A constant factor moves no
    minimum; `scale` keeps nstd's objective near 1, where its weights normally put it."""
    c_norm = torch.mean(photo[CONTENT_LAYER] ** 2).item()
    layers = []
    for n in STYLE_LAYERS:
        f = painting[n]
        _, c, h, w = f.shape
        flat = f.reshape(c, h * w)
        g = flat @ flat.T / (h * w)
        layers.append((n, scale * PEER["style_weight"] * torch.mean(g ** 2).item() / c ** 2))
    return scale * PEER["content_weight"] * c_norm, tuple(layers)


def presize(src: Path, dst: Path, size: int) -> Path:
    im = Image.open(src).convert("RGB")
    scale = size / max(im.size)
    im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS).save(dst)
    return dst


@dataclass
class Run:
    image: Path
    seconds: float
    history: list[float]  # total objective per evaluation, in the tool's own terms


def run_peer(photo: Path, painting: Path, model: Path, out: Path, size: int, iterations: int) -> Run:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "neural_style.neural_style", "-content_image", str(photo), "-style_image", str(painting),
         "-image_size", str(size), "-gpu", "c", "-model_file", str(model), "-disable_check", "-backend", "nn",
         "-content_weight", str(PEER["content_weight"]), "-style_weight", str(PEER["style_weight"]),
         "-tv_weight", "0", "-init", "image", "-num_iterations", str(iterations), "-print_iter", "1",
         "-save_iter", "0", "-seed", "0", "-output_image", str(out)],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"neural-style failed: {done.stderr[-2000:]}")
    totals = [float(v) for v in re.findall(r"Total loss: ([0-9.eE+-]+)", done.stdout)]
    return Run(out, time.perf_counter() - t0, totals)


def run_nstd(photo: Path, painting: Path, models_dir: Path, outdir: Path, size: int, iterations: int,
             content_weight: float, style_layers) -> Run:
    from nstd import stylize
    from nstd.params import TransferParams

    params = TransferParams(size=size, iterations=iterations, content_weight=content_weight, style_weight=1.0,
                            tv_weight=0.0, init="content", optimizer="lbfgs", model="caffe",
                            style_layers=style_layers, log_every=1)
    req = stylize.Request(contents=[photo], styles=[painting], outdir=outdir, params=params, fmt="PNG",
                          models_dir=models_dir, device="cpu")
    t0 = time.perf_counter()
    failures = stylize.run(req, on_error=print)
    seconds = time.perf_counter() - t0
    if failures:
        raise RuntimeError("nstd failed")
    [log] = list(outdir.glob("*.json"))
    entry = json.loads(log.read_text())
    [image] = [p for p in outdir.glob("*.png") if p.stem == log.stem]
    return Run(image, seconds, [h["total"] for h in entry["history"]])


def reached(history: list[float], target: float) -> int | None:
    """The first evaluation at or below `target`, counting from 1."""
    for i, v in enumerate(history, 1):
        if v <= target:
            return i
    return None


def contact_sheet(rows: list[tuple[Path, Path, Path, Path, str]], dst: Path, cell: int = 256) -> None:
    sheet = Image.new("RGB", (4 * cell, len(rows) * (cell + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (photo, painting, ours, peer, label) in enumerate(rows):
        y = r * (cell + 18)
        for c, path in enumerate((photo, painting, ours, peer)):
            im = Image.open(path).convert("RGB")
            im.thumbnail((cell, cell))
            sheet.paste(im, (c * cell, y + 18))
        draw.text((4, y + 3), label, fill="black")
    sheet.save(dst)


def main() -> int:
    from nstd import weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=Path("../shared/images"))
    ap.add_argument("--out", type=Path, default=Path("quality"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=len(PAIRS))
    ap.add_argument("--models-dir", type=Path, default=weights.default_models_dir())
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sd, _ = weights.load(args.models_dir, "caffe")
    ev = Evaluator(sd)
    model = convert_weights(sd, args.out / "vgg19-caffe-from-nstd.pth")
    results, sheet = [], []
    for photo_name, painting_name in PAIRS[: args.pairs]:
        tag = f"{Path(photo_name).stem}-{Path(painting_name).stem}"
        photo = presize(args.images / photo_name, args.out / f"{tag}.photo.png", args.size)
        painting = presize(args.images / painting_name, args.out / f"{tag}.painting.png", args.size)
        pf, sf = ev.features(photo), ev.features(painting)
        scale = 1.0 / score(ev, photo, pf, sf)["objective"]  # the peer's objective at its start, the photo
        cw, layers = matched_layers(pf, sf, scale)
        peer = run_peer(photo, painting, model, args.out / f"{tag}.peer.png", args.size, args.iterations)
        ours = run_nstd(photo, painting, args.models_dir, args.out / f"{tag}.nstd", args.size, args.iterations, cw,
                        layers)
        ours.history = [v / scale for v in ours.history]  # in the peer's terms
        s_ours, s_peer = score(ev, ours.image, pf, sf), score(ev, peer.image, pf, sf)
        results.append({
            "pair": tag, "size": args.size, "iterations": args.iterations,
            "nstd": s_ours | {"internal_final": ours.history[-1], "evaluations": len(ours.history),
                              "seconds": round(ours.seconds, 1)},
            "peer": s_peer | {"internal_final": peer.history[-1] if peer.history else None,
                              "evaluations": len(peer.history), "seconds": round(peer.seconds, 1)},
            "ratio_saved": s_ours["objective"] / s_peer["objective"],
            "nstd_evaluations_to_peer_internal_final":
                reached(ours.history, peer.history[-1]) if peer.history else None,
        })
        sheet.append((photo, painting, ours.image, peer.image,
                      f"{tag} (photo, painting, nstd, neural-style-pt): evaluated objective "
                      f"nstd {s_ours['objective']:.4g}, neural-style-pt {s_peer['objective']:.4g}"))
        print(json.dumps(results[-1]), flush=True)
    (args.out / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    contact_sheet(sheet, args.out / "contact_sheet.png")
    (args.out / "quality.md").write_text(table(results))
    print(table(results))
    return 0


def table(results: list[dict]) -> str:
    lines = ["| pair | nstd (saved) | neural-style-pt (saved) | ratio | nstd internal | peer internal | "
             "nstd evals to peer's final | s nstd | s peer |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ours, peer = r["nstd"], r["peer"]
        lines.append(f"| {r['pair']} | {ours['objective']:.5g} | {peer['objective']:.5g} | "
                     f"{r['ratio_saved']:.3f} | {ours['internal_final']:.5g} | {peer['internal_final']:.5g} | "
                     f"{r['nstd_evaluations_to_peer_internal_final']} | {ours['seconds']} | {peer['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
