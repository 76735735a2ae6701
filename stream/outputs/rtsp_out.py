"""RTSP out: each stream's overlaid frames published as H.264 to an RTSP server.

Point ``sink.rtsp_out`` at a server that accepts publishing (MediaMTX, go2rtc, as Frigate
users run; or ``ffmpeg -rtsp_flags listen``), e.g. ``rtsp://127.0.0.1:8554/{stream}``:
``{stream}`` becomes each stream's id, so VLC or an NVR reads ``rtsp://host:8554/cam1``.

How it behaves (an :class:`~stream.outputs.base.Output` run by an ``OutputRunner``):

- **One connection per stream**, made at the stream's first frame: an RTSP ``ANNOUNCE`` +
  ``RECORD`` over TCP (``rtsp_transport=tcp``: no loss, passes NAT and firewalls), then
  libx264 with ``tune=zerolatency`` (no lookahead, no B-frames: a frame leaves as soon as
  it is encoded), preset ``ultrafast`` by default, a keyframe every second (a viewer that
  joins waits at most 1 s for a picture). Frames carry their own time (the source's
  ``pts``, else the capture's wall time) from the connection's first frame.
- **The server goes away or is not there yet**: the write raises ``OSError`` (the runner
  counts the frame ``failed`` and reports the outage once), the connection is dropped, and
  the next attempt waits a backoff that doubles from ``backoff_min_s`` to
  ``backoff_max_s`` (reset by a connection that works). Between attempts a frame costs
  nothing: it is refused at once (``failed``), so the runner's queue never backs up behind
  a dead server. A connection attempt and each frame's write are bounded by ``timeout_s``
  (they run on the link's own thread, ``bounded_call.py``: FFmpeg's socket writes have no
  timeout), so a server that stops reading costs this output at most that long, once: the
  link is given up (counted as lost) and its blocked thread abandoned. Meanwhile the
  sink's other outputs and events go on, and live frames are dropped ``queue_full`` by
  the runner.
- **Counted**: :meth:`RtspOutput.counters` (connects, reconnects, failed attempts, lost
  connections, frames sent, up or down) for metrics.
- **Credentials** in the URL (``rtsp://user:pass@host/...``) never reach a log line or an
  error message: every message goes through ``redact_url``.
- **Not paced**: frames go out as the sink releases them. A live camera is released at its
  own pace; a file source processed faster than real time reaches the server in bursts,
  with timestamps that tell a player the right speed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import av
import av.error
import numpy as np

from stream.config.redact import redact_url
from stream.outputs.base import OutputFrame
from stream.outputs.bounded_call import BoundedCaller
from stream.outputs.encoders import (
    Timeline,
    add_h264_stream,
    even_size,
    render,
    yuv420_frame,
)

log = logging.getLogger(__name__)

KEYFRAME_SECONDS = 1.0
"""Keyframe interval: how long a viewer that joins waits for its first picture."""
STREAM_PLACEHOLDER = "{stream}"
MAX_HUNG = 3
"""Connections left blocked in a write (a server that stopped reading) before no new one
is tried until one of them ends: each holds a thread and a socket."""


def stream_url(template: str, stream: str) -> str:
    """The URL ``stream`` is published to: ``{stream}`` in ``template`` replaced by its id."""
    return template.replace(STREAM_PLACEHOLDER, stream)


@dataclass(frozen=True)
class RtspCounters:
    """One stream's RTSP-out figures since the sink started (all sessions).

    Attributes:
        connected: publishing now.
        connects: connections that worked (the first one and every reconnect).
        reconnects: connections that worked after a lost connection or failed attempts
            (a stream's first connection, or one after a clean end, is not a reconnect).
        connect_failures: connection attempts that failed (server down, refused, timeout).
        disconnects: working connections lost while publishing (server gone).
        frames_sent: frames handed to the server.
    """

    connected: bool = False
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    frames_sent: int = 0


class _Link:
    """One RTSP publishing connection and its encoder; the connect happens at the first
    frame (PyAV writes the RTSP header, i.e. ANNOUNCE/SETUP/RECORD, with the first packet).

    Encoding and muxing run on the link's own :class:`BoundedCaller` thread, each frame
    bounded by ``timeout_s``: FFmpeg's socket writes have no timeout of their own, and a
    server that stops reading would otherwise block the output for minutes.
    """

    def __init__(self, url: str, size: tuple[int, int], fps: float, preset: str,
                 timeout_s: float) -> None:
        self._out: Any = av.open(url, "w", format="rtsp",
                                 options={"rtsp_transport": "tcp"},
                                 timeout=(timeout_s, timeout_s))
        try:
            stream = add_h264_stream(self._out, size, fps,
                                     {"preset": preset, "tune": "zerolatency"},
                                     KEYFRAME_SECONDS, 300)
        except BaseException:
            self._close_container()
            raise
        self._stream = stream
        self._timeout_s = timeout_s
        self._calls = BoundedCaller("rtsp-link")

    @property
    def hung(self) -> bool:
        """A write overran its deadline and is still blocked in FFmpeg."""
        return self._calls.hung

    def send(self, image: np.ndarray, ticks: int) -> None:
        """Encode and send one frame.

        Raises:
            TimeoutError: the server did not take the frame within ``timeout_s``.
            OSError, av.error.FFmpegError: the connection failed.
        """
        frame = yuv420_frame(image, ticks, self._stream.time_base)
        self._calls.call(lambda: self._encode(frame), self._timeout_s)

    def _encode(self, frame: Any) -> None:
        for packet in self._stream.encode(frame):
            self._out.mux(packet)

    def close(self) -> None:
        """Close the connection (TEARDOWN when the server is still there); never raises,
        and waits at most ``timeout_s`` (not at all behind a write that hangs)."""
        self._calls.finish(self._close_container, 0.0 if self.hung else self._timeout_s)

    def _close_container(self) -> None:
        try:
            self._out.close()
        except (OSError, av.error.FFmpegError) as exc:
            log.debug("closing an RTSP connection: %s", exc)


@dataclass
class _State:
    """A stream's connection state (owned by the output's thread, counters under a lock)."""

    url: str
    session: int
    size: tuple[int, int]
    link: _Link | None = None
    timeline: Timeline | None = None
    next_try: float = 0.0
    backoff_s: float = 0.0
    troubled: bool = False  # a connect failed or the connection was lost since the last up
    counters: RtspCounters = RtspCounters()


class RtspOutput:
    """Publishes each stream to ``url_template`` with ``{stream}`` replaced by its id.

    Args:
        url_template: ``rtsp://`` or ``rtsps://`` URL; ``{stream}`` is replaced by the
            stream id (validated by the config: needed when there are several streams).
        draw: draw the label panel (on a copy).
        preset: libx264 preset. ``ultrafast`` (default: the sink shares the CPU with
            inference): ~6 ms CPU a frame at 720p30, ~3.2 Mbit/s for the sample clip;
            ``superfast``: ~9 ms, ~2.5 Mbit/s (``scripts/output_costs.py``, one noisy run).
        timeout_s: bound on a connection attempt and on each write.
        backoff_min_s, backoff_max_s: wait after a failed attempt, doubling up to the max.
        clock: monotonic seconds (injected so tests drive the backoff).
    """

    name = "rtsp"
    retry_after_error = True

    def __init__(self, url_template: str, draw: bool = True, preset: str = "ultrafast",
                 timeout_s: float = 2.0, backoff_min_s: float = 0.5,
                 backoff_max_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url_template = url_template
        self.draw = draw
        self.preset = preset
        self.timeout_s = timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = max(backoff_min_s, backoff_max_s)
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()
        self._counters: dict[str, RtspCounters] = {}
        self._hung: list[_Link] = []  # links whose last write never returned

    def counters(self) -> dict[str, RtspCounters]:
        """Per stream id, its figures now (safe to call from any thread, e.g. metrics)."""
        with self._lock:
            return dict(self._counters)

    def write(self, frame: OutputFrame) -> None:
        """Draw, encode and publish one frame; connect first when not connected.

        Raises:
            OSError: not connected (server down, waiting out the backoff) or the connection
                was lost now; the message names the URL with its credentials hidden.
        """
        st = self._state(frame)
        now = self._clock()
        if st.link is None:
            if now < st.next_try:
                raise OSError(f"rtsp out {redact_url(st.url)}: not connected; next try in "
                              f"{st.next_try - now:.1f} s")
            self._connect(st, frame, now)
            return
        assert st.timeline is not None
        try:
            st.link.send(render(frame, st.size, self.draw), st.timeline.ticks(frame))
        except (OSError, av.error.FFmpegError) as exc:
            self._drop_link(st, now)
            st.troubled = True
            self._count(frame.stream, st, connected=False, disconnects=1)
            log.warning("rtsp out %s: connection lost (%s); reconnecting",
                        redact_url(st.url), _reason(exc))
            raise OSError(f"rtsp out {redact_url(st.url)}: connection lost: "
                          f"{_reason(exc)}") from None
        self._count(frame.stream, st, frames_sent=1)

    def end_stream(self, stream: str) -> None:
        """The stream's session ended: close its connection (the server sees a TEARDOWN)."""
        st = self._states.pop(stream, None)
        if st is not None and st.link is not None:
            self._close_link(st.link)
            self._count(stream, st, connected=False)
            log.info("rtsp out %s: stream %s ended", redact_url(st.url), stream)

    def close(self) -> None:
        """Close every connection."""
        for stream in list(self._states):
            self.end_stream(stream)

    # -- internals ------------------------------------------------------------------------

    def _state(self, frame: OutputFrame) -> _State:
        st = self._states.get(frame.stream)
        if st is not None and st.session != frame.session:
            self.end_stream(frame.stream)  # a new capture session may bring a new size
            st = None
        if st is None:
            st = _State(stream_url(self.url_template, frame.stream), frame.session,
                        even_size(frame.image))
            with self._lock:
                st.counters = self._counters.get(frame.stream, RtspCounters())
            self._states[frame.stream] = st
        return st

    def _connect(self, st: _State, frame: OutputFrame, now: float) -> None:
        fps = frame.source_fps if frame.source_fps > 0 else 25.0
        link: _Link | None = None
        self._hung = [h for h in self._hung if h.hung]
        try:
            if len(self._hung) >= MAX_HUNG:  # each holds a thread and a socket: stop adding
                raise TimeoutError(f"{len(self._hung)} earlier connections still hang")
            link = _Link(st.url, st.size, fps, self.preset, self.timeout_s)
            timeline = Timeline(frame)
            link.send(render(frame, st.size, self.draw), timeline.ticks(frame))
        except (OSError, av.error.FFmpegError) as exc:
            if link is not None:
                self._close_link(link)
            st.backoff_s = (self.backoff_min_s if st.backoff_s == 0
                            else min(2 * st.backoff_s, self.backoff_max_s))
            st.next_try = now + st.backoff_s
            st.troubled = True
            self._count(frame.stream, st, connect_failures=1)
            log.warning("rtsp out %s: cannot connect (%s); next try in %.1f s",
                        redact_url(st.url), _reason(exc), st.backoff_s)
            raise OSError(f"rtsp out {redact_url(st.url)}: cannot connect: "
                          f"{_reason(exc)}") from None
        again = 1 if st.troubled else 0
        st.link, st.timeline, st.backoff_s, st.troubled = link, timeline, 0.0, False
        self._count(frame.stream, st, connected=True, connects=1, reconnects=again,
                    frames_sent=1)
        log.info("rtsp out %s: publishing stream %s (%dx%d)%s", redact_url(st.url),
                 frame.stream, st.size[0], st.size[1], " again" if again else "")

    def _drop_link(self, st: _State, now: float) -> None:
        if st.link is not None:
            self._close_link(st.link)
        st.link, st.timeline = None, None
        st.backoff_s = self.backoff_min_s  # the first retry soon: a server restart is quick
        st.next_try = now + st.backoff_s

    def _close_link(self, link: _Link) -> None:
        link.close()
        if link.hung:
            self._hung.append(link)

    def _count(self, stream: str, st: _State, connected: bool | None = None,
               **add: int) -> None:
        c = st.counters
        changes: dict[str, Any] = {k: getattr(c, k) + v for k, v in add.items()}
        if connected is not None:
            changes["connected"] = connected
        st.counters = replace(c, **changes)
        with self._lock:
            self._counters[stream] = st.counters


def _reason(exc: BaseException) -> str:
    """The error's text without the URL PyAV appends (it may hold credentials)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return redact_url(str(text))
