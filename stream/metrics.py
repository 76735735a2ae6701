"""A sink's live numbers: Prometheus metrics, and the per-stream snapshot ``/api/streams`` serves.

Every sink has its own :class:`SinkMetrics` with its own ``CollectorRegistry`` (no global
state: tests run many sinks in one process, and a registry per sink never mixes them).

Two kinds of numbers, two ways in, both written on the sink's own thread:

- **Per released outcome** (:meth:`SinkMetrics.outcome`): the frame counters by outcome and
  drop reason, and the latency histograms. The sink calls it for the very ``Outcome`` its
  summary counts (``stream/sink/role.py``, ``_outcome``), with the same ``count`` (a gap of
  lost seqs is one outcome of ``count`` seqs), so ``stream_frames_labelled_total`` and
  ``stream_frames_dropped_total`` equal the summary's labelled and dropped, always.
- **State read from the sink** (:meth:`SinkMetrics.refresh`, at most every
  :data:`REFRESH_S`): per-output frame counts, frames the reorder table holds, the
  capture's own counters (reconnects, connect failures, ...), refused messages. They are
  copied into an immutable :class:`Snapshot` under a lock; a scrape (an HTTP thread) reads
  only that snapshot, never the sink's dicts while the sink changes them.

Every metric is listed in docs/metrics.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from stream.sink.role import Sink

REFRESH_S = 0.25
"""How often the sink copies its state into the snapshot (scrapes and the web page read it)."""

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
"""End to end (capture wall time → label published), seconds: live targets sit well under
a second; the reorder timeout caps the tail near 5 s."""

INFER_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
"""One inference request as the worker timed it, seconds (convnext-tiny: ~10-100 ms)."""


class WebStats(Protocol):
    """What the metrics read of the web output (:class:`stream.outputs.web.WebOutput`)."""

    def viewers(self) -> Mapping[str, int]: ...
    def encoded_by_stream(self) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class StreamSnapshot:
    """One stream as the sink saw it at the last refresh."""

    labelled: int
    dropped: Mapping[str, int]
    captured: int | None  # the capture's own count; None until every session sent its eos
    fps: float
    pending: int  # seqs the reorder table holds (waiting for a frame or a label)
    ended: bool  # the current session sent its eos and drained
    sessions: int
    outputs: Mapping[str, Mapping[str, int]]  # output name -> written/queue_full/failed
    capture: Mapping[str, int]  # the capture's last status counters


@dataclass(frozen=True)
class Snapshot:
    """The sink's state at one refresh (``at``: monotonic seconds; 0 before the first)."""

    at: float = 0.0
    streams: Mapping[str, StreamSnapshot] = field(default_factory=dict)
    refused: Mapping[str, int] = field(default_factory=dict)
    queues: Mapping[str, int] = field(default_factory=dict)  # output name -> frames waiting


class SinkMetrics:
    """The Prometheus metrics of one sink (see the module docstring).

    Args:
        clock: monotonic seconds (injected for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self.labelled = Counter("stream_frames_labelled", "Frames released with a label.",
                                ["stream"], registry=r)
        self.dropped = Counter("stream_frames_dropped",
                               "Frames released without a label, by reason (busy, stale, "
                               "worker_lost, lost, shutdown, ...).", ["stream", "reason"],
                               registry=r)
        self.latency = Histogram("stream_latency_seconds",
                                 "Capture wall time to label published, per labelled frame.",
                                 ["stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("stream_inference_seconds",
                                   "One inference request as the worker timed it.",
                                   ["stream"], buckets=INFER_BUCKETS, registry=r)
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._next_refresh = float("-inf")
        self._web: WebStats | None = None
        r.register(_SnapshotCollector(self))

    # -- the sink's thread -----------------------------------------------------------------

    def outcome(self, stream: str, reason: str | None, count: int,
                latency_ms: float | None, infer_ms: float | None) -> None:
        """One released outcome, as the summary counts it (``reason`` None: labelled)."""
        if reason is None:
            self.labelled.labels(stream).inc(count)
        else:
            self.dropped.labels(stream, reason).inc(count)
        if latency_ms is not None:
            self.latency.labels(stream).observe(max(0.0, latency_ms) / 1000)
        if infer_ms is not None:
            self.inference.labels(stream).observe(max(0.0, infer_ms) / 1000)

    def refresh(self, sink: Sink, force: bool = False) -> None:
        """Copy the sink's state into the snapshot (at most every :data:`REFRESH_S`)."""
        now = self.clock()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_S
        streams = {}
        for sid, st in list(sink.streams.items()):
            s = st.stats
            outputs = {name: dict(c) for name, c in sink.feed.counts(sid).items()}
            streams[sid] = StreamSnapshot(
                labelled=s.labelled, dropped=dict(s.dropped), captured=s.captured,
                fps=s.fps(), pending=len(st.pending), ended=st.closed,
                sessions=len(s.sessions), outputs=outputs, capture=dict(s.counters))
        snap = Snapshot(now, streams, dict(sink.refusals.by_kind), sink.feed.depths())
        with self._lock:
            self._snapshot = snap

    def watch_web(self, web: WebStats) -> None:
        """Where the ``stream_web_*`` metrics come from (the web output, read at scrape)."""
        self._web = web

    # -- any thread ------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The latest snapshot (immutable)."""
        with self._lock:
            return self._snapshot

    def age(self) -> float:
        """Seconds since the sink last refreshed (inf before the first): a stuck sink loop
        shows here, and ``/healthz`` says so."""
        at = self.snapshot.at
        return float("inf") if at == 0.0 else self.clock() - at

    def web(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """(viewers, frames JPEG-encoded) per stream, now; empty without a web view."""
        if self._web is None:
            return {}, {}
        return self._web.viewers(), self._web.encoded_by_stream()


class _SnapshotCollector(Collector):
    """Turns the latest :class:`Snapshot` into metric families at scrape time."""

    def __init__(self, metrics: SinkMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot
        out = CounterMetricFamily("stream_output_frames",
                                  "Frames each output took, by result: written, queue_full "
                                  "(dropped: its queue was full), failed.",
                                  labels=["output", "stream", "result"])
        captured = GaugeMetricFamily("stream_frames_captured",
                                     "Frames the capture issued, by its own count (known "
                                     "once every session of the stream sent its end).",
                                     labels=["stream"])
        fps = GaugeMetricFamily("stream_fps", "Frames released per second (labelled + "
                                "dropped), first release to last.", labels=["stream"])
        pending = GaugeMetricFamily("stream_pending_frames",
                                    "Frames in flight at the sink: seqs its reorder table "
                                    "holds, waiting for a frame or a label.", labels=["stream"])
        sessions = CounterMetricFamily("stream_capture_sessions",
                                       "Capture sessions of the stream this sink saw (more "
                                       "than 1: the capture restarted).", labels=["stream"])
        capture = CounterMetricFamily("stream_capture_events",
                                      "The capture's own running counters, from its last "
                                      "status message: reconnects, connect_failures, stalls, "
                                      "video_busy, ... (reset when the capture restarts).",
                                      labels=["stream", "counter"])
        for sid, st in sorted(snap.streams.items()):
            for name, counts in st.outputs.items():
                for result in ("written", "queue_full", "failed"):
                    out.add_metric([name, sid, result], counts.get(result, 0))
            if st.captured is not None:
                captured.add_metric([sid], st.captured)
            fps.add_metric([sid], st.fps)
            pending.add_metric([sid], st.pending)
            sessions.add_metric([sid], st.sessions)
            for name, value in sorted(st.capture.items()):
                capture.add_metric([sid, name], value)
        refused = CounterMetricFamily("stream_refused_messages",
                                      "Messages the sink refused (malformed, bad stream id, "
                                      "bogus seq, wrong role), by kind.", labels=["kind"])
        for kind, n in sorted(snap.refused.items()):
            refused.add_metric([kind], n)
        viewers = GaugeMetricFamily("stream_web_viewers", "MJPEG viewers watching the stream "
                                    "in the web view now.", labels=["stream"])
        jpegs = CounterMetricFamily("stream_web_jpeg_frames",
                                    "Frames the web view drew and JPEG-encoded (only while "
                                    "someone watches; once per frame for any number of "
                                    "viewers).", labels=["stream"])
        watching, encoded = self.metrics.web()
        for sid, n in sorted(watching.items()):
            viewers.add_metric([sid], n)
        for sid, n in sorted(encoded.items()):
            jpegs.add_metric([sid], n)
        queues = GaugeMetricFamily("stream_output_queue_frames",
                                   "Frames waiting in each output's queue (bounded; full: "
                                   "the output drops live frames as queue_full).",
                                   labels=["output"])
        for name, n in sorted(snap.queues.items()):
            queues.add_metric([name], n)
        age = GaugeMetricFamily("stream_sink_snapshot_age_seconds",
                                "Seconds since the sink loop last refreshed these numbers "
                                "(grows when the loop is stuck).")
        a = self.metrics.age()
        age.add_metric([], a if a != float("inf") else -1.0)
        yield from (out, captured, fps, pending, sessions, capture, refused, viewers, jpegs,
                    queues, age)
