"""How a worker runs, apart from what it runs: a thread beside the supervisor, or a process
of its own for each GPU, so that a CUDA fault or a backend flag stays inside one device.

The supervisor sees the same handle either way: start, alive, stop, join, reload, and
`owner`, the name its journal claims carry, so a dead worker's jobs can be handed back.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from nstd.daemon.runtime import Runtime
from nstd.daemon.lease import owner_id
from nstd.daemon.worker import Worker
from nstd.errors import ConfigError, NstdError
from nstd.fsutil import clear_own_litter
from nstd.log import get

log = get("nstd.workers")
ISOLATIONS = ("auto", "thread", "process")


def isolation_for(setting: str, devices: int) -> str:
    """auto: a process per device where there are several, else a thread."""
    if setting == "thread" and devices > 1:
        # Each batch sets TF32 and cuDNN's flags for its precision, and those are the
        # process's: one device's optimiser step would run under another's settings.
        raise ConfigError(f"worker.isolation: thread would run {devices} devices' batches in one process, "
                          "where PyTorch's precision and cuDNN settings are shared; use process or auto")
    if setting != "auto":
        return setting
    return "process" if devices > 1 else "thread"


class ThreadWorker:
    def __init__(self, runtime: Callable[[], Runtime], load_weights, device: torch.device):
        self.device, self.host = device, runtime().cfg.host
        self._stop = threading.Event()
        self.worker = Worker(runtime().cfg, lambda: runtime().styles, load_weights, device, self._stop)

    @property
    def owner(self) -> str:
        return owner_id(self.host, self.device)

    @property
    def error(self) -> str | None:
        return None if self.worker.error is None else repr(self.worker.error)

    def start(self) -> None:
        self.worker.start()

    def alive(self) -> bool:
        return self.worker.is_alive()

    def stop(self, deadline: float) -> None:
        self.worker.deadline = deadline
        self._stop.set()

    def join(self, timeout: float) -> None:
        self.worker.join(timeout)

    def reload(self) -> None:
        pass  # it reads the supervisor's runtime on each batch


class ProcessWorker:
    """A worker in a child process (spawned, not forked: CUDA and threads do not survive
    a fork). It opens its own journal and weights, and reloads when told to."""

    def __init__(self, config_path: Path, host: str, device: torch.device):
        self.device, self.host = device, host
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._deadline = ctx.Value("d", 0.0)  # 0: none yet
        self._generation = ctx.Value("i", 0)  # bumped by each reload
        self._proc = ctx.Process(target=_child_main, name=f"nstd-worker-{device}",
                                 args=(str(config_path), str(device), self._stop, self._deadline,
                                       self._generation))

    @property
    def owner(self) -> str:
        return owner_id(self.host, self.device, self._proc.pid)

    @property
    def error(self) -> str | None:
        code = self._proc.exitcode
        return None if code in (None, 0) else f"worker process exited with {code}"

    def start(self) -> None:
        self._proc.start()
        log.info("worker_started", device=str(self.device), pid=self._proc.pid)

    def alive(self) -> bool:
        return self._proc.is_alive()

    def stop(self, deadline: float) -> None:
        self._deadline.value = deadline
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._proc.join(timeout)
        if self._proc.is_alive():  # past its deadline and grace: the journal hands its jobs back
            self._proc.kill()
            self._proc.join(5)

    def reload(self) -> None:
        with self._generation.get_lock():
            self._generation.value += 1


def _child_main(config_path: str, device: str, stop, deadline, generation) -> None:
    """A worker process: the same Worker loop, with its own runtime and weights."""
    from nstd import config as config_mod
    from nstd import weights
    from nstd.log import setup

    # Ctrl-C reaches the whole process group; the supervisor decides how this one stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = config_mod.load(Path(config_path))
    setup(cfg.log_level, None if cfg.log_format == "auto" else cfg.log_format == "json")
    current = {"runtime": Runtime.load(cfg), "generation": generation.value}

    def styles():
        if generation.value != current["generation"]:
            current["generation"] = generation.value
            try:
                current["runtime"] = current["runtime"].reloaded()
            except NstdError as e:
                log.error("reload_failed", error=str(e), device=device)
        return current["runtime"].styles

    models_dir = cfg.models_dir or weights.default_models_dir()
    loaded: dict[str, tuple] = {}

    def load_weights(model_id: str):
        if model_id not in loaded:
            loaded[model_id] = weights.load(models_dir, model_id)
        return loaded[model_id]

    worker = Worker(cfg, styles, load_weights, torch.device(device), stop,
                    deadline=lambda: deadline.value or None)
    worker.run()  # in this process's main thread
    clear_own_litter(cfg.outbox)  # what an outage or the stop cut short: this process writes no more
    raise SystemExit(0 if worker.error is None else 1)


class WorkerPool:
    """This daemon's workers, one per device: started, replaced when one dies (its own
    claims given back, other devices' batches running on), told of a reload, and stopped
    within a stop's grace."""

    def __init__(self, isolation: str, runtime: Callable[[], Runtime], load_weights: Callable):
        self.isolation, self.runtime, self.load_weights = isolation, runtime, load_weights
        self.workers: list = []
        self.stopping = False  # set by stop: dead workers are no longer replaced

    def start(self, devices: list[torch.device]) -> None:
        self.workers = [self._start_worker(d) for d in devices]

    def _start_worker(self, device: torch.device) -> "ThreadWorker | ProcessWorker":
        if self.isolation == "process":
            cfg = self.runtime().cfg
            handle = ProcessWorker(cfg.path, cfg.host, device)
        else:
            handle = ThreadWorker(self.runtime, self.load_weights, device)
        handle.start()
        return handle

    def replace_dead(self, journal) -> None:
        for i, w in enumerate(self.workers):
            if not w.alive() and not self.stopping:
                requeued, quarantined = journal.requeue_claimed_by(w.owner)
                log.error("worker_restarted", device=str(w.device), error=w.error, requeued=requeued,
                          quarantined=[j.id for j in quarantined])
                self.workers[i] = self._start_worker(w.device)

    def alive(self) -> list:
        return [w for w in self.workers if w.alive()]

    def reload(self) -> None:
        for w in self.workers:
            w.reload()  # worker processes read the file again themselves

    def stop(self, deadline: float) -> None:
        """Each worker's running batch finishes by `deadline` or goes back to the queue."""
        self.stopping = True
        for w in self.workers:
            w.stop(deadline)
        for w in self.workers:
            w.join(max(0.0, deadline - time.time()) + 10)
