"""Choosing a torch device by name, and how much memory it has free."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit name must be usable."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not one nstd runs on; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available")
    return dev


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def resolve_devices(name: str = "auto") -> list[torch.device]:
    """The devices to run workers on: every CUDA GPU for 'auto' or 'cuda', else one device."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [resolve_device(name)]


def free_memory(device: torch.device) -> int | None:
    """Bytes a new allocation could still get, or None where the device does not say.

    On CUDA this counts the allocator's cached but unused blocks as free: they are
    handed out again before the driver is asked for more.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return _available_ram()
    return None


def total_memory(device: torch.device) -> int | None:
    """The device's whole memory in bytes (the machine's RAM for the CPU), or None."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return None


def _available_ram() -> int | None:
    # MemAvailable counts the page cache the kernel would give up; free pages alone
    # would be a fraction of it on any machine that has read a few photos.
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def is_oom(e: BaseException) -> bool:
    """Whether an error is the device running out of memory (MPS and CPU say so in words)."""
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def release_cache(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so a retry starts clean."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


class PeakMemory:
    """The most device memory a run allocated beyond what was held when it began (CUDA only)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)

    def read(self) -> dict:
        if not self.cuda:
            return {"peak_bytes": None}
        return {"peak_bytes": torch.cuda.max_memory_allocated(self.device) - self.base,
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device)}
