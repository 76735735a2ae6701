"""``run_sink`` as ``stream sink`` runs it: real sockets, the real video file output.

The sink runs in a thread; the test is every other role (real PUSH sockets sending what a
capture and a worker would), so each count is the test's own.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import zmq
from conftest import find_free_port_base

from stream.config import StreamConfig, config_from_dict
from stream.events import Subscriber
from stream.protocol import Eos, Frame, Hello, Message, Result, Status
from stream.sink import run_sink
from stream.transport import Sockets, send

pytestmark = pytest.mark.timeout(90)

W, H, N = 64, 48, 10


def config(out: Path, sources: list[str]) -> StreamConfig:
    port = find_free_port_base(2)
    return config_from_dict({
        "sources": [{"id": s, "url": f"/videos/{s}.mp4"} for s in sources],
        "model": {"path": "/models/none.xml"},
        "sink": {"output_dir": str(out), "events": f"tcp://127.0.0.1:{port}",
                 "reorder_timeout_s": 1.0},
        "transport": {"sink": f"tcp://127.0.0.1:{port + 1}"},
    }, "test")


def messages(stream: str, n: int, eos: bool = True) -> Iterator[Message]:
    yield Hello(stream, "file", 25.0, W, H, n, "clip.mp4", "wait")
    for seq in range(n):
        image = np.full((H, W, 3), seq * 20, np.uint8).tobytes()
        yield Frame(stream, seq, seq / 25, time.time(), W, H, image)
        yield Result(stream, seq, time.time(), "w", (1, 0), (0.9, 0.1), 1.0)
    if eos:
        yield Eos(stream, n, "end")


class SinkThread:
    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = run_sink(self.cfg, self.stop)

    def join(self, timeout: float) -> int | None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join(10)
        return self.code


def handshake(push: zmq.Socket[bytes], sub: Subscriber, stream: str) -> None:
    """PUB/SUB joins late: send status messages until one comes back through the sink."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        send(push, Status(stream, "streaming", time.time()))
        if sub.recv(timeout=0.05) is not None:
            return
    raise AssertionError("the subscriber never got an event from the sink")


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as f:
        return sum(1 for _ in f.decode(video=0))


def test_run_sink_refuses_a_hostile_peer_and_writes_the_legitimate_stream(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a" / "b" / "out"
    cfg = config(out, ["good"])
    sink = SinkThread(cfg)
    with Sockets() as sockets, Subscriber(cfg.sink.events, ["good"]) as sub:
        # One peer, hostile first: ZMQ keeps a connection's order, so the sink has read
        # (and refused) the hostile messages before the good stream can end.
        peer = sockets.socket(zmq.PUSH, linger_ms=2000)
        sockets.connect(peer, cfg.transport.sink, "sink")
        handshake(peer, sub, "good")
        for msg in list(messages("../../../x/PWNED", 1))[:3]:
            send(peer, msg)
        for msg in messages("good", N):
            send(peer, msg)
        code = sink.join(60)
        summary = None
        while summary is None or summary["type"] != "summary":
            summary = sub.recv(timeout=5)
            assert summary is not None, "no summary event"
    assert code == 0
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [Path("a/b/out/good.mp4")]
    assert decoded_frames(out / "good.mp4") == N
    text = capsys.readouterr().out
    assert "rejected malformed messages: 3 (bad_stream_id=3)" in text
    row = next(line.split() for line in text.splitlines() if line.startswith("good "))
    assert row[1:5] == [str(N), str(N), "0", str(N)]
    assert (summary["captured"], summary["labelled"], summary["dropped"]) == (N, N, {})


def test_a_stream_without_end_of_stream_reports_captured_unknown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 9 at the role: killed capture, no eos: the summary must not claim a count."""
    cfg = config(tmp_path / "out", ["cam"])
    sink = SinkThread(cfg)
    with Sockets() as sockets, Subscriber(cfg.sink.events, ["cam"]) as sub:
        push = sockets.socket(zmq.PUSH, linger_ms=2000)
        sockets.connect(push, cfg.transport.sink, "sink")
        handshake(push, sub, "cam")
        deadline = time.monotonic() + 30
        for msg in messages("cam", N, eos=False):
            send(push, msg)
        seen: list[int] = []
        while N - 1 not in seen and time.monotonic() < deadline:
            event = sub.recv(timeout=1)
            if event is not None and event["type"] == "label":
                seen.append(event["seq"])
        assert seen == list(range(N))
        sink.stop.set()
        code = sink.join(30)
    assert code == 0
    text = capsys.readouterr().out
    row = next(line.split() for line in text.splitlines() if line.startswith("cam "))
    assert row[1:3] == ["?", str(N)]
    assert "cam: captured: unknown, no end-of-stream from capture" in text


def test_stream_sink_says_ready_on_its_pipe_once_its_sockets_are_bound(tmp_path: Path) -> None:
    """`stream run` starts the captures when the sink says ready on `--ready-fd`: by then
    the inbox and the events socket must accept connections (a real `stream sink`)."""
    cfg = config(tmp_path / "out", ["a"])
    path = tmp_path / "sink.json"  # JSON is YAML
    path.write_text(cfg.model_dump_json(), encoding="utf-8")
    ready, ready_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "sink", str(path), "--ready-fd", str(ready_w)],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(ready_w,))
    os.close(ready_w)
    try:
        assert select.select([ready], [], [], 60)[0], "no ready line within 60 s"
        assert os.read(ready, 64) == b"ready\n"
        assert proc.poll() is None
        for endpoint in (cfg.sink.events, cfg.transport.sink):
            port = int(endpoint.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # bound and listening: a refused connection would raise here
        assert os.read(ready, 64) == b""  # said once, then closed
    finally:
        os.close(ready)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"label events on" in err
