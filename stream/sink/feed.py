"""Hands released frames to the sink's outputs, and collects what the outputs report.

Each output runs behind its own :class:`~stream.outputs.runner.OutputRunner` (a bounded
queue and a thread), so encoding never happens on the sink's loop. A lossless stream (a
file: every frame is promised in its video) is offered with ``wait=True``, which makes the
sink loop wait for queue room (back-pressure reaches the file's capture through ZMQ, and
the sink's other streams wait too: give files and live cameras separate sinks when that
matters); a live stream is never waited for: a full queue drops the frame for that
output, counted ``queue_full``.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from stream.outputs.base import OutputFrame
from stream.protocol import Frame

log = logging.getLogger(__name__)

LIVE_OUTPUTS = frozenset({"web"})
"""Outputs that show the newest frame to people watching now: never waited for, even on a
lossless stream (a browser's pace must not slow a file's run; the view skips frames)."""


class Runner(Protocol):
    """What the sink needs of an output runner (:class:`stream.outputs.runner.OutputRunner`)."""

    def start(self) -> None: ...
    def offer(self, frame: OutputFrame, wait: bool) -> bool: ...
    def end_stream(self, stream: str) -> None: ...
    def take_errors(self) -> list[tuple[str, str]]: ...
    def counts(self, stream: str) -> Counter[str]: ...
    def depth(self) -> int: ...
    def close(self, timeout_s: float = 10.0) -> None: ...


class OutputFeed:
    """The sink's outputs, by name; the per-stream rate drawn on frames; output errors.

    Args:
        outputs: (name, runner) pairs, already started; :meth:`close` closes them.
    """

    def __init__(self, outputs: Sequence[tuple[str, Runner]] = ()) -> None:
        self.outputs = list(outputs)
        self.errors: dict[str, list[tuple[str, str]]] = {}  # stream ("" for none) -> errors
        self._rates: dict[str, deque[float]] = {}

    def tick(self, stream: str, now: float) -> None:
        """A seq of ``stream`` was released at ``now`` (for the rate drawn on its frames)."""
        self._rates.setdefault(stream, deque(maxlen=30)).append(now)

    def _rate(self, stream: str) -> float | None:
        times = self._rates.get(stream)
        if not times or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    def offer(self, frame: Frame | None, session: int, labels: Sequence[tuple[str, float]],
              note: str | None, lossless: bool, source_fps: float) -> None:
        """Offer a released frame to every output (no image, or no outputs: nothing)."""
        if not self.outputs or frame is None or frame.image is None:
            return
        image = np.frombuffer(frame.image, np.uint8).reshape(frame.height, frame.width, 3)
        item = OutputFrame(stream=frame.stream, session=session, seq=frame.seq, pts=frame.pts,
                           ts=frame.ts, image=image, labels=tuple(labels), note=note,
                           fps=self._rate(frame.stream), source_fps=source_fps)
        for name, runner in self.outputs:
            runner.offer(item, wait=lossless and name not in LIVE_OUTPUTS)

    def end_stream(self, stream: str) -> None:
        """A session of ``stream`` ended: each output finishes it after its queued frames."""
        for _, runner in self.outputs:
            runner.end_stream(stream)

    def take_errors(self) -> list[tuple[str, str, str]]:
        """New (stream, output name, message) errors since the last call; also kept in
        :attr:`errors` for the summary. Stream ``""``: an error of no stream (close)."""
        new = []
        for name, runner in self.outputs:
            for stream, message in runner.take_errors():
                log.error("output %s failed%s: %s", name,
                          f" for stream {stream}" if stream else "", message)
                self.errors.setdefault(stream, []).append((name, message))
                new.append((stream, name, message))
        return new

    def depths(self) -> dict[str, int]:
        """Per output name, the frames waiting in its queue now."""
        return {name: runner.depth() for name, runner in self.outputs}

    def counts(self, stream: str) -> dict[str, Counter[str]]:
        """Per output name, its counters for ``stream`` (written, queue_full, failed)."""
        return {name: runner.counts(stream) for name, runner in self.outputs}

    def close(self) -> None:
        """Drain and close every output (each bounded by its runner's timeout)."""
        for _, runner in self.outputs:
            runner.close()
