"""Back-pressure as a named policy (STYLE.md habit 6): what a capture does when no one can take.

    wait  (default for files/folders)  lossless: wait until the short queue of ready
                                       frames has room (workers take them when they grant
                                       a slot), wait for room on the sink links; frames held
                                       by a worker that dies are re-sent (``resent``).
    drop  (default for cameras/RTSP)   never wait (invariant 3): only the newest frame waits
                                       for a worker's grant; a newer one supersedes it and
                                       the old one is dropped as ``busy`` (never cropped); a
                                       frame more than the staleness budget behind the
                                       camera → ``stale``; frames of a dead worker →
                                       ``worker_lost``; a full frame the video link cannot
                                       queue goes as a stamp (``video_busy``).

Each policy is one object; the router asks it, and never tests the policy's name.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from stream.capture.supply import FrameQueue, LatestFrame, Pending
from stream.health import beat

if TYPE_CHECKING:
    from stream.capture.router import Router

log = logging.getLogger(__name__)

NO_WORKER_NOTE_S = 10.0
"""A lossless capture that waited this long for a worker says so (again every period)."""


class BackPressure(Protocol):
    """What a source does when workers or the sink cannot keep up."""

    name: str
    send_timeout_s: float | None
    """How long a message may wait for room on a sink link (None: until sent or stop)."""
    drain_timeout_s: float | None
    """How long the end of the stream waits for workers to finish (None: until done)."""

    def supply(self, router: Router) -> LatestFrame | FrameQueue:
        """The holder of this capture's ready frames (see :mod:`stream.capture.supply`)."""

    def refuse(self, router: Router, stale: bool) -> str | None:
        """Why to drop a frame before it is even offered to workers (None: offer it)."""

    def dispatch(self, router: Router, pending: Pending) -> bool:
        """Make ``pending`` ready for the next worker's grant; False if it never will be."""


class WaitPolicy:
    """Lossless: wait for room among the ready frames and on the sink; re-send lost frames."""

    name = "wait"
    send_timeout_s: float | None = None
    drain_timeout_s: float | None = None

    def supply(self, router: Router) -> FrameQueue:
        return FrameQueue(router.s.stream)

    def refuse(self, router: Router, stale: bool) -> str | None:
        return None

    def dispatch(self, router: Router, pending: Pending) -> bool:
        task = router.make_task(pending)  # crop now: every frame of a file is labelled
        queue = router.frames
        assert isinstance(queue, FrameQueue)
        t0 = waited_since = last_note = time.monotonic()
        try:
            while not router.stop.is_set():
                beat()  # waiting for workers is not being stuck
                if queue.put(task, 0.1):
                    router.dispatch.wake()
                    return True
                router.pump()
                if time.monotonic() - last_note > NO_WORKER_NOTE_S:
                    last_note = time.monotonic()
                    log.warning("%s: no worker has taken a frame for %.0f s (workers known: "
                                "%d); is a worker running and connected to this capture?",
                                router.s.stream, last_note - waited_since,
                                len(router.dispatcher.workers))
            return False
        finally:
            router.timing["wait_workers"] += time.monotonic() - t0


class DropPolicy:
    """Live: never wait; only the newest frame waits for a worker, older ones are dropped."""

    name = "drop"
    send_timeout_s: float | None = 0.0
    drain_timeout_s: float | None = 2.0

    def supply(self, router: Router) -> LatestFrame:
        return LatestFrame(router.s.stream, router.make_task)

    def refuse(self, router: Router, stale: bool) -> str | None:
        return "stale" if stale else None

    def dispatch(self, router: Router, pending: Pending) -> bool:
        latest = router.frames
        assert isinstance(latest, LatestFrame)
        old = latest.offer(pending)
        if old is None:
            # A frame is ready where none was: workers may need telling now. One that
            # supersedes a waiting frame changes nothing they were told (the count stays
            # one; its age they work out from the note's interval), so the dispatch
            # thread sleeps on: at 25 fps with a busy worker, most frames are these.
            router.dispatch.wake()
        else:  # superseded before any worker asked for it
            router.drop(old.seq, old.item.pts, old.ts, "busy")
        return True


POLICIES: dict[str, BackPressure] = {"wait": WaitPolicy(), "drop": DropPolicy()}


def policy_for(name: str) -> BackPressure:
    """The policy object named in the config (``wait`` or ``drop``)."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown back-pressure policy {name!r} "
                         f"(known: {', '.join(POLICIES)})") from None
