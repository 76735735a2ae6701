"""The interface every sink output implements, and what the sink hands it per frame.

The sink releases frames in ``seq`` order and offers each one to every output through an
:class:`OutputRunner`: a bounded queue and a thread per output (see ``runner.py``), so a
slow or failed output drops and counts its own frames and never stalls label events or the
other outputs. Drawing the overlay happens on the output's thread, not the sink's.

Lossless streams (files, ``policy: wait``) are offered with ``wait=True``: the sink waits
for queue room instead of dropping, because a file source promises every frame in its
output video; live streams are never waited for (``wait=False``: a full queue drops the
frame, counted as ``queue_full`` for that output and stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class OutputFrame:
    """One released frame, with what to draw on it.

    Attributes:
        stream: stream id (already validated against the id rule).
        session: 1 for a stream's first capture session, 2+ after the capture restarted
            (the video file output starts ``<id>~<session>.mp4`` then).
        seq: the frame's seq within the stream.
        pts: media time in seconds from the source (None if the source has none).
        ts: capture wall time (Unix seconds); outputs time frames by it when ``pts`` is None.
        image: ``H×W×3`` u8 BGR, read-only (a view of the wire buffer: copy before drawing).
        labels: (name, score) pairs to draw, best first; empty for a dropped frame.
        note: a line to draw instead of labels, e.g. ``"no label (busy)"``.
        fps: the stream's current labelled rate, to draw (None: not known yet).
        source_fps: the rate the source announced (for outputs that need a nominal rate).
    """

    stream: str
    session: int
    seq: int
    pts: float | None
    ts: float
    image: np.ndarray
    labels: tuple[tuple[str, float], ...]
    note: str | None
    fps: float | None
    source_fps: float


class Output(Protocol):
    """One kind of output (video file, web view, RTSP out). Called on its own thread only.

    ``write`` may raise ``OSError`` (disk full, read-only, server gone) or any library
    error: the runner counts the frame as ``failed``, reports the error once to the sink
    (status event, summary, exit code) and keeps calling ``write`` for later frames only if
    ``retry_after_error`` says so.
    """

    name: str
    """Short name for counters and messages: ``video``, ``web``, ``rtsp``."""

    retry_after_error: bool
    """False: after an error the stream's frames are dropped as ``failed`` until the next
    session (a file that hit a full disk stays closed); True: keep trying (a network peer
    that may come back)."""

    def write(self, frame: OutputFrame) -> None:
        """Draw (if it draws) and emit one frame of ``frame.stream``."""
        ...

    def end_stream(self, stream: str) -> None:
        """The stream's session ended: finish what belongs to it (finalise its file).

        May raise ``OSError`` when finishing fails on a stream that had no error before (the
        runner reports it like a write error); must not raise again for a stream whose
        ``write`` already failed. The runner also calls it at close for streams still open.
        """
        ...

    def close(self) -> None:
        """The sink is stopping: finish everything; called once, after the last frame.

        Should not raise (the runner logs and reports it under the stream ``""`` if it does).
        """
        ...
