"""Capture logic with a fake FrameSource (the Protocol seam) and real ZeroMQ sockets."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from stream.capture import Capture, CaptureSettings, LagMeter
from stream.dispatch import router_socket
from stream.protocol import Drop, Eos, Frame, decode
from stream.sources import SourceInfo

pytestmark = pytest.mark.timeout(60)


def test_lag_meter_measures_delay_behind_the_source_clock() -> None:
    lag = LagMeter()
    assert lag.update(10.0, now=100.0) == 0.0
    assert lag.update(10.5, now=100.5) == pytest.approx(0.0)
    assert lag.update(11.0, now=101.3) == pytest.approx(0.3)
    # a burst (frames arriving faster than real time) moves the reference, never negative
    assert lag.update(12.0, now=101.4) == 0.0
    assert lag.update(12.5, now=102.4) == pytest.approx(0.5)


def test_lag_meter_ignores_timestamps_that_stand_still_or_go_back() -> None:
    lag = LagMeter()
    for i in range(50):
        assert lag.update(0.0, now=float(i)) == 0.0  # a camera whose pts never moves
    assert lag.update(5.0, now=100.0) == 0.0
    assert lag.update(1.0, now=101.0) == 0.0  # discontinuity: start over
    assert lag.update(None, now=102.0) == 0.0


class SlowCamera:
    """A live source that delivers frames slower than its own clock says (capture behind)."""

    def __init__(self, frames: int, stop: threading.Event) -> None:
        self.frames = frames
        self.stop = stop
        self.i = 0

    def open(self) -> SourceInfo:
        return SourceInfo(fps=100.0, width=64, height=48, total_frames=None)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self.i >= self.frames:
            self.stop.set()
            return None
        time.sleep(0.02)  # arrives every 20 ms ...
        pts = self.i * 0.01  # ... but was shot every 10 ms: 10 ms more behind each frame
        self.i += 1
        return np.zeros((48, 64, 3), np.uint8), pts

    def close(self) -> None:
        pass


@pytest.fixture
def sockets() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    tasks = router_socket(ctx)
    tasks.bind("inproc://tasks")
    inbox = ctx.socket(zmq.PULL)
    inbox.bind("inproc://sink")
    to_sink = ctx.socket(zmq.PUSH)
    to_sink.setsockopt(zmq.LINGER, 0)
    to_sink.connect("inproc://sink")
    try:
        yield tasks, to_sink, inbox
    finally:
        for sock in (tasks, to_sink, inbox):
            sock.close(0)
        ctx.term()


def test_live_capture_that_falls_behind_drops_stale_frames_and_accounts_for_all(
    sockets: tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    tasks, to_sink, inbox = sockets
    stop = threading.Event()
    settings = CaptureSettings(stream="cam", url="rtsp://cam/1", kind="rtsp", policy="drop")
    cap = Capture(settings, SlowCamera(160, stop), tasks, to_sink, stop)
    assert cap.run() == 0
    msgs = []
    while inbox.poll(100):
        msgs.append(decode(inbox.recv_multipart()))
    frames = [m.seq for m in msgs if isinstance(m, Frame)]
    drops = Counter(m.reason for m in msgs if isinstance(m, Drop))
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert frames == list(range(160)) and eos.frames == 160
    # no worker is connected, so every frame is dropped: busy until ~1 s behind, then stale
    assert sum(drops.values()) == 160
    assert drops["stale"] >= 40 and drops["busy"] >= 80, drops
    first_stale = min(m.seq for m in msgs if isinstance(m, Drop) and m.reason == "stale")
    assert 90 <= first_stale <= 110  # 10 ms behind per frame: 1 s after ~100 frames
