"""The encoders behind the video outputs, and the per-frame helpers they share.

- :class:`AvWriter`: H.264 (libx264) through PyAV with per-frame timestamps, fragmented MP4
  or Matroska; :class:`CvWriter`: OpenCV's ``VideoWriter`` (mp4v, MJPG) at a nominal rate.
- :class:`Timeline`: a session's frame times in 1/90000 s ticks, always increasing.
- :func:`render`: the picture to encode (letterboxed, label panel drawn);
  :func:`yuv420_frame`: BGR to a PyAV yuv420p frame (OpenCV's conversion, ~7x cheaper).

Used by ``video_file.py`` (files) and ``rtsp_out.py`` (RTSP publishing).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, cast

import av
import av.error
import cv2
import numpy as np

from stream.outputs.base import OutputFrame
from stream.outputs.mp4_duration import set_mp4_duration
from stream.overlay import draw_overlay, letterbox

log = logging.getLogger(__name__)

TICKS_PER_SECOND = 90_000
"""The files' time base (the MPEG clock): fine enough for any frame rate."""
KEYFRAME_SECONDS = 2.0
"""Keyframe (and MP4 fragment) interval: bounds what a failure can lose."""
H264_NAMES = frozenset({"h264", "avc1", "x264"})
FORMATS = {"mp4": "mp4", "mkv": "matroska"}
MP4_FLAGS = "frag_keyframe+empty_moov+default_base_moof"
LOW_SPACE_BYTES = 256 * 1024


def is_h264(codec: str) -> bool:
    """Whether ``codec`` names H.264 (written with libx264 through PyAV)."""
    return codec.lower() in H264_NAMES


class Writer(Protocol):
    def write(self, image: np.ndarray, ticks: int) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


def yuv420_frame(image: np.ndarray, ticks: int, time_base: Fraction) -> Any:
    """A PyAV yuv420p frame of a BGR ``image``, stamped ``ticks`` in ``time_base``."""
    # OpenCV's I420 is BT.601 limited range, as swscale's default, and ~7x cheaper here.
    i420 = cast("np.ndarray[Any, np.dtype[np.uint8]]",
                cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420))
    frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
    frame.pts = ticks
    frame.time_base = time_base
    return frame


def add_h264_stream(out: Any, size: tuple[int, int], fps: float, options: dict[str, str],
                    keyframe_s: float, max_gop: int) -> Any:
    """Add the H.264 stream every PyAV output uses: yuv420p, timed in
    :data:`TICKS_PER_SECOND`, a keyframe every ``keyframe_s`` (at most ``max_gop`` frames
    apart), no B-frames (so the durations come out exact and latency stays low)."""
    stream: Any = out.add_stream("libx264")
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.time_base = Fraction(1, TICKS_PER_SECOND)
    ctx = stream.codec_context
    ctx.time_base = Fraction(1, TICKS_PER_SECOND)
    ctx.gop_size = max(1, min(max_gop, round(keyframe_s * fps)))
    ctx.max_b_frames = 0
    ctx.options = options
    return stream


class AvWriter:
    """H.264 through PyAV: per-frame timestamps, fragmented MP4 (or Matroska)."""

    def __init__(self, path: Path, container: str, size: tuple[int, int], fps: float,
                 preset: str) -> None:
        options = {"movflags": MP4_FLAGS} if container == "mp4" else {}
        self._out: Any = av.open(str(path), "w", format=FORMATS[container],
                                 container_options=options)
        try:
            stream = add_h264_stream(self._out, size, fps, {"preset": preset},
                                     KEYFRAME_SECONDS, 600)
        except BaseException:
            self._out.close()
            raise
        self._stream = stream
        self._nominal = round(TICKS_PER_SECOND / fps)
        self._submitted: collections.deque[int] = collections.deque()
        self._last_interval = self._nominal
        self._path = path if container == "mp4" else None
        self._end = 0  # ticks: where the last frame written ends

    def write(self, image: np.ndarray, ticks: int) -> None:
        frame = yuv420_frame(image, ticks, self._stream.time_base)
        if self._submitted:
            self._last_interval = ticks - self._submitted[-1]
        self._submitted.append(ticks)
        self._mux(self._stream.encode(frame))

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            # A frame lasts until the next one (known: the encoder runs frames behind).
            while self._submitted and self._submitted[0] <= packet.pts:
                self._submitted.popleft()
            packet.duration = (self._submitted[0] - packet.pts if self._submitted
                               else self._last_interval)
            self._end = max(self._end, packet.pts + packet.duration)
            self._out.mux(packet)

    def finish(self) -> None:
        """Flush the encoder and close; on failure the file is closed as it stands."""
        try:
            self._mux(self._stream.encode(None))
        except BaseException:
            self.abort()
            raise
        self._out.close()
        if self._path is not None:
            # The header says 0 s (written first, before the length was known): browsers
            # would report a duration one frame short. Patched in place (mp4_duration.py).
            try:
                set_mp4_duration(self._path, self._end / TICKS_PER_SECOND)
            except OSError as exc:  # the file is complete and plays; only the header lags
                log.warning("%s: cannot write its duration into the header: %s",
                            self._path, exc)

    def abort(self) -> None:
        """Close without flushing the encoder: the file keeps its complete fragments."""
        try:
            self._out.close()
        except (OSError, av.error.FFmpegError) as exc:
            log.debug("closing after a failure: %s", exc)


class CvWriter:
    """OpenCV's VideoWriter at a nominal rate: ignores timestamps (see the module doc)."""

    def __init__(self, path: Path, codec: str, size: tuple[int, int], fps: float) -> None:
        self._path = path
        self._writer: Any = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*codec), fps,
                                            size)
        if not self._writer.isOpened():
            self._writer.release()
            raise OSError(f"OpenCV cannot write {path} with codec {codec!r}")

    def write(self, image: np.ndarray, ticks: int) -> None:
        # OpenCV swallows write errors: a (nearly) full disk is the one failure we can see.
        if shutil.disk_usage(self._path.parent).free < LOW_SPACE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._writer.write(image)

    def finish(self) -> None:
        self._writer.release()

    def abort(self) -> None:
        self._writer.release()


class Timeline:
    """A session's frame times in ticks from its first frame, always increasing.

    The clock is the first frame's: ``pts`` if it has one, else ``ts``. A frame without
    that clock is placed one nominal interval after the previous one. A time that does not
    increase is bumped one tick past the previous frame; one more than a second backwards
    (a source that restarted its clock) re-bases the clock one nominal interval on.
    """

    def __init__(self, first: OutputFrame) -> None:
        self.use_pts = first.pts is not None
        self.origin = self._clock(first) or 0.0
        fps = first.source_fps if first.source_fps > 0 else 25.0
        self.nominal = max(1, round(TICKS_PER_SECOND / fps))
        self.offset = 0
        self.last: int | None = None

    def _clock(self, frame: OutputFrame) -> float | None:
        return frame.pts if self.use_pts else frame.ts

    def ticks(self, frame: OutputFrame) -> int:
        t = self._clock(frame)
        if self.last is None:
            ticks = 0
        elif t is None:
            ticks = self.last + self.nominal
        else:
            ticks = round((t - self.origin) * TICKS_PER_SECOND) + self.offset
            if ticks <= self.last:
                bumped = self.last + (self.nominal if self.last - ticks > TICKS_PER_SECOND
                                      else 1)
                self.offset += bumped - ticks
                ticks = bumped
        self.last = ticks
        return ticks


def even_size(image: np.ndarray) -> tuple[int, int]:
    """(width, height) of ``image`` rounded up to even, as 4:2:0 video needs."""
    h, w = image.shape[:2]
    return w + w % 2, h + h % 2


def render(frame: OutputFrame, size: tuple[int, int], draw: bool) -> np.ndarray:
    """The picture to encode: ``frame`` letterboxed to ``size`` (width, height) when its size
    differs, with the label panel drawn when ``draw`` (on a copy: the image is read-only)."""
    image = frame.image
    if image.shape[1] != size[0] or image.shape[0] != size[1]:
        canvas = letterbox(image, *size)
    elif draw:
        canvas = image.copy()
    else:
        return image
    if draw:
        draw_overlay(canvas, frame.stream, frame.labels, frame.fps, frame.note)
    return canvas
