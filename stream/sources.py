"""Video sources: one small Protocol, an OpenCV/FFmpeg implementation, an image folder.

Only this module opens ``cv2.VideoCapture``. A source yields decoded BGR frames with their
media timestamp; what to do when a read fails (reconnect, end, error) is the capture role's
decision, not the source's. Credentials in URLs are redacted by :func:`redact_url` before
anything is logged or sent on the wire (invariant 6).

Live sources block inside FFmpeg: ``open`` for up to :data:`OPEN_TIMEOUT_S` (a camera that
accepts TCP and never answers), ``read`` for up to :data:`READ_TIMEOUT_S` (a camera that
hangs mid-stream). Both bounds are OpenCV's own ``CAP_PROP_OPEN_TIMEOUT_MSEC`` /
``CAP_PROP_READ_TIMEOUT_MSEC`` (FFmpeg interrupt callback), checked against this OpenCV 5
build. :class:`BackgroundSource` runs those calls on a helper thread so the capture loop
never waits on them: it notices SIGTERM at once and measures stalls with its own clock.

A source that skips something it cannot decode (an unreadable image in a folder) says so
with an :class:`Unreadable` item instead of a frame, so the capture can count it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from stream.config.redact import redact_url
from stream.errors import SourceError

log = logging.getLogger(__name__)

T = TypeVar("T")

OPEN_TIMEOUT_S = 10.0
"""Longest an RTSP/HTTP open may block (connect, DESCRIBE/SETUP, probing the codec)."""
READ_TIMEOUT_S = 5.0
"""Longest one read may block waiting for data; the capture's stall watchdog uses the same
figure, so an abandoned read returns about when the watchdog gives up on it."""

RTSP_PROBE_US = 1_000_000
"""How long FFmpeg may read an RTSP stream to find its codec parameters (microseconds)."""

EXIT_WAIT_S = 1.0
"""At interpreter exit, how long to let a call blocked in FFmpeg finish (see _at_exit); kept
short because a stopping capture must be gone within the launcher's 5 s grace."""

DECODE_THREADS = 2
"""FFmpeg decoder threads for files. FFmpeg's default (one per CPU, plus one) cost ~25% more
CPU per 720p frame than two (an earlier measurement of the whole capture: 5.5 against 4.4
ms). Decoding alone, one thread costs ~2.9 ms of CPU per 720p H.264 frame and two ~3.3 ms,
but two decode up to twice as fast: a file is read as fast as the workers go, and a light
model on a big file is bound by decoding (with convnext-tiny, 720p labels/s came out the
same with one or two)."""
LIVE_DECODE_THREADS = 1
"""Decoder threads for rtsp:// and other network streams: frame threading holds back
(threads - 1) decoded frames, 40 ms of latency per extra thread at 25 fps that no label
timestamp shows, and a camera's pace needs no more than one thread (2.9 ms of CPU per 720p
frame). Local cameras (``/dev/video*``, an index) open through OpenCV's default backend,
without these parameters."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Unreadable:
    """An item the source skipped because it could not decode it (named for the log)."""

    name: str


Read = tuple[np.ndarray, float | None] | Unreadable | None
"""What :meth:`FrameSource.read` returns: a frame and its media time in seconds, an
:class:`Unreadable` item that was skipped, or None when nothing more came."""


@dataclass(frozen=True)
class SourceInfo:
    """What a source says about itself once open."""

    fps: float
    width: int
    height: int
    total_frames: int | None  # known for files, None for live sources


class FrameSource(Protocol):
    """Something that yields decoded BGR frames. ``read`` returns None at the end/failure."""

    def open(self) -> SourceInfo:
        """Open (or re-open) the source. Raises SourceError with a what-to-do message."""
        ...

    def read(self) -> Read:
        """Next frame and its media time in seconds (or a skipped :class:`Unreadable`
        item), or None when nothing more came."""
        ...

    def close(self) -> None:
        """Release the device/stream; safe to call twice."""
        ...


def camera_index(url: str) -> int | str | None:
    """The OpenCV device for a camera URL ("0" → 0, "/dev/video2" → path), else None."""
    if url.isdigit():
        return int(url)
    if url.startswith("/dev/video"):
        return url
    return None


class OpenCVSource:
    """Files, RTSP/HTTP streams and local cameras through OpenCV's FFmpeg/V4L2 backends."""

    def __init__(
        self,
        url: str,
        kind: str,
        *,
        rtsp_transport: str = "tcp",
        open_timeout_s: float = OPEN_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.kind = kind
        self.rtsp_transport = rtsp_transport
        self.open_timeout_ms = int(open_timeout_s * 1000)
        self.read_timeout_ms = int(read_timeout_s * 1000)
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> SourceInfo:
        self.close()
        shown = redact_url(self.url)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms,
            cv2.CAP_PROP_N_THREADS,
            DECODE_THREADS if self.kind == "file" else LIVE_DECODE_THREADS,
        ]
        if self.kind == "camera":
            dev = camera_index(self.url)
            cap = cv2.VideoCapture(dev if dev is not None else self.url, cv2.CAP_ANY)
        else:
            if self.kind == "file" and "://" not in self.url and not Path(self.url).exists():
                raise SourceError(f"video file not found: {shown}")
            if self.kind == "rtsp":
                # Read by OpenCV's FFmpeg backend when the capture opens; one source per
                # capture process, so setting it process-wide is safe.
                # analyzeduration: FFmpeg's default probe keeps a (re)connect waiting ~2 s
                # for codec parameters that an H.264 camera's SDP/SPS gives at once;
                # 1 s (in µs) cut our test server's open from 2.0 s to ~0.9 s.
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = (
                    f"rtsp_transport;{self.rtsp_transport}|analyzeduration;{RTSP_PROBE_US}"
                )
            cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            hint = {
                "file": "is it a video file FFmpeg can decode?",
                "rtsp": "is the camera reachable, the path and credentials right?",
                "camera": "is the device present and not used by another program?",
            }.get(self.kind, "")
            raise SourceError(f"cannot open {self.kind} source {shown}: {hint}".rstrip(": "))
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 0.1 < fps < 1000:
            fps = 25.0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        total = n if self.kind == "file" and n > 0 else None
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        return SourceInfo(fps=fps, width=w, height=h, total_frames=total)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self._cap is None:
            return None
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        pts = float(pos) / 1000.0 if pos is not None and pos >= 0 else None
        return frame, pts

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class _Helper:
    """One helper thread with its own job queue; ends after a close (the sentinel)."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any], bool] | None] = (
            queue.SimpleQueue())
        self.idle = threading.Event()  # set while no call is running
        self.idle.set()
        self.closing = False
        self.thread = threading.Thread(target=self._serve, daemon=True, name=name)
        self.thread.start()
        _HELPERS.add(self)

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            fut, fn, is_close = job
            if self.closing and not is_close:
                fut.cancel()  # queued behind a blocked call, and nobody wants it any more
            if not fut.set_running_or_notify_cancel():
                continue
            self.idle.clear()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the waiting caller, never lost
                fut.set_exception(exc)
            finally:
                self.idle.set()

    def busy(self) -> bool:
        """Inside a source call, or about to start one."""
        return self.thread.is_alive() and (not self.idle.is_set() or not self.jobs.empty())


class BackgroundSource:
    """Runs a FrameSource's blocking calls on a helper thread; the caller waits as it likes.

    Calls run one at a time in the order submitted, so the wrapped source is only ever
    touched by one thread at a time (an OpenCV capture is not thread-safe), and a call
    submitted while an abandoned one is still blocked simply runs after it.
    ``open``/``read``/``close`` keep the FrameSource contract (blocking); :meth:`submit` is
    the non-blocking door. The helper is a daemon thread; see :func:`_at_exit` for how the
    process still exits cleanly while FFmpeg is blocked in a call.
    """

    def __init__(self, inner: FrameSource, name: str = "source") -> None:
        self.inner = inner
        self.name = name
        self._helper: _Helper | None = None
        self._lock = threading.Lock()

    def submit(self, call: Callable[[FrameSource], T]) -> Future[T]:
        """Queue ``call(inner)`` on the helper thread; its Future holds the result or error."""
        fut: Future[T] = Future()
        with self._lock:
            if self._helper is None:
                self._helper = _Helper(f"{self.name}-io")
            self._helper.jobs.put((fut, lambda: call(self.inner), False))
        return fut

    def open(self) -> SourceInfo:
        return self.submit(lambda s: s.open()).result()

    def read(self) -> Read:
        return self.submit(lambda s: s.read()).result()

    def close(self, timeout_s: float = 0.25) -> None:
        """Release the source after the call in progress; wait at most ``timeout_s`` for it.

        Calls queued behind a blocked one are cancelled. If a call is still blocked in
        FFmpeg the release happens when it returns, on the helper thread, which then ends.
        """
        with self._lock:
            helper, self._helper = self._helper, None
            if helper is None:
                self.inner.close()
                return
            fut: Future[None] = Future()
            helper.closing = True
            helper.jobs.put((fut, self.inner.close, True))
            helper.jobs.put(None)
        try:
            fut.result(timeout_s)
        except TimeoutError:
            log.debug("%s: a call is still blocked; the source is released when it returns",
                      self.name)


# Every helper thread, while it runs (its thread keeps it alive): what _at_exit waits for.
_HELPERS: weakref.WeakSet[_Helper] = weakref.WeakSet()

# The exit status _at_exit uses when it has to cut the process short: 1 (a failure) until
# the role says what it decided, so a crash never turns into a clean exit.
_exit_status = 1


def set_exit_status(code: int) -> None:
    """Tell :func:`_at_exit` the status the process must end with (the role's decision).

    Call it with the role's return code just before returning it; a process that crashes
    without calling it ends with 1 even when a source call is still blocked at exit.
    """
    global _exit_status
    _exit_status = code


@atexit.register
def _at_exit() -> None:
    """Never let the interpreter finalize while a helper thread is inside FFmpeg.

    CPython ends a daemon thread that wakes up during finalization with ``pthread_exit``;
    unwinding that through OpenCV's C++ frames calls ``std::terminate`` and the process dies
    of SIGABRT (seen: a capture stopped while a stalled read was pending exited with -6).
    atexit runs before that point, so wait here briefly for calls to return (a streaming
    read does within a frame time); if one outlives EXIT_WAIT_S (a blocked open or a stalled
    read, bounded only by OPEN_TIMEOUT_S / READ_TIMEOUT_S), end the process with
    ``os._exit`` instead, with the status the role decided (:func:`set_exit_status`; 1 if
    it never said, e.g. after a crash): a cut-short exit never hides a failure.
    """
    deadline = time.monotonic() + EXIT_WAIT_S
    while any(h.busy() for h in list(_HELPERS)):
        if time.monotonic() > deadline:
            log.warning("a source call is still blocked in FFmpeg after %.0f s: exiting now",
                        EXIT_WAIT_S)
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(_exit_status)
        time.sleep(0.05)  # polling a C call we cannot be notified about


class ImageFolderSource:
    """A folder of still images played as a stream at a fixed rate, in file-name order."""

    def __init__(self, folder: str, fps: float = 25.0) -> None:
        self.folder = Path(folder)
        self.fps = fps
        self._files: list[Path] = []
        self._i = 0

    def open(self) -> SourceInfo:
        if not self.folder.is_dir():
            raise SourceError(f"image folder not found: {self.folder}")
        self._files = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not self._files:
            raise SourceError(
                f"no images in {self.folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        self._i = 0
        # The first image that decodes gives the size; unreadable ones are reported by read.
        first = next((img for img in map(self._load, self._files) if img is not None), None)
        if first is None:
            raise SourceError(f"none of the {len(self._files)} images in {self.folder} can "
                              "be decoded: are they image files?")
        h, w = first.shape[:2]
        return SourceInfo(fps=self.fps, width=w, height=h, total_frames=len(self._files))

    @staticmethod
    def _load(path: Path) -> np.ndarray | None:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return img if img is not None and img.size else None

    def read(self) -> Read:
        if self._i >= len(self._files):
            return None
        path = self._files[self._i]
        pts = self._i / self.fps
        self._i += 1
        img = self._load(path)
        return (img, pts) if img is not None else Unreadable(path.name)

    def close(self) -> None:
        self._files = []
