"""The capture role: decode one source, stamp every frame, send crops to workers.

Per frame: decode → stamp (stream, seq, pts, wall ts) → crop to the model input with the
accuracy preprocessing → ``task`` to a worker, and the stamp (plus the full image when video
is written) to the sink. Crops are ~150 KB, so worker links stay light, and the full frame
goes straight to the sink, so a dead worker costs a label, never an output frame.

Tasks go out through a credit-based :class:`~stream.dispatch.Dispatcher`: only to a worker
with room, and capture remembers what each worker holds. Back-pressure is a per-source
policy (STYLE.md habit 6):

    wait  (default for files/folders)  wait until a worker has room: lossless. Frames held
                                       by a worker that dies are re-sent to another one.
    drop  (default for cameras/RTSP)   never wait: if no worker has room the frame is
                                       counted as dropped with reason ``busy`` and capture
                                       goes straight back to the source (invariant 3);
                                       frames of a dead worker are dropped as ``worker_lost``.

Every issued seq reaches the sink as a ``frame`` (and, if not sent to a worker, a ``drop``
naming why), and the stream always ends with an ``eos`` carrying the number of seqs issued,
so the sink can account for every frame (invariant 1).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import zmq

from stream import transport
from stream.config import StreamConfig, connect_endpoint
from stream.config.redact import redact_url
from stream.dispatch import Dispatcher, router_socket
from stream.errors import ConfigError, SourceError
from stream.preprocess import center_crop_resize, plan_crop
from stream.protocol import Drop, Eos, Frame, Hello, Message, Status, Task
from stream.runtime import cpu_seconds
from stream.sources import (
    READ_TIMEOUT_S,
    BackgroundSource,
    FrameSource,
    ImageFolderSource,
    OpenCVSource,
    SourceInfo,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A live frame that reaches capture more than this behind the camera's clock (capture fell
# behind: CPU starved, a burst after a network hiccup) is dropped as `stale` without being
# processed, so capture catches up instead of serving ever older frames.
STALE_BUDGET_S = 1.0


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


BACKOFF_START_S = 0.5
"""First wait after a failed connect; doubles on every failure in a row."""
BACKOFF_CAP_S = 30.0
"""Longest wait between connect attempts (a camera that is off for hours)."""
STALL_TIMEOUT_S = READ_TIMEOUT_S
"""Watchdog: a connected live source with no frame for this long is reconnected."""


@dataclass(frozen=True)
class CaptureSettings:
    """How one capture behaves; built from a SourceConfig by :meth:`Capture.from_config`."""

    stream: str
    url: str
    kind: str  # file | rtsp | camera | images
    policy: str  # wait | drop
    loop: bool = False
    realtime: bool = False
    fps_cap: float | None = None
    send_images: bool = False
    input_size: tuple[int, int] = (224, 224)  # (width, height) of the model input

    @property
    def live(self) -> bool:
        return self.kind in ("rtsp", "camera") or self.realtime


class Capture:
    """Runs one source until it ends or ``stop`` is set; see the module docstring."""

    def __init__(
        self,
        settings: CaptureSettings,
        source: FrameSource,
        tasks: zmq.Socket[bytes],
        to_sink: zmq.Socket[bytes],
        stop: threading.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.s = settings
        self.source = source
        self.dispatch = Dispatcher(tasks)
        self.to_sink = to_sink
        self.stop = stop
        self.clock = clock
        self.seq = 0
        self.counters: Counter[str] = Counter()
        # Seconds spent per stage (source = decode + pacing), reported at the end.
        self.timing: dict[str, float] = dict.fromkeys(
            ("source", "preprocess", "wait_workers", "to_sink"), 0.0)
        self._t_end: float | None = None
        self.shown_url = redact_url(settings.url)
        self._backoff = BACKOFF_START_S

    @staticmethod
    def make_source(settings: CaptureSettings, rtsp_transport: str = "tcp",
                    fps: float | None = None) -> FrameSource:
        """The FrameSource for a kind of URL."""
        if settings.kind == "images":
            return ImageFolderSource(settings.url, fps or 25.0)
        return OpenCVSource(settings.url, settings.kind, rtsp_transport=rtsp_transport)

    # -- sending -------------------------------------------------------------------------

    def _send(self, sock: zmq.Socket[bytes], msg: Message, *, block: bool,
              timeout_s: float | None = None) -> bool:
        """Send; with ``block`` wait for room (until stop/timeout). False if not sent."""
        if not block:
            try:
                transport.send(sock, msg, zmq.NOBLOCK)
                return True
            except zmq.Again:
                return False
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                transport.send(sock, msg, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            if self.stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                return False
            sock.poll(100, zmq.POLLOUT)

    def _to_sink(self, msg: Message) -> None:
        # The sink is one process fed by every capture: a `drop`-policy (live) source never
        # waits for it (what the sink misses it accounts as `lost`); `wait` waits.
        if self.s.policy == "drop":
            sent = self._send(self.to_sink, msg, block=False)
        else:
            sent = self._send(self.to_sink, msg, block=True)
        if not sent:
            self.counters["sink_busy"] += 1

    def _status(self, state: str, message: str = "") -> None:
        log.info("%s %s %s", self.s.stream, state, message)
        self._to_sink(Status(self.s.stream, state, self.clock(), message, dict(self.counters)))

    # -- the loop ------------------------------------------------------------------------

    def _open(self) -> SourceInfo | None:
        """Open the source; for live sources retry with capped exponential backoff.

        Returns None when stop was set first (also while a blocking open is in progress:
        live sources open on a helper thread, so SIGTERM never waits on FFmpeg).
        """
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            self._status("connecting", self.shown_url if attempt == 1
                         else f"{self.shown_url} (attempt {attempt})")
            try:
                if isinstance(self.source, BackgroundSource):
                    done, info = self._wait(self.source.submit(lambda s: s.open()), None)
                    if not done:
                        return None
                    return info
                return self.source.open()
            except SourceError as exc:
                if not self.s.live:
                    raise
                self.counters["connect_failures"] += 1
                self._status("reconnecting", f"{exc}; retrying in {self._backoff:.1f} s")
                if self.stop.wait(self._backoff):
                    break
                self._backoff = min(self._backoff * 2, BACKOFF_CAP_S)
        return None

    def _wait(self, fut: Future[T], deadline: float | None) -> tuple[bool, T | None]:
        """Wait for a helper-thread call until it is done, stop is set or ``deadline``.

        Returns ``(True, result)`` or ``(False, None)``; an abandoned call keeps running and
        its result is dropped. Errors raised by the call are raised here.
        """
        while not self.stop.is_set():
            slice_s = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            try:
                return True, fut.result(max(slice_s, 0.0))
            except FutureTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    return False, None
        return False, None

    def run(self) -> int:
        """Capture until the source ends (files) or stop is set; always sends ``eos``."""
        reason, message, code = "end", "", 0
        try:
            reason, message = self._run()
        except SourceError as exc:
            reason, message, code = "error", str(exc), 2
            log.error("%s: %s", self.s.stream, exc)
        except Exception as exc:  # a bug or a library error: still end the stream honestly
            reason, message = "error", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.source.close()
            # Lossless sources wait for their last frames; live ones only briefly.
            self.drain(None if self.s.policy == "wait" else 2.0)
            self._status("ended", f"{reason} {message}".strip())
            self._send(self.to_sink, Eos(self.s.stream, self.seq, reason, message),
                       block=True, timeout_s=5.0)
            log.info("%s: stage ms/frame: %s; process cpu %.1f ms/frame", self.s.stream,
                     self.timing_report(), 1000 * cpu_seconds() / max(1, self.seq))
            log.info("%s: %d frames captured (%s)", self.s.stream, self.seq,
                     ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())) or "no drops")
        return code

    def _run(self) -> tuple[str, str]:
        if self.s.kind in ("rtsp", "camera"):
            return self._run_live()
        info = self._open()
        if info is None:
            return "shutdown", ""
        self._to_sink(Hello(self.s.stream, self.s.kind, info.fps, info.width, info.height,
                            None if self.s.loop else info.total_frames, self.shown_url,
                            self.s.policy, self.seq))
        self._status("streaming", f"{info.width}x{info.height} @ {info.fps:.2f} fps")
        out_w, out_h = self.s.input_size
        plan = plan_crop(max(info.width, 1), max(info.height, 1), out_w, out_h)
        pace = 1.0 / self.s.fps_cap if self.s.fps_cap else (
            1.0 / info.fps if self.s.realtime else 0.0)
        t0 = time.monotonic()
        next_due = t0
        seq_at_open = self.seq
        while not self.stop.is_set():
            got = self.source.read()
            if got is None:  # files and folders only: live sources go to _run_live
                if self.s.loop and self.seq > seq_at_open:
                    self.source.open()  # re-open from the first frame
                    seq_at_open = self.seq
                    continue
                if self.s.loop:
                    raise SourceError(f"{self.shown_url} gave no frame to loop over")
                return "end", ""
            frame, pts = got
            if pace:
                now = time.monotonic()
                if now < next_due and self.stop.wait(next_due - now):
                    break
                next_due = max(next_due + pace, time.monotonic() - pace)
            self._one(frame, pts, plan)
        return "shutdown", ""

    def _run_live(self) -> tuple[str, str]:
        """RTSP/camera: connect, stream, and on loss or stall reconnect, until stop.

        States published (``status/<stream>``): ``connecting`` before each attempt,
        ``reconnecting`` after a failed attempt or a lost session (with the backoff),
        ``streaming`` when the first frame of a session arrives, ``stalled`` when no frame
        came for :data:`STALL_TIMEOUT_S` (the watchdog; capture never waits on workers, so
        this is always the source), ``ended`` from :meth:`run`. ``seq`` keeps counting
        across sessions; every (re)connect sends a fresh ``hello`` (the size may change).
        """
        if not isinstance(self.source, BackgroundSource):
            self.source = BackgroundSource(self.source, f"capture-{self.s.stream}")
        while True:
            info = self._open()
            if info is None:
                return "shutdown", ""
            self._to_sink(Hello(self.s.stream, self.s.kind, info.fps, info.width, info.height,
                                None, self.shown_url, self.s.policy, self.seq))
            frames_before = self.seq
            why = self._stream_live(info)
            if why == "stop":
                return "shutdown", ""
            self.counters["reconnects"] += 1
            if self.seq == frames_before:
                # Opened but no frame came (a camera that hangs): back off like a failed
                # open, or a hung camera would be hammered with reconnects.
                wait, self._backoff = self._backoff, min(self._backoff * 2, BACKOFF_CAP_S)
            else:
                wait = 0.0
            self._status("reconnecting", f"{why}; reconnecting in {wait:.1f} s")
            if wait and self.stop.wait(wait):
                return "shutdown", ""

    def _stream_live(self, info: SourceInfo) -> str:
        """Read one session until stop ("stop"), loss or stall (a reason to reconnect)."""
        assert isinstance(self.source, BackgroundSource)
        out_w, out_h = self.s.input_size
        plan = plan_crop(max(info.width, 1), max(info.height, 1), out_w, out_h)
        pace = 1.0 / self.s.fps_cap if self.s.fps_cap else 0.0
        last = next_due = time.monotonic()
        streaming = False
        lag = LagMeter()
        pending = self.source.submit(lambda s: s.read())
        while True:
            done, got = self._wait(pending, last + STALL_TIMEOUT_S)
            if self.stop.is_set():
                return "stop"
            if not done:
                self.counters["stalls"] += 1
                self._status("stalled", f"no frame for {STALL_TIMEOUT_S:.0f} s")
                return f"stalled: no frame for {STALL_TIMEOUT_S:.0f} s"
            if got is None:
                return "the source stopped sending (stream ended or connection lost)"
            # Decode the next frame on the helper thread while this one is processed.
            pending = self.source.submit(lambda s: s.read())
            last = time.monotonic()
            if not streaming:
                streaming = True
                self._backoff = BACKOFF_START_S
                self._status("streaming", f"{info.width}x{info.height} @ {info.fps:.2f} fps")
            if pace:
                # A live source is never slowed down: frames over the cap are skipped
                # before they get a seq (they were never captured).
                if last < next_due:
                    self.counters["fps_skipped"] += 1
                    continue
                next_due = max(next_due + pace, last - pace)
            frame, pts = got
            self._one(frame, pts, plan, stale=lag.update(pts, last) > STALE_BUDGET_S)

    def _one(self, frame: np.ndarray, pts: float | None, plan: Any, stale: bool = False) -> None:
        """Stamp one decoded frame and send it on (or drop it, with a reason)."""
        t0 = time.perf_counter()
        if self._t_end is not None:
            self.timing["source"] += t0 - self._t_end  # decode (and pacing) of this frame
        seq = self.seq
        self.seq += 1
        ts = self.clock()
        h, w = frame.shape[:2]
        if self.s.policy == "drop":
            # Decide before the (costly) crop: a frame no worker can take now, or one that
            # is already older than the staleness budget, is dropped at once.
            self._recover()
            self.dispatch.poll(0)
            why = "stale" if stale else ("busy" if self.dispatch.credits == 0 else None)
            if why is not None:
                image = np.ascontiguousarray(frame).data if self.s.send_images else None
                self._to_sink(Frame(self.s.stream, seq, pts, ts, w, h, image))
                self.counters[why] += 1
                self._to_sink(Drop(self.s.stream, seq, pts, ts, why))
                self._t_end = time.perf_counter()
                return
        if (w, h) != (plan.src_w, plan.src_h):
            plan = plan_crop(w, h, plan.out_w, plan.out_h)
        crop = center_crop_resize(frame, (plan.out_w, plan.out_h), plan)
        task = Task(self.s.stream, seq, pts, ts, crop.shape[0], crop.shape[1], crop.tobytes())
        t1 = time.perf_counter()
        sent = self._dispatch(task)
        t2 = time.perf_counter()
        image = np.ascontiguousarray(frame).data if self.s.send_images else None
        self._to_sink(Frame(self.s.stream, seq, pts, ts, w, h, image))
        if not sent:
            self._drop(task, "shutdown" if self.stop.is_set() else "busy")
        self._t_end = time.perf_counter()
        self.timing["preprocess"] += t1 - t0
        self.timing["wait_workers"] += t2 - t1
        self.timing["to_sink"] += self._t_end - t2

    def timing_report(self) -> str:
        """Mean milliseconds per frame in each stage: where a slow pipeline spends its time."""
        n = max(1, self.seq)
        return ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in self.timing.items())

    def _drop(self, task: Task, why: str) -> None:
        self.counters[why] += 1
        self._to_sink(Drop(self.s.stream, task.seq, task.pts, task.ts, why))

    def _dispatch(self, task: Task) -> bool:
        """Hand a task to a worker according to the policy; False if it was not sent."""
        self._recover()
        if self.s.policy != "wait":
            self.dispatch.poll(0)
            return self.dispatch.try_send(task)
        waited_since = time.monotonic()
        last_note = waited_since
        while not self.stop.is_set():
            self.dispatch.poll(0)
            if self.dispatch.try_send(task):
                return True
            self._recover()
            self.dispatch.poll(100)
            if time.monotonic() - last_note > 10.0:
                last_note = time.monotonic()
                log.warning("%s: no worker has taken a frame for %.0f s (workers known: %d); "
                            "is a worker running and connected to this capture?",
                            self.s.stream, last_note - waited_since,
                            len(self.dispatch.workers))
        return False

    def _recover(self) -> None:
        """Frames of workers that left or died: re-send (wait policy) or drop them."""
        lost = self.dispatch.take_lost()
        for task in lost:
            if self.s.policy == "wait" and not self.stop.is_set():
                self.counters["resent"] += 1
                # Refresh the sink's clock for this seq, so its reorder timeout restarts.
                self._to_sink(Frame(task.stream, task.seq, task.pts, task.ts, task.width,
                                    task.height, None))
                if not self._dispatch(task):
                    self._drop(task, "shutdown")
            else:
                self._drop(task, "worker_lost")

    def drain(self, timeout_s: float | None) -> None:
        """At the end of a stream: wait until workers finished (or lost) every frame."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.dispatch.inflight and not self.stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                break
            self.dispatch.poll(100)
            self._recover()


def model_input_size(model_path: str) -> tuple[int, int]:
    """(width, height) of the IR's image input, read from the IR itself."""
    import openvino as ov

    from stream.model.runtime import inspect_classifier

    _, info = inspect_classifier(ov.Core(), model_path)
    return info.width, info.height


def run_capture(cfg: StreamConfig, source_id: str, stop: threading.Event,
                sink_host: str | None = None) -> int:
    """Wire and run the capture of one configured source (``stream capture``).

    Args:
        cfg: the deployment config; ``source_id`` picks the source.
        sink_host: connect to the sink on this host instead of the configured one.
    Raises:
        ConfigError: no source with that id, or an endpoint cannot be bound/connected.
    """
    index = next((i for i, s in enumerate(cfg.sources) if s.id == source_id), None)
    if index is None:
        ids = ", ".join(s.id for s in cfg.sources)
        raise ConfigError(f"no source {source_id!r} in the config (sources: {ids})")
    src = cfg.sources[index]
    settings = CaptureSettings(
        stream=src.id, url=src.url, kind=src.resolved_kind(), policy=src.resolved_policy(),
        loop=src.loop, realtime=src.realtime,
        fps_cap=src.fps if src.resolved_kind() in ("rtsp", "camera") else None,
        send_images=cfg.sink.output_dir is not None,
        input_size=model_input_size(cfg.model.path),
    )
    source = Capture.make_source(settings, src.rtsp_transport, src.fps)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        tasks = router_socket(ctx)
        transport.bind(tasks, cfg.transport.frames_endpoint(index), "frames")
        # Full frames are MBs each: keep that queue short (transport.hwm); stamps are tiny.
        to_sink = transport.push_socket(ctx, hwm=cfg.transport.hwm if settings.send_images
                                        else 256)
        transport.connect(to_sink, connect_endpoint(cfg.transport.sink, sink_host), "sink")
        try:
            return Capture(settings, source, tasks, to_sink, stop).run()
        finally:
            tasks.close(linger=0)
            to_sink.close(linger=2000)
    finally:
        ctx.term()
