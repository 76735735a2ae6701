"""The event schema v1: typed shapes, builders, topics, and the msgpack wire round trip.

Pure: no sockets. See the package docstring for the schema itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict

import msgpack

from stream.errors import ProtocolError
from stream.ids import STREAM_ID_RULE, is_stream_id

EVENT_SCHEMA_VERSION = 1
"""Major version of the event schema; bumped only by a breaking change."""

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5560"
"""Where the sink publishes events unless configured otherwise (``--events``/``sink.events``)."""

EVENT_TYPES: tuple[str, ...] = ("label", "change", "status", "summary")
"""Event types of schema v1."""

STATUS_TOPIC_PREFIX = "status/"
STATUS_TYPES = frozenset({"status", "summary"})
_MAX_INT = (1 << 63) - 1
MAX_EVENT_BYTES = 1 << 20  # a label event is < 1 KB; anything this big is garbage


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
    captured: int | None
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
    captured: int | None,
    labelled: int,
    dropped: Mapping[str, int],
    fps: float,
    latency_p50_ms: float | None,
    latency_p99_ms: float | None,
    ts: float | None = None,
) -> SummaryEvent:
    """Build a ``summary`` event: totals of one stream so far (``ts`` defaults to now).

    ``captured`` is the number of frames the capture itself says it issued (from its
    end-of-stream), or ``None`` when that is not known (no end-of-stream arrived): it is
    never inferred from what the sink resolved. Invariant 1 says
    ``captured == labelled + sum(dropped.values())`` once a stream has drained.
    """
    return {
        "v": EVENT_SCHEMA_VERSION,
        "type": "summary",
        "stream": stream,
        "ts": time.time() if ts is None else float(ts),
        "captured": None if captured is None else int(captured),
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
    return STATUS_TOPIC_PREFIX + stream if event["type"] in STATUS_TYPES else stream


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
        c.int_("captured", optional=True)
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
        if not is_stream_id(s):
            raise self.bad(key, f"a stream id ({STREAM_ID_RULE})")

    def int_(self, key: str, optional: bool = False) -> None:
        v = self.get(key)
        if v is None and optional:
            return
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


