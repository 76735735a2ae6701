"""Helpers for the live-source tests: the real RTSP server and a pipeline run.

Ports, waiting and the event log come from conftest.py (one of each for the whole suite).
Nothing here sleeps to wait: every wait polls a condition until a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import find_free_port_base, wait_until

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"
NUM_CLASSES = 8


def gi_missing_reason() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None if it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the RTSP server needs Debian's python3-gi)"
    probe = ("import gi; gi.require_version('Gst', '1.0'); "
             "gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer")
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True,
                       timeout=30, check=False)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{SYSTEM_PYTHON} lacks gi/GstRtspServer ({last}); install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{good,bad,ugly}")
    return None


class RtspServer:
    """``tests/rtsp_server.py`` in a child process; start/stop as often as a test likes."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None,
                 stall_after: float | None = None, fps: int = 15) -> None:
        self.port = port
        self.args = ["--port", str(port), "--fps", str(fps)]
        if user is not None:
            self.args += ["--user", user, "--password", password or ""]
        if stall_after is not None:
            self.args += ["--stall-after", str(stall_after)]
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.ready_at: float | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self, timeout: float = 15.0) -> float:
        """Start and wait for READY; returns the monotonic time READY was seen."""
        assert self.proc is None or self.proc.poll() is not None
        self.lines = []
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(SERVER_SCRIPT), *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        wait_until(lambda: any(x.startswith("READY") for x in self.lines) or
                   (self.proc is not None and self.proc.poll() is not None),
                   timeout, "the RTSP server's READY line")
        if not any(x.startswith("READY") for x in self.lines):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"RTSP server exited ({self.proc.returncode}): {err[-2000:]}")
        self.ready_at = time.monotonic()
        return self.ready_at

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.strip())

    def stop(self) -> None:
        """terminate → wait → kill; a clean exit is expected (the script handles SIGTERM)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def build_tiny_model(folder: Path) -> tuple[Path, Path]:
    """A tiny classifier IR (image [1,3,224,224] → mean over H,W → MatMul → [1,8]) + labels."""
    import openvino as ov
    import openvino.opset13 as ops

    image = ops.parameter([1, 3, 224, 224], np.float32, name="image")
    image.output(0).set_names({"image"})
    mean = ops.reduce_mean(image, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    w = np.random.default_rng(0).normal(size=(3, NUM_CLASSES)).astype(np.float32) / 100.0
    logits = ops.matmul(mean, ops.constant(w), False, False)
    logits.output(0).set_names({"probs"})
    model = ov.Model([logits], [image], "tiny-classifier")
    xml = folder / "tiny.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    labels = folder / "labels.txt"
    labels.write_text("".join(f"class{i}\n" for i in range(NUM_CLASSES)))
    return xml, labels


class Pipeline:
    """``python -m stream run cfg.yaml`` for one RTSP source, with free ports and logs."""

    def __init__(self, tmp: Path, url: str, model: Path, labels: Path) -> None:
        p_events = find_free_port_base(3)
        p_sink, p_frames = p_events + 1, p_events + 2
        self.events_endpoint = f"tcp://127.0.0.1:{p_events}"
        self.cfg = tmp / "cfg.yaml"
        self.cfg.write_text(
            "sources:\n"
            f"  - id: cam\n    url: '{url}'\n"
            f"model:\n  path: '{model}'\n  labels: '{labels}'\n  top_k: 3\n"
            "workers:\n  count: 1\n"
            f"sink:\n  events: {self.events_endpoint}\n"
            f"transport:\n  sink: tcp://127.0.0.1:{p_sink}\n"
            f"  frames: tcp://127.0.0.1:{p_frames}\n"
        )
        self.stdout_path = tmp / "run.out"
        self.stderr_path = tmp / "run.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream", "run", str(self.cfg)],
                stdout=out, stderr=err, env=env)

    def terminate(self, timeout: float = 20.0) -> tuple[int, float]:
        """SIGTERM the launcher; returns (exit code, seconds it took to exit)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"`stream run` did not exit within {timeout:.0f} s of SIGTERM\n"
                        + self.stderr()[-3000:])
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

