"""The output runner: bounded queue, one thread, drops and failures counted per stream.

Fakes only at the Output seam: each fake counts what it was handed on its own, and every
assert compares the runner's counters with that independent count (or with the number of
frames the test offered), never with a figure the runner computed for itself.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest
from conftest import wait_until

from stream.outputs.base import OutputFrame
from stream.outputs.runner import OutputRunner

IMAGE = np.zeros((8, 8, 3), np.uint8)
IMAGE.flags.writeable = False


def frame(stream: str, seq: int, session: int = 1) -> OutputFrame:
    return OutputFrame(stream, session, seq, seq / 25, 1000 + seq / 25, IMAGE, (), None, None,
                       25.0)


class FakeOutput:
    """Records every call; ``gate`` (when set) holds ``write`` until it is opened."""

    name = "fake"

    def __init__(self, retry_after_error: bool = False,
                 fail: set[tuple[str, int, int]] | None = None) -> None:
        self.retry_after_error = retry_after_error
        self.fail = fail or set()  # (stream, session, seq) whose write raises
        self.calls: list[tuple[str, ...]] = []
        self.written: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def write(self, f: OutputFrame) -> None:
        self.entered.set()
        self.gate.wait()
        self.calls.append(("write", f.stream, str(f.session), str(f.seq)))
        if (f.stream, f.session, f.seq) in self.fail:
            raise OSError(f"disk full writing {f.stream}")
        self.written[f.stream] += 1

    def end_stream(self, stream: str) -> None:
        self.calls.append(("end", stream))

    def close(self) -> None:
        self.calls.append(("close",))


def run_in_thread(fn, timeout: float = 10.0) -> None:
    """Run ``fn`` on a thread and fail (instead of hanging) if it has not returned in time."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the caller was blocked"


def test_slow_output_drops_and_counts_queue_full_without_blocking_the_caller() -> None:
    out = FakeOutput()
    out.gate.clear()  # the output is stuck in its first write until we open the gate
    runner = OutputRunner(out, queue_size=4)
    runner.start()
    accepted: list[bool] = []
    accepted.append(runner.offer(frame("cam", 0), wait=False))
    assert out.entered.wait(10), "the runner never called write"

    def offer_rest() -> None:
        accepted.extend(runner.offer(frame("cam", seq), wait=False) for seq in range(1, 50))

    run_in_thread(offer_rest)
    assert runner.depth() == 4  # the queue is full (one more is inside the stuck write)
    out.gate.set()
    runner.close()
    assert runner.depth() == 0
    assert out.written["cam"] == sum(accepted)  # the runner said True for exactly those
    # One frame inside write, queue_size waiting: the rest must have been dropped.
    assert out.written["cam"] == 1 + 4
    counts = runner.counts("cam")
    assert counts["written"] == out.written["cam"]
    assert counts["queue_full"] == 50 - out.written["cam"]
    assert counts["failed"] == 0
    written_seqs = [int(c[3]) for c in out.calls if c[0] == "write"]
    assert written_seqs == [0, 1, 2, 3, 4]  # in order, the oldest kept
    assert runner.take_errors() == []


def test_wait_true_loses_nothing_and_keeps_order() -> None:
    out = FakeOutput()
    runner = OutputRunner(out, queue_size=2)
    runner.start()
    results: list[bool] = []
    run_in_thread(lambda: results.extend(runner.offer(frame("f", s), wait=True)
                                         for s in range(200)))
    runner.close()
    assert all(results)
    assert [int(c[3]) for c in out.calls if c[0] == "write"] == list(range(200))
    assert runner.counts("f") == Counter({"written": 200})
    assert out.calls[-2:] == [("end", "f"), ("close",)]  # close ended the open stream


def test_failing_output_is_reported_once_and_the_rest_count_failed_until_the_next_session(
) -> None:
    out = FakeOutput(fail={("a", 1, 3), ("a", 2, 4)})
    runner = OutputRunner(out, queue_size=4)
    runner.start()
    for seq in range(10):
        assert runner.offer(frame("b", seq), wait=True)
        runner.offer(frame("a", seq), wait=True)
    wait_until(lambda: runner.counts("a")["failed"] + runner.counts("a")["written"] == 10
               and runner.counts("b")["written"] == 10, 10, "all frames accounted")
    errors = runner.take_errors()
    assert errors == [("a", "disk full writing a")]
    assert runner.take_errors() == []  # reported once, not again
    # The output saw a's frames 0..3 (3 raised); 4..9 never reached it.
    assert [int(c[3]) for c in out.calls if c[:2] == ("write", "a")] == [0, 1, 2, 3]
    assert runner.counts("a") == Counter({"written": out.written["a"], "failed": 10 - 3})
    assert runner.counts("b") == Counter({"written": out.written["b"]})
    assert out.written["b"] == 10

    # A new session starts fresh: written again, and its own failure is reported again.
    runner.end_stream("a")
    for seq in range(6):
        assert runner.offer(frame("a", seq, session=2), wait=True)
    runner.close()
    assert runner.take_errors() == [("a", "disk full writing a")]
    assert out.written["a"] == 3 + 4
    assert runner.counts("a")["written"] == out.written["a"]
    assert runner.counts("a")["failed"] == 7 + 2  # session 2: seq 4 raised, seq 5 dropped
    assert ("end", "a") in out.calls


def test_retrying_output_keeps_writing_and_reports_each_outage_once() -> None:
    out = FakeOutput(retry_after_error=True,
                     fail={("w", 1, 2), ("w", 1, 3), ("w", 1, 4), ("w", 1, 8)})
    runner = OutputRunner(out, queue_size=2)
    runner.start()
    for seq in range(10):
        runner.offer(frame("w", seq), wait=True)
    runner.close()
    assert len([c for c in out.calls if c[0] == "write"]) == 10  # every frame tried
    assert runner.counts("w") == Counter({"written": out.written["w"], "failed": 4})
    assert [s for s, _ in runner.take_errors()] == ["w", "w"]  # outages 2-4 and 8


def test_close_is_bounded_when_the_output_hangs() -> None:
    out = FakeOutput()
    out.gate.clear()  # write never returns (until the test cleans up)
    runner = OutputRunner(out, queue_size=4)
    runner.start()
    assert runner.offer(frame("h", 0), wait=False)
    assert out.entered.wait(10)
    for seq in range(1, 5):
        assert runner.offer(frame("h", seq), wait=False)
    run_in_thread(lambda: runner.close(timeout_s=0.2))
    errors = runner.take_errors()
    assert len(errors) == 1 and "did not finish" in errors[0][1]
    assert runner.counts("h")["failed"] == 4  # the queued ones; one is stuck in write
    assert not runner.offer(frame("h", 5), wait=True)  # closed: refused, not blocked
    out.gate.set()


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        OutputRunner(FakeOutput(), queue_size=0)
