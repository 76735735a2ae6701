"""Shared fixtures for the end-to-end tests: free ports, an oracle model, real clips, configs.

- ``free_port_base(n)``: the first of ``n`` consecutive free TCP ports on 127.0.0.1, so a
  test never collides with another test or with a user's ``stream`` on the default ports.
- ``oracle_model``: a tiny classification IR with the convnext-tiny contract (input
  ``image`` f32 [1,3,224,224] NCHW BGR 0..255, output ``probs`` [1,8] logits) whose right
  answer is known: class k is the pure colour ``ORACLE_COLOURS[k]``, and the logits are
  ``-|mean colour - class colour|² / 100``, so a solid frame is classified with certainty.
- ``make_clip(...)``: a real H.264 MP4 made by ffmpeg, frame i a solid ``classes[i]`` colour.
- ``write_config(...)``: a deployment YAML on given ports, validated by the real loader.
- ``event_log(endpoint)`` / :class:`EventLog`: the ONE way tests watch a sink's events: a
  real SUB subscriber on a thread, connected before the run starts, recording every event.
- Independent oracles for the run's numbers, never the figure the sink computed for itself:
  :func:`captured_by_capture` (the capture's own log line), :func:`video_frames` (ffprobe),
  the clip's length, and what a real subscriber received (:func:`assert_in_order`).
- :func:`summary_row`: the sink's printed table, where ``captured`` may be unknown (None).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml
import zmq
from hypothesis import settings

# Test modules import this file as ``conftest`` (pytest puts tests/ on sys.path). Should one
# import it as ``tests.conftest``, Python would load a second copy with its own record of
# handed-out ports; one module under both names keeps that record single.
sys.modules.setdefault("conftest", sys.modules[__name__])
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

# In CI (CI=true) property tests run a fixed, derandomized set of examples, so a landing
# never depends on the luck of a draw; locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Class colours in BGR (the channel order OpenCV decodes and the IR contract uses).
ORACLE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # black
    (255, 255, 255),  # white
    (0, 0, 255),  # red
    (0, 255, 0),  # green
    (255, 0, 0),  # blue
    (0, 255, 255),  # yellow
    (255, 255, 0),  # cyan
    (255, 0, 255),  # magenta
)
ORACLE_NAMES: tuple[str, ...] = (
    "black", "white", "red", "green", "blue", "yellow", "cyan", "magenta",
)
ORACLE_SCALE = 100.0  # logits = -squared distance / scale

# Bind-tested ports come from below Linux's ephemeral range (32768-60999), so an outgoing
# connection of some other program cannot take one between our test and our use of it.
_PORT_LOW, _PORT_HIGH = 20000, 32000
_handed_out: set[int] = set()


def port_is_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_free_port_base(n: int, attempts: int = 200) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1, never handed out twice.

    The one port finder of the suite: ports come from 20000-32000, below the ephemeral
    range, and each is bind-tested and remembered so no two tests of a session share one.
    """
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(_PORT_LOW, _PORT_HIGH - n)
        ports = range(base, base + n)
        if _handed_out.intersection(ports):
            continue
        if all(port_is_free(p) for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no block of {n} free ports found in {attempts} attempts")


@pytest.fixture
def free_port_base() -> Callable[[int], int]:
    """``free_port_base(n)`` → first port of a block of ``n`` free consecutive ports."""
    return find_free_port_base


# --------------------------------------------------------------------------- oracle model


def build_oracle_ir(xml: Path) -> Path:
    """Write the colour-oracle IR (see the module docstring) to ``xml`` (+ .bin)."""
    import openvino as ov
    import openvino.opset13 as ops

    image = ops.parameter([1, 3, 224, 224], ov.Type.f32, name="image")
    image.output(0).set_names({"image"})
    mean = ops.reduce_mean(image, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    colours = np.array(ORACLE_COLOURS, np.float32)  # [8, 3]
    diff = ops.subtract(ops.unsqueeze(mean, ops.constant(np.array([1], np.int64))),
                        ops.constant(colours[None]))  # [1, 8, 3]
    sq = ops.reduce_sum(ops.multiply(diff, diff), ops.constant(np.array([2], np.int64)),
                        keep_dims=False)  # [1, 8]
    logits = ops.multiply(sq, ops.constant(np.array(-1.0 / ORACLE_SCALE, np.float32)))
    logits.output(0).set_names({"probs"})
    result = ops.result(logits, name="probs")
    model = ov.Model([result], [image], "colour-oracle")
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


@pytest.fixture(scope="session")
def oracle_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(IR .xml path, labels file path) of the 8-colour oracle classifier."""
    d = tmp_path_factory.mktemp("oracle")
    xml = build_oracle_ir(d / "oracle.xml")
    labels = d / "labels.txt"
    labels.write_text("\n".join(ORACLE_NAMES) + "\n", encoding="utf-8")
    return xml, labels


# --------------------------------------------------------------------------- clips


def make_clip(
    path: Path,
    classes: Sequence[int],
    size: tuple[int, int] = (320, 240),
    fps: float = 25.0,
    codec: str = "libx264",
) -> Path:
    """Write a real video: frame i is a solid ``ORACLE_COLOURS[classes[i]]`` frame.

    Args:
        size: (width, height); fps: frame rate; codec: an ffmpeg encoder.
    """
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg (Debian: apt-get install ffmpeg; .ci/run installs it)")
    w, h = size
    frames = np.empty((len(classes), h, w, 3), np.uint8)
    for i, c in enumerate(classes):
        frames[i] = ORACLE_COLOURS[c]
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-",
        "-c:v", codec, "-pix_fmt", "yuv420p", "-g", "10", "-an", str(path),
    ]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True, timeout=60)
    return path


def runs_of_classes(n: int, seed: int, lo: int = 3, hi: int = 7) -> list[int]:
    """``n`` class ids in runs of ``lo..hi`` equal frames, consecutive runs different."""
    rng = random.Random(seed)
    out: list[int] = []
    prev = -1
    while len(out) < n:
        c = rng.choice([k for k in range(len(ORACLE_COLOURS)) if k != prev])
        out += [c] * rng.randint(lo, hi)
        prev = c
    return out[:n]


# --------------------------------------------------------------------------- configs


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if a test left it running (a failed assert, a timeout) and collect its
    pipes, so no process outlives its test."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def inproc_capture_links(sockets: Any, sink_rcvhwm: int | None = None) -> tuple[Any, Any]:
    """A capture's three sockets on inproc (``inproc://tasks``, ``inproc://sink``) and the
    sink's PULL end, made by ``sockets``: ``(CaptureLinks, sink)``. The video link's SNDHWM
    is 2, so a sink that does not read fills it after a few frames."""
    from stream.capture.links import CaptureLinks, sink_links
    from stream.dispatch import task_socket

    tasks = task_socket(sockets)
    tasks.bind("inproc://tasks")
    extra = {} if sink_rcvhwm is None else {"rcvhwm": sink_rcvhwm}
    sink = sockets.socket(zmq.PULL, linger_ms=0, **extra)
    sink.bind("inproc://sink")
    control, video = sink_links(sockets, video_hwm=2)
    control.connect("inproc://sink")
    video.connect("inproc://sink")
    return CaptureLinks(tasks, control, video), sink


def write_config(
    path: Path,
    *,
    sources: Sequence[dict[str, Any]],
    port_base: int,
    model: Path,
    labels: Path | None = None,
    workers: int = 1,
    top_k: int = 3,
    output_dir: Path | None = None,
    reorder_timeout_s: float = 5.0,
) -> Path:
    """Write a deployment YAML on ports ``port_base`` (events), +1 (sink), +2.. (frames).

    Needs a block of ``2 + len(sources)`` free ports. The dict is validated with
    :func:`stream.config.config_from_dict` before it is written.
    """
    from stream.config import config_from_dict

    data: dict[str, Any] = {
        "sources": [dict(s) for s in sources],
        "workers": {"count": workers},
        "model": {"path": str(model), "top_k": top_k,
                  **({"labels": str(labels)} if labels is not None else {})},
        "sink": {"events": f"tcp://127.0.0.1:{port_base}",
                 "reorder_timeout_s": reorder_timeout_s,
                 **({"output_dir": str(output_dir)} if output_dir is not None else {})},
        "transport": {"sink": f"tcp://127.0.0.1:{port_base + 1}",
                      "frames": f"tcp://127.0.0.1:{port_base + 2}"},
    }
    config_from_dict(data, str(path))
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- waiting

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float, what: str, poll: float = 0.02) -> T:
    """Poll ``pred`` until it returns something truthy and return it; fail after ``timeout``.

    The deadline bounds a hang; it is not a speed target (those live in scripts/).
    """
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)  # the polling interval, not a wait for the outcome


# --------------------------------------------------------------------------- events


class EventLog:
    """A real SUB subscriber on its own thread, recording every event of one sink.

    Made before the run it watches starts: the socket connects here (10 ms reconnect
    interval, so it joins within milliseconds of the sink's bind) and only the reader thread
    touches it afterwards; :meth:`close` joins the thread, then closes socket and context.
    ``events`` holds ``(monotonic receive time, event)`` in arrival order.
    """

    def __init__(self, endpoint: str, types: Iterable[str] | None = None) -> None:
        from stream.events import Subscriber

        self.endpoint = endpoint
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._ctx.setsockopt(zmq.RECONNECT_IVL, 10)
        # A deep queue: the log must not be the one dropping what the sink published.
        self._sub = Subscriber(endpoint, types=types, ctx=self._ctx, hwm=100_000)
        self._thread = threading.Thread(target=self._loop, name="event-log", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            event = self._sub.recv(timeout=0.05)
            if event is not None:
                with self._lock:
                    self.events.append((time.monotonic(), event))

    def of(self, type_: str, stream: str | None = None, since: float = 0.0
           ) -> list[dict[str, Any]]:
        """Events of one type (and stream) received at or after monotonic time ``since``."""
        with self._lock:
            got = list(self.events)
        return [e for t, e in got
                if e["type"] == type_ and (stream is None or e["stream"] == stream)
                and t >= since]

    def seqs(self, stream: str, since: float = 0.0) -> list[int]:
        """The seqs of the label events of ``stream``, in the order they arrived."""
        return [e["seq"] for e in self.of("label", stream, since)]

    def states(self, stream: str | None = None, since: float = 0.0) -> list[str]:
        return [e["state"] for e in self.of("status", stream, since)]

    def first_time(self, pred: Callable[[dict[str, Any]], bool], since: float = 0.0
                   ) -> float | None:
        """Receive time of the first event matching ``pred`` (at or after ``since``)."""
        with self._lock:
            got = list(self.events)
        return next((t for t, e in got if t >= since and pred(e)), None)

    def wait_for(self, pred: Callable[[], T], timeout: float, what: str) -> T:
        return wait_until(pred, timeout, what)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sub.close()
        self._ctx.term()


@pytest.fixture
def event_log() -> Iterator[Callable[[str], EventLog]]:
    """``event_log(endpoint)`` → a started :class:`EventLog`, closed after the test."""
    logs: list[EventLog] = []

    def start(endpoint: str) -> EventLog:
        logs.append(EventLog(endpoint))
        return logs[-1]

    yield start
    for log in logs:
        log.close()


def assert_in_order(seqs: Sequence[int], what: str = "label seqs") -> None:
    """Strictly increasing: in seq order, and no seq twice (DESIGN invariant 2)."""
    bad = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
    assert not bad, f"{what} out of order or repeated at {bad[:5]}: {list(seqs)[:50]}"


# --------------------------------------------------------------------------- oracles

requires_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="needs ffmpeg and ffprobe on PATH (Debian: apt-get install ffmpeg)")

# What the sink prints in the captured column (and its notes) when no end-of-stream came.
_UNKNOWN = {"?", "-", "unknown", "n/a"}
CAPTURED_UNKNOWN = re.compile(r"captured:?\s+unknown", re.IGNORECASE)


@dataclass(frozen=True)
class SummaryRow:
    """One stream's row of the sink's printed summary table."""

    captured: int | None  # None: the sink did not learn the capture's own count
    labelled: int
    dropped: int
    written: int
    reasons: dict[str, int]


def summary_rows(stdout: str) -> dict[str, SummaryRow]:
    """Every row of the sink's table (``stream captured labelled dropped written ...``)."""
    lines = stdout.splitlines()
    head = next((i for i, ln in enumerate(lines) if ln.split()[:2] == ["stream", "captured"]),
                None)
    rows: dict[str, SummaryRow] = {}
    if head is None:
        return rows
    for line in lines[head + 1:]:
        cols = line.split()
        if len(cols) < 5 or not all(c.isdigit() for c in cols[2:5]):
            continue
        if not (cols[1].isdigit() or cols[1].lower() in _UNKNOWN):
            continue
        reasons = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
        rows[cols[0]] = SummaryRow(int(cols[1]) if cols[1].isdigit() else None,
                                   int(cols[2]), int(cols[3]), int(cols[4]), reasons)
    return rows


def summary_row(stdout: str, stream: str, stderr: str = "") -> SummaryRow:
    row = summary_rows(stdout).get(stream)
    assert row is not None, f"no summary row for {stream} in:\n{stdout}\n{stderr[-3000:]}"
    return row


def captured_by_capture(stderr: str, stream: str) -> int | None:
    """The capture's own count from its last log line ``<stream>: N frames captured``."""
    found = re.findall(rf"(?<![\w-]){re.escape(stream)}: (\d+) frames captured", stderr)
    return int(found[-1]) if found else None


def video_frames(path: Path) -> int:
    """Frames in a video file as ffprobe decodes them (not the decoder the product uses)."""
    if shutil.which("ffprobe") is None:
        pytest.skip("needs ffprobe on PATH (Debian: apt-get install ffmpeg)")
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
         "-show_entries", "stream=nb_read_frames", "-of", "default=nokey=1:noprint_wrappers=1",
         str(path)], capture_output=True, text=True, timeout=60, check=True)
    return int(res.stdout.split()[0])
