"""The sink's one publisher of label, change, status and summary events.

Every string the sink publishes is redacted here (:func:`stream.config.redact.redact_url`),
never by callers: a status message carrying a capture's exception text with
``rtsp://user:pass@host`` in it leaves as ``rtsp://***:***@host`` (invariant 6).
Status and summary events are walked string by string on their way out. Label and change
events, one or two per frame, are built only from strings redacted once up front (the
class names, when the publisher is made; each stream id, the first time it is seen), so
the per-frame path does not walk them again (it costs ~15 µs a frame in Python).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stream import events
from stream.config.redact import redact_url
from stream.protocol import Frame, Result
from stream.sink.smoothing import ChangeDetector, Smoother, label_entries
from stream.sink.stats import StreamStats


def redacted(value: Any) -> Any:
    """``value`` with every string in it (map keys included) passed through ``redact_url``."""
    if isinstance(value, str):
        # Both patterns of redact_url need one of these; most strings have neither.
        return redact_url(value) if "://" in value or "=" in value else value
    if isinstance(value, Mapping):
        return {redacted(k): redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


class Publisher:
    """Builds and sends the events of every stream; never blocks (the send callable drops).

    Args:
        send: hands one event to the socket, e.g. :meth:`stream.events.EventPublisher.publish`.
        names: class display names, by class id.
        smoothing: average the probabilities of this many frames (1: off); the label
            event then carries the smoothed top-k as ``smoothed``.
        top_k: classes in a smoothed ranking.
        wall: wall clock (Unix seconds), for latencies and event times.
    """

    def __init__(self, send: Callable[[Mapping[str, Any]], object], names: Sequence[str],
                 smoothing: int = 1, top_k: int = 5,
                 wall: Callable[[], float] = time.time) -> None:
        self._send = send
        self.names = [redact_url(n) for n in names]
        self._ids: dict[str, str] = {}  # stream id -> its redacted form
        self.smoothing = smoothing
        self.top_k = top_k
        self.wall = wall
        self._smoothers: dict[str, Smoother] = {}
        self._changes: dict[str, ChangeDetector] = {}

    def _emit(self, event: Mapping[str, Any]) -> None:
        """Send a status or summary event, every string in it redacted."""
        self._send(redacted(event))

    def _stream_id(self, stream: str) -> str:
        clean = self._ids.get(stream)
        if clean is None:
            if len(self._ids) > 100_000:  # bounded: ids come from the wire
                self._ids.clear()
            clean = self._ids[stream] = redact_url(stream)
        return clean

    def new_session(self, stream: str) -> None:
        """A stream's capture restarted: its smoothing window starts afresh."""
        smoother = self._smoothers.get(self._stream_id(stream))
        if smoother is not None:
            smoother.reset()

    def label(self, frame: Frame | None, res: Result) -> tuple[float, list[tuple[str, float]]]:
        """Publish a label event (and a change event when the shown top-1 changed).

        Returns:
            The capture → publish latency (ms) and the (name, score) pairs to draw.
        """
        # Every string below is already redacted: names (at __init__) and the stream id.
        stream = self._stream_id(res.stream)
        latency = (self.wall() - res.ts) * 1000.0
        labels = label_entries(self.names, res.ids, res.scores)
        pts = frame.pts if frame is not None else None
        event: dict[str, Any] = dict(events.label_event(
            stream=stream, seq=res.seq, pts=pts, ts=res.ts, labels=labels,
            latency_ms=latency))
        shown = labels
        if self.smoothing > 1:
            smoother = self._smoothers.get(stream)
            if smoother is None:
                smoother = self._smoothers[stream] = Smoother(self.smoothing, self.top_k)
            shown = smoother.add(self.names, res)
            event["smoothed"] = shown
        self._send(event)
        detector = self._changes.setdefault(stream, ChangeDetector())
        change = detector.update(shown)
        if change is not None:
            previous, current = change
            self._send(events.change_event(stream=stream, seq=res.seq, pts=pts, ts=res.ts,
                                           previous=previous, current=current))
        return latency, [(x["name"], x["score"]) for x in shown]

    def status(self, stream: str, state: str, message: str = "",
               counters: Mapping[str, int] | None = None, ts: float | None = None) -> None:
        """Publish a status event (``message`` may hold anything: it is redacted here)."""
        self._emit(events.status_event(stream=stream, state=state, message=message,
                                       counters=counters,
                                       ts=self.wall() if ts is None else ts))

    def summary(self, stream: str, stats: StreamStats) -> None:
        """Publish the stream's totals so far (``captured`` None until its eos came)."""
        self._emit(events.summary_event(
            stream=stream, ts=self.wall(), captured=stats.captured, labelled=stats.labelled,
            dropped=dict(stats.dropped), fps=stats.fps(), latency_p50_ms=stats.latency(50),
            latency_p99_ms=stats.latency(99)))
