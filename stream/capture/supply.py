"""The frames a capture has ready for workers, and the thread that answers workers' grants.

Two supplies, one per back-pressure policy (:mod:`stream.capture.policy`):

    LatestFrame  live sources: only the NEWEST frame waits; a newer one supersedes it (the
                 router drops the old one as ``busy``). The crop is made when a worker's
                 grant takes the frame, so frames nobody asked for cost no preprocessing.
    FrameQueue   lossless sources: a short FIFO of cropped tasks; the capture waits for
                 room; tasks of a lost worker go back to the front and are sent again.

:class:`DispatchThread` runs the :class:`~stream.dispatch.Dispatcher` (the ROUTER socket)
on a thread of its own, so a grant is answered within a millisecond even while the main
thread waits for the decoder, crops or sends a full frame to the sink (invariant 3: the
source never waits for this). It hands back, through a queue, the tasks of lost workers,
which the main thread turns into ``worker_lost`` drops or counts as ``resent``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from stream.capture.session import Captured
from stream.dispatch import Dispatcher
from stream.protocol import Task

log = logging.getLogger(__name__)

QUEUE_FRAMES = 4
"""Cropped frames a lossless capture keeps ready: enough to answer grants at once while
the next frames decode, few enough to hold little memory (4 × ~150 KB)."""


@dataclass(frozen=True)
class Pending:
    """A stamped frame waiting for a worker (not cropped yet)."""

    seq: int
    ts: float
    item: Captured


INTERVAL_WEIGHT = 0.1
"""Weight of each new gap between frames in the interval :meth:`LatestFrame.freshness`
gives (a running mean over ~10 frames: steady against a camera's jitter, quick to follow
a change of rate)."""

OUTAGE_GAPS = 4.0
"""A gap this many times the mean interval is an outage (a reconnect) or a new frame rate,
not jitter: the mean starts again from the next gap."""


class LatestFrame:
    """Live: holds only the newest frame; ``make_task`` crops it when a grant takes it."""

    live = True

    def __init__(self, stream: str, make_task: Callable[[Pending], Task],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.make_task = make_task
        self.clock = clock
        self._lock = threading.Lock()
        self._item: Pending | None = None
        self._offered_at: float | None = None
        self._interval: float | None = None

    def offer(self, pending: Pending) -> Pending | None:
        """Make ``pending`` the frame to send; returns the one it superseded, if any."""
        with self._lock:
            old, self._item = self._item, pending
            now = self.clock()
            if self._offered_at is not None:
                gap = max(0.0, now - self._offered_at)
                if self._interval is None:
                    self._interval = gap
                elif gap > OUTAGE_GAPS * self._interval:
                    self._interval = None  # an outage or a new rate: the next gap says
                else:
                    self._interval += INTERVAL_WEIGHT * (gap - self._interval)
            self._offered_at = now
        return old

    def ready(self) -> int:
        return 0 if self._item is None else 1

    def freshness(self) -> tuple[float, float | None] | None:
        """(seconds the frame that would be sent has waited, seconds between new frames: a
        running mean, None before the second frame); None if no frame waits."""
        with self._lock:
            if self._item is None or self._offered_at is None:
                return None
            return max(0.0, self.clock() - self._offered_at), self._interval

    def take(self) -> Task | None:
        with self._lock:
            item, self._item = self._item, None
        return None if item is None else self.make_task(item)

    def lost(self, task: Task) -> bool:
        """A live frame is never sent twice: by now a newer one is waiting."""
        return False

    def clear(self) -> list[Pending]:
        """What no worker took (the end of the stream)."""
        with self._lock:
            item, self._item = self._item, None
        return [] if item is None else [item]


class FrameQueue:
    """Lossless: up to ``size`` cropped tasks in seq order, plus tasks to send again."""

    live = False

    def __init__(self, stream: str, size: int = QUEUE_FRAMES) -> None:
        self.stream = stream
        self.size = size
        self._cond = threading.Condition()
        self._queue: deque[Task] = deque()
        self._retry: list[Task] = []

    def put(self, task: Task, timeout_s: float) -> bool:
        """Queue ``task`` when there is room within ``timeout_s``; False if there was none."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._queue) < self.size, timeout_s):
                return False
            self._queue.append(task)
            return True

    def ready(self) -> int:
        return len(self._queue) + len(self._retry)

    def freshness(self) -> tuple[float, float | None] | None:
        """Not tracked: a lossless stream sends its oldest frame, whatever its age."""
        return None

    def take(self) -> Task | None:
        with self._cond:
            if self._retry:
                return self._retry.pop(0)
            if not self._queue:
                return None
            task = self._queue.popleft()
            self._cond.notify_all()
            return task

    def lost(self, task: Task) -> bool:
        """Send it again, before anything newer (oldest first)."""
        with self._cond:
            self._retry.append(task)
            self._retry.sort(key=lambda t: t.seq)
        return True

    def clear(self) -> list[Task]:
        """Everything not sent (the end of the stream), oldest first."""
        with self._cond:
            left = sorted([*self._retry, *self._queue], key=lambda t: t.seq)
            self._retry.clear()
            self._queue.clear()
            self._cond.notify_all()
        return left


class DispatchThread:
    """Runs ``dispatcher`` on its own thread until :meth:`close`; see the module docstring."""

    def __init__(self, dispatcher: Dispatcher, name: str) -> None:
        self.dispatcher = dispatcher
        dispatcher.on_lost = self._lost
        self._lost_tasks: queue.SimpleQueue[tuple[Task, bool]] = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._stop = threading.Event()
        self.changed = threading.Event()
        """Set after every round of the thread (the end of a stream waits on it)."""
        self.lock = threading.Lock()
        """Held while the dispatcher works: hold it to see a settled state (no task between
        the supply and a worker's inflight set)."""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A frame became ready: tell workers now, not at the next poll timeout."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wfd, b"\0")

    def idle(self) -> bool:
        """Nothing ready to send and nothing held by a worker, as of a settled moment."""
        with self.lock:
            return not self.dispatcher.inflight and not self.dispatcher.supply.ready()

    def outstanding(self) -> tuple[int, int, int]:
        """(frames held by workers, frames ready for them, workers connected), as of a
        settled moment: what the end of a stream is still waiting for."""
        with self.lock:
            d = self.dispatcher
            return d.inflight, d.supply.ready(), len(d.workers)

    def take_lost(self) -> list[tuple[Task, bool]]:
        """Tasks of lost workers since the last call, with whether they are being re-sent."""
        out: list[tuple[Task, bool]] = []
        while True:
            try:
                out.append(self._lost_tasks.get_nowait())
            except queue.Empty:
                return out

    def _lost(self, task: Task, resent: bool) -> None:
        self._lost_tasks.put((task, resent))

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.dispatcher.sock, zmq.POLLIN)
        poller.register(self._rfd, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                if self._rfd in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._rfd, 4096)
                with self.lock:
                    self.dispatcher.poll(0)
                self.changed.set()
        except Exception as exc:  # the main thread reports it and ends the stream
            log.exception("dispatch thread failed")
            self.error = exc

    def close(self) -> None:
        """Stop the thread (the socket is the caller's again), release the wake pipe."""
        self._stop.set()
        self.wake()
        if self.started:
            self._thread.join(5.0)
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)
