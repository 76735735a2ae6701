"""The web view's output: the newest overlaid frame of each stream, as JPEG for MJPEG viewers.

An :class:`~stream.outputs.base.Output` like the video file, run by an ``OutputRunner`` on
its own thread, and never waited for (the sink offers it frames with ``wait=False`` even
for files: a browser's pace must not slow a file's run; see ``stream/sink/feed.py``).

What it costs: with nobody watching, ``write`` only keeps a reference to the newest frame
of its stream (no copy, no drawing, no encoding). While at least one viewer watches a
stream, each new frame of that stream is drawn and JPEG-encoded once, on the output's
thread, whatever the number of viewers; the viewers' threads (one per HTTP connection, see
``stream/sink/http.py``) only send the bytes. A viewer slower than the stream skips to the
newest frame instead of queueing old ones, so latency does not grow. A viewer that joins a
stream whose frames stopped (a file that ended) gets its last frame, encoded on demand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

import cv2

from stream.outputs.base import OutputFrame
from stream.overlay import draw_overlay

JPEG_QUALITY = 80
"""cv2's JPEG quality (0..100): 80 keeps text sharp at a third of the bytes of 95."""

RESEND_S = 2.0
"""A viewer of a stream with no new frame gets the last one again this often: it keeps the
connection alive through proxies, and a closed browser tab is noticed (the write fails)."""

STOP_POLL_S = 0.25
"""How often an idle viewer checks its stop event (the server stopping)."""


@dataclass(frozen=True)
class Shown:
    """What the web view shows of one stream now: its newest frame's labels and numbers."""

    seq: int
    session: int
    labels: tuple[tuple[str, float], ...]
    note: str | None
    fps: float | None
    width: int
    height: int
    ts: float
    ended: bool
    viewers: int


class _Channel:
    """One stream's newest frame, its JPEG (once encoded) and its viewers."""

    def __init__(self) -> None:
        self.frame: OutputFrame | None = None
        self.labels: tuple[tuple[str, float], ...] = ()  # to show with it (see write)
        self.version = 0  # bumped by each new frame
        self.jpeg = b""
        self.jpeg_version = -1
        self.viewers = 0
        self.encoded = 0  # frames of this stream drawn and JPEG-encoded
        self.ended = False
        self.encode_lock = threading.Lock()  # one encode per frame, whoever asks first


class WebOutput:
    """Keeps the newest frame per stream and encodes it only while someone watches.

    Args:
        quality: JPEG quality (1..100).
        draw: overlay the labels (the point of the view; off only for measurements).
    """

    name = "web"
    retry_after_error = True  # a frame that failed to encode says nothing of the next one

    def __init__(self, quality: int = JPEG_QUALITY, draw: bool = True) -> None:
        if not 1 <= quality <= 100:
            raise ValueError("JPEG quality must be 1..100")
        self.quality = quality
        self.draw = draw
        self.encoded = 0  # frames drawn and encoded (for the CPU figures)
        self._cond = threading.Condition()
        self._channels: dict[str, _Channel] = {}
        self._closed = False

    # -- the runner's thread (Output) -----------------------------------------------------

    def write(self, frame: OutputFrame) -> None:
        """Keep ``frame`` as its stream's newest; encode it now if someone watches.

        A frame without a label (dropped: busy, stale, ...) is shown with its note and the
        stream's last labels of this session, so a live view with drops does not flicker
        between labels and nothing.
        """
        with self._cond:
            ch = self._channels.setdefault(frame.stream, _Channel())
            last = ch.frame
            if frame.labels or last is None or last.session != frame.session:
                ch.labels = frame.labels
            ch.frame, ch.ended = frame, False
            ch.version += 1
            watched = ch.viewers > 0
        if watched:
            self._jpeg(ch)  # before waking viewers: they only send bytes
        with self._cond:
            self._cond.notify_all()

    def end_stream(self, stream: str) -> None:
        """The session ended: its last frame stays on show, marked ended."""
        with self._cond:
            ch = self._channels.get(stream)
            if ch is not None:
                ch.ended = True

    def close(self) -> None:
        """The sink is stopping: every viewer's stream ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the HTTP threads ------------------------------------------------------------------

    def shown(self) -> dict[str, Shown]:
        """Per stream with a frame so far, what the view shows of it."""
        with self._cond:
            items = [(s, ch, ch.frame) for s, ch in self._channels.items()]
            out = {}
            for stream, ch, f in items:
                if f is None:
                    continue
                h, w = f.image.shape[:2]
                out[stream] = Shown(f.seq, f.session, ch.labels, f.note, f.fps, w, h, f.ts,
                                    ch.ended, ch.viewers)
            return out

    def viewers(self) -> dict[str, int]:
        """Viewers watching each stream now."""
        with self._cond:
            return {s: ch.viewers for s, ch in self._channels.items() if ch.viewers}

    def encoded_by_stream(self) -> dict[str, int]:
        """Frames drawn and JPEG-encoded so far, per stream (grows only while watched)."""
        with self._cond:
            return {s: ch.encoded for s, ch in self._channels.items()}

    def frames(self, stream: str, stop: threading.Event | None = None
               ) -> Generator[bytes, None, None]:
        """JPEG bytes of each newest frame of ``stream`` as it comes (the last one again every
        :data:`RESEND_S` while none comes); ends when the output closes or ``stop`` is set.

        The caller must have checked that ``stream`` is a valid id the sink knows (it makes a
        channel for it). Counts as a viewer from the first ``next()`` until closed.
        """
        with self._cond:
            if self._closed:
                return
            ch = self._channels.setdefault(stream, _Channel())
            ch.viewers += 1
        try:
            sent, sent_at = -1, 0.0
            while True:
                def ready(last: int = sent) -> bool:
                    return (self._closed or (stop is not None and stop.is_set())
                            or (ch.frame is not None and ch.version != last))

                with self._cond:
                    # Short waits: ``stop`` is an Event nobody notifies this condition for.
                    self._cond.wait_for(ready, STOP_POLL_S)
                    if self._closed or (stop is not None and stop.is_set()):
                        return
                    if ch.frame is None or (ch.version == sent and
                                            time.monotonic() - sent_at < RESEND_S):
                        continue
                sent, jpeg = self._jpeg(ch)
                sent_at = time.monotonic()
                yield jpeg
        finally:
            with self._cond:
                ch.viewers -= 1

    def _jpeg(self, ch: _Channel) -> tuple[int, bytes]:
        """(version, JPEG) of the channel's newest frame, drawing and encoding it if no one
        has yet (the per-channel lock makes that once per frame)."""
        with ch.encode_lock:
            with self._cond:
                frame, version, labels = ch.frame, ch.version, ch.labels
                if ch.jpeg_version == version or frame is None:
                    return ch.jpeg_version, ch.jpeg
            image = frame.image
            if self.draw:
                image = draw_overlay(image.copy(), frame.stream, labels, frame.fps, frame.note)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise ValueError(f"JPEG encoding failed for a {image.shape} frame")
            jpeg = buf.tobytes()
            with self._cond:
                self.encoded += 1
                ch.encoded += 1
                if version >= ch.jpeg_version:
                    ch.jpeg, ch.jpeg_version = jpeg, version
            return version, jpeg
