"""Back-pressure as a named policy (STYLE.md habit 6): what a capture does when no one can take.

    wait  (default for files/folders)  lossless: wait until a worker has room, wait for
                                       room on the sink links; frames held by a worker that
                                       dies are re-sent to another one (``resent``).
    drop  (default for cameras/RTSP)   never wait (invariant 3): no worker credit → the
                                       frame is dropped as ``busy`` before it is cropped; a
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

from stream.protocol import Task

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

    def refuse(self, router: Router, stale: bool) -> str | None:
        """Why to drop a frame before it is even cropped (None: process it)."""

    def dispatch(self, router: Router, task: Task) -> bool:
        """Hand ``task`` to a worker; False if it was not sent."""

    def lost(self, router: Router, task: Task) -> None:
        """A worker died or left holding ``task``."""


class WaitPolicy:
    """Lossless: wait for workers and for the sink; re-send what a lost worker held."""

    name = "wait"
    send_timeout_s: float | None = None
    drain_timeout_s: float | None = None

    def refuse(self, router: Router, stale: bool) -> str | None:
        return None

    def dispatch(self, router: Router, task: Task) -> bool:
        waited_since = last_note = time.monotonic()
        while not router.stop.is_set():
            router.pump(0)
            if router.resend_lost() and router.dispatcher.try_send(task):
                return True
            router.pump(100)
            if time.monotonic() - last_note > NO_WORKER_NOTE_S:
                last_note = time.monotonic()
                log.warning("%s: no worker has taken a frame for %.0f s (workers known: %d); "
                            "is a worker running and connected to this capture?",
                            router.s.stream, last_note - waited_since,
                            len(router.dispatcher.workers))
        return False

    def lost(self, router: Router, task: Task) -> None:
        router.counters["resent"] += 1
        router.retry.append(task)


class DropPolicy:
    """Live: never wait; every frame that cannot go on is dropped with a named reason."""

    name = "drop"
    send_timeout_s: float | None = 0.0
    drain_timeout_s: float | None = 2.0

    def refuse(self, router: Router, stale: bool) -> str | None:
        if stale:
            return "stale"
        return "busy" if router.dispatcher.credits == 0 else None

    def dispatch(self, router: Router, task: Task) -> bool:
        return router.dispatcher.try_send(task)

    def lost(self, router: Router, task: Task) -> None:
        router.drop(task.seq, task.pts, task.ts, "worker_lost")


POLICIES: dict[str, BackPressure] = {"wait": WaitPolicy(), "drop": DropPolicy()}


def policy_for(name: str) -> BackPressure:
    """The policy object named in the config (``wait`` or ``drop``)."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown back-pressure policy {name!r} "
                         f"(known: {', '.join(POLICIES)})") from None
