"""Capture logic with fake FrameSources (the Protocol seam) and real ZeroMQ sockets.

Every test reads what the capture sent on its real sink links and checks it against counts
made here (frames the fake source gave, messages received), never only against the
capture's own numbers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import inproc_capture_links
from fake_worker import ScriptedWorker

from stream.capture import Capture, CaptureSettings, LagMeter
from stream.capture.links import CaptureLinks
from stream.dispatch import worker_socket
from stream.protocol import Drop, Eos, Frame, Hello, Message, Status, decode
from stream.sources import SourceInfo
from stream.transport import Socket, Sockets

pytestmark = pytest.mark.timeout(60)


def test_lag_meter_measures_delay_behind_the_source_clock() -> None:
    lag = LagMeter()
    assert lag.update(10.0, now=100.0) == 0.0
    assert lag.update(10.5, now=100.5) == pytest.approx(0.0)
    assert lag.update(11.0, now=101.3) == pytest.approx(0.3)
    # a burst (frames arriving faster than real time) moves the reference, never negative
    assert lag.update(12.0, now=101.4) == 0.0
    assert lag.update(12.5, now=102.4) == pytest.approx(0.5)


def test_lag_meter_ignores_timestamps_that_stand_still_or_go_back() -> None:
    lag = LagMeter()
    for i in range(50):
        assert lag.update(0.0, now=float(i)) == 0.0  # a camera whose pts never moves
    assert lag.update(5.0, now=100.0) == 0.0
    assert lag.update(1.0, now=101.0) == 0.0  # discontinuity: start over
    assert lag.update(None, now=102.0) == 0.0


# --------------------------------------------------------------------------- fixtures


@dataclass
class Wires:
    """A capture's real sockets (inproc) and the test's ends of them."""

    sockets: Sockets
    links: CaptureLinks
    sink: Socket  # the test's PULL: both sink links connect to it

    def worker(self, name: str = "w1", capacity: int = 4) -> ScriptedWorker:
        """A scripted worker on a DEALER connected to the capture's task socket."""
        sock = worker_socket(self.sockets)
        sock.connect("inproc://tasks")
        return ScriptedWorker(sock, name, capacity)

    def received(self, idle_ms: int = 200) -> list[Message]:
        """Everything the sink link holds, until it stays quiet for ``idle_ms``."""
        out: list[Message] = []
        while self.sink.poll(idle_ms):
            out.append(decode(self.sink.recv_multipart()))
        return out


@pytest.fixture
def wires() -> Iterator[Wires]:
    with Sockets() as sockets:
        # RCVHWM 1: on inproc a link holds SNDHWM + RCVHWM messages, so the video link
        # (SNDHWM 2) is full after 3 frames while nobody reads.
        links, sink = inproc_capture_links(sockets, sink_rcvhwm=1)
        try:
            yield Wires(sockets, links, sink)
        finally:
            sockets.close(linger_ms=0)


class FakeCamera:
    """A live source: ``frames`` frames, each ``interval`` s apart but shot ``shot`` s apart."""

    def __init__(self, frames: int, stop: threading.Event, interval: float = 0.0,
                 shot: float = 0.04, size: tuple[int, int] = (64, 48)) -> None:
        self.frames, self.stop, self.interval, self.shot = frames, stop, interval, shot
        self.w, self.h = size
        self.i = 0

    def open(self) -> SourceInfo:
        return SourceInfo(fps=25.0, width=self.w, height=self.h, total_frames=None)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self.i >= self.frames:
            self.stop.set()
            return None
        if self.interval:
            time.sleep(self.interval)  # the camera's own pace, not a wait for an outcome
        self.i += 1
        return np.full((self.h, self.w, 3), self.i % 256, np.uint8), (self.i - 1) * self.shot

    def close(self) -> None:
        pass


def image_folder(folder: Path, n: int) -> Path:
    """``n`` small PNGs, each a different grey."""
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((48, 64, 3), i * 20, np.uint8))
    return folder


def frames_by_seq(msgs: list[Message]) -> dict[int, list[Frame]]:
    out: dict[int, list[Frame]] = {}
    for m in msgs:
        if isinstance(m, Frame):
            out.setdefault(m.seq, []).append(m)
    return out


def last_status(msgs: list[Message]) -> Status:
    return [m for m in msgs if isinstance(m, Status)][-1]


# --------------------------------------------------------------------------- live sources


def test_live_capture_that_falls_behind_drops_stale_frames_and_accounts_for_all(
    wires: Wires,
) -> None:
    stop = threading.Event()
    # arrives every 20 ms but was shot every 10 ms: 10 ms more behind the camera per frame
    camera = FakeCamera(160, stop, interval=0.02, shot=0.01)
    settings = CaptureSettings(stream="cam", url="rtsp://cam/1", kind="rtsp", policy="drop")
    assert Capture(settings, camera, wires.links, stop).run() == 0
    msgs = wires.received()
    frames = frames_by_seq(msgs)
    drops = Counter(m.reason for m in msgs if isinstance(m, Drop))
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert sorted(frames) == list(range(camera.i)) and eos.frames == camera.i == 160
    # no worker is connected, so every frame is dropped: busy at first, stale once the
    # capture is more than a second behind the camera's clock
    assert sum(drops.values()) == 160
    assert drops["stale"] > 0 and drops["busy"] > 0, drops


def test_full_video_link_never_costs_a_stamp(wires: Wires) -> None:
    """Defect 5: with the video link full, every seq still reaches the sink as one Frame."""
    stop = threading.Event()
    camera = FakeCamera(200, stop, size=(320, 240))
    settings = CaptureSettings(stream="cam", url="rtsp://cam/1", kind="rtsp", policy="drop",
                               send_images=True)
    assert Capture(settings, camera, wires.links, stop).run() == 0
    msgs = wires.received()  # the sink reads only now: the video link was full all along
    frames = frames_by_seq(msgs)
    assert sorted(frames) == list(range(200)), "a seq without its Frame"
    assert all(len(f) == 1 for f in frames.values()), "more than one Frame for a seq"
    stamps = sum(1 for (f,) in frames.values() if f.image is None)
    full = 200 - stamps
    assert 0 < full < 20 and stamps > 150, (full, stamps)  # ~3 fit in the video link
    assert last_status(msgs).counters["video_busy"] == stamps
    assert Counter(m.reason for m in msgs if isinstance(m, Drop)) == {"busy": 200}
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert eos.frames == 200 and eos.reason == "shutdown"


def test_a_file_source_waits_for_the_video_link_instead_of_dropping(wires: Wires,
                                                                    tmp_path: Path) -> None:
    """Lossless sources: every Frame carries its image, however slow the sink reads."""
    folder = image_folder(tmp_path / "imgs", 12)
    stop = threading.Event()
    settings = CaptureSettings(stream="imgs", url=str(folder), kind="images", policy="wait",
                               send_images=True)
    cap = Capture(settings, Capture.make_source(settings), wires.links, stop)
    worker = wires.worker(capacity=2)
    worker.grant(2)
    thread = threading.Thread(target=cap.run)
    thread.start()
    msgs: list[Message] = []
    deadline = time.monotonic() + 30
    while thread.is_alive() or wires.sink.poll(0):
        assert time.monotonic() < deadline
        worker.serve(0)
        if wires.sink.poll(50):  # a slow sink: one message per 50 ms at most
            msgs.append(decode(wires.sink.recv_multipart()))
    thread.join()
    msgs += wires.received()
    frames = frames_by_seq(msgs)
    assert sorted(frames) == list(range(12))
    assert [t.seq for t in worker.tasks] == list(range(12)), "each frame once, in order"
    assert all(f.image is not None for (f,) in frames.values())
    assert "video_busy" not in last_status(msgs).counters
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert (eos.frames, eos.reason) == (12, "end")


def test_frames_of_a_lost_worker_are_resent_for_lossless_sources(wires: Wires,
                                                                 tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", 6)
    stop = threading.Event()
    settings = CaptureSettings(stream="imgs", url=str(folder), kind="images", policy="wait")
    cap = Capture(settings, Capture.make_source(settings), wires.links, stop)
    quitter, keeper = wires.worker("quitter", 2), wires.worker("keeper", 2)
    thread = threading.Thread(target=cap.run)
    thread.start()
    held = quitter.take(2)
    assert [t.seq for t in held] == [0, 1]
    quitter.bye()  # leaves without finishing
    keeper.grant(2)
    deadline = time.monotonic() + 20
    while thread.is_alive():
        assert time.monotonic() < deadline
        keeper.serve(50)
    thread.join()
    assert sorted(t.seq for t in keeper.tasks) == list(range(6))
    assert [t.seq for t in keeper.tasks][:2] == [0, 1], "the lost frames go first"
    msgs = wires.received()
    assert not [m for m in msgs if isinstance(m, Drop)]
    assert last_status(msgs).counters["resent"] == 2


def test_drain_runs_after_stop_and_names_what_a_leaving_worker_held(wires: Wires) -> None:
    """Defect 4 (drain): frames a worker gives back after SIGTERM still get a named drop."""
    stop = threading.Event()

    class Clip(FakeCamera):
        def open(self) -> SourceInfo:
            return SourceInfo(fps=25.0, width=self.w, height=self.h, total_frames=10)

    settings = CaptureSettings(stream="clip", url="clip.mp4", kind="file", policy="wait")
    cap = Capture(settings, Clip(10, threading.Event()), wires.links, stop)
    worker = wires.worker(capacity=4)
    thread = threading.Thread(target=cap.run)
    thread.start()
    held = worker.take(4)
    assert [t.seq for t in held] == [0, 1, 2, 3]
    stop.set()  # capture waits for a grant for seq 4 and on when SIGTERM comes
    worker.bye(done=(0, 1))  # 2 and 3 given back
    thread.join(10)
    assert not thread.is_alive()
    msgs = wires.received()
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    dropped = {m.seq: m.reason for m in msgs if isinstance(m, Drop)}
    # seqs 4.. exist if the capture read (and queued) more frames before it saw stop
    assert 4 <= eos.frames <= 10 and eos.reason == "shutdown"
    assert dropped == dict.fromkeys(range(2, eos.frames), "shutdown"), dropped


def test_a_lossless_end_waiting_on_workers_says_what_it_waits_for(
        wires: Wires, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's end waits, with no deadline, until every frame is labelled; while it waits
    it says for how many frames and whether any worker is connected."""
    monkeypatch.setattr("stream.capture.router.DRAIN_NOTE_S", 0.2)

    class Clip(FakeCamera):
        def open(self) -> SourceInfo:
            return SourceInfo(fps=25.0, width=self.w, height=self.h, total_frames=3)

    settings = CaptureSettings(stream="clip", url="clip.mp4", kind="file", policy="wait")
    cap = Capture(settings, Clip(3, threading.Event()), wires.links, threading.Event())
    worker = wires.worker(capacity=4)
    thread = threading.Thread(target=cap.run)
    with caplog.at_level("WARNING", logger="stream.capture.router"):
        thread.start()
        assert [t.seq for t in worker.take(3)] == [0, 1, 2]
        time.sleep(0.8)  # the worker holds all three: the end waits, and says so
        assert thread.is_alive()
        worker.done(0, 1, 2)
        thread.join(10)
    assert not thread.is_alive()
    notes = [r.getMessage() for r in caplog.records if "the source has ended" in r.message]
    assert notes, caplog.text
    assert ("clip: the source has ended; waiting for workers to label 3 frame(s) they hold "
            "and 0 not yet taken (workers connected: 1)") in notes[0]
    msgs = wires.received()
    assert not [m for m in msgs if isinstance(m, Drop)]  # waited: every frame labelled
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert eos.frames == 3 and eos.reason == "end"


class RealtimeClip(FakeCamera):
    """A file read in real time: ``frames`` frames, then the end (``ended`` is set)."""

    def __init__(self, frames: int) -> None:
        super().__init__(frames, threading.Event())
        self.ended = threading.Event()

    def open(self) -> SourceInfo:
        return SourceInfo(fps=25.0, width=self.w, height=self.h, total_frames=self.frames)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self.i >= self.frames:
            self.ended.set()
            return None
        return super().read()


def start_realtime_clip(
    wires: Wires, frames: int, worker: bool,
) -> tuple[RealtimeClip, threading.Thread, ScriptedWorker | None]:
    """A live (``drop``) capture of a :class:`RealtimeClip` running on a thread, with a
    scripted worker connected first (said hello, granted nothing) when ``worker``."""
    clip = RealtimeClip(frames)
    settings = CaptureSettings(stream="clip", url="clip.mp4", kind="file", policy="drop",
                               realtime=True)
    cap = Capture(settings, clip, wires.links, threading.Event())
    scripted = wires.worker(capacity=1) if worker else None
    if scripted is not None:
        scripted.hello()
    thread = threading.Thread(target=cap.run)
    thread.start()
    return clip, thread, scripted


def test_a_live_streams_last_frame_still_goes_to_a_worker_after_the_source_ended(
    wires: Wires,
) -> None:
    """A realtime file's last frame waits at the end for a connected worker's next grant
    (here granted only after the source ended), instead of being dropped as ``busy``."""
    # the worker is connected, but its request stays busy until the clip has ended
    clip, thread, worker = start_realtime_clip(wires, 5, worker=True)
    assert worker is not None and clip.ended.wait(10)
    time.sleep(0.3)  # the capture is in its end-of-stream drain by now
    worker.grant(1)
    task = worker.recv_task()
    worker.done(task.seq)
    thread.join(10)
    assert not thread.is_alive()
    msgs = wires.received()
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    dropped = {m.seq: m.reason for m in msgs if isinstance(m, Drop)}
    assert (eos.frames, eos.reason) == (5, "end")
    assert task.seq == 4, "the newest frame, the last one"
    assert dropped == dict.fromkeys(range(4), "busy"), dropped


def test_a_live_stream_with_no_worker_ends_without_waiting_for_one(wires: Wires) -> None:
    """With no worker connected, the end drops the last frame as ``busy`` at once."""
    clip, thread, _ = start_realtime_clip(wires, 5, worker=False)
    assert clip.ended.wait(10)
    ended_at = time.monotonic()
    thread.join(10)
    assert time.monotonic() - ended_at < 1.0, "waited for a worker nobody runs"
    msgs = wires.received()
    dropped = {m.seq: m.reason for m in msgs if isinstance(m, Drop)}
    assert dropped == dict.fromkeys(range(5), "busy"), dropped


# --------------------------------------------------------------------------- files, folders


def test_unreadable_images_are_counted_and_shown(wires: Wires, tmp_path: Path) -> None:
    """Defect 16: skipped images are counted (status counters) and named in the end."""
    folder = image_folder(tmp_path / "imgs", 5)
    for name in ("005.jpg", "006.png"):
        (folder / name).write_bytes(b"not an image at all")
    stop = threading.Event()
    settings = CaptureSettings(stream="imgs", url=str(folder), kind="images", policy="drop")
    assert Capture(settings, Capture.make_source(settings), wires.links, stop).run() == 0
    msgs = wires.received()
    ended = [m for m in msgs if isinstance(m, Status) and m.state == "ended"][-1]
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert sorted(frames_by_seq(msgs)) == list(range(5)) and eos.frames == 5
    assert ended.counters["unreadable"] == 2
    assert eos.reason == "end" and "2 unreadable" in eos.message
    (hello,) = [m for m in msgs if isinstance(m, Hello)]
    assert hello.total_frames == 7


def test_a_truncated_file_ends_early_not_complete(wires: Wires, tmp_path: Path) -> None:
    """Defect 14: a real H.264 file cut in half says how many of its frames it gave."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg on PATH")
    full = tmp_path / "full.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc=size=160x120:rate=25", "-frames:v", "200", "-c:v",
                    "libx264", "-pix_fmt", "yuv420p", "-g", "10", "-movflags", "+faststart",
                    str(full)], check=True, timeout=60)
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is first: it still says 200
    stop = threading.Event()
    settings = CaptureSettings(stream="cut", url=str(cut), kind="file", policy="drop")
    assert Capture(settings, Capture.make_source(settings), wires.links, stop).run() == 0
    msgs = wires.received()
    n = len(frames_by_seq(msgs))
    assert 10 < n < 190
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert eos.frames == n
    assert (eos.reason, eos.message) == ("ended_early", f"source ended early: {n} of 200 frames")
    ended = [m for m in msgs if isinstance(m, Status) and m.state == "ended"][-1]
    assert f"source ended early: {n} of 200 frames" in ended.message


def test_a_complete_file_ends_with_end(wires: Wires, tmp_path: Path) -> None:
    from conftest import make_clip

    clip = make_clip(tmp_path / "ok.mp4", [0, 1, 2, 3] * 10)
    stop = threading.Event()
    settings = CaptureSettings(stream="ok", url=str(clip), kind="file", policy="drop")
    assert Capture(settings, Capture.make_source(settings), wires.links, stop).run() == 0
    msgs = wires.received()
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert (eos.frames, eos.reason, eos.message) == (40, "end", "")
    assert len(frames_by_seq(msgs)) == 40
