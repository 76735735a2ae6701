"""The inter-role wire format (stream/protocol.py): round trips and hostile input.

`decode` faces bytes from the network, so besides round trips these tests check the one
promise invariant 4 depends on: whatever arrives, `decode` returns a message or raises
ProtocolError, and nothing else escapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stream import protocol as p
from stream.errors import ProtocolError

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)  # msgpack needs UTF-8
# The stream id rule (DESIGN "Trust"), written out here rather than imported from stream.ids.
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
stream_ids = st.from_regex(STREAM_ID, fullmatch=True)
# Ids a hostile peer would send: paths out of the output folder, hidden files, separators.
HOSTILE_IDS = ["../../x/PWNED", "/etc/passwd", "..", ".", ".hidden", "a/b", "a\\b", "-x",
               "_x", "a b", "cam\x00", "kamera-ä", "x" * 65, ""]
u63 = st.integers(0, (1 << 63) - 1)
num = st.floats(allow_nan=False, allow_infinity=False)  # NaN and inf are refused by design
opt_num = st.none() | num
side = st.integers(1, 12)


def _buffer(data: bytes) -> st.SearchStrategy[p.Buffer]:
    return st.sampled_from([data, bytearray(data), memoryview(data)])


@st.composite
def tasks(draw: st.DrawFn) -> p.Task:
    h, w = draw(side), draw(side)
    img = draw(st.binary(min_size=h * w * 3, max_size=h * w * 3).flatmap(_buffer))
    return p.Task(draw(stream_ids), draw(u63), draw(opt_num), draw(num), h, w, img)


@st.composite
def frames_(draw: st.DrawFn) -> p.Frame:
    h, w = draw(side), draw(side)
    img = draw(st.none() | st.binary(min_size=h * w * 3, max_size=h * w * 3).flatmap(_buffer))
    return p.Frame(draw(stream_ids), draw(u63), draw(opt_num), draw(num), w, h, img)


@st.composite
def results(draw: st.DrawFn) -> p.Result:
    n = draw(st.integers(0, 10))
    ids = tuple(draw(st.lists(u63, min_size=n, max_size=n)))
    scores = tuple(draw(st.lists(num, min_size=n, max_size=n)))
    probs = draw(st.none() | st.integers(0, 50).flatmap(
        lambda k: st.binary(min_size=4 * k, max_size=4 * k)).flatmap(_buffer))
    return p.Result(draw(stream_ids), draw(u63), draw(num), draw(text), ids, scores,
                    draw(num), probs)


messages = st.one_of(
    st.builds(p.Hello, stream_ids, text, num, u63, u63, st.none() | u63, text, text, u63),
    tasks(),
    frames_(),
    st.builds(p.Drop, stream_ids, u63, opt_num, num, text),
    results(),
    st.builds(p.Eos, stream_ids, u63, text, text),
    st.builds(p.Status, stream_ids, text, num, text,
              st.dictionaries(text, st.integers(-(1 << 63), (1 << 64) - 1), max_size=5)),
    st.builds(p.Ready, stream_ids, st.integers(0, 1 << 20), st.booleans(),
              st.integers(0, 1 << 20), st.none() | st.floats(0.0, p.MAX_AGE_MS),
              st.none() | st.floats(0.0, p.MAX_INTERVAL_MS)),
)

# Any value msgpack can carry, for "wrong type" and fuzz inputs.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(), text, st.binary(max_size=20),
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def _norm(msg: p.Message) -> p.Message:
    """Buffers compare by bytes: a decoded buffer may be a different object type."""
    changes = {f.name: bytes(getattr(msg, f.name)) for f in dataclasses.fields(msg)
               if f.name in ("image", "probs") and getattr(msg, f.name) is not None}
    return dataclasses.replace(msg, **changes)


def _header(msg: p.Message) -> dict[str, Any]:
    head: dict[str, Any] = msgpack.unpackb(p.encode(msg)[0])
    return head


def _pack(head: object) -> bytes:
    out: bytes = msgpack.packb(head, use_bin_type=True)
    return out


def _rejects(frames: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        p.decode(frames)


def _decode_or_protocol_error(frames: list[Any]) -> None:
    """The fuzz contract: a message or ProtocolError, never another exception."""
    with contextlib.suppress(ProtocolError):
        msg = p.decode(frames)
        assert isinstance(msg, (p.Hello, p.Task, p.Frame, p.Drop, p.Result, p.Eos, p.Status,
                                p.Credit, p.Ready))


# --------------------------------------------------------------------------- round trips


@settings(max_examples=500, deadline=None)
@given(messages)
def test_round_trip(msg: p.Message) -> None:
    frames = p.encode(msg)
    assert _norm(p.decode(frames)) == _norm(msg)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_round_trip_through_bytes(msg: p.Message) -> None:
    """What a socket delivers: every frame as fresh bytes."""
    frames = [bytes(f) for f in p.encode(msg)]
    assert _norm(p.decode(frames)) == _norm(msg)


def test_buffer_is_not_copied() -> None:
    img = bytearray(2 * 2 * 3)
    frames = p.encode(p.Task("cam1", 0, None, 1.0, 2, 2, img))
    assert frames[1] is img
    decoded = p.decode(frames)
    assert isinstance(decoded, p.Task) and decoded.image is img


# --------------------------------------------------------------------------- malformed input


@FUZZ
@given(st.binary(max_size=300), st.lists(st.binary(max_size=50), max_size=3))
def test_random_bytes(header: bytes, rest: list[bytes]) -> None:
    _decode_or_protocol_error([header, *rest])


@FUZZ
@given(msgpack_values, st.lists(st.binary(max_size=20), max_size=2))
def test_random_msgpack_values(head: object, rest: list[bytes]) -> None:
    _decode_or_protocol_error([_pack(head), *rest])


@FUZZ
@given(messages, st.data())
def test_flipped_bytes(msg: p.Message, data: st.DataObject) -> None:
    frames = [bytes(f) for f in p.encode(msg)]
    header = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 4))):
        header[data.draw(st.integers(0, len(header) - 1))] = data.draw(st.integers(0, 255))
    _decode_or_protocol_error([bytes(header), *frames[1:]])


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_truncated_header(msg: p.Message, data: st.DataObject) -> None:
    frames = p.encode(msg)
    cut = data.draw(st.integers(0, len(frames[0]) - 1))
    _rejects([bytes(frames[0])[:cut], *frames[1:]])


def test_empty_message() -> None:
    _rejects([])


@settings(max_examples=300, deadline=None)
@given(msgpack_values.filter(lambda v: not isinstance(v, dict)))
def test_non_map_header(head: object) -> None:
    _rejects([_pack(head)])


@settings(max_examples=300, deadline=None)
@given(messages, msgpack_values)
def test_wrong_version(msg: p.Message, v: object) -> None:
    # True == 1 and 1.0 == 1 in Python; see test_version_must_be_the_integer_1.
    assume(not (isinstance(v, (int, float)) and v == 1))
    head = _header(msg)
    frames = p.encode(msg)
    _rejects([_pack({**head, "v": v}), *frames[1:]])
    del head["v"]
    _rejects([_pack(head), *frames[1:]])


@pytest.mark.parametrize("v", [True, 1.0])
def test_version_must_be_the_integer_1(v: object) -> None:
    msg = p.Eos("cam1", 3, "end")
    _rejects([_pack({**_header(msg), "v": v})])


@settings(max_examples=300, deadline=None)
@given(messages, text)
def test_unknown_type(msg: p.Message, t: str) -> None:
    assume(t not in {"hello", "task", "frame", "drop", "result", "eos", "status"})
    frames = p.encode(msg)
    _rejects([_pack({**_header(msg), "t": t}), *frames[1:]])


# What each field accepts, as the decoder documents it; anything else must be refused.
def _is_int(x: object, lo: int = 0, hi: int = (1 << 63) - 1) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


ACCEPTS: dict[str, Any] = {
    "stream": lambda x: isinstance(x, str) and STREAM_ID.fullmatch(x) is not None,
    "str": lambda x: isinstance(x, str),
    "int": _is_int,
    "opt_int": lambda x: x is None or _is_int(x),
    "side": lambda x: _is_int(x, 1, 1 << 15),
    "num": _is_num,
    "opt_num": lambda x: x is None or _is_num(x),
    "bool": lambda x: isinstance(x, bool),
    "ids": lambda x: isinstance(x, list) and all(_is_int(i) for i in x),
    "scores": lambda x: isinstance(x, list) and all(
        isinstance(i, (int, float)) and not isinstance(i, bool) for i in x),
    "counters": lambda x: isinstance(x, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in x.items()),
}
FIELDS: dict[str, dict[str, str]] = {
    "hello": {"stream": "stream", "kind": "str", "fps": "num", "width": "int",
              "height": "int", "total_frames": "opt_int", "url": "str", "policy": "str"},
    "task": {"stream": "stream", "seq": "int", "pts": "opt_num", "ts": "num",
             "height": "side", "width": "side"},
    "frame": {"stream": "stream", "seq": "int", "pts": "opt_num", "ts": "num",
              "width": "side", "height": "side", "img": "bool"},
    "drop": {"stream": "stream", "seq": "int", "pts": "opt_num", "ts": "num", "reason": "str"},
    "result": {"stream": "stream", "seq": "int", "ts": "num", "worker": "str", "ids": "ids",
               "scores": "scores", "infer_ms": "num", "probs": "bool"},
    "eos": {"stream": "stream", "frames": "int", "reason": "str", "message": "str"},
    "status": {"stream": "stream", "state": "str", "ts": "num", "message": "str",
               "counters": "counters"},
    "ready": {"stream": "stream", "frames": "int", "live": "bool", "declined": "int"},
}
field_values = st.one_of(
    msgpack_values,
    st.sampled_from([0, -1, 1 << 15, (1 << 15) + 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1,
                     -(1 << 63), math.nan, math.inf, -math.inf, "", "x" * 65, [], {}, [1.5],
                     [-1], [True], {"a": 1.5}, {"a": True}, True, False, None,
                     *HOSTILE_IDS]),
)


@FUZZ
@given(messages, st.data())
def test_every_field_of_the_wrong_type(msg: p.Message, data: st.DataObject) -> None:
    head = _header(msg)
    spec = FIELDS[head["t"]]
    key = data.draw(st.sampled_from(sorted(spec)))
    value = data.draw(field_values)
    assume(not ACCEPTS[spec[key]](value))
    # Keep one-field-wrong messages otherwise valid, so it is this field that is refused.
    _rejects([_pack({**head, key: value}), *p.encode(msg)[1:]])


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_hostile_stream_ids_are_refused(bad: str) -> None:
    """Issue 7 #1: an id that would name a file outside the output folder never decodes."""
    for msg in (p.Hello("cam1", "file", 25.0, 4, 4, 1, "x", "wait"),
                p.Frame("cam1", 0, None, 1.0, 2, 2, None),
                p.Result("cam1", 0, 1.0, "w", (1,), (0.5,), 1.0),
                p.Eos("cam1", 1, "end")):
        frames = p.encode(msg)
        _rejects([_pack({**_header(msg), "stream": bad}), *frames[1:]])


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_missing_field(msg: p.Message, data: st.DataObject) -> None:
    head = _header(msg)
    del head[data.draw(st.sampled_from(sorted(FIELDS[head["t"]])))]
    _rejects([_pack(head), *p.encode(msg)[1:]])


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.binary(max_size=10), min_size=1, max_size=3))
def test_extra_frames(msg: p.Message, extra: list[bytes]) -> None:
    _rejects([*p.encode(msg), *extra])


def test_buffer_size_mismatch() -> None:
    task = p.encode(p.Task("cam1", 0, None, 1.0, 2, 2, bytes(12)))
    _rejects([task[0], bytes(11)])
    _rejects([task[0], bytes(13)])
    _rejects([task[0]])                                   # buffer missing
    frame = p.encode(p.Frame("cam1", 0, None, 1.0, 2, 2, bytes(12)))
    _rejects([frame[0], bytes(24)])
    no_img = p.encode(p.Frame("cam1", 0, None, 1.0, 2, 2, None))
    _rejects([no_img[0], bytes(12)])                      # img=False but a buffer came
    result = p.encode(p.Result("cam1", 0, 1.0, "w", (1,), (0.5,), 1.0, bytes(8)))
    _rejects([result[0], bytes(7)])                       # not whole f32
    _rejects([result[0]])
    _rejects([_pack({**_header(p.Result("c", 0, 1.0, "w", (1, 2), (0.5,), 1.0))})])


@settings(max_examples=200, deadline=None)
@given(side, side, st.integers(0, 50))
def test_task_buffer_sizes(h: int, w: int, n: int) -> None:
    assume(n != h * w * 3)
    head = _header(p.Task("cam1", 0, None, 1.0, h, w, bytes(h * w * 3)))
    _rejects([_pack(head), bytes(n)])


def test_huge_sizes_do_not_allocate() -> None:
    # 32768 × 32768 × 3 is in range for both sides: the check compares, never allocates.
    head = _header(p.Task("cam1", 0, None, 1.0, 1, 1, bytes(3)))
    _rejects([_pack({**head, "height": 1 << 15, "width": 1 << 15}), bytes(3)])
    _rejects([_pack({**head, "seq": (1 << 64) - 1}), bytes(3)])


def test_nan_is_refused() -> None:
    drop = _header(p.Drop("cam1", 0, None, 1.0, "late"))
    _rejects([_pack({**drop, "ts": math.nan})])
    _rejects([_pack({**drop, "pts": math.nan})])
    hello = _header(p.Hello("cam1", "file", 25.0, 640, 480, None, "x.mp4", "block"))
    _rejects([_pack({**hello, "fps": math.nan})])


def test_nan_score_is_refused() -> None:
    head = _header(p.Result("cam1", 0, 1.0, "w", (1,), (0.5,), 1.0))
    _rejects([_pack({**head, "scores": [math.nan]})])


def test_ready_age_is_optional_and_bounded() -> None:
    """``age_ms`` (how old a live capture's newest frame is) is optional on the wire, as
    older v2 captures do not send it, and a negative, non-finite or absurd one is refused."""
    plain = p.Ready("cam1", 1, True)
    assert "age_ms" not in msgpack.unpackb(p.encode(plain)[0])
    assert p.decode(p.encode(plain)).age_ms is None
    aged = p.Ready("cam1", 1, True, age_ms=12.5)
    assert p.decode(p.encode(aged)) == aged
    head = msgpack.unpackb(p.encode(aged)[0])
    for bad in (-0.001, math.nan, math.inf, p.MAX_AGE_MS * 2, "12", True, [1.0]):
        _rejects([_pack({**head, "age_ms": bad})])


def test_ready_interval_is_optional_and_bounded() -> None:
    """``interval_ms`` (how often a live capture gets a newer frame) is optional like
    ``age_ms``, and a negative, non-finite or absurd one is refused."""
    plain = p.Ready("cam1", 1, True, age_ms=3.0)
    assert "interval_ms" not in msgpack.unpackb(p.encode(plain)[0])
    assert p.decode(p.encode(plain)).interval_ms is None
    paced = p.Ready("cam1", 1, True, age_ms=3.0, interval_ms=40.0)
    assert p.decode(p.encode(paced)) == paced
    head = msgpack.unpackb(p.encode(paced)[0])
    for bad in (-1.0, math.nan, math.inf, p.MAX_INTERVAL_MS * 2, "40", False, {}):
        _rejects([_pack({**head, "interval_ms": bad})])
