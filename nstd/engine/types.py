"""The engine's public types: what a batch is asked to do, and what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # tensors are only annotations here: configs and commands load no torch
    import torch

DEFAULT_STYLE_LAYERS = (("relu1_1", 0.2), ("relu2_1", 0.2), ("relu3_1", 0.2),
                        ("relu4_1", 0.2), ("relu5_1", 0.2))
DEFAULT_CONTENT_LAYERS = ("relu4_2",)
INITS = ("content", "noise", "style")
COLOR_MODES = ("none", "luminance", "histogram")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
HISTORY_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class BatchSettings:
    """What every job of one batch must share: it shapes the model and the loop."""

    iterations: int = 500
    optimizer: str = "lbfgs"
    lr: float | None = None  # None: 1.0 for L-BFGS, 0.02 for Adam
    lbfgs_history: int = 100
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[tuple[str, float], ...] = DEFAULT_STYLE_LAYERS
    pooling: str = "max"
    log_every: int = 50
    snapshot_every: int = 0
    # An image stops once its loss improved by less than this share over the last
    # `stop_window` iterations; `iterations` is then a cap. 0: always run `iterations`.
    stop_tolerance: float = 0.0
    stop_window: int = 50

    @property
    def layers(self) -> frozenset[str]:
        return frozenset(self.content_layers) | {name for name, _ in self.style_layers}

    @property
    def style_names(self) -> list[str]:
        return [name for name, _ in self.style_layers]


@dataclass(frozen=True)
class Switches:
    """How a batch is asked to run on its device (see nstd.engine.switches);
    `switches.resolve` turns "auto" and None into what the device and the batch's memory
    allow."""

    precision: str = "auto"  # auto: bf16 where the device has fast bf16, else fp32
    channels_last: bool | None = None  # None: on for CUDA
    cuda_graph: bool | None = None  # None: on for CUDA where a second copy of the batch fits
    checkpoint: bool | None = None  # None: recompute each VGG block only where the batch won't fit
    memory_budget: float = 0.8  # share of the free device memory a batch may plan on
    # None: on for the CPU, where batching gains little. On, each image runs as a batch of
    # one, interleaved, so its result does not depend on its company (see `switches.resolve`).
    reproducible: bool | None = None
    # torch.compile of each iteration's forward and backward, so the elementwise work
    # between convolutions fuses. None: off; it costs a compile per shape and process.
    compile: bool | None = None
    # How the L-BFGS history is stored: bf16 halves the optimiser's memory and traffic,
    # at a rounding of each stored pair (see BatchedLBFGS).
    history_precision: str = "fp32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.history_precision not in HISTORY_PRECISIONS:
            raise ValueError(f"history_precision must be one of {', '.join(HISTORY_PRECISIONS)}, "
                             f"not {self.history_precision!r}")


@dataclass(frozen=True)
class StyleImage:
    """One style of a job. `key` identifies the image (its file hash) for the Gram cache."""

    image: torch.Tensor  # (3, h, w) RGB in [0, 1]
    key: str | None = None
    weight: float = 1.0
    scale: float = 1.0  # style size relative to the content's long side


@dataclass(frozen=True)
class Region:
    """A part of the photo as a soft mask, and the style it takes there. A region with no
    styles keeps the photo: it has no style loss, and the photo is blended back into it."""

    mask: torch.Tensor  # (h, w) in [0, 1] at any size of the content's aspect
    styles: tuple[StyleImage, ...] = ()
    name: str = ""

    @property
    def keep(self) -> bool:
        return not self.styles


@dataclass(frozen=True)
class TransferJob:
    content: torch.Tensor  # (3, H, W) RGB in [0, 1]
    styles: tuple[StyleImage, ...]
    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 5.0
    init: str = "content"
    seed: int = 0
    preserve_color: str = "none"  # none | luminance | histogram
    init_image: torch.Tensor | None = None  # (3, H, W): start here instead of `init`
    regions: tuple[Region, ...] = ()  # none: `styles` everywhere; else each region its own
    id: int = 0  # the caller's name for it: its result comes back under this (see session.py)
    # (h, w) >= 0 at any size of the content's aspect: the content loss's weight at each
    # pixel, times content_weight; raised where the photo's features must survive (a
    # protected face's eyes and mouth). None: 1 everywhere.
    content_map: torch.Tensor | None = None

    @property
    def styled_regions(self) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if not r.keep)

    @property
    def guided(self) -> bool:
        """Whether the job's losses vary over its pixels: such a job has a batch's slot from
        the start, never a freed one (its terms differ in shape from its neighbours')."""
        return bool(self.regions) or self.content_map is not None


@dataclass(frozen=True)
class RunStats:
    """How one optimisation (one scale of a batch) ran."""

    size: tuple[int, int]
    batch: int
    iterations: int
    seconds: float
    precision: str
    channels_last: bool
    cuda_graph: bool
    checkpoint: bool
    reproducible: bool = False  # each image ran alone, interleaved
    compiled: bool = False  # the forward and backward ran through torch.compile
    history_precision: str = "fp32"  # how the L-BFGS history was stored
    peak_bytes: int | None = None  # CUDA: allocated beyond what was held before
    peak_reserved_bytes: int | None = None
    slot: int = 0  # the image's place in the batch
    tiles: dict | None = None  # a tiled scale: largest side, window, halo, tiles, at once, state

    def as_dict(self) -> dict:
        """The loss log's `runs` entry."""
        out = {"size": list(self.size), "batch": self.batch, "iterations": self.iterations,
               "seconds": self.seconds, "precision": self.precision, "channels_last": self.channels_last,
               "cuda_graph": self.cuda_graph, "checkpoint": self.checkpoint, "reproducible": self.reproducible,
               "compiled": self.compiled, "history_precision": self.history_precision,
               "peak_bytes": self.peak_bytes}
        if self.peak_reserved_bytes is not None:
            out["peak_reserved_bytes"] = self.peak_reserved_bytes
        if self.tiles is not None:
            out["tiles"] = self.tiles
        return out


@dataclass
class TransferResult:
    image: torch.Tensor  # (3, H, W) on the CPU, clamped to [0, 1]
    history: list[dict]
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    runs: list[RunStats] = field(default_factory=list)  # one per scale


# Called after each iteration with the iterations done so far and, at logged
# iterations (one interval late on CUDA), one loss record per image.
Progress = Callable[[int, "list[dict] | None"], None]
