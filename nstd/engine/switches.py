"""How a batch runs on its device: precision, memory layout, graphs and checkpointing.

None of these change what is computed, only how fast and in how much memory. Gram
matrices and losses are always fp32: the switches reach the convolutions alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from nstd.engine.types import Switches


@dataclass(frozen=True)
class Resolved:
    device: torch.device
    precision: str
    channels_last: bool
    cuda_graph: bool
    checkpoint: bool
    reproducible: bool = False
    compile: bool = False
    history_precision: str = "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    @property
    def history_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.history_precision == "bf16" else torch.float32

    def describe(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last,
                "cuda_graph": self.cuda_graph, "checkpoint": self.checkpoint, "reproducible": self.reproducible,
                "compiled": self.compile, "history_precision": self.history_precision}


def resolve(switches: Switches | None, device: torch.device, need: Callable[[str, bool], int] | None = None,
            free: int | None = None) -> Resolved:
    """The switches for one batch. `need(precision, checkpoint)` estimates the batch's bytes
    and `free` is what the device has; without either, memory decides nothing."""
    switches = switches or Switches()
    cuda = device.type == "cuda"
    precision = switches.precision
    if precision == "auto":
        precision = "bf16" if _fast_bf16(device) else "fp32"
    if precision == "tf32" and not cuda:
        precision = "fp32"  # TF32 is a CUDA tensor-core mode; the CPU computes fp32 anyway

    def fits(bytes_: int) -> bool:
        return free is None or bytes_ <= free * switches.memory_budget

    checkpoint = switches.checkpoint
    if checkpoint is None:
        checkpoint = need is not None and not fits(need(precision, False))
    channels_last = cuda if switches.channels_last is None else switches.channels_last
    graph = switches.cuda_graph
    if graph is None:
        # A captured graph keeps its own memory pool beside the allocator's cache, which
        # may hold the warm-up's blocks: plan for two copies. Large batches gain little
        # from it anyway; the launch overhead it removes is fixed per iteration.
        graph = need is None or fits(2 * need(precision, checkpoint))
    # A graph needs fixed addresses, which checkpointing's recomputation does not promise.
    graph = graph and cuda and not checkpoint
    # Style transfer's optimisation amplifies rounding: a 1e-6 change to the start ends
    # at 24 dB PSNR after 300 iterations. Batched convolutions round differently from
    # single ones, so only running each image alone makes its result its own.
    reproducible = not cuda if switches.reproducible is None else switches.reproducible
    # Recomputed activations would be traced twice over; checkpointed batches run eagerly.
    compiled = bool(switches.compile) and not checkpoint
    return Resolved(device, precision, channels_last, graph, checkpoint, reproducible, compiled,
                    switches.history_precision)


def _fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False) and \
            torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        # oneDNN runs bf16 convolutions natively only with AVX512-BF16 or AMX.
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


@contextlib.contextmanager
def running(r: Resolved):
    """Scoped backend flags for one batch: cuDNN autotuning, and TF32 only when asked.
    The flags are the process's, so a process runs one device's batches (isolation_for).

    In bf16 mode the Gram products also run on TF32 tensor cores: their inputs are bf16
    activations, which TF32 holds exactly, and they still accumulate and store in fp32.
    In full fp32 they are the single largest cost after the convolutions.
    """
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = r.precision in ("tf32", "bf16")
    # Autotuning may pick another algorithm next run; reproducible runs take the fixed choice.
    tune = r.device.type == "cuda" and not r.reproducible
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=tune, deterministic=r.reproducible,
                                        allow_tf32=r.precision == "tf32"):
            yield
    finally:
        matmul.allow_tf32 = before


@contextlib.contextmanager
def exact_matmul():
    """Full fp32 products, for the optimiser's dot products of fp32 state."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = before


def autocast(r: Resolved):
    """bf16 autocast for the convolutions; a no-op context at fp32 and TF32."""
    if r.autocast_dtype is None:
        return contextlib.nullcontext()
    # No weight cache: a CUDA graph must not capture casts it will not redo.
    return torch.autocast(r.device.type, dtype=r.autocast_dtype, cache_enabled=False)
