"""The sink's one publisher of label, change, status and summary events.

Every event the sink sends goes through :meth:`Publisher._emit`, which redacts every string
in it (:func:`stream.config.redact.redact_url`) before it reaches the socket: a status
message carrying a capture's exception text with ``rtsp://user:pass@host`` in it leaves as
``rtsp://***:***@host`` (invariant 6), whoever built it. Callers do not redact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stream import events
from stream.config.redact import redact_url
from stream.protocol import Frame, Result
from stream.sink.ordering import StreamStats
from stream.sink.smoothing import ChangeDetector, Smoother, label_entries


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
        self.names = names
        self.smoothing = smoothing
        self.top_k = top_k
        self.wall = wall
        self._smoothers: dict[str, Smoother] = {}
        self._changes: dict[str, ChangeDetector] = {}

    def _emit(self, event: Mapping[str, Any]) -> None:
        self._send(redacted(event))

    def new_session(self, stream: str) -> None:
        """A stream's capture restarted: its smoothing window starts afresh."""
        smoother = self._smoothers.get(stream)
        if smoother is not None:
            smoother.reset()

    def label(self, frame: Frame | None, res: Result) -> tuple[float, list[tuple[str, float]]]:
        """Publish a label event (and a change event when the shown top-1 changed).

        Returns:
            The capture → publish latency (ms) and the (name, score) pairs to draw.
        """
        latency = (self.wall() - res.ts) * 1000.0
        labels = label_entries(self.names, res.ids, res.scores)
        pts = frame.pts if frame is not None else None
        event: dict[str, Any] = dict(events.label_event(
            stream=res.stream, seq=res.seq, pts=pts, ts=res.ts, labels=labels,
            latency_ms=latency))
        shown = labels
        if self.smoothing > 1:
            smoother = self._smoothers.get(res.stream)
            if smoother is None:
                smoother = self._smoothers[res.stream] = Smoother(self.smoothing, self.top_k)
            shown = smoother.add(self.names, res)
            event["smoothed"] = shown
        self._emit(event)
        detector = self._changes.setdefault(res.stream, ChangeDetector())
        change = detector.update(shown)
        if change is not None:
            previous, current = change
            self._emit(events.change_event(stream=res.stream, seq=res.seq, pts=pts, ts=res.ts,
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
