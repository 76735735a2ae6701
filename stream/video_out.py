"""Output video files: one writer per stream, opened at its first frame, checked up front.

Only this module opens ``cv2.VideoWriter``. Frames of another size than the first (an image
folder, a camera that changed resolution) are scaled to the file's size, since a video file
has one frame size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stream.errors import ConfigError

log = logging.getLogger(__name__)


class VideoOut:
    """One output file. ``write`` takes the read-only decoded frame and an optional overlay."""

    def __init__(self, path: Path, fps: float, codec: str) -> None:
        self.path = path
        self.fps = fps
        self.codec = codec
        self.size: tuple[int, int] | None = None
        self._writer: Any = None  # cv2.VideoWriter

    def _open(self, w: int, h: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*self.codec), self.fps,
                                 (w, h))
        if not writer.isOpened():
            writer.release()
            raise OSError(f"cannot write video {self.path} with codec {self.codec!r}: try "
                          "sink.codec: mp4v (mp4) or MJPG (avi)")
        log.info("writing %s (%dx%d @ %.2f fps, %s)", self.path, w, h, self.fps, self.codec)
        self._writer, self.size = writer, (w, h)

    def write(self, frame: np.ndarray, overlay: Callable[[np.ndarray], object] | None) -> None:
        """Scale (or copy: ZeroMQ buffers are read-only) the frame, draw, encode.

        Raises:
            OSError, cv2.error: the file cannot be opened or written.
        """
        h, w = frame.shape[:2]
        if self._writer is None:
            self._open(w, h)
        assert self.size is not None
        img = frame.copy() if (w, h) == self.size else cv2.resize(
            frame, self.size, interpolation=cv2.INTER_AREA)
        if overlay is not None:
            overlay(img)
        self._writer.write(img)

    def close(self) -> None:
        """Finish the file (an MP4 plays only once closed); safe to call twice."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def check_video_output(output_dir: str, video_format: str, codec: str) -> None:
    """Fail early, with a clear message, if videos cannot be written there with that codec.

    Raises:
        ConfigError: the folder cannot be created/written, or OpenCV has no such encoder.
    """
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the video folder {out}: {exc.strerror}") from None
    probe = out / f".stream-probe-{os.getpid()}.{video_format}"
    writer = cv2.VideoWriter(str(probe), cv2.VideoWriter.fourcc(*codec), 25.0, (64, 64))
    ok = writer.isOpened()
    if ok:
        writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    probe.unlink(missing_ok=True)
    if not ok:
        raise ConfigError(
            f"cannot write {video_format} video with codec {codec!r} into {out} (is the folder "
            "writable? does this OpenCV build have that encoder?): try sink.codec mp4v for "
            "mp4, or MJPG for avi")
