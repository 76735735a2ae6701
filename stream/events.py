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

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypedDict

import msgpack
import zmq

from stream.errors import ConfigError, ProtocolError, StreamError

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
    "status_event",
    "subscribe",
    "summary_event",
    "topic_for",
]

log = logging.getLogger(__name__)

EVENT_SCHEMA_VERSION = 1
"""Major version of the event schema; bumped only by a breaking change."""

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5560"
"""Where the sink publishes events unless configured otherwise (``--events``/``sink.events``)."""

EVENT_TYPES: tuple[str, ...] = ("label", "change", "status", "summary")
"""Event types of schema v1."""

STATUS_TOPIC_PREFIX = "status/"
_STATUS_TYPES = frozenset({"status", "summary"})
_MAX_STREAM_LEN = 64  # same bound as stream.protocol: ids are short names, not URLs
_MAX_INT = (1 << 63) - 1
_MAX_EVENT_BYTES = 1 << 20  # a label event is < 1 KB; anything this big is garbage


class LabelEntry(TypedDict):
    """One class of a label event: index in the model output, display name, probability."""

    id: int
    name: str
    score: float


class LabelEvent(TypedDict):
    """The labels of one frame (topic: stream id)."""

    v: int
    type: Literal["label"]
    stream: str
    seq: int
    pts: float | None
    ts: float
    labels: list[LabelEntry]
    latency_ms: float


class ChangeEvent(TypedDict):
    """A stream's smoothed top-1 class changed (topic: stream id)."""

    v: int
    type: Literal["change"]
    stream: str
    ts: float
    seq: int
    pts: float | None
    previous: LabelEntry | None
    current: LabelEntry


class StatusEvent(TypedDict):
    """A stream's state changed, e.g. connecting -> streaming (topic: ``status/<stream>``)."""

    v: int
    type: Literal["status"]
    stream: str
    ts: float
    state: str
    message: str
    counters: dict[str, int]


class LatencySummary(TypedDict):
    """Capture-to-event latency percentiles in ms; ``None`` before the first label."""

    p50: float | None
    p99: float | None


class SummaryEvent(TypedDict):
    """Running or final totals of one stream (topic: ``status/<stream>``)."""

    v: int
    type: Literal["summary"]
    stream: str
    ts: float
    captured: int
    labelled: int
    dropped: dict[str, int]
    fps: float
    latency_ms: LatencySummary


Event = LabelEvent | ChangeEvent | StatusEvent | SummaryEvent

LabelLike = LabelEntry | tuple[int, str, float]


# --------------------------------------------------------------------------- builders


def _entry(label: LabelLike | Mapping[str, Any]) -> LabelEntry:
    """Normalise a label to a plain dict of built-in types (msgpack cannot pack NumPy scalars)."""
    if isinstance(label, tuple):
        cid, name, score = label
    else:
        cid, name, score = label["id"], label["name"], label["score"]
    return {"id": int(cid), "name": str(name), "score": float(score)}


def label_event(
    stream: str,
    seq: int,
    pts: float | None,
    ts: float,
    labels: Iterable[LabelLike],
    latency_ms: float,
) -> LabelEvent:
    """Build a ``label`` event; ``labels`` are sorted best first whatever order they come in.

    Args:
        stream: stream id.
        seq: the frame's sequence number in its stream (from 0).
        pts: presentation time in seconds, or ``None`` when the source has none.
        ts: capture wall time, Unix seconds.
        labels: top-k as ``(id, name, score)`` tuples or :class:`LabelEntry` dicts.
        latency_ms: capture-to-publish latency of this frame.
    """
    entries = sorted((_entry(x) for x in labels), key=lambda e: e["score"], reverse=True)
    return {
        "v": EVENT_SCHEMA_VERSION,
        "type": "label",
        "stream": stream,
        "seq": int(seq),
        "pts": None if pts is None else float(pts),
        "ts": float(ts),
        "labels": entries,
        "latency_ms": float(latency_ms),
    }


def change_event(
    stream: str,
    seq: int,
    pts: float | None,
    ts: float,
    previous: LabelLike | None,
    current: LabelLike,
) -> ChangeEvent:
    """Build a ``change`` event: the smoothed top-1 class of ``stream`` became ``current``.

    ``previous`` is ``None`` for the first class a stream reports.
    """
    return {
        "v": EVENT_SCHEMA_VERSION,
        "type": "change",
        "stream": stream,
        "ts": float(ts),
        "seq": int(seq),
        "pts": None if pts is None else float(pts),
        "previous": None if previous is None else _entry(previous),
        "current": _entry(current),
    }


def status_event(
    stream: str,
    state: str,
    message: str = "",
    counters: Mapping[str, int] | None = None,
    ts: float | None = None,
) -> StatusEvent:
    """Build a ``status`` event (``ts`` defaults to now).

    ``message`` must already be redacted: it goes to every subscriber (invariant 6).
    """
    return {
        "v": EVENT_SCHEMA_VERSION,
        "type": "status",
        "stream": stream,
        "ts": time.time() if ts is None else float(ts),
        "state": state,
        "message": message,
        "counters": {str(k): int(v) for k, v in (counters or {}).items()},
    }


def summary_event(
    stream: str,
    captured: int,
    labelled: int,
    dropped: Mapping[str, int],
    fps: float,
    latency_p50_ms: float | None,
    latency_p99_ms: float | None,
    ts: float | None = None,
) -> SummaryEvent:
    """Build a ``summary`` event: totals of one stream so far (``ts`` defaults to now).

    Invariant 1 says ``captured == labelled + sum(dropped.values())`` once a stream has
    drained; while frames are in flight ``captured`` is larger.
    """
    return {
        "v": EVENT_SCHEMA_VERSION,
        "type": "summary",
        "stream": stream,
        "ts": time.time() if ts is None else float(ts),
        "captured": int(captured),
        "labelled": int(labelled),
        "dropped": {str(k): int(v) for k, v in dropped.items()},
        "fps": float(fps),
        "latency_ms": {
            "p50": None if latency_p50_ms is None else float(latency_p50_ms),
            "p99": None if latency_p99_ms is None else float(latency_p99_ms),
        },
    }


def topic_for(event: Mapping[str, Any]) -> str:
    """The ZMQ topic of an event: its stream id, or ``status/<stream>`` for status/summary."""
    stream = str(event["stream"])
    return STATUS_TOPIC_PREFIX + stream if event["type"] in _STATUS_TYPES else stream


# --------------------------------------------------------------------------- wire format


def encode_event(event: Mapping[str, Any]) -> list[bytes]:
    """Encode an event as ``[topic, msgpack map]``, ready for ``send_multipart``.

    Raises:
        ProtocolError: the event lacks ``type``/``stream`` or holds a value msgpack cannot
            pack (build events with the ``*_event`` builders, which convert NumPy scalars).
    """
    try:
        topic = topic_for(event).encode("utf-8")
        body: bytes = msgpack.packb(event, use_bin_type=True)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(
            f"cannot encode event: {exc.__class__.__name__}: {exc}; build events with "
            "stream.events.label_event() and friends"
        ) from None
    return [topic, body]


def decode_event(frames: Sequence[bytes | bytearray | memoryview]) -> dict[str, Any]:
    """Parse and validate one event message ``[topic, msgpack map]``.

    Unknown extra fields are kept (forward compatible); the known fields of the event's
    type must be present and of the right type, and the topic must match the event.

    Raises:
        ProtocolError: wrong number of frames, not msgpack, not a map, a newer or invalid
            ``v``, an unknown ``type``, a missing or mistyped field, or a mismatched topic.
    """
    if len(frames) != 2:
        raise ProtocolError(f"event: expected 2 frames (topic, body), got {len(frames)}")
    try:
        topic = bytes(frames[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("event: topic is not UTF-8") from None
    try:
        event = msgpack.unpackb(frames[1], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        name = exc.__class__.__name__
        raise ProtocolError(f"event: body is not valid msgpack ({name})") from None
    if not isinstance(event, dict):
        raise ProtocolError(f"event: body is a {type(event).__name__}, expected a map")
    _check_event(event)
    expected = topic_for(event)
    if topic != expected:
        raise ProtocolError(f"event: topic {topic!r:.80} does not match event (want {expected!r})")
    return event


def _check_event(ev: dict[str, Any]) -> None:
    """Validate the known fields of a decoded event in place; raise ProtocolError on a miss."""
    v = ev.get("v")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ProtocolError(f"event: field 'v' must be a positive integer, got {v!r:.40}")
    if v > EVENT_SCHEMA_VERSION:
        raise ProtocolError(
            f"event schema v{v} is newer than this subscriber understands "
            f"(v{EVENT_SCHEMA_VERSION}); upgrade stream (or your consumer) to read it"
        )
    t = ev.get("type")
    if t not in EVENT_TYPES:
        known = ", ".join(EVENT_TYPES)
        raise ProtocolError(
            f"event: unknown type {t!r:.40} (schema v{EVENT_SCHEMA_VERSION} knows {known})"
        )
    c = _Check(ev, t)
    c.stream("stream")
    c.number("ts")
    if t in ("label", "change"):
        c.int_("seq")
        c.number("pts", optional=True)
    if t == "label":
        labels = c.get("labels")
        if not isinstance(labels, list):
            raise c.bad("labels", "a list of {id, name, score} maps")
        for i, entry in enumerate(labels):
            _check_entry(entry, f"{t}: labels[{i}]")
        c.number("latency_ms")
    elif t == "change":
        prev = c.get("previous")
        if prev is not None:
            _check_entry(prev, f"{t}: previous")
        _check_entry(c.get("current"), f"{t}: current")
    elif t == "status":
        c.str_("state")
        c.str_("message")
        c.counters("counters")
    else:  # summary
        c.int_("captured")
        c.int_("labelled")
        c.counters("dropped")
        c.number("fps")
        lat = c.get("latency_ms")
        if not isinstance(lat, dict):
            raise c.bad("latency_ms", "a map {p50, p99}")
        sub = _Check(lat, f"{t}: latency_ms")
        sub.number("p50", optional=True)
        sub.number("p99", optional=True)


def _check_entry(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise ProtocolError(f"{where} must be a map {{id, name, score}}, got {entry!r:.40}")
    c = _Check(entry, where)
    c.int_("id")
    c.str_("name")
    c.number("score")


class _Check:
    """Typed field checks on a decoded map; each miss is a ProtocolError naming the field."""

    def __init__(self, m: dict[str, Any], where: object) -> None:
        self.m = m
        self.where = where

    def get(self, key: str) -> Any:
        if key not in self.m:
            raise ProtocolError(f"{self.where}: missing field {key!r}")
        return self.m[key]

    def bad(self, key: str, want: str) -> ProtocolError:
        return ProtocolError(f"{self.where}: field {key!r} must be {want}, got {self.m[key]!r:.40}")

    def str_(self, key: str) -> None:
        if not isinstance(self.get(key), str):
            raise self.bad(key, "a string")

    def stream(self, key: str) -> None:
        s = self.get(key)
        if not isinstance(s, str) or not 1 <= len(s) <= _MAX_STREAM_LEN:
            raise self.bad(key, f"a 1..{_MAX_STREAM_LEN} character string")

    def int_(self, key: str) -> None:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_INT:
            raise self.bad(key, f"an integer in 0..{_MAX_INT}")

    def number(self, key: str, optional: bool = False) -> None:
        v = self.get(key)
        if v is None and optional:
            return
        # NaN and infinity are refused: they poison averages and are not valid JSON.
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.bad(key, "a finite number" + (" or null" if optional else ""))

    def counters(self, key: str) -> None:
        v = self.get(key)
        if not isinstance(v, dict) or not all(
            isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0
            for k, n in v.items()
        ):
            raise self.bad(key, "a map of string to non-negative integer")


# --------------------------------------------------------------------------- publisher


class EventPublisher:
    """Publishes events on a ZMQ PUB socket without ever blocking the caller.

    Not thread-safe (ZMQ sockets are not): publish from the thread that owns it.

    Attributes:
        published: events handed to the socket.
        dropped: events the socket refused (``zmq.Again``). A PUB socket also drops
            silently, per subscriber, when that subscriber's queue is full; ZMQ does not
            report those.
    """

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        """Wrap an already bound (or connected) PUB socket; the publisher then owns it."""
        self._socket = socket
        self.published = 0
        self.dropped = 0

    @classmethod
    def bind(cls, ctx: zmq.Context[Any], endpoint: str, hwm: int = 1000) -> EventPublisher:
        """Create a PUB socket bound to ``endpoint`` (``tcp://127.0.0.1:*`` picks a free port).

        Args:
            ctx: the ZMQ context of the calling process.
            endpoint: where subscribers connect, e.g. ``tcp://0.0.0.0:5560``.
            hwm: events queued per subscriber before ZMQ drops for that subscriber.

        Raises:
            ConfigError: ``hwm`` < 1, or the endpoint is invalid or already in use.
        """
        if hwm < 1:  # 0 would mean "unbounded" to ZMQ: a dead subscriber could eat all memory
            raise ConfigError(f"events hwm must be at least 1, got {hwm}")
        sock: zmq.Socket[bytes] = ctx.socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            if exc.errno == zmq.EADDRINUSE:
                raise ConfigError(
                    f"events endpoint {endpoint} is already in use (another sink or program "
                    "is bound to it); pick another with --events or sink.events in the config"
                ) from None
            raise ConfigError(
                f"cannot bind events endpoint {endpoint!r}: {exc.strerror}; use an endpoint "
                "like tcp://0.0.0.0:5560 (--events or sink.events in the config)"
            ) from None
        return cls(sock)

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound last (resolves a ``*`` port), e.g. ``tcp://127.0.0.1:40123``."""
        last = self._socket.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def publish(self, event: Mapping[str, Any]) -> bool:
        """Send one event without blocking.

        Returns:
            ``True`` if the socket took it, ``False`` if it was dropped (counted in ``dropped``).

        Raises:
            ProtocolError: the event cannot be encoded (see :func:`encode_event`).
        """
        frames = encode_event(event)
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.published += 1
        return True

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket; events still queued for subscribers get ``linger_ms`` to leave.

        The default (0) closes at once; the sink passes a second so its final ``summary``
        events reach subscribers that are keeping up, while a stalled one cannot hold it.
        """
        if not self._socket.closed:
            self._socket.close(linger=linger_ms)

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- subscriber


class Subscriber:
    """A SUB socket that yields validated events of chosen streams and types.

    Use as a context manager, or call :meth:`close`. :func:`subscribe` wraps it in a
    generator for ``for`` loops.

    Attributes:
        received: events returned by :meth:`recv`.
        malformed: messages skipped because :func:`decode_event` refused them (including
            event types or versions this build does not know).
        filtered: valid events skipped because their stream or type was not asked for
            (ZMQ topic prefixes are coarser than the exact filter).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        streams: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        *,
        ctx: zmq.Context[Any] | None = None,
        hwm: int = 1000,
    ) -> None:
        """Connect to ``endpoint`` and subscribe.

        Args:
            endpoint: the sink's events endpoint, e.g. ``tcp://127.0.0.1:5560``.
            streams: stream ids to receive (exact match); ``None`` for all.
            types: event types to receive (see :data:`EVENT_TYPES`); ``None`` for all.
            ctx: ZMQ context to use; by default a private one, terminated by :meth:`close`.
            hwm: events queued locally before ZMQ drops (bounds memory if you read slowly).

        Raises:
            ConfigError: an unknown event type, an empty stream list, ``hwm`` < 1, or an
                endpoint ZMQ cannot connect to.
        """
        self.streams, self.types = _check_filters(streams, types)
        if hwm < 1:
            raise ConfigError(f"subscriber hwm must be at least 1, got {hwm}")
        self.received = 0
        self.malformed = 0
        self.filtered = 0
        self._own_ctx = ctx is None
        self._ctx: zmq.Context[Any] = zmq.Context() if ctx is None else ctx
        self._socket: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, hwm)
            self._socket.setsockopt(zmq.MAXMSGSIZE, _MAX_EVENT_BYTES)
            for topic in _topics(self.streams, self.types):
                self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(
                f"cannot connect to events endpoint {endpoint!r}: {exc.strerror}; use "
                f"tcp://HOST:PORT, e.g. {DEFAULT_ENDPOINT}"
            ) from None

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Return the next matching event, or ``None`` after ``timeout`` seconds without one.

        Malformed and unrequested messages are skipped (and counted) without restarting
        the timeout. ``timeout=None`` waits forever; Ctrl-C interrupts the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                wait_ms: int | None = None
            else:
                wait_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait_ms, zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            try:
                event = decode_event(frames)
            except ProtocolError as exc:
                self.malformed += 1
                log.debug("skipped malformed event (%d so far): %s", self.malformed, exc)
                continue
            if (self.streams is not None and event["stream"] not in self.streams) or (
                self.types is not None and event["type"] not in self.types
            ):
                self.filtered += 1
                continue
            self.received += 1
            return event

    def close(self) -> None:
        """Close the socket (linger 0) and terminate the context if this object created it."""
        sock = getattr(self, "_socket", None)
        if sock is not None and not sock.closed:
            sock.close(linger=0)
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_filters(
    streams: Iterable[str] | None, types: Iterable[str] | None
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    if isinstance(streams, str) or isinstance(types, str):
        # "cam1" would otherwise be read as the streams "c", "a", "m", "1".
        raise ConfigError("streams and types must be lists of strings, not a single string")
    s = None if streams is None else frozenset(streams)
    t = None if types is None else frozenset(types)
    if s is not None and not s:
        raise ConfigError("streams is empty: pass None to receive every stream")
    if t is not None:
        unknown = sorted(t - set(EVENT_TYPES))
        if unknown or not t:
            raise ConfigError(
                f"unknown event type(s) {unknown}; choose from {', '.join(EVENT_TYPES)}"
            )
    return s, t


def _topics(streams: frozenset[str] | None, types: frozenset[str] | None) -> list[str]:
    """ZMQ prefixes to subscribe to: as narrow as prefixes allow (the exact filter follows)."""
    want_status = types is None or bool(types & _STATUS_TYPES)
    want_labels = types is None or bool(types - _STATUS_TYPES)
    if streams is None:
        # Label topics are bare stream ids, so no prefix selects "labels only".
        return [""] if want_labels else [STATUS_TOPIC_PREFIX]
    topics = []
    for s in sorted(streams):
        if want_labels:
            topics.append(s)
        if want_status:
            topics.append(STATUS_TOPIC_PREFIX + s)
    return topics


def subscribe(
    endpoint: str = DEFAULT_ENDPOINT,
    streams: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    timeout: float | None = None,
    ctx: zmq.Context[Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield events from a sink, for example::

        for event in stream.events.subscribe("tcp://127.0.0.1:5560", streams=["cam1"]):
            print(event["seq"], event["labels"][0]["name"])

    Args:
        endpoint: the sink's events endpoint.
        streams: stream ids to receive (exact match, "cam1" does not match "cam10");
            ``None`` for every stream.
        types: event types to receive; ``None`` for all of :data:`EVENT_TYPES`.
        timeout: stop after this many seconds without an event; ``None`` waits forever.
        ctx: ZMQ context; by default a private one.

    Returns:
        A generator of decoded event dicts. The socket opens on the first ``next()`` and is
        closed when the loop ends, the generator is closed, or it is garbage-collected.
        Like any PUB/SUB feed, events published before the connection is up are not seen.

    Raises:
        ConfigError: bad filters or timeout (at once), or an unusable endpoint (on first
            iteration).
    """
    _check_filters(streams, types)
    if timeout is not None and not timeout >= 0:
        raise ConfigError(f"timeout must be >= 0 seconds or None, got {timeout}")
    # Materialise iterables now so a one-shot iterator is not consumed twice.
    s = None if streams is None else list(streams)
    t = None if types is None else list(types)
    return _iterate(endpoint, s, t, timeout, ctx)


def _iterate(
    endpoint: str,
    streams: list[str] | None,
    types: list[str] | None,
    timeout: float | None,
    ctx: zmq.Context[Any] | None,
) -> Iterator[dict[str, Any]]:
    # The socket is created inside the generator so that a generator which is never
    # started holds no socket; the with-block closes it on exhaustion, close() and GC.
    with Subscriber(endpoint, streams, types, ctx=ctx) as sub:
        while True:
            event = sub.recv(timeout)
            if event is None:
                return
            yield event


# --------------------------------------------------------------------------- formatting


def _clock(ts: Any) -> str:
    """Local wall-clock time ``HH:MM:SS.mmm`` of a Unix timestamp (what an operator reads)."""
    try:
        t = float(ts)
        whole = math.floor(t)
        ms = min(999, round((t - whole) * 1000))
        return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{ms:03d}"
    except (TypeError, ValueError, OverflowError, OSError):
        return "??:??:??.???"


def _fmt_entry(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "nothing"
    return f"{entry['name']} {float(entry['score']):.2f}"


def _fmt_ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def _fmt_counts(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def format_event(event: Mapping[str, Any]) -> str:
    """One human-readable line for a decoded event, e.g.

    ``12:00:01.234 cam1 #42 tabby 0.91 | tiger cat 0.05 (38 ms)``

    Times are local wall-clock time of ``ts``. Unknown types print their raw map.
    """
    t = event.get("type")
    head = f"{_clock(event.get('ts'))} {event.get('stream')}"
    if t == "label":
        labels = " | ".join(_fmt_entry(e) for e in event["labels"]) or "(no labels)"
        return f"{head} #{event['seq']} {labels} ({_fmt_ms(event['latency_ms'])})"
    if t == "change":
        return (
            f"{head} #{event['seq']} change: {_fmt_entry(event['current'])} "
            f"(was {_fmt_entry(event['previous'])})"
        )
    if t == "status":
        line = f"{head} status {event['state']}"
        if event.get("message"):
            line += f": {event['message']}"
        if event.get("counters"):
            line += f" [{_fmt_counts(event['counters'])}]"
        return line
    if t == "summary":
        dropped = event["dropped"]
        lat = event["latency_ms"]
        drops = f"dropped {sum(dropped.values())}"
        if dropped:
            drops += f" ({_fmt_counts(dropped)})"
        return (
            f"{head} summary: captured {event['captured']}, labelled {event['labelled']}, "
            f"{drops}, {float(event['fps']):.1f} fps, "
            f"latency p50 {_fmt_ms(lat['p50'])} p99 {_fmt_ms(lat['p99'])}"
        )
    return f"{head} {t}: {dict(event)!r}"


# --------------------------------------------------------------------------- CLI

_EPILOG = f"""\
examples:
  stream subscribe                                  every event, one line each
  stream subscribe --stream cam1 --stream cam2      two streams (exact ids)
  stream subscribe --type change --type status      only class changes and status
  stream subscribe --json | jq -c 'select(.type=="label") | .labels[0]'
  stream subscribe --endpoint tcp://10.0.0.5:5560 --json --count 100 > events.jsonl
  stream subscribe --type summary --timeout 30      exit after 30 s of silence

from Python:
  import stream.events
  for event in stream.events.subscribe("{DEFAULT_ENDPOINT}", streams=["cam1"]):
      if event["type"] == "label":
          top = event["labels"][0]
          print(event["seq"], top["name"], top["score"])

Any language: connect a ZMQ SUB socket, subscribe to the stream id (and "status/<id>"),
read [topic, msgpack map] messages; the schema is in docs/events.md.
"""


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _non_negative_float(text: str) -> float:
    x = float(text)
    if not x >= 0 or math.isinf(x):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return x


def add_subscribe_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``subscribe`` subcommand; its handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser(
        "subscribe",
        help="print label events from a running sink",
        description="Print the label events a sink publishes (one line per event).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help=f"the sink's events endpoint (default: {DEFAULT_ENDPOINT})")
    p.add_argument("--stream", action="append", metavar="ID",
                   help="only this stream id (exact match); repeat for several")
    p.add_argument("--type", action="append", choices=EVENT_TYPES, metavar="TYPE",
                   help=f"only this event type ({', '.join(EVENT_TYPES)}); repeat for several")
    p.add_argument("--json", action="store_true",
                   help="print each event as one JSON object per line (the event map as sent)")
    p.add_argument("--count", type=_positive_int, metavar="N",
                   help="exit after N events")
    p.add_argument("--timeout", type=_non_negative_float, metavar="SECONDS",
                   help="exit after SECONDS without an event (default: wait forever)")
    p.set_defaults(func=run_subscribe)


def _json_default(obj: object) -> object:
    # Extra fields from a newer producer may hold msgpack bin values.
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def run_subscribe(args: argparse.Namespace) -> int:
    """Handler of ``stream subscribe``: print events until ``--count``, ``--timeout`` or Ctrl-C.

    Returns:
        0 on a normal end (including Ctrl-C and a closed pipe); 2 on a usage error.
    """
    seen = 0
    try:
        for event in subscribe(args.endpoint, args.stream, args.type, timeout=args.timeout):
            if args.json:
                line = json.dumps(event, ensure_ascii=False, default=_json_default)
            else:
                line = format_event(event)
            print(line, flush=True)  # flush per line: consumers are often pipes
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): exit quietly, and stop Python's final flush
        # from raising again on the dead pipe.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - must outlive this function
        return 0
    except StreamError as exc:
        print(f"stream subscribe: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m stream.events subscribe [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m stream.events", description="Label events of a stream sink."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_subscribe_parser(sub)
    args = parser.parse_args(argv)
    func: Any = args.func
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
