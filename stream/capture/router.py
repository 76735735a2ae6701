"""Where each captured frame goes: the crop to a worker, the frame to the sink, or a drop.

Per frame: stamp (stream, seq, pts, wall ts) → ask the back-pressure policy
(:mod:`stream.capture.policy`) whether to drop it at once (``stale``) → make it ready for
workers (:mod:`stream.capture.supply`: a live source keeps only its newest frame, the one it
supersedes is dropped as ``busy``; a file waits for room in a short queue) → exactly one
``Frame`` for the sink: the full image on the video link when the sink writes video and the
link takes it, else a stamp on the control link (``video_busy`` when a live source could not
queue the full frame) → a ``Drop`` naming why, for every frame that will get no label.

Workers ask for frames (:mod:`stream.dispatch`): the :class:`~stream.capture.supply.
DispatchThread` answers each granted slot at once with the ready frame, cropped to the model
input with the accuracy preprocessing (live frames only then, so a frame nobody takes costs
no crop). Crops are ~150 KB, so worker links stay light, and the full frame goes straight to
the sink, so a dead worker costs a label, never an output frame.

The stream always ends with a status ``ended`` and an ``eos`` carrying the number of seqs
issued (the capture's own count), sent with their own deadline whatever the stop flag, so
the sink can account for every frame (invariant 1).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from stream.capture.links import Link
from stream.capture.policy import policy_for
from stream.capture.session import Captured, CaptureSettings
from stream.capture.supply import DispatchThread, Pending
from stream.config.redact import redact_url
from stream.dispatch import Dispatcher
from stream.preprocess import CropPlan, center_crop_resize, plan_crop
from stream.protocol import Drop, Eos, Frame, Hello, Message, Status, Task
from stream.sources import SourceInfo

log = logging.getLogger(__name__)

FINAL_SEND_S = 5.0
"""Deadline for the final status and ``eos``, whatever the stop flag."""
STOP_DRAIN_S = 2.0
"""After stop, how long the end of a stream still waits for workers' last frames."""
DRAIN_NOTE_S = 10.0
"""The end of a stream that has waited this long for workers says what for (again every
period): a lossless stream waits until every frame is labelled, with no deadline but stop."""


class Router:
    """Sends one capture's messages: tasks to workers, frames/drops/status/eos to the sink.

    It is also the session's :class:`~stream.capture.session.SessionEvents` listener. The
    ``dispatcher`` (its task socket) belongs to the dispatch thread from the first frame to
    the end of :meth:`drain`.
    """

    def __init__(
        self,
        settings: CaptureSettings,
        control: Link,
        video: Link,
        dispatcher: Dispatcher,
        stop: threading.Event,
        counters: Counter[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.s = settings
        self.policy = policy_for(settings.policy)
        self.control = control
        self.video = video
        self.dispatcher = dispatcher
        self.stop = stop
        self.counters = counters
        self.clock = clock
        self.seq = 0  # seqs issued so far: the count eos carries
        self.frames = self.policy.supply(self)  # frames ready for workers' grants
        dispatcher.supply = self.frames
        self.dispatch = DispatchThread(dispatcher, f"dispatch-{settings.stream}")
        self.shown_url = redact_url(settings.url)
        self._plan: CropPlan | None = None
        # Seconds spent per stage (source = decode + pacing), reported at the end.
        self.timing: dict[str, float] = dict.fromkeys(
            ("source", "preprocess", "wait_workers", "to_sink"), 0.0)
        self._t_end: float | None = None

    # -- session events ----------------------------------------------------------------

    def opened(self, info: SourceInfo) -> None:
        """A (re)connect: a fresh ``hello`` (the size may change); seq goes on counting."""
        total = None if self.s.loop else info.total_frames
        self._send_control(Hello(self.s.stream, self.s.kind, info.fps, info.width,
                                 info.height, total, self.shown_url, self.policy.name,
                                 self.seq))

    def status(self, state: str, message: str = "") -> None:
        """Log a state change and send it with the running counters."""
        message = redact_url(message)
        log.info("%s %s %s", self.s.stream, state, message)
        self._send_control(Status(self.s.stream, state, self.clock(), message,
                                  dict(self.counters)))

    # -- frames ------------------------------------------------------------------------

    def route(self, item: Captured) -> None:
        """Stamp one decoded frame and send it on (or drop it, with a reason)."""
        t0 = time.perf_counter()
        if self._t_end is not None:
            self.timing["source"] += t0 - self._t_end  # decode (and pacing) of this frame
        seq, ts = self.seq, self.clock()
        self.seq += 1
        if not self.dispatch.started:
            self.dispatch.start()
        if self.dispatch.error is not None:  # the capture ends the stream as an error
            raise RuntimeError(f"the dispatch thread failed: {self.dispatch.error!r}")
        self.pump()
        why = self.policy.refuse(self, item.stale)
        sent = False
        if why is None:
            # Live: the newest frame waits for a grant (the older one is dropped as busy);
            # files: cropped now, waits for room among the ready frames.
            sent = self.policy.dispatch(self, Pending(seq, ts, item))
            if not sent:
                why = "shutdown" if self.stop.is_set() else "busy"
        t1 = time.perf_counter()
        self._send_frame(seq, ts, item)
        if why is not None:
            self.drop(seq, item.pts, ts, why)
        self._t_end = time.perf_counter()
        self.timing["to_sink"] += self._t_end - t1

    def make_task(self, pending: Pending) -> Task:
        """Crop a frame to the model input (accuracy preprocessing) as a worker's task.

        Called on the main thread for lossless sources, on the dispatch thread for live
        ones (only for the frames a worker asked for).
        """
        t0 = time.perf_counter()
        item = pending.item
        h, w = item.frame.shape[:2]
        plan = self._plan
        if plan is None or (w, h) != (plan.src_w, plan.src_h):
            plan = self._plan = plan_crop(w, h, *self.s.input_size)
        crop = center_crop_resize(item.frame, (plan.out_w, plan.out_h), plan)
        task = Task(self.s.stream, pending.seq, item.pts, pending.ts, crop.shape[0],
                    crop.shape[1], crop.tobytes())
        self.timing["preprocess"] += time.perf_counter() - t0
        return task

    def _send_frame(self, seq: int, ts: float, item: Captured) -> None:
        """Exactly one ``Frame`` per seq: full on the video link, or a stamp on control."""
        h, w = item.frame.shape[:2]
        if self.s.send_images:
            image = np.ascontiguousarray(item.frame).data
            if self.video.send(Frame(self.s.stream, seq, item.pts, ts, w, h, image),
                               self.policy.send_timeout_s):
                return
            self.counters["video_busy"] += 1
        self._send_control(Frame(self.s.stream, seq, item.pts, ts, w, h, None))

    def drop(self, seq: int, pts: float | None, ts: float, why: str) -> None:
        """Count a frame that will get no label and tell the sink why."""
        self.counters[why] += 1
        self._send_control(Drop(self.s.stream, seq, pts, ts, why))

    def _send_control(self, msg: Message) -> None:
        if not self.control.send(msg, self.policy.send_timeout_s):
            self.counters["sink_busy"] += 1

    # -- workers -----------------------------------------------------------------------

    def pump(self) -> None:
        """Account for what the dispatch thread handed back: frames of lost workers are
        dropped as ``worker_lost`` (live) or counted ``resent`` (being sent again)."""
        for task, resent in self.dispatch.take_lost():
            if resent:
                self.counters["resent"] += 1
            else:
                self.drop(task.seq, task.pts, task.ts, "worker_lost")

    def drain(self, timeout_s: float | None) -> None:
        """At the end of a stream: wait until workers finished (or lost) every frame.

        Bounded by ``timeout_s`` and, once stop is set (also before the call), by
        :data:`STOP_DRAIN_S`. A live stream's newest frame (a realtime file's last one) is
        still offered to the workers, as any frame is, when a worker is connected and stop
        is not set; if none takes it by the deadline, it is dropped as ``busy``. A
        lossless frame still unsent at the deadline is dropped as ``shutdown``. Stops the
        dispatch thread.
        """
        if self.frames.live and (self.stop.is_set() or not self._has_workers()):
            self._drop_unsent("busy")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        stop_deadline: float | None = None
        noted = time.monotonic()
        while self.dispatch.started and not self.dispatch.idle():
            now = time.monotonic()
            if now - noted >= DRAIN_NOTE_S:
                noted = now
                self._note_drain()
            if stop_deadline is None and self.stop.is_set():
                stop_deadline = now + STOP_DRAIN_S
                deadline = stop_deadline if deadline is None else min(deadline, stop_deadline)
            if deadline is not None and now >= deadline:
                break
            self.dispatch.changed.wait(0.1)
            self.dispatch.changed.clear()
            self.pump()
        self.dispatch.close()
        self.pump()
        self._drop_unsent("busy" if self.frames.live else "shutdown")

    def _note_drain(self) -> None:
        held, ready, workers = self.dispatch.outstanding()
        log.warning("%s: the source has ended; waiting for workers to label %d frame(s) "
                    "they hold and %d not yet taken (workers connected: %d); stopping the "
                    "capture (SIGTERM, Ctrl-C) ends it now and drops them as shutdown",
                    self.s.stream, held, ready, workers)

    def _has_workers(self) -> bool:
        """A worker is connected (as of a settled moment of the dispatch thread)."""
        with self.dispatch.lock:
            return bool(self.dispatcher.workers)

    def _drop_unsent(self, why: str) -> None:
        for left in self.frames.clear():
            if isinstance(left, Pending):
                self.drop(left.seq, left.item.pts, left.ts, why)
            else:
                self.drop(left.seq, left.pts, left.ts, why)

    # -- the end -----------------------------------------------------------------------

    def finish(self, reason: str, message: str, timeout_s: float = FINAL_SEND_S) -> bool:
        """Send status ``ended`` and ``eos`` within ``timeout_s``, stop or not.

        Returns:
            True if both were queued for the sink.
        """
        deadline = time.monotonic() + timeout_s
        text = redact_url(f"{reason} {message}".strip())
        log.info("%s ended %s", self.s.stream, text)
        final: list[Message] = [
            Status(self.s.stream, "ended", self.clock(), text, dict(self.counters)),
            Eos(self.s.stream, self.seq, reason, redact_url(message)),
        ]
        for msg in final:
            left = max(0.0, deadline - time.monotonic())
            if not self.control.send(msg, left, until_stop=False):
                log.warning("%s: the sink did not take the end of the stream within %.0f s "
                            "(is it running?)", self.s.stream, timeout_s)
                return False
        return True

    def timing_report(self) -> str:
        """Mean milliseconds per frame in each stage: where a slow pipeline spends its time."""
        n = max(1, self.seq)
        return ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in self.timing.items())
