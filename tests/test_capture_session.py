"""The source session alone (no sockets: it sends nothing), with fake sources at the seam."""

from __future__ import annotations

import threading
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from stream.capture.rtsp_probe import Diagnosis
from stream.capture.session import (
    BACKOFF_START_S,
    CaptureSettings,
    Pacer,
    SourceSession,
    count_tolerance,
)
from stream.errors import SourceError
from stream.sources import SourceInfo

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """Records what the session reports (the SessionEvents seam)."""

    def __init__(self) -> None:
        self.infos: list[SourceInfo] = []
        self.states: list[tuple[str, str]] = []

    def opened(self, info: SourceInfo) -> None:
        self.infos.append(info)

    def status(self, state: str, message: str = "") -> None:
        self.states.append((state, message))


class Clip:
    """A file of ``n`` frames (announcing ``total``); counts opens."""

    def __init__(self, n: int, total: int | None = None) -> None:
        self.n, self.total = n, total if total is not None else n
        self.i = 0
        self.opens = 0

    def open(self) -> SourceInfo:
        self.opens += 1
        self.i = 0
        return SourceInfo(25.0, 8, 8, self.total)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self.i >= self.n:
            return None
        self.i += 1
        return np.zeros((8, 8, 3), np.uint8), (self.i - 1) / 25

    def close(self) -> None:
        pass


def session(settings: CaptureSettings, source: object, stop: threading.Event | None = None,
            **kw: object) -> tuple[SourceSession, Recorder, Counter[str]]:
    events, counters = Recorder(), Counter[str]()
    s = SourceSession(settings, source, stop or threading.Event(), events,  # type: ignore[arg-type]
                      counters, **kw)  # type: ignore[arg-type]
    return s, events, counters


def test_pacer_waits_for_each_frame_and_a_late_frame_earns_no_burst() -> None:
    p = Pacer(0.04)
    assert p.wait_s(10.0) == 0.0
    p.took(10.0)
    assert p.wait_s(10.01) == pytest.approx(0.03)
    p.took(10.04)
    p.took(11.0)  # ~a second late: a frame or two catch up, not the 24 it fell behind
    at_once = 0
    while p.wait_s(11.0) == 0.0:
        p.took(11.0)
        at_once += 1
    assert at_once <= 2 and p.wait_s(11.0) == pytest.approx(0.04)
    assert Pacer(0.0).wait_s(5.0) == 0.0


def test_count_tolerance() -> None:
    assert count_tolerance(200) == 2 and count_tolerance(10) == 2
    assert count_tolerance(30_000) == 300


def test_a_file_within_the_tolerance_ends_normally_and_one_short_ends_early() -> None:
    settings = CaptureSettings(stream="f", url="f.mp4", kind="file", policy="wait")
    s, _, _ = session(settings, Clip(198, total=200))
    assert len(list(s.frames())) == 198 and s.end == ("end", "")
    s, _, _ = session(settings, Clip(197, total=200))
    assert len(list(s.frames())) == 197
    assert s.end == ("ended_early", "source ended early: 197 of 200 frames")


def test_loop_replays_the_file_without_a_new_hello() -> None:
    clip = Clip(5)
    settings = CaptureSettings(stream="f", url="f.mp4", kind="file", policy="wait", loop=True)
    s, events, _ = session(settings, clip)
    got = list(islice(s.frames(), 23))
    s.close()
    assert len(got) == 23 and clip.opens == 5 and len(events.infos) == 1


def test_a_missing_file_is_a_source_error_not_a_retry() -> None:
    class Missing(Clip):
        def open(self) -> SourceInfo:
            raise SourceError("video file not found: x.mp4")

    settings = CaptureSettings(stream="f", url="x.mp4", kind="file", policy="wait")
    s, _, counters = session(settings, Missing(0))
    with pytest.raises(SourceError):
        list(s.frames())
    assert counters["connect_failures"] == 0


def test_live_source_retries_a_failed_first_connect_with_backoff() -> None:
    stop = threading.Event()

    class Flaky(Clip):
        def open(self) -> SourceInfo:
            self.opens += 1
            if self.opens < 3:
                raise SourceError("cannot open rtsp source rtsp://cam/1")
            return SourceInfo(25.0, 8, 8, None)

        def read(self) -> tuple[np.ndarray, float | None] | None:
            self.i += 1
            if self.i > 1:
                stop.set()  # one frame is enough
            return np.zeros((8, 8, 3), np.uint8), self.i / 25

    settings = CaptureSettings(stream="c", url="rtsp://u:pw@cam/1", kind="rtsp", policy="drop")
    probed: list[str] = []

    def probe(url: str) -> Diagnosis:
        probed.append(url)
        return Diagnosis(False, "cannot reach the camera: Connection refused")

    s, events, counters = session(settings, Flaky(0), stop, probe=probe)
    assert len(list(s.frames())) == 1
    s.close()
    retries = [m for st, m in events.states if st == "reconnecting"]
    assert counters["connect_failures"] == 2 == len(retries) == len(probed)
    assert f"retrying in {BACKOFF_START_S:.1f} s" in retries[0]
    assert f"retrying in {2 * BACKOFF_START_S:.1f} s" in retries[1]
    assert "Connection refused" in retries[0]
    assert all("pw" not in m for _, m in events.states)


def test_a_live_source_that_hangs_is_declared_stalled_and_reconnected() -> None:
    stop = threading.Event()
    release = threading.Event()

    class Hangs(Clip):
        def read(self) -> tuple[np.ndarray, float | None] | None:
            if self.opens >= 2:
                stop.set()
                return None
            self.i += 1
            if self.i > 3:
                release.wait(1)  # hangs (FFmpeg gives up after its read timeout)
                return None
            return np.zeros((8, 8, 3), np.uint8), self.i / 25

    settings = CaptureSettings(stream="c", url="rtsp://cam/1", kind="rtsp", policy="drop")
    s, events, counters = session(settings, Hangs(0), stop, stall_timeout_s=0.3)
    try:
        got = list(s.frames())
    finally:
        release.set()
        s.close()
    assert len(got) == 3
    assert counters["stalls"] == 1 and counters["reconnects"] >= 1
    assert [st for st, _ in events.states].count("stalled") == 1
    assert len(events.infos) == 2
