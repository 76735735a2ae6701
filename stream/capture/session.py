"""One source session for files, folders and live sources alike: it yields frames, sends nothing.

:meth:`SourceSession.frames` opens the source, reads it and yields :class:`Captured`
frames until the source ends (files, folders) or ``stop`` is set. What differs between
kinds is a setting, not a second loop:

    open       live sources retry with capped exponential backoff, also when the very first
               connect fails; a 404/401 from an RTSP camera is a configuration error
               (logged at ERROR with what to fix) and is retried only every
               :data:`CONFIG_RETRY_S`. Files and folders fail at once (SourceError).
    read-ahead every call into the source runs on a helper thread (BackgroundSource): the
               next frame decodes while this one is processed, and SIGTERM never waits
               on FFmpeg.
    watchdog   live: no frame for ``stall_timeout_s`` → ``stalled``, reconnect.
    pacing     realtime files wait for each frame's time; live sources over their fps cap
               skip frames before they get a seq (``fps_skipped``).
    staleness  live: a frame more than :data:`STALE_BUDGET_S` behind the camera's clock
               is marked stale (the router drops it without processing it).
    loop       files: replay from the first frame.
    end        a file that ends before its announced frame count (less a tolerance)
               ends ``ended_early`` ("source ended early: 96 of 200 frames").

State changes go to a :class:`SessionEvents` listener (the router sends them on).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from stream.capture.rtsp_probe import Diagnosis, diagnose
from stream.config.redact import redact_url
from stream.errors import SourceError
from stream.health import beat
from stream.sources import READ_TIMEOUT_S, BackgroundSource, FrameSource, SourceInfo, Unreadable

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_START_S = 0.5
"""First wait after a failed connect; doubles on every failure in a row."""
BACKOFF_CAP_S = 30.0
"""Longest wait between connect attempts (a camera that is off for hours)."""
CONFIG_RETRY_S = 30.0
"""Wait between attempts when the camera said the URL is wrong (404) or refused us (401):
retrying cannot help until someone fixes the config, so retry slowly."""
STALL_TIMEOUT_S = READ_TIMEOUT_S
"""Watchdog: a connected live source with no frame for this long is reconnected."""
STALE_BUDGET_S = 1.0
"""A live frame more than this behind the camera's clock (capture fell behind: CPU starved,
a burst after a network hiccup) is dropped as ``stale`` so capture catches up."""


def count_tolerance(total: int) -> int:
    """Frames a file may fall short of its announced count and still count as complete.

    Container counts are estimates for some formats (``nb_frames`` missing: duration × fps,
    rounded) and can be off by a frame or two, more on long files: 2 frames or 1 %.
    """
    return max(2, total // 100)


@dataclass(frozen=True)
class CaptureSettings:
    """How one capture behaves; built from a SourceConfig by the role."""

    stream: str
    url: str
    kind: str  # file | rtsp | camera | images
    policy: str  # wait | drop (see stream.capture.policy)
    loop: bool = False
    realtime: bool = False
    fps_cap: float | None = None
    send_images: bool = False
    input_size: tuple[int, int] = (224, 224)  # (width, height) of the model input

    @property
    def connects(self) -> bool:
        """A camera or stream we connect to: retried, watched, judged for staleness."""
        return self.kind in ("rtsp", "camera")

    @property
    def live(self) -> bool:
        """Frames come on the source's own clock (cameras, realtime files)."""
        return self.connects or self.realtime


@dataclass(frozen=True)
class Captured:
    """One decoded frame, its media time, and whether it is already too old to process."""

    frame: np.ndarray
    pts: float | None
    stale: bool = False


@dataclass(frozen=True)
class _Ended:
    """How one read session ended: ``reason`` (end, ended_early; lost for live sources)."""

    reason: str
    message: str
    frames: int


class SessionEvents(Protocol):
    """Where a session reports what happens (the router turns it into messages)."""

    def opened(self, info: SourceInfo) -> None:
        """A (re)connect succeeded: the stream (re)starts with this size and rate."""

    def status(self, state: str, message: str = "") -> None:
        """The source changed state (connecting, reconnecting, streaming, stalled)."""


class LagMeter:
    """How far behind the source's own clock frames arrive, from their media timestamps.

    The reference is the earliest-arriving frame seen (lag 0): a frame whose pts says it
    was shot t seconds after the reference but arrives t + lag seconds after it, is lag
    seconds late. Frames without a pts are never called late.
    """

    def __init__(self) -> None:
        self._ref: tuple[float, float] | None = None  # (pts, arrival)
        self._last_pts: float | None = None

    def update(self, pts: float | None, now: float) -> float:
        """Record one arrival; returns its lag in seconds (>= 0)."""
        last, self._last_pts = self._last_pts, pts
        if pts is None:
            return 0.0
        if last is not None and pts <= last:
            # Timestamps that stand still or go back (a camera without usable pts, a
            # discontinuity): no judgement; the next frame starts over.
            self._ref = None
            return 0.0
        if self._ref is None:
            self._ref = (pts, now)
            return 0.0
        lag = (now - self._ref[1]) - (pts - self._ref[0])
        if lag < 0:
            self._ref = (pts, now)  # an earlier-than-ever arrival: the new reference
            return 0.0
        return lag


class Pacer:
    """Holds frames to one every ``interval_s``: says how long to wait (0: go now)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next_due: float | None = None

    def wait_s(self, now: float) -> float:
        """Seconds until the next frame is due; a frame taken now must call :meth:`took`."""
        if not self.interval_s or self._next_due is None:
            return 0.0
        return max(0.0, self._next_due - now)

    def took(self, now: float) -> None:
        """A frame went out at ``now``; a late one does not earn a burst after it."""
        due = now if self._next_due is None else self._next_due
        self._next_due = max(due + self.interval_s, now - self.interval_s)


class SourceSession:
    """Open, read ahead, watch, pace and judge one source; see the module docstring.

    After :meth:`frames` returns, :attr:`end` holds the reason and message of the end
    (``end``, ``ended_early`` or ``shutdown``); SourceError propagates (files: cannot open).
    """

    def __init__(
        self,
        settings: CaptureSettings,
        source: FrameSource,
        stop: threading.Event,
        events: SessionEvents,
        counters: Counter[str],
        *,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        probe: Callable[[str], Diagnosis | None] = diagnose,
    ) -> None:
        self.s = settings
        self.source = (source if isinstance(source, BackgroundSource)
                       else BackgroundSource(source, f"capture-{settings.stream}"))
        self.stop = stop
        self.events = events
        self.counters = counters
        self.stall_timeout_s = stall_timeout_s
        self.probe = probe
        self.shown_url = redact_url(settings.url)
        self.end: tuple[str, str] = ("shutdown", "")
        self._backoff = BACKOFF_START_S

    def close(self) -> None:
        """Release the source (a call still blocked in FFmpeg releases it when it returns)."""
        self.source.close()

    def frames(self) -> Iterator[Captured]:
        """Yield every frame until the source ends or stop is set; then see :attr:`end`."""
        while not self.stop.is_set():
            info = self._open()
            if info is None:
                return
            self.events.opened(info)
            ended = yield from self._read(info)
            if ended is None:
                return
            if not self.s.connects:
                self.end = (ended.reason, ended.message)
                return
            self.counters["reconnects"] += 1
            # Opened but no frame came (a camera that hangs): back off like a failed open,
            # or a hung camera would be hammered with reconnects.
            wait = self._next_backoff() if ended.frames == 0 else 0.0
            self.events.status("reconnecting", f"{ended.message}; reconnecting in {wait:.1f} s")
            if wait and self.stop.wait(wait):
                return

    # -- open --------------------------------------------------------------------------

    def _open(self) -> SourceInfo | None:
        """Open; live sources retry with backoff. None when stop was set first."""
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            self.events.status("connecting", self.shown_url if attempt == 1
                               else f"{self.shown_url} (attempt {attempt})")
            try:
                done, info = self._call(lambda s: s.open(), None)
                return info if done else None
            except SourceError as exc:
                if not self.s.connects:
                    raise
                self.counters["connect_failures"] += 1
                wait, why = self._connect_failed(exc)
                self.events.status("reconnecting", f"{why}; retrying in {wait:.1f} s")
                if self.stop.wait(wait):
                    break
        return None

    def _connect_failed(self, exc: SourceError) -> tuple[float, str]:
        """How long to wait before the next attempt, and why the attempt failed."""
        found: Diagnosis | None = None
        if self.s.kind == "rtsp":
            _, found = self._call(lambda _s: self.probe(self.s.url), None)
        if found is None or not found.config_error:
            why = str(exc) if found is None else f"{exc} ({found.detail})"
            return self._next_backoff(), why
        why = f"{found.detail}: {found.hint}"
        log.error("%s: %s: %s; retrying every %.0f s until the URL in the config is fixed",
                  self.s.stream, self.shown_url, why, CONFIG_RETRY_S)
        return CONFIG_RETRY_S, why

    def _next_backoff(self) -> float:
        wait, self._backoff = self._backoff, min(self._backoff * 2, BACKOFF_CAP_S)
        return wait

    def _call(self, call: Callable[[FrameSource], T], deadline: float | None
              ) -> tuple[bool, T | None]:
        """Run ``call(source)`` on the helper thread and wait for it (see :meth:`_wait`)."""
        return self._wait(self.source.submit(call), deadline)

    def _wait(self, fut: Future[T], deadline: float | None) -> tuple[bool, T | None]:
        """Wait for a helper-thread call until it is done, stop is set or ``deadline``.

        Returns ``(True, result)`` or ``(False, None)``; an abandoned call keeps running and
        its result is dropped. Errors raised by the call are raised here.
        """
        while not self.stop.is_set():
            beat()  # also while a camera opens: `stream health --role capture`
            slice_s = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            try:
                return True, fut.result(max(slice_s, 0.0))
            except FutureTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    return False, None
        return False, None

    # -- read --------------------------------------------------------------------------

    def _read(self, info: SourceInfo) -> Generator[Captured, None, _Ended | None]:
        """Read one session (files: every pass of a loop). Returns None on stop."""
        pacer = Pacer(1.0 / self.s.fps_cap if self.s.fps_cap else
                      1.0 / info.fps if self.s.realtime else 0.0)
        lag = LagMeter()
        got = unreadable = 0
        streaming = False
        last = time.monotonic()
        pending = self.source.submit(lambda s: s.read())
        while True:
            watchdog = last + self.stall_timeout_s if self.s.connects else None
            done, item = self._wait(pending, watchdog)
            if self.stop.is_set():
                return None
            if not done:
                self.counters["stalls"] += 1
                self.events.status("stalled", f"no frame for {self.stall_timeout_s:.0f} s")
                return _Ended("lost", f"stalled: no frame for {self.stall_timeout_s:.0f} s",
                              got)
            if item is None:
                if self.s.connects:
                    return _Ended("lost", "the source stopped sending (stream ended or "
                                  "connection lost)", got)
                if self.s.loop and got:
                    got = unreadable = 0
                    self._call(lambda s: s.open(), None)  # again from the first frame
                    pending = self.source.submit(lambda s: s.read())
                    continue
                if self.s.loop:
                    raise SourceError(f"{self.shown_url} gave no frame to loop over")
                return self._file_end(info, got, unreadable)
            # Decode the next frame on the helper thread while this one is processed.
            pending = self.source.submit(lambda s: s.read())
            last = time.monotonic()
            if isinstance(item, Unreadable):
                unreadable += 1
                self.counters["unreadable"] += 1
                log.warning("%s: skipping unreadable %s", self.s.stream, item.name)
                continue
            if not streaming:
                streaming = True
                self._backoff = BACKOFF_START_S
                self.events.status("streaming", f"{info.width}x{info.height} @ "
                                                f"{info.fps:.2f} fps")
            wait = pacer.wait_s(last)
            if wait and self.s.connects:
                # A live source is never slowed down: frames over the cap are skipped
                # before they get a seq (they were never captured).
                self.counters["fps_skipped"] += 1
                continue
            if wait and self.stop.wait(wait):
                return None
            pacer.took(time.monotonic())
            got += 1
            frame, pts = item
            stale = self.s.connects and lag.update(pts, last) > STALE_BUDGET_S
            yield Captured(frame, pts, stale)

    def _file_end(self, info: SourceInfo, got: int, unreadable: int) -> _Ended:
        """``end``, or ``ended_early`` when a file gave fewer frames than it announced."""
        total = info.total_frames
        note = f"{unreadable} unreadable item(s) skipped" if unreadable else ""
        if total and got + unreadable < total - count_tolerance(total):
            message = f"source ended early: {got} of {total} frames"
            log.warning("%s: %s (a truncated or damaged file?)", self.s.stream, message)
            return _Ended("ended_early", f"{message}; {note}" if note else message, got)
        return _Ended("end", note, got)
