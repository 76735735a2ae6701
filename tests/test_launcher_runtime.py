"""The lifecycle pieces `stream run` and every role share (stream/runtime.py): refused
messages counted and logged once per (peer, reason), never a flood; the process CPU per
frame from the first frame on, start-up apart."""

from __future__ import annotations

import logging

import pytest

from stream.runtime import CpuMeter, Rejections

LOGGER = "test.rejections"


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_each_peer_and_reason_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    reject = Rejections(logging.getLogger(LOGGER))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(50):
            reject("bad stream id from peer A", key=("A", "bad_id"))
        for _ in range(20):
            reject("oversized frame from peer A", key=("A", "too_big"))
        for _ in range(30):
            reject("bad stream id from peer B", key=("B", "bad_id"))
    assert _logged(caplog) == [
        "rejected message #1: bad stream id from peer A",
        "rejected message #51: oversized frame from peer A",
        "rejected message #71: bad stream id from peer B",
    ]
    assert reject.count == 100
    assert reject.by_key == {("A", "bad_id"): 50, ("A", "too_big"): 20, ("B", "bad_id"): 30}


def test_without_a_key_the_first_ten_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The old call `rejections(why)` keeps working as before."""
    reject = Rejections(logging.getLogger(LOGGER))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(25):
            reject(f"malformed #{i}")
    assert len(_logged(caplog)) == 10
    assert reject.count == 25 and reject.by_key == {}


def test_a_flood_stays_visible_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """A peer inventing new keys cannot grow memory or the log without end."""
    reject = Rejections(logging.getLogger(LOGGER))
    n = Rejections.MAX_KEYS + 1500
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(n):
            reject(f"junk {i}", key=("peer", i))
    assert len(reject.by_key) == Rejections.MAX_KEYS
    logged = _logged(caplog)
    # One line per remembered key, plus the thousandths past them (#2000 is the only one).
    assert len(logged) == Rejections.MAX_KEYS + 1
    assert logged[-1] == "rejected message #2000: junk 1999"
    assert reject.count == n


class FakeCpu:
    """CPU seconds that move only when the test says so."""

    def __init__(self, used: float) -> None:
        self.used = used

    def __call__(self) -> float:
        return self.used


def test_cpu_meter_leaves_start_up_out_of_the_per_frame_figure() -> None:
    cpu = FakeCpu(1.84)  # imports, model compile, first frame: 1.84 s
    meter = CpuMeter(cpu)
    meter.first(1)
    for _ in range(99):  # 99 more frames at 3 ms each
        cpu.used += 0.003
        meter.first(1)  # only the first call counts
    assert meter.report(100) == ("process cpu 3.0 ms/frame over the 99 frames after the "
                                 "first (1.84 s of CPU up to and including the first)")
    # the old figure would have been (1.84 + 0.297) / 100 = 21.4 ms/frame


def test_cpu_meter_counts_from_a_first_batch() -> None:
    """A sink accounts for several frames at once: the count at the first call is kept."""
    cpu = FakeCpu(0.5)
    meter = CpuMeter(cpu)
    meter.first(4)
    cpu.used += 0.06
    assert meter.report(10) == ("process cpu 10.0 ms/frame over the 6 frames after the "
                                "first 4 (0.50 s of CPU up to and including the first 4)")


def test_cpu_meter_gives_no_per_frame_figure_without_a_second_frame() -> None:
    assert CpuMeter(FakeCpu(1.0)).report(0) == ""  # no first frame: nothing
    meter = CpuMeter(FakeCpu(1.25))
    meter.first(1)
    assert meter.report(1) == ("process cpu: 1.25 s of CPU up to and including the first; "
                               "too few frames for a per-frame figure")
