"""How much memory a batch needs, counted from VGG19's layer shapes, and the FLOPs it costs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable

import torch

from nstd.engine.layers import LAYER_INDEX, LAYER_NAMES, LAYERS
from nstd.engine.resize import padded_size
from nstd.engine.switches import Switches, resolve
from nstd.engine.types import BatchSettings, RunStats, TransferJob


def _layer_shapes(h: int, w: int, last: int):
    """(kind, channels_in, channels_out, out_h, out_w) for each layer up to index `last`."""
    out = []
    for layer in LAYERS[: last + 1]:
        shrink = layer.scale * (2 if layer.kind == "pool" else 1)
        out.append((layer.kind, layer.channels_in, layer.channels_out, h // shrink, w // shrink))
    return out


def activation_elements(h: int, w: int, layers: frozenset[str], checkpoint: bool = False) -> int:
    """Elements kept for the backward pass of one image (in-place ReLUs share storage).

    With checkpointing only each block's input, the captured layers and, while its
    backward runs, one block's activations are held at once.
    """
    last = max(LAYER_INDEX[n] for n in layers)
    shapes = _layer_shapes(h, w, last)
    sizes = []
    for kind, _, cout, oh, ow in shapes:
        if kind == "conv":
            sizes.append(cout * oh * ow)
        elif kind == "pool":
            sizes.append(3 * cout * oh * ow)  # output, plus max-pool's int64 indices
        else:
            sizes.append(0)
    if not checkpoint:
        return 3 * h * w + sum(sizes)
    blocks, current = [], 0
    kept = 3 * h * w
    for (kind, _, cout, oh, ow), size, name in zip(shapes, sizes, LAYER_NAMES):
        current += size
        if name in layers:
            kept += cout * oh * ow
        if kind == "pool":
            kept += cout * oh * ow
            blocks.append(current)
            current = 0
    blocks.append(current)
    return kept + max(blocks)


# Bytes per activation element, forward kept plus backward transients, by precision and
# checkpointing. fp32 counts each element twice. bf16 is calibrated from measured peaks
# (docs/performance.md): its fp32 Gram and loss copies keep it above 2x2 without
# checkpointing.
ACTIVATION_BYTES = {("fp32", False): 8, ("fp32", True): 8, ("tf32", False): 8, ("tf32", True): 8,
                    ("bf16", False): 5, ("bf16", True): 3}


# A Footprint's optimizer for a tile's pass (engine/tiles.py): its pixels' optimiser state
# lives with the whole photo, counted apart (photo_state_bytes).
TILE = "none (a tile)"


@dataclass(frozen=True)
class Footprint:
    """What a batch's memory depends on besides its images' size and count."""

    layers: frozenset[str]
    optimizer: str = "lbfgs"  # or TILE
    lbfgs_history: int = 100
    precision: str = "fp32"
    checkpoint: bool = False
    history_precision: str = "fp32"
    regions: int = 0  # styled regions of a masked batch; 0: the plain style loss

    @classmethod
    def of(cls, settings: BatchSettings, lbfgs_history: int, switches: Switches, precision: str,
           regions: int = 0) -> "Footprint":
        return cls(settings.layers, settings.optimizer, lbfgs_history, precision, False,
                   switches.history_precision, regions)


def regions_of(jobs: list[TransferJob]) -> int:
    """A batch's styled regions as its guided style loss lays them out; 0 where no job has
    a mask, and the plain style loss runs."""
    if not any(j.regions for j in jobs):
        return 0
    return max(max(len(j.styled_regions), 1) for j in jobs)


def bytes_per_image(h: int, w: int, fp: Footprint) -> int:
    """A conservative estimate of one image's peak: its activations, the optimiser's
    state, the image, its gradient and targets, and a masked batch's region products."""
    pixels = 3 * h * w
    act = activation_elements(h, w, fp.layers, fp.checkpoint) * ACTIVATION_BYTES[fp.precision, fp.checkpoint]
    if fp.optimizer == "lbfgs":
        history = 2 if fp.history_precision == "bf16" else 4
        state = (2 * fp.lbfgs_history * history + 4 * 4) * pixels
    elif fp.optimizer == TILE:
        # No optimiser state; but the whole objective's gradient at every captured layer is
        # held for the window's backward pass, in the activations' dtype.
        state = captured_elements(h, w, fp.layers) * (2 if fp.precision == "bf16" else 4)
    else:
        state = 4 * pixels * 4
    return int(act + state + 8 * pixels * 4 + _region_bytes(h, w, fp))


def captured_elements(h: int, w: int, layers: frozenset[str]) -> int:
    """Elements of one image's activations at the captured layers."""
    shapes = _layer_shapes(h, w, max(LAYER_INDEX[n] for n in layers))
    return sum(cout * oh * ow for (_, _, cout, oh, ow), name in zip(shapes, LAYER_NAMES) if name in layers)


def forward_bytes(h: int, w: int, fp: Footprint) -> int:
    """A conservative estimate of one image's peak in a pass without a gradient (a tiled
    photo's reads, engine/tiles.py): the captured layers it hands back, the widest layer's
    input and output at once, an fp32 copy of a layer for its Gram, and a masked photo's
    products."""
    shapes = _layer_shapes(h, w, max(LAYER_INDEX[n] for n in fp.layers))
    passing = max((cin + cout) * oh * ow if kind == "conv" else 5 * cout * oh * ow if kind == "pool" else 0
                  for kind, cin, cout, oh, ow in shapes)
    widest = max(cout * oh * ow for (_, _, cout, oh, ow), name in zip(shapes, LAYER_NAMES) if name in fp.layers)
    size = 2 if fp.precision == "bf16" else 4
    return int((3 * h * w + passing + captured_elements(h, w, fp.layers)) * size + 4 * widest
               + _region_bytes(h, w, fp))


def read_scale(fp: Footprint) -> float:
    """How many times the pixels of a tile's pass (with its gradient) a pass without one
    holds in the same memory, by the estimates (the ratio hardly moves with the size)."""
    side = 512
    return bytes_per_image(side, side, replace(fp, optimizer=TILE)) / forward_bytes(side, side, fp)


def photo_state_bytes(h: int, w: int, fp: Footprint, content_layers: tuple[str, ...]) -> int:
    """What a tiled photo keeps whole between its tiles' passes (engine/tiles.py): the
    image and its gradient, the optimiser's state and its step's working copies, the
    photo's activations at the content layers, and a masked photo's guides."""
    pixels = 3 * h * w
    if fp.optimizer == "lbfgs":
        state = (2 * fp.lbfgs_history * (2 if fp.history_precision == "bf16" else 4) + 8 * 4) * pixels
    else:
        state = 4 * pixels * 4
    content = captured_elements(h, w, frozenset(content_layers)) * 4
    return int(state + 2 * pixels * 4 + content + 4 * fp.regions * h * w)


def _region_bytes(h: int, w: int, fp: Footprint) -> int:
    """A masked batch's extra: at each captured layer, the fp32 activations and one
    weighted copy per region are kept for the backward pass (engine/guides.guided_gram),
    and about one more copy's gradient passes at a time; plus each region's pooled guide.
    Checked against peak RSS on the CPU with one and three regions (benchmarks/RESULTS.md)."""
    if not fp.regions:
        return 0
    shapes = _layer_shapes(h, w, max(LAYER_INDEX[n] for n in fp.layers))
    captured = [(cout, oh, ow) for (_, _, cout, oh, ow), name in zip(shapes, LAYER_NAMES) if name in fp.layers]
    return sum(4 * oh * ow * (cout * (fp.regions + 2) + fp.regions) for cout, oh, ow in captured)


# cuDNN's workspace and the allocator's rounding: once per batch, whatever its size (the
# measured excess over the estimate is in docs/performance.md).
WORKSPACE_BYTES = 256 << 20


def batch_bytes(n: int, h: int, w: int, fp: Footprint) -> int:
    """The estimated peak of a batch of `n` images of h x w."""
    return n * bytes_per_image(h, w, fp) + WORKSPACE_BYTES


def least_bytes(h: int, w: int, fp: Footprint) -> int:
    """The least one image of h x w can ever run in: bf16 with checkpointing, alone."""
    return batch_bytes(1, h, w, replace(fp, precision="bf16", checkpoint=True))


def auto_batch(free_bytes: int, h: int, w: int, fp: Footprint, budget: float = 0.8, cap: int = 64,
               measured: MeasuredMemory | None = None) -> int:
    """Images of this size that fit in `budget` of the free memory: by the peak measured on
    earlier batches of the same footprint when there is one, else by the estimate."""
    per = measured.bytes_per_image(fp, h, w) if measured is not None else None
    usable = free_bytes * budget
    if per is None:
        per = bytes_per_image(h, w, fp)
        usable -= WORKSPACE_BYTES  # a measured peak has it already
    return max(1, min(cap, int(usable // per)))


class MeasuredMemory:
    """Peak device memory per pixel, learned from finished batches, per kind of batch.

    Memory grows linearly with pixels (4.3 KB per pixel from 256 to 1024 px on an H100,
    benchmarks/RESULTS.md), so one batch of a kind sizes the next at any size. The
    largest figure seen is kept, with a margin for allocator and workspace variation.
    """

    MARGIN = 1.15

    def __init__(self):
        self._per_pixel: dict[Footprint, float] = {}

    def record(self, key: Footprint, peak_bytes: int, batch: int, h: int, w: int) -> None:
        per_pixel = peak_bytes / (batch * h * w)
        self._per_pixel[key] = max(self._per_pixel.get(key, 0.0), per_pixel)

    def bytes_per_image(self, key: Footprint, h: int, w: int) -> int | None:
        if key not in self._per_pixel:
            return None
        return int(self._per_pixel[key] * h * w * self.MARGIN)


def flops_per_iteration(h: int, w: int, layers: frozenset[str]) -> int:
    """Multiply-adds x2 of the convolutions, forward plus the backward pass to the input."""
    last = max(LAYER_INDEX[n] for n in layers)
    fwd = 0
    for kind, cin, cout, oh, ow in _layer_shapes(h, w, last):
        if kind == "conv":
            fwd += 2 * 9 * cin * cout * oh * ow
    # The backward pass to the input costs one more convolution per layer (no weight grads).
    return 2 * fwd


class OomStep(Enum):
    """The next try after a batch ran out of memory."""

    SPLIT = "split"  # run it in halves
    CHECKPOINT = "checkpoint"  # a lone image, with activations recomputed
    SHRINK = "shrink"  # a lone image planned for half the memory: it tiles, or tiles smaller
    GIVE_UP = "give up"


SHRINKS = 3  # halvings of the memory a lone image is planned for before it is refused


class MemoryPlanner:
    """How much a device can take: batch sizes from estimates and measured peaks, the free
    figure the engine's auto switches see, and the next try after an out-of-memory error.

    `probe` reports the device's free bytes (None where it cannot say); the planner is
    the only reader, so tests and callers decide what the engine sees.
    """

    def __init__(self, device: torch.device, switches: Switches, probe: Callable[[], int | None],
                 cap: int | None = None, limit: int | None = None):
        self.device, self.switches, self.probe = device, switches, probe
        self.limit = limit  # worker.max_memory: the most the engine may plan for, whatever is free
        self.precision = resolve(switches, device).precision
        self.cap = cap if cap is not None else (16 if device.type == "cpu" else 64)
        self.measured = MeasuredMemory()

    def free(self) -> int | None:
        """The bytes a batch may plan on: what the device has free, within the limit."""
        free = self.probe()
        if self.limit is None:
            return free
        return self.limit if free is None else min(free, self.limit)

    def max_batch(self, h: int, w: int, settings: BatchSettings, finest_history: int, regions: int = 0) -> int:
        """Images of h x w that fit at once; `finest_history` is the L-BFGS history of the
        largest scale, the one that sets the peak; `regions`, a masked photo's styled regions."""
        free = self.free()
        return auto_batch(2 << 30 if free is None else free, h, w, self._footprint(settings, finest_history, regions),
                          self.switches.memory_budget, self.cap, self.measured)

    def observe(self, settings: BatchSettings, finest_history: int, runs: list[RunStats], regions: int = 0) -> None:
        """Learn a finished batch's peak per pixel at its finest scale."""
        peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
        if peaks:
            finest = runs[-1]
            fp = replace(self._footprint(settings, finest_history, regions), checkpoint=finest.checkpoint)
            count, h, w, peak = finest.batch, *finest.size, max(peaks)
            if finest.tiles:
                # A tiled scale's peak is its tiles' passes', which hold no optimiser state:
                # per pixel of a tile, as a tile's kind. Where the photo's own state stayed
                # on the device it is in the peak too, and the plan reserves it apart.
                if finest.tiles.get("state") == "device":
                    peak -= photo_state_bytes(*padded_size(h, w), fp, settings.content_layers)
                fp = replace(fp, optimizer=TILE)
                count, h, w = finest.tiles["at_once"], *finest.tiles["window"]
            self.measured.record(fp, max(peak, 1), count, h, w)

    def after_oom(self, batch: int, checkpoint: bool | None, shrunk: int = 0) -> OomStep:
        """Halve a batch; checkpoint a lone image where auto had decided against it; plan
        a lone image for half the memory (`shrunk` times so far), so that the estimate's
        error is taken by smaller tiles; else give up."""
        if batch > 1:
            return OomStep.SPLIT
        if checkpoint is None and self.switches.checkpoint is None:
            return OomStep.CHECKPOINT
        if shrunk < SHRINKS and self.free() is not None:
            return OomStep.SHRINK
        return OomStep.GIVE_UP

    def _footprint(self, settings: BatchSettings, history: int, regions: int) -> Footprint:
        return Footprint.of(settings, history, self.switches, self.precision, regions)
