"""The sink's Prometheus metrics equal its summary, drop reasons and lost gaps included.

The real ``Sink`` is driven message by message with an explicit clock (as tests/test_sink.py
does) through labelled frames, capture drops (``busy``), a frame whose label never comes
(``worker_lost``), a gap of stamps that never came (``lost``, one outcome of several
frames) and a capture restart (``capture_restarted``). The oracle is what the test sent,
counted by the test; the summary event and ``/metrics`` (the real text exposition, parsed
by ``prometheus_client``'s parser) must both say exactly that.
"""

from __future__ import annotations

import io
import threading
from collections import Counter
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream.metrics import SinkMetrics
from stream.protocol import Drop, Eos, Frame, Hello, Result, Status
from stream.sink import Publisher, Sink, SinkSettings

pytestmark = pytest.mark.timeout(30)

LABELS = [f"c{i}" for i in range(10)]


def scrape(metrics: SinkMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def frame(seq: int, stream: str = "a") -> Frame:
    return Frame(stream, seq, seq / 25, 100.0 + seq, 4, 4, None)


def result(seq: int, stream: str = "a") -> Result:
    return Result(stream, seq, 100.0 + seq, "w", (1, 0), (0.9, 0.05), 12.0, None)


def test_counters_equal_the_summary_for_every_outcome() -> None:
    events: list[dict[str, Any]] = []
    metrics = SinkMetrics(clock=lambda: 0.0)
    sink = Sink(SinkSettings(progress=False, expected_streams=("a",), reorder_timeout_s=1.0),
                Publisher(lambda e: events.append(dict(e)) or True, LABELS, 1, 3),
                threading.Event(), out=io.StringIO(), err=io.StringIO(), metrics=metrics)
    sent: Counter[str] = Counter()  # the oracle: what this test made happen
    sink.handle(Hello("a", "rtsp", 25.0, 4, 4, None, "rtsp://h/x", "drop"), now=0.0)
    for seq in range(0, 10):  # 0..9: labelled, except 3 and 7 dropped by the capture
        sink.handle(frame(seq), now=0.0)
        if seq in (3, 7):
            sink.handle(Drop("a", seq, None, 1.0, "busy"), now=0.0)
            sent["busy"] += 1
        else:
            sink.handle(result(seq), now=0.0)
            sent["labelled"] += 1
    sink.handle(frame(10), now=0.0)  # its label never comes: worker_lost after the timeout
    sent["worker_lost"] += 1
    sink.handle(frame(15), now=0.0)  # 11..14: no stamp ever -> one "lost" outcome of 4
    sink.handle(result(15), now=0.0)
    sent["lost"] += 4
    sent["labelled"] += 1
    sink.release(now=0.5)
    sink.release(now=5.0)
    # The capture restarts: seq 16's frame is pending, forced out as capture_restarted.
    sink.handle(frame(16), now=5.0)
    sent["capture_restarted"] += 1
    sink.handle(Hello("a", "rtsp", 25.0, 4, 4, None, "rtsp://h/x", "drop", seq=0), now=5.1)
    for seq in range(3):
        sink.handle(frame(seq), now=5.2)
        sink.handle(result(seq), now=5.2)
        sent["labelled"] += 1
    sink.handle(Eos("a", 3, "end"), now=5.3)
    sink.handle(Status("a", "running", 1.0, "", {"reconnects": 2, "connect_failures": 1}),
                now=5.3)
    sink.release(now=5.4)
    sink.summary()
    metrics.refresh(sink, force=True)

    m = scrape(metrics)
    summary = [e for e in events if e["type"] == "summary"][-1]
    dropped = {k: v for k, v in sent.items() if k != "labelled"}
    assert summary["labelled"] == sent["labelled"] and summary["dropped"] == dropped
    assert m[("stream_frames_labelled_total", (("stream", "a"),))] == sent["labelled"]
    got = {dict(k[1])["reason"]: v for k, v in m.items()
           if k[0] == "stream_frames_dropped_total"}
    assert got == dropped
    assert m[("stream_latency_seconds_count", (("stream", "a"),))] == sent["labelled"]
    assert m[("stream_inference_seconds_sum", (("stream", "a"),))] == pytest.approx(
        0.012 * sent["labelled"])
    assert m[("stream_capture_sessions_total", (("stream", "a"),))] == 2
    assert m[("stream_capture_events_total", (("counter", "reconnects"), ("stream", "a")))] == 2
    assert m[("stream_capture_events_total",
              (("counter", "connect_failures"), ("stream", "a")))] == 1
    assert m[("stream_pending_frames", (("stream", "a"),))] == 0


def test_refused_messages_are_counted_by_kind() -> None:
    metrics = SinkMetrics()
    sink = Sink(SinkSettings(progress=False), Publisher(lambda e: True, LABELS, 1, 3),
                threading.Event(), out=io.StringIO(), err=io.StringIO(), metrics=metrics)
    sink.handle(Hello("a", "file", 25.0, 4, 4, None, "x.mp4", "wait"), now=0.0)
    sink.handle(frame(10**6), now=0.0)  # far ahead: refused as seq_ahead
    sink.handle(Status("a", "running", 1.0), now=0.0)
    metrics.refresh(sink, force=True)
    m = scrape(metrics)
    assert m[("stream_refused_messages_total", (("kind", "seq_ahead"),))] == 1


def test_refresh_is_throttled_and_age_is_reported() -> None:
    now = [100.0]
    metrics = SinkMetrics(clock=lambda: now[0])
    sink = Sink(SinkSettings(progress=False), Publisher(lambda e: True, LABELS, 1, 3),
                threading.Event(), out=io.StringIO(), err=io.StringIO(), metrics=metrics)
    assert metrics.age() == float("inf")
    metrics.refresh(sink)
    sink.handle(Hello("a", "file", 25.0, 4, 4, None, "x.mp4", "wait"), now=0.0)
    now[0] += 0.1
    metrics.refresh(sink)  # within REFRESH_S: the snapshot stays
    assert "a" not in metrics.snapshot.streams and metrics.age() == pytest.approx(0.1)
    now[0] += 0.3
    metrics.refresh(sink)
    assert "a" in metrics.snapshot.streams and metrics.age() == 0.0
