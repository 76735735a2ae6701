"""PURE wire format between the roles: msgpack header + raw buffers, versioned.

Every message is a ZeroMQ multipart message::

    frame 0   msgpack map  {"v": 1, "t": <type>, ...fields}
    frame 1   (optional)   raw bytes: an image (u8, H×W×3, C order) or f32 probabilities

Images and probabilities travel as raw buffers next to the header, never inside msgpack,
so the socket layer can send them with ``copy=False`` and the receiver can wrap them in a
NumPy view without copying. Nothing here touches a socket; :mod:`stream.transport` does.

Message types (``t``) and who sends them:

    hello   capture → sink     a stream starts: kind, fps, size, total frames (files)
    task    capture → worker   the model-sized crop of one frame (+ buffer)
    frame   capture → sink     one captured frame's stamp, with the full image when the
                               sink writes video (+ optional buffer)
    drop    capture → sink     a frame that was captured but not sent on, and why
    result  worker  → sink     top-k classes and true softmax probabilities (+ f32 buffer)
    eos     capture → sink     end of a stream: how many seqs were issued, and why it ended
    status  capture → sink     the source's state changed (connecting, streaming, ...)
    credit  worker  → capture  v2: "take ``grant`` more slots; these seqs are done; I hold
                               at most ``capacity`` tasks" (grants, heartbeat; ``bye``)
    ready   capture → worker   v2: "I have ``frames`` frames ready" (announce, refresh), and
                               grants handed back unused (``declined``)

Versions are per message type (:data:`VERSIONS`): ``credit`` went to v2 when credits moved
from per capture to per worker (issue 8), ``ready`` was born v2; the others are v1. A peer
of another build is refused with a message that names both versions.

The scheduling conversation (both halves in :mod:`stream.dispatch` and
:mod:`stream.grants`)::

    worker  ── credit{grant 0, capacity C}  ──►  capture     heartbeat, every 0.5 s
    capture ── ready{frames n, live, age}   ──►  worker      a frame is ready (to every worker)
    worker  ── credit{grant 1, done [...]}  ──►  capture     a request freed up: one slot
    capture ── task (newest frame)          ──►  worker      or ready{frames 0, declined 1}

A receiver that gets an unknown ``v``, an unknown ``t`` or a field of the wrong type raises
:class:`~stream.errors.ProtocolError` from :func:`decode`; roles count and log those and go
on (invariant 4: bad input never kills a process). No pickle, ever.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from stream.errors import ProtocolError
from stream.ids import STREAM_ID_RULE, is_stream_id

PROTOCOL_VERSION = 1
"""Version of every message type not listed in :data:`VERSIONS`."""

VERSIONS: dict[str, int] = {"credit": 2, "ready": 2}
"""Message types whose wire format changed since v1, with the version this build speaks."""

Buffer = bytes | bytearray | memoryview

MAX_AGE_MS = 86_400_000.0
"""Largest ``age_ms`` a ``ready`` may carry (a day): anything above is a broken peer."""

MAX_INTERVAL_MS = 60_000.0
"""Largest ``interval_ms`` a ``ready`` may carry (a frame a minute)."""


@dataclass(frozen=True)
class Hello:
    """A stream starts (or restarts after a reconnect)."""

    stream: str
    kind: str
    fps: float
    width: int
    height: int
    total_frames: int | None
    url: str  # already redacted: no credentials ever go on the wire
    policy: str
    seq: int = 0  # the seq of the next frame (a reconnect goes on counting)


@dataclass(frozen=True)
class Task:
    """The model-sized crop of one frame, for a worker. ``image`` is u8 H×W×3 BGR."""

    stream: str
    seq: int
    pts: float | None
    ts: float
    height: int
    width: int
    image: Buffer = field(repr=False)


@dataclass(frozen=True)
class Frame:
    """One captured frame's stamp for the sink, with the full image when video is written."""

    stream: str
    seq: int
    pts: float | None
    ts: float
    width: int
    height: int
    image: Buffer | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Drop:
    """A captured frame that capture did not send on, with the reason (named, counted)."""

    stream: str
    seq: int
    pts: float | None
    ts: float
    reason: str


@dataclass(frozen=True)
class Result:
    """A worker's answer for one frame: top-k (best first) and, optionally, all probabilities."""

    stream: str
    seq: int
    ts: float
    worker: str
    ids: tuple[int, ...]
    scores: tuple[float, ...]
    infer_ms: float
    probs: Buffer | None = field(default=None, repr=False)  # f32 little-endian, N classes


@dataclass(frozen=True)
class Eos:
    """End of a stream: seqs ``0 .. frames-1`` were issued; ``reason`` says why it ended."""

    stream: str
    frames: int
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Status:
    """A source changed state; ``counters`` are the capture's running totals."""

    stream: str
    state: str
    ts: float
    message: str = ""
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Credit:
    """Worker → capture (v2): ``grant`` new slots, ``done`` seqs finished, heartbeat, ``bye``.

    Credits belong to the worker, not to one capture: a worker grants ONE slot at a time to
    one of the captures that said they have a frame ready (:class:`Ready`), fairly, when one
    of its infer requests frees up. The capture answers each granted slot with exactly one
    ``task`` (its newest frame) or gives it back in a ``ready`` (``declined``). ``capacity``
    is the most tasks the worker holds at once (requests + prefetch): the capture never
    lets it hold more of its frames than that (capped again by the capture: the wire is not
    trusted). A message with ``grant`` 0 is a heartbeat. ``bye`` announces a clean exit.
    """

    worker: str
    capacity: int
    done: tuple[int, ...] = ()
    bye: bool = False
    grant: int = 0
    model: str = ""  # the worker's model identity (stream.model.identity); "" = not said


@dataclass(frozen=True)
class Ready:
    """Capture → worker (v2): ``frames`` ready to send now; ``declined`` grants handed back.

    Sent to a worker when the capture has more frames ready than the worker was told of,
    to every worker again every heartbeat while one is, and in answer to a grant the
    capture cannot use (no frame left: ``frames`` 0, ``declined`` 1). ``live`` captures are
    granted only when an infer request is free (their frame is chosen at that moment: the
    newest); lossless ones may be prefetched. ``age_ms`` (live, optional) is how old the
    newest frame was when this was sent, on the capture's own clock, and ``interval_ms``
    (live, optional) how often a newer one comes: a worker works out from the two how old
    the newest frame is at any moment, and grants the freshest first within each round of
    its captures, without comparing clocks across machines and without a note per frame.
    """

    stream: str
    frames: int
    live: bool
    declined: int = 0
    age_ms: float | None = None  # optional: older v2 peers neither send nor expect it
    interval_ms: float | None = None  # optional, as age_ms


Message = Hello | Task | Frame | Drop | Result | Eos | Status | Credit | Ready

_TYPE_OF: dict[type, str] = {
    Hello: "hello",
    Task: "task",
    Frame: "frame",
    Drop: "drop",
    Result: "result",
    Eos: "eos",
    Status: "status",
    Credit: "credit",
    Ready: "ready",
}


def encode(msg: Message) -> list[Buffer]:
    """Turn a message into the frames of one multipart ZMQ message.

    Returns:
        ``[header]`` or ``[header, buffer]``; the buffer is passed through untouched (no
        copy), so the caller can send it with ``copy=False``.
    """
    t = _TYPE_OF[type(msg)]
    head: dict[str, Any] = {"v": VERSIONS.get(t, PROTOCOL_VERSION), "t": t}
    buf: Buffer | None = None
    if isinstance(msg, Hello):
        head.update(
            stream=msg.stream, kind=msg.kind, fps=float(msg.fps), width=msg.width,
            height=msg.height, total_frames=msg.total_frames, url=msg.url, policy=msg.policy,
            seq=msg.seq,
        )
    elif isinstance(msg, Task):
        head.update(stream=msg.stream, seq=msg.seq, pts=msg.pts, ts=msg.ts,
                    height=msg.height, width=msg.width)
        buf = msg.image
    elif isinstance(msg, Frame):
        head.update(stream=msg.stream, seq=msg.seq, pts=msg.pts, ts=msg.ts,
                    width=msg.width, height=msg.height, img=msg.image is not None)
        buf = msg.image
    elif isinstance(msg, Drop):
        head.update(stream=msg.stream, seq=msg.seq, pts=msg.pts, ts=msg.ts, reason=msg.reason)
    elif isinstance(msg, Result):
        head.update(stream=msg.stream, seq=msg.seq, ts=msg.ts, worker=msg.worker,
                    ids=list(msg.ids), scores=[float(s) for s in msg.scores],
                    infer_ms=float(msg.infer_ms), probs=msg.probs is not None)
        buf = msg.probs
    elif isinstance(msg, Eos):
        head.update(stream=msg.stream, frames=msg.frames, reason=msg.reason, message=msg.message)
    elif isinstance(msg, Status):
        head.update(stream=msg.stream, state=msg.state, ts=msg.ts, message=msg.message,
                    counters=dict(msg.counters))
    elif isinstance(msg, Credit):
        head.update(worker=msg.worker, capacity=msg.capacity, done=list(msg.done), bye=msg.bye,
                    grant=msg.grant)
        if msg.model:  # optional: older v2 peers neither send nor expect it
            head["model"] = msg.model
    elif isinstance(msg, Ready):
        head.update(stream=msg.stream, frames=msg.frames, live=msg.live, declined=msg.declined)
        if msg.age_ms is not None:
            head["age_ms"] = float(msg.age_ms)
        if msg.interval_ms is not None:
            head["interval_ms"] = float(msg.interval_ms)
    header: bytes = msgpack.packb(head, use_bin_type=True)
    return [header] if buf is None else [header, buf]


def decode(frames: Sequence[Buffer]) -> Message:
    """Parse the frames of one multipart message.

    Raises:
        ProtocolError: not msgpack, not a map, unknown version or type, a missing field,
            a field of the wrong type, or a buffer whose size does not match the header.
    """
    if not frames:
        raise ProtocolError("empty message")
    try:
        head = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"header is not valid msgpack: {exc.__class__.__name__}") from None
    if not isinstance(head, dict):
        raise ProtocolError(f"header is a {type(head).__name__}, expected a map")
    v = head.get("v")
    t = head.get("t")
    want = VERSIONS.get(t, PROTOCOL_VERSION) if isinstance(t, str) else PROTOCOL_VERSION
    if not isinstance(v, int) or isinstance(v, bool) or v != want:
        raise ProtocolError(
            f"unsupported protocol version {v!r} of {str(t)[:20]!r} (this build speaks "
            f"{want}); run the same stream version on every machine"
        )
    r = _Reader(head, t)
    extra = list(frames[1:])
    if t == "task":
        h, w = r.int_("height", 1, 1 << 15), r.int_("width", 1, 1 << 15)
        img = _one_buffer(extra, t, h * w * 3)
        return Task(r.stream(), r.int_("seq"), r.opt_float("pts"), r.float_("ts"), h, w, img)
    if t == "frame":
        w, h = r.int_("width", 1, 1 << 15), r.int_("height", 1, 1 << 15)
        has = r.bool_("img")
        fimg = _one_buffer(extra, t, h * w * 3) if has else _no_buffer(extra, t)
        return Frame(r.stream(), r.int_("seq"), r.opt_float("pts"), r.float_("ts"), w, h, fimg)
    if t == "result":
        ids = r.int_list("ids")
        scores = r.float_list("scores")
        if len(ids) != len(scores):
            raise ProtocolError("result: ids and scores differ in length")
        probs = _one_buffer(extra, t, None) if r.bool_("probs") else _no_buffer(extra, t)
        if probs is not None and len(probs) % 4:
            raise ProtocolError("result: probability buffer is not a whole number of f32")
        return Result(r.stream(), r.int_("seq"), r.float_("ts"), r.str_("worker"),
                      tuple(ids), tuple(scores), r.float_("infer_ms"), probs)
    _no_buffer(extra, str(t))
    if t == "hello":
        return Hello(r.stream(), r.str_("kind"), r.float_("fps"), r.int_("width"),
                     r.int_("height"), r.opt_int("total_frames"), r.str_("url"), r.str_("policy"),
                     r.int_("seq"))
    if t == "drop":
        return Drop(r.stream(), r.int_("seq"), r.opt_float("pts"), r.float_("ts"), r.str_("reason"))
    if t == "eos":
        return Eos(r.stream(), r.int_("frames"), r.str_("reason"), r.str_("message"))
    if t == "status":
        return Status(r.stream(), r.str_("state"), r.float_("ts"), r.str_("message"),
                      r.counters("counters"))
    if t == "credit":
        model = r.str_("model") if "model" in r.head else ""
        if len(model) > 64:
            raise ProtocolError("credit: field 'model' must be at most 64 characters")
        return Credit(r.str_("worker"), r.int_("capacity", 0, 1 << 20),
                      tuple(r.int_list("done")), r.bool_("bye"), r.int_("grant", 0, 1 << 20),
                      model)
    if t == "ready":
        age = r.opt_float("age_ms", 0.0, MAX_AGE_MS) if "age_ms" in r.head else None
        interval = (r.opt_float("interval_ms", 0.0, MAX_INTERVAL_MS)
                    if "interval_ms" in r.head else None)
        return Ready(r.stream(), r.int_("frames", 0, 1 << 20), r.bool_("live"),
                     r.int_("declined", 0, 1 << 20), age, interval)
    raise ProtocolError(f"unknown message type {t!r}")


_MAX_INT = (1 << 63) - 1


class _Reader:
    """Typed field access on a decoded header; every miss is a ProtocolError naming the field."""

    def __init__(self, head: dict[Any, Any], t: object) -> None:
        self.head = head
        self.t = t

    def _get(self, key: str) -> Any:
        if key not in self.head:
            raise ProtocolError(f"{self.t}: missing field {key!r}")
        return self.head[key]

    def _bad(self, key: str, want: str) -> ProtocolError:
        return ProtocolError(f"{self.t}: field {key!r} must be {want}, got {self.head[key]!r:.40}")

    def stream(self) -> str:
        s = self.str_("stream")
        if not is_stream_id(s):
            raise self._bad("stream", f"a stream id ({STREAM_ID_RULE})")
        return s

    def str_(self, key: str) -> str:
        v = self._get(key)
        if not isinstance(v, str):
            raise self._bad(key, "a string")
        return v

    def bool_(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise self._bad(key, "a boolean")
        return v

    def int_(self, key: str, lo: int = 0, hi: int = _MAX_INT) -> int:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self._bad(key, f"an integer in {lo}..{hi}")
        return v

    def opt_int(self, key: str) -> int | None:
        return None if self._get(key) is None else self.int_(key)

    def float_(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        v = self._get(key)
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                or not lo <= v <= hi):
            raise self._bad(key, "a finite number" if (lo, hi) == (-math.inf, math.inf)
                            else f"a number in {lo:g}..{hi:g}")
        return float(v)

    def opt_float(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> float | None:
        return None if self._get(key) is None else self.float_(key, lo, hi)

    def int_list(self, key: str) -> list[int]:
        v = self._get(key)
        if not isinstance(v, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= _MAX_INT for x in v
        ):
            raise self._bad(key, "a list of non-negative integers")
        return v

    def float_list(self, key: str) -> list[float]:
        v = self._get(key)
        if not isinstance(v, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in v
        ):
            raise self._bad(key, "a list of finite numbers")
        return [float(x) for x in v]

    def counters(self, key: str) -> dict[str, int]:
        v = self._get(key)
        if not isinstance(v, dict) or not all(
            isinstance(k, str) and isinstance(x, int) and not isinstance(x, bool)
            for k, x in v.items()
        ):
            raise self._bad(key, "a map of string to integer")
        return dict(v)


def _one_buffer(extra: list[Buffer], t: object, size: int | None) -> Buffer:
    if len(extra) != 1:
        raise ProtocolError(f"{t}: expected 1 buffer frame, got {len(extra)}")
    buf = extra[0]
    n = memoryview(buf).nbytes
    if size is not None and n != size:
        raise ProtocolError(f"{t}: buffer holds {n} bytes, header says {size}")
    return buf


def _no_buffer(extra: list[Buffer], t: object) -> Buffer | None:
    """Check that a message which carries no buffer has none; always returns None."""
    if extra:
        raise ProtocolError(f"{t}: unexpected {len(extra)} extra frame(s)")
    return None
