"""The sink role wired together: ordering, joining, timeouts, accounting, smoothing.

Messages are handed to ``Sink.handle`` directly with explicit clock values, so each rule is
checked exactly; the pure parts have their own tests (tests/test_sink_*.py) and the
sockets are exercised by tests/test_sink_sockets.py and the end-to-end tests.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from stream.protocol import Drop, Eos, Frame, Hello, Result
from stream.runtime import CpuMeter
from stream.sink import Publisher, Sink, SinkSettings

pytestmark = pytest.mark.timeout(30)

LABELS = [f"c{i}" for i in range(10)]


class Collector:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: Mapping[str, Any]) -> bool:
        self.events.append(dict(event))
        return True

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def make_sink(smoothing: int = 1, top_k: int = 5,
              **kw: Any) -> tuple[Sink, Collector, io.StringIO]:
    pub, out = Collector(), io.StringIO()
    kw.setdefault("expected_streams", ("a",))
    settings = SinkSettings(progress=False, **kw)
    sink = Sink(settings, Publisher(pub, LABELS, smoothing, top_k), threading.Event(),
                out=out, err=io.StringIO())
    return sink, pub, out


def frame(seq: int, stream: str = "a") -> Frame:
    return Frame(stream, seq, seq / 25, 100.0 + seq, 4, 4, None)


def result(seq: int, cls: int = 1, stream: str = "a", probs: np.ndarray | None = None) -> Result:
    p = None if probs is None else probs.astype("<f4").tobytes()
    return Result(stream, seq, 100.0 + seq, "w", (cls, 0), (0.9, 0.05), 10.0, p)


def test_out_of_order_results_leave_in_seq_order() -> None:
    sink, pub, _ = make_sink()
    for seq in range(5):
        sink.handle(frame(seq), now=0.0)
    for seq in (3, 1, 4, 0, 2):
        sink.handle(result(seq), now=0.1)
        sink.release(now=0.1)
    labels = pub.of("label")
    assert [e["seq"] for e in labels] == [0, 1, 2, 3, 4]
    assert set(labels[0]) == {"v", "type", "stream", "seq", "pts", "ts", "labels", "latency_ms"}
    assert labels[0]["labels"][0] == {"id": 1, "name": "c1", "score": pytest.approx(0.9)}


def test_process_cpu_is_per_frame_after_the_first_ones_accounted_for(
        caplog: pytest.LogCaptureFixture) -> None:
    """The CPU up to the first release (3 frames at once) is start-up; the figure is the
    CPU after it over the frames after it."""
    sink, _, _ = make_sink()
    used = [1.5]
    sink.cpu = CpuMeter(lambda: used[0])
    for seq in range(3):
        sink.handle(frame(seq), now=0.0)
        sink.handle(result(seq), now=0.0)
    sink.release(now=0.0)
    for seq in range(3, 7):
        used[0] += 0.01
        sink.handle(frame(seq), now=0.0)
        sink.handle(result(seq), now=0.0)
        sink.release(now=0.0)
    with caplog.at_level(logging.INFO, logger="stream.sink.role"):
        sink.summary()
    assert ("sink: process cpu 10.0 ms/frame over the 4 frames after the first 3 (1.50 s of "
            "CPU up to and including the first 3)") in caplog.messages


def test_result_before_its_frame_waits_for_the_frame() -> None:
    sink, pub, _ = make_sink()
    sink.handle(result(0), now=0.0)
    sink.release(now=0.0)
    assert pub.of("label") == []
    sink.handle(frame(0), now=0.1)
    sink.release(now=0.1)
    assert [e["seq"] for e in pub.of("label")] == [0]


def test_missing_label_is_dropped_after_the_timeout_and_a_late_one_is_counted() -> None:
    sink, pub, _ = make_sink(reorder_timeout_s=2.0)
    sink.handle(frame(0), now=0.0)
    sink.handle(frame(1), now=0.0)
    sink.handle(result(1), now=0.0)
    sink.release(now=1.9)
    assert pub.of("label") == [], "seq 1 must wait behind seq 0"
    sink.release(now=2.0)
    assert [e["seq"] for e in pub.of("label")] == [1]
    st = sink.streams["a"].stats
    assert st.dropped == {"worker_lost": 1}
    sink.handle(result(0), now=3.0)
    assert st.late == 1 and st.labelled == 1


def test_capture_drops_and_eos_account_for_every_seq() -> None:
    sink, pub, out = make_sink(reorder_timeout_s=1.0)
    sink.handle(Hello("a", "file", 25.0, 4, 4, 6, "x.mp4", "wait"), now=0.0)
    sink.handle(frame(0), now=0.0)
    sink.handle(result(0), now=0.0)
    sink.handle(frame(1), now=0.0)
    sink.handle(Drop("a", 1, None, 1.0, "busy"), now=0.0)
    # seq 2's stamp never arrives; 3 and 4 are labelled; seq 5 never arrives either
    for seq in (3, 4):
        sink.handle(frame(seq), now=0.0)
        sink.handle(result(seq), now=0.0)
    sink.handle(Eos("a", 6, "end"), now=0.0)
    sink.release(now=0.5)
    assert not sink.finished()
    sink.release(now=1.6)
    assert sink.finished()
    st = sink.streams["a"].stats
    assert st.labelled == 3 and st.dropped == {"busy": 1, "lost": 2}
    assert st.captured == 6 == st.labelled + sum(st.dropped.values())
    sink.summary()
    (summary,) = pub.of("summary")
    assert summary["captured"] == 6 and summary["labelled"] == 3
    assert summary["dropped"] == {"busy": 1, "lost": 2}
    assert "busy=1, lost=2" in out.getvalue()


def test_shutdown_forces_every_pending_seq_out_with_a_reason() -> None:
    sink, pub, _ = make_sink()
    sink.handle(frame(0), now=0.0)
    sink.handle(frame(1), now=0.0)
    sink.handle(result(1), now=0.0)
    sink.handle(Eos("a", 3, "shutdown"), now=0.0)
    sink.release(now=0.0, force="shutdown")
    st = sink.streams["a"].stats
    assert st.labelled == 1 and st.dropped == {"shutdown": 2}
    assert sink.finished()
    assert [e["seq"] for e in pub.of("label")] == [1]


def test_smoothing_averages_probabilities_and_change_events_follow_it() -> None:
    sink, pub, _ = make_sink(smoothing=3, top_k=2)
    p_a = np.zeros(10)
    p_a[2] = 1.0
    p_b = np.zeros(10)
    p_b[7] = 1.0
    seqs = [p_a, p_a, p_a, p_b, p_b, p_a]
    for seq, p in enumerate(seqs):
        sink.handle(frame(seq), now=0.0)
        sink.handle(result(seq, cls=int(np.argmax(p)), probs=p), now=0.0)
    sink.release(now=0.0)
    labels = pub.of("label")
    smoothed_top = [e["smoothed"][0]["id"] for e in labels]
    # window of 3: [a], [a a], [a a a], [a a b], [a b b], [b b a]
    assert smoothed_top == [2, 2, 2, 2, 7, 7]
    assert labels[4]["smoothed"][0]["score"] == pytest.approx(2 / 3, abs=1e-6)
    changes = pub.of("change")
    assert [(c["previous"] and c["previous"]["id"], c["current"]["id"], c["seq"])
            for c in changes] == [(None, 2, 0), (2, 7, 4)]


def test_streams_are_independent() -> None:
    sink, pub, _ = make_sink()
    sink.handle(frame(0, "a"), now=0.0)
    sink.handle(frame(0, "b"), now=0.0)
    sink.handle(result(0, stream="b"), now=0.0)
    sink.release(now=0.0)
    assert [(e["stream"], e["seq"]) for e in pub.of("label")] == [("b", 0)]


def test_a_long_gap_costs_one_timeout_not_one_per_missing_seq() -> None:
    sink, _, _ = make_sink(reorder_timeout_s=1.0)
    sink.handle(Hello("a", "file", 25.0, 4, 4, 101, "x.mp4", "wait", seq=0), now=0.0)
    sink.handle(frame(100), now=0.0)
    sink.handle(result(100), now=0.0)
    sink.handle(Eos("a", 101, "end"), now=0.0)
    sink.release(now=0.9)
    assert sink.streams["a"].next_seq == 0
    sink.release(now=1.0)
    st = sink.streams["a"].stats
    assert st.dropped == {"lost": 100} and st.labelled == 1 and sink.finished()


def test_shutdown_without_eos_ends_at_the_last_known_seq() -> None:
    """A capture killed before its eos: forcing out must stop, not count seqs for ever."""
    sink, _, _ = make_sink()
    sink.handle(frame(0), now=0.0)
    sink.handle(frame(2), now=0.0)
    sink.handle(result(2), now=0.0)
    sink.release(now=0.0, force="shutdown")
    st = sink.streams["a"]
    assert st.next_seq == 3
    assert st.stats.labelled == 1 and st.stats.dropped == {"shutdown": 2}


def test_a_sink_started_mid_stream_begins_where_the_stream_is() -> None:
    sink, pub, _ = make_sink()
    sink.handle(Hello("a", "rtsp", 25.0, 4, 4, None, "rtsp://***:***@h/x", "drop", seq=5000),
                now=0.0)
    sink.handle(frame(5000), now=0.0)
    sink.handle(result(5000), now=0.0)
    sink.release(now=0.0)
    assert [e["seq"] for e in pub.of("label")] == [5000]
    assert sink.streams["a"].stats.dropped == {}


def test_a_bogus_far_ahead_seq_is_refused_not_waited_for() -> None:
    sink, pub, _ = make_sink(reorder_timeout_s=0.5)
    sink.handle(frame(0), now=0.0)
    sink.handle(frame(10**12), now=0.0)
    sink.handle(result(0), now=0.0)
    sink.release(now=10.0)
    assert sink.rejected == 1
    assert [e["seq"] for e in pub.of("label")] == [0]
    assert sink.streams["a"].next_seq == 1


def test_lossless_stream_waits_for_a_resent_frame_instead_of_dropping_it() -> None:
    sink, pub, _ = make_sink(reorder_timeout_s=1.0)
    sink.handle(Hello("a", "file", 25.0, 4, 4, 2, "x.mp4", "wait"), now=0.0)
    sink.handle(frame(0), now=0.0)
    sink.release(now=30.0)
    assert pub.of("label") == [] and sink.streams["a"].stats.dropped == {}
    sink.handle(result(0), now=30.0)
    sink.release(now=30.0)
    assert [e["seq"] for e in pub.of("label")] == [0]


def test_a_drained_stream_publishes_its_summary_once() -> None:
    sink, pub, _ = make_sink()
    sink.handle(frame(0), now=0.0)
    sink.handle(result(0), now=0.0)
    sink.handle(Eos("a", 1, "end"), now=0.0)
    sink.release(now=0.0)
    sink.release(now=1.0)
    sink.summary()
    (summary,) = pub.of("summary")
    assert summary["captured"] == summary["labelled"] == 1


def test_a_restarted_capture_starts_a_new_session_and_totals_add_up() -> None:
    sink, pub, out = make_sink(expected_streams=())  # a --forever sink
    sink.handle(Hello("a", "file", 25.0, 4, 4, 3, "x.mp4", "wait"), now=0.0)
    for seq in range(3):
        sink.handle(frame(seq), now=0.0)
        sink.handle(result(seq), now=0.0)
    sink.handle(Eos("a", 3, "shutdown"), now=0.0)
    sink.release(now=0.0)
    # the same stream id comes back from seq 0: a new capture session
    sink.handle(Hello("a", "file", 25.0, 4, 4, 2, "x.mp4", "wait"), now=1.0)
    sink.handle(frame(0), now=1.0)
    sink.handle(result(0, cls=4), now=1.0)
    sink.handle(frame(1), now=1.0)  # its label never comes: the capture is killed
    sink.handle(Hello("a", "file", 25.0, 4, 4, 1, "x.mp4", "wait"), now=2.0)
    sink.handle(frame(0), now=2.0)
    sink.handle(result(0), now=2.0)
    sink.handle(Eos("a", 1, "end"), now=2.0)
    sink.release(now=2.0)
    seqs = [e["seq"] for e in pub.of("label")]
    assert seqs == [0, 1, 2, 0, 0]
    st = sink.streams["a"]
    assert [s.number for s in st.stats.sessions] == [1, 2, 3]
    assert st.stats.labelled == 5 and st.stats.dropped == {"capture_restarted": 1}
    # The killed session sent no eos: its capture's count is unknown, so the total is too
    # (it used to be labelled + dropped, true by construction).
    assert [s.captured for s in st.stats.sessions] == [3, None, 1]
    assert st.stats.captured is None
    sink.summary()
    assert "a: capture sessions: 3, captured per session: 3, ?, 1" in out.getvalue()
