"""The capture as a real process: exit statuses, a bad --connect, end-of-stream on SIGTERM.

Each test starts ``python -m stream capture`` (or a small driver script at the FrameSource
seam) in a subprocess with a deadline, and plays the sink with a real PULL socket.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq
from conftest import find_free_port_base, write_config

from stream.protocol import Eos, Frame, Message, Status, decode
from stream.transport import Sockets

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_a_malformed_connect_address_exits_2_instead_of_hanging(
    tmp_path: Path, oracle_model: tuple[Path, Path],
) -> None:
    """Defect 2: `--connect 'hub/'` printed the error and then hung in ctx.term()."""
    base = find_free_port_base(3)
    clip = tmp_path / "missing-is-fine.mp4"  # never opened: the sockets fail first
    cfg = write_config(tmp_path / "cfg.yaml", sources=[{"id": "cam", "url": str(clip)}],
                       port_base=base, model=oracle_model[0])
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "stream", "capture", str(cfg), "--source", "cam",
             "--connect", "hub/"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("`stream capture --connect 'hub/'` hung")
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert "hub/" in ran.stderr


def test_an_endpoint_error_ends_the_capture_process(tmp_path: Path,
                                                   oracle_model: tuple[Path, Path]) -> None:
    """Past the command line's checks, a socket error still ends the process with its
    message (every socket belongs to one Sockets, closed before the context ends)."""
    base = find_free_port_base(3)
    cfg = write_config(tmp_path / "cfg.yaml", sources=[{"id": "cam", "url": "x.mp4"}],
                       port_base=base, model=oracle_model[0])
    with Sockets() as sockets:
        squatter = sockets.socket(zmq.ROUTER, linger_ms=0)
        sockets.bind(squatter, f"tcp://127.0.0.1:{base + 2}", "frames")  # capture 0's port
        try:
            ran = run_python(f"""
                import sys, threading
                from stream.capture import run_capture
                from stream.config import load_config
                from stream.errors import ConfigError
                try:
                    run_capture(load_config({str(cfg)!r}), "cam", threading.Event())
                except ConfigError as exc:
                    print(exc)
                    sys.exit(2)
            """)
        except subprocess.TimeoutExpired:
            pytest.fail("run_capture with its frames port taken hung")
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert "cannot bind the frames endpoint" in ran.stdout


# A driver at the FrameSource seam: a capture whose source call is still blocked inside the
# source (as FFmpeg would be) when the process exits. CASE picks how the capture ends.
BLOCKED_AT_EXIT = """
    import sys, threading
    sys.path.insert(0, "tests")  # run from the repository root: the tests' helpers
    from conftest import inproc_capture_links
    from stream.capture import Capture, CaptureSettings
    from stream.sources import SourceInfo
    from stream.transport import Sockets

    CASE = sys.argv[1]
    forever = threading.Event()
    blocked = threading.Event()

    class Poison:
        # Not a frame: the router fails on it, once the next read is surely blocked.
        @property
        def shape(self):
            blocked.wait(10)
            raise RuntimeError("a bug in the capture")

    class Source:
        def __init__(self):
            self.reads = 0
        def open(self):
            return SourceInfo(25.0, 64, 48, None)
        def read(self):
            self.reads += 1
            if CASE == "crash" and self.reads == 1:
                return Poison(), 0.0
            if CASE == "source_error":
                return None  # a looping file without a frame: SourceError
            blocked.set()
            forever.wait()  # blocked, as a read inside FFmpeg can be
        def close(self):
            if CASE == "source_error":
                forever.wait()  # the release blocks

    kind = "rtsp" if CASE == "crash" else "file"
    settings = CaptureSettings(stream="s", url="x", kind=kind, policy="drop",
                               loop=CASE == "source_error")
    with Sockets() as sockets:
        links, sink = inproc_capture_links(sockets)
        code = Capture(settings, Source(), links, threading.Event()).run()
        sockets.close(linger_ms=0)
    print("capture returned", code, flush=True)
    sys.exit(code)
"""


@pytest.mark.parametrize(("case", "code"), [("crash", 1), ("source_error", 2)])
def test_exit_status_is_the_captures_even_with_a_source_call_blocked(case: str,
                                                                     code: int) -> None:
    """Defect 6: the exit hook used os._exit(0) and turned both of these into success."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ran = subprocess.run([sys.executable, "-c", textwrap.dedent(BLOCKED_AT_EXIT), case],
                         capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert f"capture returned {code}" in ran.stdout, ran.stderr[-2000:]
    assert "still blocked in FFmpeg" in ran.stderr  # the exit hook did cut it short
    assert ran.returncode == code, ran.stderr[-2000:]


def test_eos_survives_sigterm_while_the_video_link_is_full(
    tmp_path: Path, oracle_model: tuple[Path, Path],
) -> None:
    """Defect 4: a live capture SIGTERM'd while the sink is not reading still closes its
    stream: the eos arrives once the sink reads again, counting every Frame it sent."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg on PATH")
    clip = tmp_path / "long.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc=size=640x480:rate=25", "-t", "30", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)],
                   check=True, timeout=120)
    base = find_free_port_base(3)
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=oracle_model[0],
                       output_dir=tmp_path / "out",  # the capture sends full frames
                       sources=[{"id": "live", "url": str(clip), "realtime": True}])
    with Sockets() as sockets:
        # The sink: bound, but not reading (RCVHWM 1): the video link fills within a second.
        sink = sockets.socket(zmq.PULL, rcvhwm=1, linger_ms=0)
        sockets.bind(sink, f"tcp://127.0.0.1:{base + 1}", "sink")
        err = (tmp_path / "capture.err").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "stream", "capture", str(cfg),
                                 "--source", "live"], stderr=err, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            while "live streaming" not in (tmp_path / "capture.err").read_text():
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "capture.err").read_text()[-2000:]
                time.sleep(0.05)  # polling the log
            # Let it run 3 s (75 frames of 0.9 MB, far past the link's buffers) with nobody
            # reading; the counters checked below prove the link was full.
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(3)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            err.close()
        log = (tmp_path / "capture.err").read_text()
        assert code == 0, log[-2000:]
        msgs: list[Message] = []
        while sink.poll(1000):  # the sink reads again, after the capture has gone
            msgs.append(decode(sink.recv_multipart()))
    frames = {m.seq for m in msgs if isinstance(m, Frame)}
    stamps = sum(1 for m in msgs if isinstance(m, Frame) and m.image is None)
    eos = [m for m in msgs if isinstance(m, Eos)]
    assert eos, f"no eos among {len(msgs)} messages\n{log[-2000:]}"
    assert eos[0].reason == "shutdown"
    # Full frames still queued in the capture's video link when it exits are lost (at
    # most transport.hwm of them, 16 by default); every other seq has its Frame.
    assert frames <= set(range(eos[0].frames)), "a Frame past the eos count"
    assert len(frames) >= eos[0].frames - 16, (len(frames), eos[0].frames)
    ended = [m for m in msgs if isinstance(m, Status) and m.state == "ended"]
    assert stamps > 0 and ended[-1].counters["video_busy"] == stamps
