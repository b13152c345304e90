import contextlib
import threading

import pytest

from nstd.handoff import Handoff


class Recorder:
    """A sink that notes what it got, on which thread, and whether its thread's setup was on."""

    def __init__(self, fail_on=None, gate: threading.Event | None = None):
        self.got, self.threads, self.inside = [], set(), []
        self.fail_on, self.gate = fail_on, gate
        self.opened = self.closed = 0

    @contextlib.contextmanager
    def on_thread(self):
        self.opened += 1
        try:
            yield
        finally:
            self.closed += 1

    def publish(self, item, log):
        if self.gate is not None:
            self.gate.wait()
        if item == self.fail_on:
            raise OSError(f"cannot write {item}")
        self.got.append(("publish", item, log))
        self.threads.add(threading.get_ident())
        self.inside.append(self.opened > self.closed)

    def refuse(self, item, reason):
        self.got.append(("refuse", item, reason))


def test_outcomes_reach_the_sink_in_order_on_its_own_thread_inside_its_setup():
    sink = Recorder()
    with Handoff(sink, depth=2) as out:
        for i in range(5):
            out.publish(i, {"n": i})
        out.refuse(5, "too big")
    assert sink.got == [("publish", i, {"n": i}) for i in range(5)] + [("refuse", 5, "too big")]
    assert sink.threads and threading.get_ident() not in sink.threads
    assert all(sink.inside) and (sink.opened, sink.closed) == (1, 1)


def test_the_batch_does_not_wait_for_a_slow_outbox():
    gate = threading.Event()
    sink = Recorder(gate=gate)
    with Handoff(sink, depth=4) as out:
        out.publish("a", {})
        out.publish("b", {})
        assert sink.got == []  # handed over while the sink is still held up on the first
        gate.set()
    assert [g[1] for g in sink.got] == ["a", "b"]


def test_a_failing_sink_raises_in_the_callers_thread_and_takes_nothing_after():
    sink = Recorder(fail_on=1)
    with pytest.raises(OSError, match="cannot write 1"):
        with Handoff(sink, depth=1) as out:
            for i in range(10):  # a depth of one: the producer would block for good if nothing took them
                out.publish(i, {})
    assert [g[1] for g in sink.got] == [0]


def test_leaving_on_an_error_of_the_batch_still_delivers_what_was_handed_over():
    sink = Recorder()
    with pytest.raises(KeyError):
        with Handoff(sink) as out:
            out.publish("done", {})
            raise KeyError("the engine failed")
    assert [g[1] for g in sink.got] == ["done"]


def test_a_sink_whose_setup_fails_reports_it():
    class NoJournal(Recorder):
        def on_thread(self):
            raise RuntimeError("journal gone")

    with pytest.raises(RuntimeError, match="journal gone"):
        with Handoff(NoJournal(), depth=1) as out:
            for i in range(3):
                out.publish(i, {})
