"""A sink fed on a thread of its own, so the device does not wait while an output is
encoded, plotted, written to a slow share and recorded in the journal.

Outcomes reach the sink in the order they were handed over. The queue is bounded: an
outbox that cannot keep up slows the batch down rather than piling results up in memory.
Leaving the `with` block waits for every outcome to be delivered; an error the sink
raised comes back to the caller then, or at the next handover, as it would have come
from a sink called directly.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable

DEPTH = 16  # outcomes waiting at most: a batch's worth of finished images, a few MB each
_DONE = object()


class Handoff:
    """Calls `sink.publish` and `sink.refuse` on a worker thread, in order. A sink with an
    `on_thread()` context manager has it entered on that thread, around all of its calls
    (the daemon's outbox opens its own journal connection there)."""

    def __init__(self, sink: Any, depth: int = DEPTH):
        self.sink = sink
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="publisher", daemon=True)

    def __enter__(self) -> "Handoff":
        self._thread.start()
        return self

    def __exit__(self, kind, error, tb) -> None:
        self._queue.put(_DONE)
        self._thread.join()
        if error is None:
            self._raise()

    def publish(self, *args) -> None:
        self._put(self.sink.publish, args)

    def refuse(self, *args) -> None:
        self._put(self.sink.refuse, args)

    def _put(self, call: Callable[..., None], args: tuple) -> None:
        self._raise()
        self._queue.put((call, args))

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _drain(self) -> None:
        opened = getattr(self.sink, "on_thread", contextlib.nullcontext)
        ended = False
        try:
            with opened():
                ended = self._deliver()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread
            self._error = self._error or e
        if not ended:  # take what is still handed over, so a producer blocked on a full queue goes on
            while self._queue.get() is not _DONE:
                pass

    def _deliver(self) -> bool:
        """Each outcome to the sink: True at the end, False once the sink failed."""
        while (item := self._queue.get()) is not _DONE:
            call, args = item
            try:
                call(*args)
            except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread
                self._error = e
                return False
        return True
