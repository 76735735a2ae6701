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
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import cv2
import numpy as np

from stream.errors import SourceError

log = logging.getLogger(__name__)

T = TypeVar("T")

OPEN_TIMEOUT_S = 10.0
"""Longest an RTSP/HTTP open may block (connect, DESCRIBE/SETUP, probing the codec)."""
READ_TIMEOUT_S = 5.0
"""Longest one read may block waiting for data; the capture's stall watchdog uses the same
figure, so an abandoned read returns about when the watchdog gives up on it."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_CRED_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<cred>[^/@\s]+)@")


def redact_url(url: str) -> str:
    """Hide credentials: ``rtsp://user:pass@host/x`` → ``rtsp://***:***@host/x``.

    Also redacts a user-only ``rtsp://user@host`` and leaves everything else alone.
    """

    def repl(m: re.Match[str]) -> str:
        cred = m.group("cred")
        return m.group("scheme") + ("***:***@" if ":" in cred else "***@")

    return _CRED_RE.sub(repl, url)


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

    def read(self) -> tuple[np.ndarray, float | None] | None:
        """Next frame and its media time in seconds, or None when nothing more came."""
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
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = (
                    f"rtsp_transport;{self.rtsp_transport}"
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


class BackgroundSource:
    """Runs a FrameSource's blocking calls on one helper thread; the caller waits as it likes.

    Calls run one at a time in the order submitted, so the wrapped source is only ever
    touched by the helper thread (an OpenCV capture is not thread-safe) and a call submitted
    while an abandoned one is still blocked simply runs after it. ``open``/``read``/``close``
    keep the FrameSource contract (blocking); :meth:`submit` is the non-blocking door.
    The helper is a daemon thread: a process that exits while FFmpeg is still blocked in a
    call is not held up by it.
    """

    def __init__(self, inner: FrameSource, name: str = "source") -> None:
        self.inner = inner
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Future[object], Callable[[], object]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, call: Callable[[FrameSource], T]) -> Future[T]:
        """Queue ``call(inner)`` on the helper thread; its Future holds the result or error."""
        fut: Future[T] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, daemon=True,
                                                name=f"{self.name}-io")
                self._thread.start()
            self._jobs.put((fut, lambda: call(self.inner)))  # type: ignore[arg-type]
        return fut

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the waiting caller, never lost
                fut.set_exception(exc)

    def open(self) -> SourceInfo:
        return self.submit(lambda s: s.open()).result()

    def read(self) -> tuple[np.ndarray, float | None] | None:
        return self.submit(lambda s: s.read()).result()

    def close(self, timeout_s: float = 1.0) -> None:
        """Release the source after any call in progress; wait at most ``timeout_s`` for it.

        If a call is still blocked in FFmpeg the release happens when it returns, on the
        helper thread, and the helper then exits.
        """
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.inner.close()
                return
            fut: Future[None] = Future()
            self._jobs.put((fut, self.inner.close))  # type: ignore[arg-type]
            self._jobs.put(None)
            self._thread = None
        try:
            fut.result(timeout_s)
        except TimeoutError:
            log.debug("%s: a call is still blocked; the source is released when it returns",
                      self.name)


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
        first = self._load(self._files[0])
        if first is None:
            raise SourceError(f"cannot decode image {self._files[0]}")
        h, w = first.shape[:2]
        return SourceInfo(fps=self.fps, width=w, height=h, total_frames=len(self._files))

    @staticmethod
    def _load(path: Path) -> np.ndarray | None:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return img if img is not None and img.size else None

    def read(self) -> tuple[np.ndarray, float | None] | None:
        while self._i < len(self._files):
            path = self._files[self._i]
            pts = self._i / self.fps
            self._i += 1
            img = self._load(path)
            if img is not None:
                return img, pts
            log.warning("skipping unreadable image %s", path)
        return None

    def close(self) -> None:
        self._files = []
