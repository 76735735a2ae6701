"""The sink's progress line and summary table (stream/sink/report.py, role summary).

Defect 16: with an estimated frame count (most files) the progress passed 100 % with a
negative ETA, and "CPU per frame" was logged for runs with 0 frames.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections import Counter

import pytest

from stream.protocol import Eos, Frame, Hello, Result, Status
from stream.sink import Publisher, Sink, SinkSettings
from stream.sink.report import ProgressRow, StreamReport, progress_part, summary_lines
from stream.sink.stats import Session, StreamStats

pytestmark = pytest.mark.timeout(30)


def test_progress_never_passes_100_percent_nor_shows_a_negative_eta() -> None:
    # The container announced 200 frames; the file has 230.
    for done in (0, 100, 199, 200, 201, 230):
        line = progress_part(ProgressRow("clip", done, 200, fps=25.0))
        percent = int(re.search(r"(\d+)%", line).group(1))  # type: ignore[union-attr]
        assert 0 <= percent <= 100, line
        eta = re.search(r"ETA\s+(-?\d+)s", line)
        assert eta is None or int(eta.group(1)) >= 0, line
    assert "ETA" not in progress_part(ProgressRow("clip", 230, 200, 25.0))
    assert progress_part(ProgressRow("cam", 5, None, 25.0)) == "cam 5 frames  25.0 fps"


def _sink(out: io.StringIO) -> Sink:
    return Sink(SinkSettings(progress=False), Publisher(lambda e: True, ["c0", "c1"]),
                threading.Event(), out=out, err=io.StringIO())


def test_no_cpu_per_frame_line_for_a_run_with_no_frames(
        caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    sink = _sink(out)
    sink.handle(Hello("cam", "rtsp", 25.0, 4, 4, None, "rtsp://h/x", "drop"), 0.0)
    with caplog.at_level(logging.INFO):
        sink.summary()
    assert "ms/frame" not in caplog.text
    assert "cam" in out.getvalue()


def test_the_summary_says_what_is_unknown_ended_early_and_connect_failures() -> None:
    out = io.StringIO()
    sink = _sink(out)
    sink.handle(Hello("clip", "file", 25.0, 4, 4, 200, "clip.mp4", "wait"), 0.0)
    for seq in range(96):
        sink.handle(Frame("clip", seq, None, 1.0, 4, 4), 0.0)
        sink.handle(Result("clip", seq, 1.0, "w", (1,), (0.9,), 1.0), 0.0)
    sink.handle(Eos("clip", 96, "ended_early", "source ended early: 96 of 200 frames"), 0.0)
    sink.handle(Hello("cam", "rtsp", 25.0, 4, 4, None, "rtsp://h/x", "drop"), 0.0)
    sink.handle(Status("cam", "reconnecting", 1.0, "404",
                       {"connect_failures": 7, "unreadable": 0, "reconnects": 2}), 0.0)
    sink.handle(Frame("cam", 0, None, 1.0, 4, 4), 0.0)
    sink.handle(Result("cam", 0, 1.0, "w", (1,), (0.9,), 1.0), 0.0)
    sink.release(0.0)
    sink.summary()
    text = out.getvalue()
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.split() and line.split()[0] in ("clip", "cam")}
    assert rows["clip"][1:3] == ["96", "96"]
    assert rows["cam"][1:3] == ["?", "1"]
    assert "cam: captured: unknown, no end-of-stream from capture" in text
    assert "clip: ended early: 96 of 200 frames" in text
    assert "cam: connect failures: 7" in text
    assert "cam: capture counters: reconnects=2" in text


def test_output_counts_and_failures_are_listed_under_their_stream() -> None:
    stats = StreamStats(labelled=3, sessions=[Session(1, 0, Eos("a", 3, "end"))])
    lines = summary_lines(
        [StreamReport("a", stats, {"video": Counter(written=2, failed=1)},
                      [("video", "No space left on device")])], {"malformed": 2})
    row = lines[1].split()
    assert row[:5] == ["a", "3", "3", "0", "2"]
    assert "  a: output video: failed 1, written 2" in lines
    assert "  a: output video failed: No space left on device" in lines
    assert lines[-1] == "rejected malformed messages: 2 (malformed=2)"


def test_refusals_are_counted_each_time_and_logged_once_per_peer_and_kind(
        caplog: pytest.LogCaptureFixture) -> None:
    from stream.sink.intake import Refusals

    refusals = Refusals()
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            refusals("10.0.0.9:4000", "bad_stream_id", "stream '../x'")
        refusals("10.0.0.9:4000", "malformed", "not msgpack")
        refusals("10.0.0.8:4000", "bad_stream_id", "stream '/etc'")
    assert refusals.by_kind == {"bad_stream_id": 51, "malformed": 1}
    assert len(caplog.records) == 3


def test_latency_window_keeps_the_most_recent_samples() -> None:
    import numpy as np

    from stream.sink.stats import LatencyWindow

    w = LatencyWindow(size=5)
    assert len(w) == 0 and w.percentile(50) is None
    samples = [float(v) for v in (40, 10, 30, 20, 90, 70, 60, 50)]
    for i, v in enumerate(samples):
        w.append(v)
        kept = samples[max(0, i - 4):i + 1]  # the last five, by an independent slice
        assert len(w) == len(kept)
        for q in (0, 50, 99, 100):
            assert w.percentile(q) == pytest.approx(float(np.percentile(kept, q)))
