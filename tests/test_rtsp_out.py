"""RTSP out against a real RTSP server that accepts publishing, read back by a real client.

The server is FFmpeg in listen mode (``ffmpeg -rtsp_flags listen -i rtsp://...``): it takes
one publisher (ANNOUNCE/SETUP/RECORD over TCP), decodes what it receives and writes every
decoded frame as raw BGR to a file, which the test reads back and checks against what it
sent (count, content, the label panel drawn on it). Killing it is a server that goes away.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import find_free_port_base, wait_until

from stream.outputs.base import OutputFrame
from stream.outputs.rtsp_out import RtspOutput, stream_url
from stream.outputs.runner import OutputRunner

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                reason="needs ffmpeg on PATH (Debian: apt-get install ffmpeg)")

W, H = 320, 240


def level(i: int) -> int:
    """The grey level of frame ``i``: 8 levels 20 apart, readable back after lossy coding."""
    return 60 + (i % 8) * 20


def make_frame(stream: str, seq: int, fps: float = 25.0) -> OutputFrame:
    image = np.full((H, W, 3), level(seq), np.uint8)
    image.flags.writeable = False
    return OutputFrame(stream, 1, seq, seq / fps, 0.0, image, (("cat", 0.9),), None, None,
                       fps)


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc: connecting to the
    one-shot FFmpeg server would use it up)."""
    want = f"0100007F:{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[1].upper().endswith(f":{port:04X}") and parts[3] == "0A" and (
                    parts[1].upper() == want or table.endswith("6")):
                return True
    return False


class Receiver:
    """``ffmpeg -rtsp_flags listen``: one publisher's frames, decoded, to a raw BGR file."""

    def __init__(self, port: int, path: str, out: Path) -> None:
        self.url = f"rtsp://127.0.0.1:{port}/{path}"
        self.port = port
        self.out = out
        self.log = out.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Receiver:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["ffmpeg", "-nostdin", "-v", "warning", "-rtsp_flags", "listen",
                 "-i", self.url, "-fps_mode", "passthrough", "-f", "rawvideo",
                 "-pix_fmt", "bgr24", "-y", str(self.out)],
                stdout=subprocess.DEVNULL, stderr=log)
        wait_until(lambda: listening(self.port) or self.proc.poll() is not None, 10,
                   "the RTSP receiver to listen")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def frames(self) -> int:
        return self.out.stat().st_size // (W * H * 3) if self.out.exists() else 0

    def read(self) -> np.ndarray:
        data = np.fromfile(self.out, np.uint8)
        return data[: self.frames() * W * H * 3].reshape(-1, H, W, 3)

    def wait_exit(self, timeout: float = 10) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def receivers(tmp_path: Path):
    made: list[Receiver] = []

    def make(port: int, name: str, path: str = "live/cam") -> Receiver:
        r = Receiver(port, path, tmp_path / f"{name}.raw")
        made.append(r)
        return r

    yield make
    for r in made:
        r.kill()


def assert_frames_match(frames: np.ndarray, first_seq: int) -> None:
    """Each received frame has the level of the seq sent (away from the label panel), and
    the label panel (dark, top-left) is drawn on it."""
    for k, f in enumerate(frames):
        want = level(first_seq + k)
        got = int(f[150:, 150:].mean())
        assert abs(got - want) <= 4, (k, got, want)
        assert f[:5, :60].mean() < 0.6 * want, (k, "no label panel")


def test_stream_url_puts_the_stream_id_in() -> None:
    assert stream_url("rtsp://h:8554/{stream}", "cam1") == "rtsp://h:8554/cam1"
    assert stream_url("rtsp://h/live/{stream}/main", "a.b") == "rtsp://h/live/a.b/main"


def test_every_frame_reaches_the_server_with_the_overlay(receivers) -> None:
    port = find_free_port_base(1)
    rx = receivers(port, "rx").start()
    out = RtspOutput(f"rtsp://127.0.0.1:{port}/live/{{stream}}")
    n = 40
    for i in range(n):
        out.write(make_frame("cam", i))
    counters = out.counters()["cam"]
    out.end_stream("cam")  # TEARDOWN: the one-shot server ends its file and exits
    out.close()
    assert rx.wait_exit() == 0, rx.log.read_text()
    frames = rx.read()
    assert len(frames) == n
    assert_frames_match(frames, 0)
    assert counters.connected and counters.connects == 1 and counters.frames_sent == n
    assert counters.reconnects == counters.connect_failures == counters.disconnects == 0
    assert not out.counters()["cam"].connected


def offer_until(runner: OutputRunner, seq: int, done, deadline_s: float,
                what: str) -> int:
    """Offer frames at ~50 fps (a live camera's pace: this paces the feed, it waits for
    nothing) until ``done()``; returns the next seq."""
    deadline = time.monotonic() + deadline_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        runner.offer(make_frame("cam", seq), wait=False)
        seq += 1
        time.sleep(0.02)
    return seq


def test_a_server_that_comes_up_later_is_connected_to(receivers, caplog) -> None:
    caplog.set_level(logging.INFO)
    port = find_free_port_base(1)
    out = RtspOutput(f"rtsp://user:s3cret@127.0.0.1:{port}/live/{{stream}}",
                     backoff_min_s=0.1, backoff_max_s=0.4)
    runner = OutputRunner(out, queue_size=4)
    runner.start()
    try:
        # No server: attempts fail, are counted, and frames are refused at once.
        seq = offer_until(runner, 0, lambda: out.counters().get("cam", None) is not None
                          and out.counters()["cam"].connect_failures >= 3, 10,
                          "three failed attempts")
        rx = receivers(port, "rx").start()
        seq = offer_until(runner, seq, lambda: rx.frames() >= 20, 15, "20 frames received")
    finally:
        runner.close()
    assert rx.wait_exit() == 0, rx.log.read_text()
    c = out.counters()["cam"]
    assert c.connects == 1 and c.reconnects == 1 and c.connect_failures >= 3
    assert c.disconnects == 0
    counts = runner.counts("cam")
    assert counts["written"] + counts["failed"] + counts["queue_full"] == seq
    assert counts["written"] == c.frames_sent == rx.frames()
    assert counts["failed"] >= 3
    assert counts["queue_full"] == 0  # so the frames written are the last ones offered
    assert_frames_match(rx.read(), seq - counts["written"])
    errors = runner.take_errors()
    assert len(errors) == 1 and "cannot connect" in errors[0][1]  # one outage, one report
    logged = caplog.text + " ".join(m for _, m in errors)
    assert "s3cret" not in logged and "user:" not in logged
    assert "rtsp://***:***@127.0.0.1" in logged


def test_a_server_that_goes_away_is_reconnected_to_and_the_sink_goes_on(receivers) -> None:
    port = find_free_port_base(1)
    out = RtspOutput(f"rtsp://127.0.0.1:{port}/live/{{stream}}", backoff_min_s=0.1,
                     backoff_max_s=0.4)
    runner = OutputRunner(out, queue_size=4)
    runner.start()
    try:
        first = receivers(port, "first").start()
        seq = offer_until(runner, 0, lambda: first.frames() >= 10, 15, "10 frames")
        first.kill()  # the server dies without a goodbye
        seq = offer_until(runner, seq, lambda: out.counters()["cam"].disconnects >= 1, 10,
                          "the lost connection to be noticed")
        second = receivers(port, "second").start()
        seq = offer_until(runner, seq, lambda: second.frames() >= 10, 15,
                          "10 frames on the restarted server")
    finally:
        runner.close()
    assert second.wait_exit() == 0, second.log.read_text()
    c = out.counters()["cam"]
    assert c.disconnects == 1 and c.reconnects == 1 and c.connects == 2
    counts = runner.counts("cam")
    assert counts["written"] + counts["failed"] + counts["queue_full"] == seq
    assert counts["failed"] >= 1
    assert counts["queue_full"] == 0
    # The restarted server's stream is whole from its first frame (a new encoder: a keyframe
    # first): every frame sent since the reconnect, in order, with the overlay.
    frames = second.read()
    assert len(frames) >= 10
    assert_frames_match(frames, seq - len(frames))


@pytest.mark.parametrize(("url", "message"), [
    ("http://u:pw@h/x", "is not an rtsp:// or rtsps:// URL"),
    ("rtsp://h", "names no path"),
    ("rtsp://h/{id}", "{stream} is the only placeholder"),
    ("rtsp://u:pw@h:99999/{stream}", "has a bad port"),
    ("rtsp://u:pw@h:8554/live", "several sources would publish to one RTSP path"),
])
def test_a_bad_rtsp_out_url_is_a_config_error_without_the_password(url: str,
                                                                   message: str) -> None:
    from stream.config.load import config_from_dict
    from stream.errors import ConfigError

    sources = [{"id": "a", "url": "/tmp/a.mp4"}, {"id": "b", "url": "/tmp/b.mp4"}]
    with pytest.raises(ConfigError, match=r"sink\.rtsp_out") as info:
        config_from_dict({"sources": sources, "sink": {"rtsp_out": url}})
    assert message in str(info.value)
    assert "pw" not in str(info.value)


def test_rtsp_out_alone_makes_captures_send_frames() -> None:
    from stream.config.load import config_from_dict

    cfg = config_from_dict({"sources": [{"id": "a", "url": "/tmp/a.mp4"}],
                            "sink": {"rtsp_out": "rtsp://127.0.0.1:8554/live"}})
    assert cfg.sink.wants_images and cfg.sink.output_dir is None


def test_run_rtsp_out_flag_expands_variables(monkeypatch, tmp_path: Path) -> None:
    from stream.cli import _config_for_run, build_parser

    monkeypatch.setenv("RTSP_PASS", "s3cret")
    args = build_parser().parse_args(
        ["run", "--source", str(tmp_path / "a.mp4"), "--http", "off",
         "--rtsp-out", "rtsp://pub:${RTSP_PASS}@127.0.0.1:8554/{stream}"])
    cfg = _config_for_run(args)
    assert cfg.sink.rtsp_out == "rtsp://pub:s3cret@127.0.0.1:8554/{stream}"
    assert cfg.sink.wants_images


@pytest.mark.timeout(60)
def test_a_server_that_stops_reading_costs_at_most_the_timeout(receivers) -> None:
    # FFmpeg's socket writes have no timeout: a frozen server (SIGSTOP) blocked the
    # publisher for as long as it was stopped. Frames of noise fill the socket buffers
    # fast; offered with wait=True (a lossless stream: the sink waits for the output), so
    # a write that hangs would hang this test.
    rng = np.random.default_rng(5)
    noise = [rng.integers(0, 256, (H, W, 3), np.uint8) for _ in range(4)]

    def noisy(seq: int) -> OutputFrame:
        image = noise[seq % 4].copy()
        image[150:] = level(seq)
        image.flags.writeable = False
        return OutputFrame("cam", 1, seq, seq / 25, 0.0, image, (), None, None, 25.0)

    port = find_free_port_base(1)
    out = RtspOutput(f"rtsp://127.0.0.1:{port}/live/{{stream}}", timeout_s=0.5,
                     backoff_min_s=0.1, backoff_max_s=0.2)
    runner = OutputRunner(out, queue_size=2)
    runner.start()
    frozen = receivers(port, "frozen").start()
    seq = 0
    try:
        while frozen.frames() < 5:
            runner.offer(noisy(seq), wait=True)
            seq += 1
            assert seq < 2000, "the receiver got nothing"
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 20
        while out.counters()["cam"].disconnects == 0:
            assert time.monotonic() < deadline, "the frozen server was never given up on"
            runner.offer(noisy(seq), wait=True)
            seq += 1
        os.kill(frozen.proc.pid, signal.SIGKILL)  # the hung write fails: its thread ends
        frozen.proc.wait(5)
        second = receivers(port, "second").start()
        deadline = time.monotonic() + 20
        while second.frames() < 5:
            assert time.monotonic() < deadline, "never reconnected"
            runner.offer(noisy(seq), wait=True)
            seq += 1
    finally:
        runner.close()
    assert second.wait_exit() == 0, second.log.read_text()
    c = out.counters()["cam"]
    assert c.disconnects == 1 and c.reconnects >= 1
    counts = runner.counts("cam")
    assert counts["written"] + counts["failed"] == seq and counts["queue_full"] == 0
    errors = runner.take_errors()
    assert errors and "no answer within 0.5 s" in errors[0][1], errors


def test_a_new_session_publishes_again_and_is_not_a_reconnect(receivers) -> None:
    port = find_free_port_base(1)
    out = RtspOutput(f"rtsp://127.0.0.1:{port}/live/{{stream}}")
    got = []
    for session, name in ((1, "one"), (2, "two")):
        rx = receivers(port, name).start()
        for i in range(8):
            f = make_frame("cam", i)
            out.write(OutputFrame(f.stream, session, f.seq, f.pts, f.ts, f.image, f.labels,
                                  None, None, 25.0))
        out.end_stream("cam")
        assert rx.wait_exit() == 0, rx.log.read_text()
        got.append(len(rx.read()))
    out.close()
    c = out.counters()["cam"]
    assert got == [8, 8]
    assert (c.connects, c.reconnects, c.disconnects, c.frames_sent) == (2, 0, 0, 16)


def test_bounded_caller_gives_up_on_a_late_call_and_closes_after_it() -> None:
    import threading

    from stream.outputs.bounded_call import BoundedCaller

    release, order = threading.Event(), []
    caller = BoundedCaller("test")
    caller.call(lambda: order.append("first"), 5)
    with pytest.raises(ValueError, match="boom"):
        caller.call(lambda: (_ for _ in ()).throw(ValueError("boom")), 5)
    with pytest.raises(TimeoutError, match=r"no answer within 0\.1 s"):
        caller.call(lambda: (release.wait(10), order.append("late")), 0.1)
    assert caller.hung
    with pytest.raises(TimeoutError, match="has not returned"):
        caller.call(lambda: order.append("refused"), 5)
    caller.finish(lambda: order.append("close"), 0.0)  # does not wait behind the late call
    assert order == ["first"]
    release.set()
    wait_until(lambda: order == ["first", "late", "close"], 5, "the late call, then close")
    assert not caller.hung
