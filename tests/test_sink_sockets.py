"""A running sink on real ZMQ sockets: a hostile peer, and an output that fails.

The sink runs in a thread with its own :class:`~stream.transport.Sockets`; peers are real
PUSH sockets. The output is a small fake at the ``Output`` seam (raw frames appended to
``<output_dir>/<stream>.raw``, its path made with ``stream.ids.path_inside`` like every
output's), behind the real :class:`~stream.outputs.runner.OutputRunner`.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import zmq

from stream.ids import path_inside
from stream.outputs.base import OutputFrame
from stream.outputs.runner import OutputRunner
from stream.protocol import Eos, Frame, Hello, Message, Result
from stream.sink import Publisher, Sink, SinkSettings
from stream.sink.intake import Intake
from stream.transport import Sockets, send

pytestmark = pytest.mark.timeout(60)

W, H = 4, 3
IMAGE = bytes(range(W * H * 3))


class RawFileOutput:
    """Appends each frame's bytes to ``<folder>/<stream>.raw``; fails after ``fail_after``."""

    name = "raw"
    retry_after_error = False

    def __init__(self, folder: Path, fail_after: int | None = None) -> None:
        self.folder = folder
        self.fail_after = fail_after
        self.writes = 0

    def write(self, frame: OutputFrame) -> None:
        if self.fail_after is not None and self.writes >= self.fail_after:
            raise OSError(28, "No space left on device")
        with open(path_inside(self.folder, f"{frame.stream}.raw"), "ab") as f:
            f.write(frame.image.tobytes())
        self.writes += 1

    def end_stream(self, stream: str) -> None:
        pass

    def close(self) -> None:
        pass


class RunningSink:
    """A sink on a real PULL socket, in a thread; ``peer()`` gives a connected PUSH."""

    def __init__(self, output: RawFileOutput, expected: tuple[str, ...]) -> None:
        self.sockets = Sockets()
        inbox = self.sockets.socket(zmq.PULL, rcvhwm=32, linger_ms=0)
        self.endpoint = self.sockets.bind(inbox, "tcp://127.0.0.1:*", "sink")
        self.events: list[dict[str, Any]] = []
        self.out = io.StringIO()
        self.stop = threading.Event()
        runner = OutputRunner(output, queue_size=4)
        runner.start()
        self.sink = Sink(SinkSettings(expected_streams=expected, reorder_timeout_s=1.0,
                                      progress=False),
                         Publisher(self._collect, ["c0", "c1"]), self.stop, Intake(inbox),
                         [("raw", runner)], out=self.out, err=io.StringIO())
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _collect(self, event: Mapping[str, Any]) -> bool:
        self.events.append(dict(event))
        return True

    def _run(self) -> None:
        self.code = self.sink.run(drain_s=0.5)

    def peer(self) -> zmq.Socket[bytes]:
        sock = self.sockets.socket(zmq.PUSH, linger_ms=1000)
        self.sockets.connect(sock, self.endpoint, "sink")
        return sock

    def wait(self, timeout: float = 20.0) -> int | None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join(5)
        return self.code

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sockets.close(linger_ms=0)

    def of(self, kind: str, stream: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["type"] == kind and (stream is None or e["stream"] == stream)]


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    # Three levels down, so "../../../x/PWNED" would land inside tmp_path where we look.
    d = tmp_path / "a" / "b" / "out"
    d.mkdir(parents=True)
    return d


def stream_messages(stream: str, n: int) -> Iterator[Message]:
    yield Hello(stream, "file", 25.0, W, H, n, "clip.mp4", "wait")
    for seq in range(n):
        yield Frame(stream, seq, seq / 25, time.time(), W, H, IMAGE)
        yield Result(stream, seq, time.time(), "w", (1, 0), (0.9, 0.1), 1.0)
    yield Eos(stream, n, "end")


@pytest.fixture
def running(out_dir: Path) -> Iterator[RunningSink]:
    rs = RunningSink(RawFileOutput(out_dir), expected=("good",))
    try:
        yield rs
    finally:
        rs.close()


def test_a_hostile_stream_id_writes_nothing_is_counted_and_the_sink_goes_on(
        running: RunningSink, out_dir: Path, tmp_path: Path) -> None:
    """Defect 1: a peer named its stream ``../../../x/PWNED`` and the sink wrote a file
    three directories above output_dir (an absolute id would escape it altogether)."""
    hostile = running.peer()
    hostile_ids = ("../../../x/PWNED", str(tmp_path / "abs" / "PWNED"))
    sent_hostile = 0
    for sid in hostile_ids:
        for msg in list(stream_messages(sid, 1))[:3]:  # hello, frame, result
            send(hostile, msg)
            sent_hostile += 1
    deadline = time.monotonic() + 10
    while running.sink.rejected < sent_hostile and time.monotonic() < deadline:
        running.thread.join(0.01)  # (the sink thread runs on; this just yields)
    assert running.sink.rejected == sent_hostile
    good = running.peer()
    for msg in stream_messages("good", 10):
        send(good, msg)
    assert running.wait() == 0, running.out.getvalue()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [Path("a/b/out/good.raw")]
    assert (out_dir / "good.raw").stat().st_size == 10 * len(IMAGE)
    assert running.sink.refusals.by_kind == {"bad_stream_id": sent_hostile}
    # logged once for that peer (by its address), not once per message
    (logged,) = running.sink.refusals.logged
    assert isinstance(logged, tuple) and "127.0.0.1" in logged[0], logged
    assert [e["seq"] for e in running.of("label", "good")] == list(range(10))
    assert "rejected malformed messages: 6" in running.out.getvalue()


def test_a_failed_output_is_a_status_event_a_summary_line_and_exit_code_1(
        out_dir: Path) -> None:
    rs = RunningSink(RawFileOutput(out_dir, fail_after=3), expected=("good",))
    try:
        push = rs.peer()
        for msg in stream_messages("good", 10):
            send(push, msg)
        assert rs.wait() == 1
    finally:
        rs.close()
    (status,) = rs.of("status", "good")
    assert status["state"] == "output_failed"
    assert "No space left on device" in status["message"]
    # labels go on when the output fails
    assert [e["seq"] for e in rs.of("label", "good")] == list(range(10))
    text = rs.out.getvalue()
    assert "good: output raw failed: [Errno 28] No space left on device" in text
    assert "good: output raw: failed 7, written 3" in text
    assert (out_dir / "good.raw").stat().st_size == 3 * len(IMAGE)


def test_restarting_one_capture_loses_nothing_of_another_stream(out_dir: Path) -> None:
    """Defect 3 over real sockets: `a` restarts while lossless `b` has frames in flight
    (their labels not yet in); `b` still ends with every one of its frames labelled."""
    rs = RunningSink(RawFileOutput(out_dir), expected=("a", "b"))
    try:
        push = rs.peer()  # one connection: ZMQ keeps its order, so the story is exact
        b = list(stream_messages("b", 10))
        b_hello, b_frames, b_results = b[0], b[1:-1:2], b[2:-1:2]
        for msg in [b_hello, *b_frames, *b_results[:5]]:
            send(push, msg)
        a_first = list(stream_messages("a", 6))[:-1]  # killed: no eos
        for msg in a_first:
            send(push, msg)
        for msg in stream_messages("a", 4):  # restarted from seq 0
            send(push, msg)
        for msg in [*b_results[5:], b[-1]]:
            send(push, msg)
        assert rs.wait() == 0, rs.out.getvalue()
    finally:
        rs.close()
    assert [e["seq"] for e in rs.of("label", "b")] == list(range(10))
    b_final = rs.of("summary", "b")[-1]
    assert (b_final["captured"], b_final["labelled"], b_final["dropped"]) == (10, 10, {})
    assert (out_dir / "b.raw").stat().st_size == 10 * len(IMAGE)
    assert "late" not in rs.out.getvalue()
