"""Label events: schema, wire round trip, and real PUB/SUB sockets (stream/events/)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from conftest import reap
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import events as ev
from stream.errors import ConfigError, ProtocolError

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 10.0

# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    try:
        yield c
    finally:
        c.destroy(linger=0)  # closes any socket a failing test left open, then terminates


@pytest.fixture
def pub(ctx: zmq.Context[Any]) -> Iterator[ev.EventPublisher]:
    with ev.EventPublisher.bind(ctx, "tcp://127.0.0.1:*") as p:
        yield p


def _label(stream: str = "cam1", seq: int = 0) -> ev.LabelEvent:
    return ev.label_event(stream, seq, seq / 25, 1_700_000_000.5 + seq,
                          [(281, "tabby, tabby cat", 0.91), (282, "tiger cat", 0.05)], 38.0)


def _until_first(pub: ev.EventPublisher, event: dict[str, Any],
                 recv: Callable[[float], dict[str, Any] | None]) -> dict[str, Any]:
    """Publish `event` until the subscriber sees something (PUB/SUB slow joiner), bounded."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        pub.publish(event)
        got = recv(0.02)
        if got is not None:
            return got
    raise AssertionError("subscriber saw no event within the deadline")


@contextlib.contextmanager
def _publishing(pub: ev.EventPublisher, event: dict[str, Any]) -> Iterator[None]:
    """Publish `event` from a thread every few ms while the body runs (slow-joiner warm-up).

    The socket is only touched by that thread until it is joined, so no sharing happens.
    """
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not stop.wait(0.005) and time.monotonic() < deadline:
            pub.publish(event)

    t = threading.Thread(target=loop)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


# --------------------------------------------------------------------------- schema

LABEL_KEYS = {"v", "type", "stream", "seq", "pts", "ts", "labels", "latency_ms"}
CHANGE_KEYS = {"v", "type", "stream", "ts", "seq", "pts", "previous", "current"}
STATUS_KEYS = {"v", "type", "stream", "ts", "state", "message", "counters"}
SUMMARY_KEYS = {"v", "type", "stream", "ts", "captured", "labelled", "dropped", "fps",
                "latency_ms"}
ENTRY_KEYS = {"id", "name", "score"}


def test_label_schema() -> None:
    e = _label()
    assert set(e) == LABEL_KEYS
    assert e["v"] == ev.EVENT_SCHEMA_VERSION == 1
    assert e["type"] == "label"
    assert all(set(x) == ENTRY_KEYS for x in e["labels"])
    assert ev.topic_for(e) == "cam1"


def test_label_builder_sorts_best_first_and_converts_scalars() -> None:
    class FakeNumpyFloat(float):  # msgpack refuses float subclasses such as numpy.float64
        pass

    e = ev.label_event("cam1", 3, None, 1.0,
                       [(1, "a", FakeNumpyFloat(0.1)), {"id": 2, "name": "b", "score": 0.8}], 5)
    assert [x["id"] for x in e["labels"]] == [2, 1]
    assert type(e["labels"][1]["score"]) is float
    ev.encode_event(e)  # packs


def test_change_schema() -> None:
    first = ev.change_event("cam1", 7, 0.28, 1.0, None, (281, "tabby", 0.9))
    assert set(first) == CHANGE_KEYS and first["previous"] is None
    nxt = ev.change_event("cam1", 9, None, 2.0, (281, "tabby", 0.9), (282, "tiger cat", 0.6))
    assert set(nxt["previous"] or {}) == ENTRY_KEYS == set(nxt["current"])
    assert ev.topic_for(nxt) == "cam1"


def test_status_schema() -> None:
    e = ev.status_event("cam1", "streaming", "connected", {"captured": 3}, ts=5.0)
    assert set(e) == STATUS_KEYS
    assert e["counters"] == {"captured": 3}
    assert ev.topic_for(e) == "status/cam1"
    assert ev.status_event("cam1", "connecting")["ts"] > 0  # ts defaults to now


def test_summary_schema() -> None:
    e = ev.summary_event("cam1", 100, 97, {"late": 3}, 84.5, 38.0, 95.0, ts=5.0)
    assert set(e) == SUMMARY_KEYS
    assert set(e["latency_ms"]) == {"p50", "p99"}
    assert ev.topic_for(e) == "status/cam1"
    empty = ev.summary_event("cam1", 0, 0, {}, 0.0, None, None)
    assert ev.decode_event(ev.encode_event(empty))["latency_ms"] == {"p50": None, "p99": None}


# --------------------------------------------------------------------------- round trips

streams = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
u63 = st.integers(0, (1 << 63) - 1)
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
entry_st = st.tuples(u63, names, st.floats(0, 1))
counters = st.dictionaries(names, u63, max_size=5)

any_event = st.one_of(
    st.builds(ev.label_event, streams, u63, st.none() | finite, finite,
              st.lists(entry_st, max_size=10), finite),
    st.builds(ev.change_event, streams, u63, st.none() | finite, finite,
              st.none() | entry_st, entry_st),
    st.builds(ev.status_event, streams, names, names, counters, finite),
    st.builds(ev.summary_event, streams, u63, u63, counters, finite,
              st.none() | finite, st.none() | finite, finite),
)


@settings(max_examples=300, deadline=None)
@given(any_event)
def test_round_trip(event: dict[str, Any]) -> None:
    frames = ev.encode_event(event)
    assert frames[0] == ev.topic_for(event).encode()
    assert ev.decode_event(frames) == event


@settings(max_examples=50, deadline=None)
@given(any_event, st.dictionaries(st.text(min_size=1).map(lambda s: "x_" + s),
                                  st.integers() | st.text() | st.none(), max_size=3))
def test_unknown_fields_are_kept(event: dict[str, Any], extra: dict[str, Any]) -> None:
    bigger = {**event, **{k: v for k, v in extra.items() if not (isinstance(v, int)
                                                                    and abs(v) >= 1 << 63)}}
    assert ev.decode_event(ev.encode_event(bigger)) == bigger


def _frames(event: dict[str, Any], **changes: Any) -> list[bytes]:
    body = {**event, **changes}
    for k in [k for k, v in changes.items() if v is _DELETE]:
        del body[k]
    return [ev.topic_for(event).encode(), msgpack.packb(body, use_bin_type=True)]


_DELETE = object()


def test_newer_version_is_refused_with_advice() -> None:
    with pytest.raises(ProtocolError, match=r"v2 is newer.*upgrade"):
        ev.decode_event(_frames(dict(_label()), v=2))


@pytest.mark.parametrize("frames", [
    [],
    [b"cam1"],
    [b"cam1", b"\xc1", b""],                       # three frames
    [b"cam1", b"\xc1"],                            # not msgpack
    [b"cam1", msgpack.packb([1, 2])],              # not a map
    [b"\xff", msgpack.packb(dict(_label()))],     # topic not UTF-8
    [b"cam2", msgpack.packb(dict(_label()))],     # topic does not match
    [b"cam1", msgpack.packb(dict(_label()))[:-3]],  # truncated
])
def test_garbage_is_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        ev.decode_event(frames)


@pytest.mark.parametrize("change", [
    {"v": 0}, {"v": True}, {"v": "1"}, {"v": _DELETE}, {"type": "labels"}, {"type": _DELETE},
    {"stream": ""}, {"stream": "x" * 65}, {"stream": 5}, {"seq": -1}, {"seq": 1.0},
    {"seq": True}, {"ts": math.nan}, {"ts": math.inf}, {"ts": "now"}, {"pts": "0"},
    {"labels": {}}, {"labels": [[1, "a", 0.5]]}, {"labels": [{"id": 1, "name": "a"}]},
    {"labels": [{"id": "1", "name": "a", "score": 0.5}]}, {"latency_ms": None},
    {"latency_ms": _DELETE}, {"seq": 1 << 64 - 1},
])
def test_bad_label_fields_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        ev.decode_event(_frames(dict(_label()), **change))


@pytest.mark.parametrize(("event", "change"), [
    (ev.status_event("c", "s", ts=1.0), {"counters": {"a": -1}}),
    (ev.status_event("c", "s", ts=1.0), {"counters": {"a": 1.5}}),
    (ev.status_event("c", "s", ts=1.0), {"message": None}),
    (ev.summary_event("c", 1, 1, {}, 1.0, 1.0, 1.0, ts=1.0), {"latency_ms": {"p50": 1.0}}),
    (ev.summary_event("c", 1, 1, {}, 1.0, 1.0, 1.0, ts=1.0), {"fps": math.nan}),
    (ev.summary_event("c", 1, 1, {}, 1.0, 1.0, 1.0, ts=1.0), {"dropped": [1]}),
    (ev.change_event("c", 1, None, 1.0, None, (1, "a", 0.5)), {"current": None}),
    (ev.change_event("c", 1, None, 1.0, None, (1, "a", 0.5)), {"previous": 3}),
    # the stream id rule of the config and the wire, not just a short string
    (ev.status_event("c", "s", ts=1.0), {"stream": "../etc"}),
    (ev.status_event("c", "s", ts=1.0), {"stream": "cam 1"}),
    (ev.status_event("c", "s", ts=1.0), {"stream": "x" * 65}),
    (ev.change_event("c", 1, None, 1.0, None, (1, "a", 0.5)), {"stream": "-cam"}),
])
def test_bad_other_fields_are_refused(event: dict[str, Any], change: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        ev.decode_event(_frames(dict(event), **change))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=3))
def test_random_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        ev.decode_event(frames)


def test_encode_refuses_unpackable_values() -> None:
    with pytest.raises(ProtocolError, match="cannot encode"):
        ev.encode_event({**_label(), "latency_ms": object()})


# --------------------------------------------------------------------------- formatting


def test_format_label_line() -> None:
    line = ev.format_event(_label(seq=42))
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} cam1 #42 tabby, tabby cat 0\.91 \| tiger cat 0\.05 \(38 ms\)",
        line), line


def test_format_other_lines() -> None:
    change = ev.format_event(ev.change_event("cam1", 9, None, 1.0, (1, "tabby", 0.8),
                                             (2, "tiger cat", 0.6)))
    assert change.endswith("cam1 #9 change: tiger cat 0.60 (was tabby 0.80)")
    first = ev.format_event(ev.change_event("cam1", 0, None, 1.0, None, (1, "tabby", 0.8)))
    assert first.endswith("(was nothing)")
    status = ev.format_event(ev.status_event("cam1", "reconnecting", "timeout", {"tries": 2}))
    assert status.endswith("cam1 status reconnecting: timeout [tries=2]")
    summary = ev.format_event(ev.summary_event("cam1", 100, 97, {"late": 3}, 84.46, 38, 95))
    assert summary.endswith("cam1 summary: captured 100, labelled 97, dropped 3 (late=3), "
                            "84.5 fps, latency p50 38 ms p99 95 ms")
    assert "p50 - p99 -" in ev.format_event(ev.summary_event("c", 0, 0, {}, 0, None, None))


# --------------------------------------------------------------------------- real sockets


def test_bind_in_use_is_config_error(ctx: zmq.Context[Any], pub: ev.EventPublisher) -> None:
    with pytest.raises(ConfigError, match=r"already in use.*--events"):
        ev.EventPublisher.bind(ctx, pub.endpoint)


def test_bad_arguments_are_config_errors(ctx: zmq.Context[Any]) -> None:
    with pytest.raises(ConfigError):
        ev.EventPublisher.bind(ctx, "nonsense://x")
    with pytest.raises(ConfigError):
        ev.EventPublisher.bind(ctx, "tcp://127.0.0.1:*", hwm=0)
    with pytest.raises(ConfigError):
        ev.subscribe(types=["labels"])
    with pytest.raises(ConfigError):
        ev.subscribe(streams="cam1")
    with pytest.raises(ConfigError):
        ev.Subscriber("nonsense://x")


def test_subscribe_receives_events(pub: ev.EventPublisher) -> None:
    gen = ev.subscribe(pub.endpoint, streams=["cam1"], timeout=DEADLINE_S)
    try:
        with _publishing(pub, dict(_label(seq=0))):
            first = next(gen)  # the generator connects lazily: publish until it has joined
        assert first == _label(seq=0)
        for seq in range(1, 5):
            pub.publish(_label(seq=seq))
        pub.publish(ev.status_event("cam1", "streaming", ts=3.0))
        got = []
        for e in gen:  # bounded: the generator stops after DEADLINE_S of silence
            got.append(e)
            if e["type"] == "status":
                break
    finally:
        gen.close()
    # Warm-up copies of seq 0 may still be queued ahead of the rest.
    assert [g["seq"] for g in got if g["type"] == "label" and g["seq"] != 0] == [1, 2, 3, 4]
    assert got[-1] == ev.status_event("cam1", "streaming", ts=3.0)
    assert pub.published >= 6 and pub.dropped == 0


def test_exact_stream_filter(pub: ev.EventPublisher) -> None:
    with ev.Subscriber(pub.endpoint, streams=["cam1"]) as sub:
        _until_first(pub, dict(_label("cam1")), sub.recv)
        for seq in range(1, 20):
            pub.publish(_label("cam10", seq))
            pub.publish(ev.status_event("cam10", "streaming", ts=1.0))
        pub.publish(ev.status_event("cam1", "stopped", ts=2.0))
        seen = []
        while (e := sub.recv(DEADLINE_S)) is not None:
            seen.append(e)
            if e["type"] == "status":
                break
        assert {e["stream"] for e in seen} == {"cam1"}
        assert seen[-1]["state"] == "stopped"
        assert sub.filtered >= 19 * 2  # cam10 reached the socket (prefix) and was dropped here


def test_type_filter(pub: ev.EventPublisher) -> None:
    with ev.Subscriber(pub.endpoint, types=["status"]) as sub:
        _until_first(pub, dict(ev.status_event("cam1", "streaming", ts=1.0)), sub.recv)
        pub.publish(_label())
        pub.publish(ev.summary_event("cam1", 1, 1, {}, 1.0, 1.0, 1.0))
        pub.publish(ev.status_event("cam1", "stopped", ts=2.0))
        e = sub.recv(DEADLINE_S)
        while e is not None and e["state"] == "streaming":
            e = sub.recv(DEADLINE_S)
        assert e is not None and e["type"] == "status" and e["state"] == "stopped"


def test_malformed_messages_are_skipped(ctx: zmq.Context[Any]) -> None:
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    with ev.EventPublisher(raw) as pub, ev.Subscriber(f"tcp://127.0.0.1:{port}") as sub:
        _until_first(pub, dict(_label(seq=0)), sub.recv)
        raw.send_multipart([b"cam1", b"\xc1garbage"])
        raw.send_multipart([b"cam1"])
        raw.send_multipart([b"cam1", msgpack.packb({"v": 1, "type": "label"})])
        raw.send_multipart([b"cam1", msgpack.packb({**_label(), "v": 9})])
        pub.publish(_label(seq=1))
        e = sub.recv(DEADLINE_S)
        while e is not None and e["seq"] == 0:
            e = sub.recv(DEADLINE_S)
        assert e is not None and e["seq"] == 1
        assert sub.malformed == 4


@pytest.mark.timeout(60)  # a publish that blocked on the stalled subscriber hangs: fails here
def test_non_reading_subscriber_never_blocks_publisher(ctx: zmq.Context[Any]) -> None:
    """A connected subscriber that never reads: every one of 20,000 publishes returns and
    is taken (PUB drops per subscriber, silently), and what that subscriber can read later
    is bounded by its queues, not the 20,000 sent (~2 KB each, ~40 MB: more than any socket
    buffer holds). How fast the publishes go is a figure: ``scripts/latency.py``."""
    names = [(i, f"class {i} " + "x" * 80, 1.0 / (i + 2)) for i in range(20)]
    event = ev.label_event("cam1", 0, 0.0, 1.0, names, 1.0)
    assert len(ev.encode_event(event)[1]) > 2000
    with ev.EventPublisher.bind(ctx, "tcp://127.0.0.1:*", hwm=10) as pub:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 10)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub.endpoint)
        try:
            # Make sure the subscriber is really connected before the flood.
            deadline = time.monotonic() + DEADLINE_S
            while not sub.poll(10) and time.monotonic() < deadline:
                pub.publish(_label())
            assert sub.poll(0), "subscriber never connected"
            before = pub.published
            for _ in range(20_000):
                pub.publish(event)
            taken = pub.published - before
            received = 0
            while sub.poll(500):  # read until the pipe is empty and stays so
                sub.recv_multipart()
                received += 1
        finally:
            sub.close(linger=0)
    assert taken == 20_000 and pub.dropped == 0
    assert received < 20_000, "the stalled subscriber's queue was not bounded"
    print(f"stalled subscriber could read {received} of 20,000")


@pytest.mark.timeout(60)  # a timeout that did not end the iteration hangs: fails here
def test_subscribe_timeout_ends_iteration(pub: ev.EventPublisher) -> None:
    assert list(ev.subscribe(pub.endpoint, timeout=0.2)) == []


def test_generator_closes_its_socket_when_dropped(pub: ev.EventPublisher) -> None:
    gen = ev.subscribe(pub.endpoint, timeout=0.05)
    assert list(gen) == []  # exhausted: socket and private context already closed
    gen2 = ev.subscribe(pub.endpoint, timeout=0.05)
    del gen2  # never started: holds no socket, so nothing to leak (filterwarnings=error)


def test_subscriber_in_another_thread_can_stop(pub: ev.EventPublisher) -> None:
    out: list[dict[str, Any]] = []

    def reader() -> None:
        out.extend(ev.subscribe(pub.endpoint, streams=["cam1"], timeout=0.5))

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.monotonic() + DEADLINE_S
    while not out and time.monotonic() < deadline:
        pub.publish(_label())
        time.sleep(0.01)  # pacing the warm-up publisher, not waiting for a result
    t.join(DEADLINE_S)
    assert not t.is_alive() and out


# --------------------------------------------------------------------------- CLI


def _default_sigint() -> None:
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored,
    # and so would the CLI (Python then installs no KeyboardInterrupt handler): give the
    # child the default, as a terminal's Ctrl-C would find it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "stream.events", "subscribe", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env, preexec_fn=_default_sigint)


def _feed(pub: ev.EventPublisher, proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Publish label events until the CLI exits (it joins late), then return its output."""
    deadline = time.monotonic() + 30
    seq = 0
    while proc.poll() is None and time.monotonic() < deadline:
        pub.publish(_label(seq=seq))
        pub.publish(_label("cam10", seq))
        seq += 1
        time.sleep(0.005)  # pacing the publisher so the pipe does not fill with warm-up
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    return out, err


def test_cli_json_count(pub: ev.EventPublisher) -> None:
    proc = _cli("--endpoint", pub.endpoint, "--stream", "cam1", "--json", "--count", "3")
    out, err = _feed(pub, proc)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    events = [json.loads(line) for line in lines]
    assert all(set(e) == LABEL_KEYS and e["stream"] == "cam1" for e in events)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


def test_cli_readable_format(pub: ev.EventPublisher) -> None:
    proc = _cli("--endpoint", pub.endpoint, "--stream", "cam10", "--count", "2")
    out, err = _feed(pub, proc)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} cam10 #\d+ tabby, tabby cat 0\.91 \| "
                            r"tiger cat 0\.05 \(38 ms\)", line) for line in lines), lines


def test_cli_timeout_exits_zero(pub: ev.EventPublisher) -> None:
    proc = _cli("--endpoint", pub.endpoint, "--timeout", "0.3")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ev.main(["subscribe", "--type", "nope"])
    assert exc.value.code == 2
    assert ev.main(["subscribe", "--endpoint", "nonsense://x", "--timeout", "0"]) == 2
    assert "cannot connect" in capsys.readouterr().err


def test_cli_ctrl_c_exits_zero(pub: ev.EventPublisher) -> None:
    proc = _cli("--endpoint", pub.endpoint)
    try:
        # Wait until it prints (it is then inside the receive loop), then interrupt it.
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while not line and time.monotonic() < deadline and proc.poll() is None:
            pub.publish(_label())
            if select.select([proc.stdout], [], [], 0.02)[0]:
                line = proc.stdout.readline()
        assert line
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        reap(proc)
    assert proc.returncode == 0
    assert "Traceback" not in err
