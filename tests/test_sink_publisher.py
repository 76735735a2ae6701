"""The sink's one publisher (stream/sink/publisher.py): it redacts every string it sends.

Defect 7: status events carried a capture's exception text unredacted, because the
publisher trusted its callers. Here the secret goes in raw, through the sink's own path
for a capture's ``Status`` message, and a real SUB socket reads the bytes on the wire.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack
import pytest
import zmq

from stream.events import EventPublisher
from stream.protocol import Result, Status
from stream.sink import Publisher, Sink, SinkSettings
from stream.sink.publisher import redacted
from stream.transport import Sockets

pytestmark = pytest.mark.timeout(30)

SECRET = "s3cr3t-Marker"
URL = f"rtsp://admin:{SECRET}@10.0.0.7:554/stream1"


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    with Sockets() as s:
        yield s


def test_a_capture_status_with_a_secret_never_reaches_a_subscriber(sockets: Sockets) -> None:
    pub = EventPublisher.bind(sockets, "tcp://127.0.0.1:*")
    sub = sockets.socket(zmq.SUB, linger_ms=0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.endpoint)
    sink = Sink(SinkSettings(progress=False), Publisher(pub.publish, ["c0", "c1"]),
                threading.Event(), out=io.StringIO(), err=io.StringIO())
    message = f"cannot open {URL}: 401 Unauthorized, then http://10.0.0.7/x?token={SECRET}"
    raw: list[bytes] = []
    deadline = time.monotonic() + 10
    while not raw and time.monotonic() < deadline:  # PUB/SUB: publish until connected
        sink.handle(Status("cam", "reconnecting", 1.0, message, {"connect_failures": 3}), 0.0)
        if sub.poll(50):
            raw = sub.recv_multipart()
    assert raw, "no event reached the subscriber"
    assert raw[0] == b"status/cam"
    assert SECRET.encode() not in raw[1]
    event = msgpack.unpackb(raw[1])
    assert event["message"] == ("cannot open rtsp://***:***@10.0.0.7:554/stream1: "
                                "401 Unauthorized, then http://10.0.0.7/x?token=***")
    assert event["counters"] == {"connect_failures": 3}
    pub.close()


def test_every_string_of_every_event_is_redacted() -> None:
    sent: list[Mapping[str, Any]] = []
    names = [f"class from {URL}", "plain"]  # even a label name cannot leak a secret
    p = Publisher(sent.append, names, smoothing=1, top_k=2, wall=lambda: 200.0)
    p.label(None, Result("cam", 0, 199.5, "w", (0, 1), (0.6, 0.4), 1.0))
    p.status("cam", "output_failed", f"output video: cannot write {URL}")
    assert sent and all(SECRET not in repr(e) for e in sent)
    label, change, status = sent
    assert label["latency_ms"] == pytest.approx(500.0)
    assert label["labels"][0]["name"] == "class from rtsp://***:***@10.0.0.7:554/stream1"
    assert change["type"] == "change" and change["previous"] is None
    assert status["state"] == "output_failed"


def test_redacted_walks_nested_maps_and_lists() -> None:
    value = {"a": [URL, {"b": URL}], f"{URL}": 1, "n": 2.5, "none": None}
    clean = redacted(value)
    assert SECRET not in repr(clean)
    assert clean["n"] == 2.5 and clean["none"] is None
