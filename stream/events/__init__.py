"""Label events, the product's public output: a ZeroMQ PUB feed any program can subscribe to.

Wire format (schema v1, see docs/events.md). Every event is a two-frame ZeroMQ message::

    frame 0   topic, UTF-8: the stream id for ``label`` and ``change`` events,
              ``status/<stream>`` for ``status`` and ``summary`` events
    frame 1   msgpack map, every event has ``v``, ``type``, ``stream`` and ``ts``:

    label    {v, type, stream, seq, pts, ts, labels: [{id, name, score}, ...], latency_ms}
    change   {v, type, stream, ts, seq, pts, previous: {id, name, score} | None,
              current: {id, name, score}}
    status   {v, type, stream, ts, state, message, counters: {str: int}}
    summary  {v, type, stream, ts, captured, labelled, dropped: {reason: count}, fps,
              latency_ms: {p50, p99}}

A label event also carries ``smoothed`` (a list like ``labels``: the top-k of the
probabilities averaged over the last ``sink.smoothing`` frames) when ``sink.smoothing`` > 1.
A summary's ``captured`` is the capture's own count (from its end-of-stream), or ``None``
while no end-of-stream has arrived: never guessed from labelled + dropped.

``seq`` counts a stream's frames from 0, ``ts`` is Unix seconds (capture wall time for
label/change), ``id`` is the class index, ``name`` its display name, ``score`` a
probability, ``labels`` are best first. Summary latencies are ``None`` until a frame has
been labelled.

Versioning: ``v`` is bumped only by a breaking change. New fields and new event types may
appear within a version, so consumers keep unknown fields (:func:`decode_event` does) and
skip event types they do not know (:func:`subscribe` does). A larger ``v`` is refused with a
message saying to upgrade the subscriber.

Topics are chosen so a plain ZMQ SUB can select a stream cheaply, but ZMQ matches topic
*prefixes* ("cam1" would also receive "cam10"), so :class:`Subscriber` filters again on the
decoded ``stream`` field, exactly.

The publisher never blocks: a PUB socket drops messages for a subscriber whose queue (HWM)
is full, and :meth:`EventPublisher.publish` sends with ``NOBLOCK`` and counts anything the
socket refuses, so a slow or dead subscriber can never stall the sink (invariants 3 and 5).
"""

from __future__ import annotations

from stream.events.cli import add_subscribe_parser, format_event, main, run_subscribe
from stream.events.client import EventPublisher, Subscriber, subscribe
from stream.events.schema import (
    DEFAULT_ENDPOINT,
    EVENT_SCHEMA_VERSION,
    EVENT_TYPES,
    ChangeEvent,
    Event,
    LabelEntry,
    LabelEvent,
    LatencySummary,
    StatusEvent,
    SummaryEvent,
    change_event,
    decode_event,
    encode_event,
    label_event,
    status_event,
    summary_event,
    topic_for,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "EVENT_SCHEMA_VERSION",
    "EVENT_TYPES",
    "ChangeEvent",
    "Event",
    "EventPublisher",
    "LabelEntry",
    "LabelEvent",
    "LatencySummary",
    "StatusEvent",
    "Subscriber",
    "SummaryEvent",
    "add_subscribe_parser",
    "change_event",
    "decode_event",
    "encode_event",
    "format_event",
    "label_event",
    "main",
    "run_subscribe",
    "status_event",
    "subscribe",
    "summary_event",
    "topic_for",
]

