"""The capture half of scheduling: workers grant slots, the capture answers with its newest frame.

Capture binds a ROUTER socket (:func:`task_socket`); each worker connects a DEALER
(:func:`worker_socket`). Credits belong to the WORKER (its half is
:class:`stream.grants.GrantScheduler`): it holds just enough tasks to keep its infer
requests busy, whatever the number of captures, and shares them fairly. The conversation
(wire format in :mod:`stream.protocol`):

* a capture with a frame ready says so to every worker it knows (``ready``: how many
  frames, live or not; a live one also how old its newest frame is and how often a newer
  one comes, so the worker can tell the frame's age at any moment without a note per
  frame), again every :data:`HEARTBEAT_S` while it has one;
* a worker with a free slot grants ONE slot to one of the ready captures, in rounds: each
  ready capture once per round, the freshest live frame first within a round (``credit``
  with ``grant`` 1);
* the capture answers each grant at once with a ``task`` made from its newest frame (live)
  or its oldest unsent one (lossless), or hands the grant back (``ready`` with
  ``declined``) when it has none, and the worker grants elsewhere.

So a live frame is chosen when a request frees up, never queued behind older ones, and the
frames a worker holds do not grow with the number of cameras.

The capture still knows which seqs each worker holds: a worker silent for longer than
``worker_timeout_s`` (killed, machine gone), or one that says ``bye``, is declared lost and
its tasks are handed to the frame :class:`Supply`, which re-sends them (lossless sources)
or not (live ones: the router drops them as ``worker_lost``).

Nothing from the wire is trusted: a worker holds at most min(its own ``capacity``,
:data:`MAX_CAPACITY`) tasks of this capture, whatever it grants; malformed messages are
counted, never fatal. :class:`Dispatcher` is single-threaded; the capture runs it on a
thread of its own (:mod:`stream.capture.supply`) so grants are answered while the main
thread decodes or crops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import zmq

from stream import transport
from stream.errors import ProtocolError
from stream.model.identity import mismatch
from stream.protocol import (
    MAX_AGE_MS,
    MAX_INTERVAL_MS,
    Buffer,
    Credit,
    Message,
    Ready,
    Task,
    decode,
    encode,
)
from stream.runtime import Rejections
from stream.transport import Socket, Sockets

log = logging.getLogger(__name__)

M = TypeVar("M")

MAX_CAPACITY = 64
"""Most tasks of one capture a worker may hold: more than any CPU/GPU keeps in flight
(infer requests + prefetch), few enough that a lying worker cannot hoard a stream."""

HEARTBEAT_S = 0.5
"""How often a worker re-announces itself, and a capture its ready frames (liveness, and
repair of a message lost to a reconnect)."""

TASK_HWM = 1000
"""Queue bound of the task link both ways; grants keep real use far below it."""


def task_socket(sockets: Sockets) -> Socket:
    """The capture's task socket: ROUTER (unroutable sends raise instead of vanishing)."""
    return sockets.socket(zmq.ROUTER, sndhwm=TASK_HWM, rcvhwm=TASK_HWM, linger_ms=0,
                          max_msg=transport.SMALL_MESSAGE_BYTES)


def worker_socket(sockets: Sockets) -> Socket:
    """A worker's link to one capture: DEALER; tasks and ready notes in, credits out."""
    return sockets.socket(zmq.DEALER, sndhwm=TASK_HWM, rcvhwm=TASK_HWM, linger_ms=500)


def decode_as(kind: type[M] | tuple[type, ...], frames: Sequence[Buffer],
              reject: Callable[[str], None], link: str) -> M | None:
    """Decode a message that must be a ``kind`` (a Credit from a worker, a Task or Ready
    from a capture); anything else is handed to ``reject`` (counted, logged) and None
    returned: bad input is never fatal (invariant 4)."""
    try:
        msg = decode(frames)
    except ProtocolError as exc:
        reject(f"malformed message on the {link}: {exc}")
        return None
    if not isinstance(msg, kind):
        reject(f"unexpected {type(msg).__name__} on the {link}")
        return None
    return msg  # type: ignore[return-value]


class Supply(Protocol):
    """Where a dispatcher takes the frames it sends: the capture's ready frames."""

    stream: str
    live: bool

    def ready(self) -> int:
        """Frames that could be sent right now."""

    def freshness(self) -> tuple[float, float | None] | None:
        """Live: (seconds the frame a grant would take has waited, seconds between new
        frames or None if not known yet); None when none waits or ages are not tracked
        (lossless)."""

    def take(self) -> Task | None:
        """The frame to answer a grant with (newest for live, oldest for lossless), as a
        task; None when there is none."""

    def lost(self, task: Task) -> bool:
        """A worker died holding ``task``; True if the supply will send it again."""


class NoFrames:
    """The supply of a dispatcher not wired to a capture yet: nothing ready, ever."""

    stream = "none"
    live = True

    def ready(self) -> int:
        return 0

    def freshness(self) -> tuple[float, float | None] | None:
        return None

    def take(self) -> Task | None:
        return None

    def lost(self, task: Task) -> bool:
        return False


# --------------------------------------------------------------------------- capture half


@dataclass
class _WorkerState:
    name: str
    capacity: int = 0
    last_seen: float = 0.0
    inflight: dict[int, Task] = field(default_factory=dict)
    believed: int = 0  # ready frames this worker was told of, less the grants it used


class Dispatcher:
    """The capture half: answers workers' grants from a :class:`Supply` on one ROUTER socket.

    Only one thread may call it (it owns the socket). The capture's router sets ``supply``
    (its ready frames) and ``on_lost``, which hears of every task a lost worker held, with
    whether the supply sends it again (called on the dispatcher's thread).
    """

    def __init__(
        self,
        sock: Socket,
        worker_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        supply: Supply | None = None,
        on_lost: Callable[[Task, bool], None] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        self.sock = sock
        self.input_size = input_size
        """(width, height) this capture crops to: a worker announcing another model input
        is refused (never granted a frame), logged once; None: no check."""
        self.refused_workers: dict[bytes, str] = {}
        self.supply: Supply = NoFrames() if supply is None else supply
        self.worker_timeout_s = worker_timeout_s
        self.clock = clock
        self.on_lost = on_lost
        self.workers: dict[bytes, _WorkerState] = {}
        self.inflight = 0
        """Tasks sent and not yet done or lost (kept as a number: other threads read it)."""
        self._reject = Rejections(log)
        self._announced_at = float("-inf")

    @property
    def rejected(self) -> int:
        """Messages from workers refused so far."""
        return self._reject.count

    def poll(self, timeout_ms: int = 0) -> None:
        """Take in every pending worker message (answering grants at once), tell workers
        about ready frames, and notice workers gone silent."""
        events = self.sock.poll(timeout_ms, zmq.POLLIN)
        while events:
            try:
                ident, *parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._on_message(ident.bytes, [p.buffer for p in parts])
        self._reap()
        self.announce()

    def announce(self, force: bool = False) -> None:
        """Tell each worker how many frames are ready when it believes fewer (a new frame,
        or one that came while its grant was being answered), and everyone on the
        heartbeat (repairs a note lost to a reconnect, and the worker's idea of a live
        frame's age).

        A live capture's newer frames are NOT announced one by one: the note carries the
        newest frame's age and the interval between frames, from which the worker works
        out the age at any moment. A note per frame and per worker woke every worker's
        loop at the cameras' combined frame rate (100 a second for four 25 fps cameras),
        beside its running inference; now it is about one per frame the worker takes, plus
        the heartbeats.
        """
        n = self.supply.ready()
        if not n:
            return
        now = self.clock()
        due = force or now - self._announced_at >= HEARTBEAT_S
        if due:
            self._announced_at = now
        for ident, w in list(self.workers.items()):
            if due or w.believed < n:
                self._tell(ident, w)

    def _tell(self, ident: bytes, w: _WorkerState, declined: int = 0) -> None:
        n = self.supply.ready()
        fresh = self.supply.freshness()
        age_ms = interval_ms = None
        if fresh is not None:
            age_ms = min(round(fresh[0] * 1000.0, 3), MAX_AGE_MS)
            if fresh[1] is not None:
                interval_ms = min(round(fresh[1] * 1000.0, 3), MAX_INTERVAL_MS)
        if self._send(ident, Ready(self.supply.stream, n, self.supply.live, declined, age_ms,
                                   interval_ms)):
            w.believed = n

    def _on_message(self, ident: bytes, frames: list[memoryview]) -> None:
        msg = decode_as(Credit, frames, self._reject, "frames socket (from a worker)")
        if msg is None:
            return
        if ident in self.refused_workers:  # counted, logged once (the first time)
            self._reject(f"worker {msg.worker!r}: {self.refused_workers[ident]}",
                         key=(ident, "model"))
            return
        w = self.workers.get(ident)
        if w is None:
            if msg.bye:
                return
            why = (None if self.input_size is None
                   else mismatch(self.input_size, msg.model))
            if why is not None:
                self.refused_workers[ident] = why
                self._reject(f"worker {msg.worker!r} refused: it {why}",
                             key=(ident, "model"))
                return
            w = self.workers[ident] = _WorkerState(msg.worker)
            log.info("worker %s joined%s", msg.worker, f" ({msg.model})" if msg.model else "")
        w.last_seen = self.clock()
        for seq in msg.done:
            if w.inflight.pop(seq, None) is not None:
                self.inflight -= 1
        w.capacity = min(msg.capacity, MAX_CAPACITY)
        if msg.bye:
            # A clean goodbye: whatever it still holds will not come back.
            log.info("worker %s left", w.name)
            self._lose(ident)
            return
        declined = 0
        for _ in range(min(msg.grant, MAX_CAPACITY)):
            if ident not in self.workers:  # lost while answering (unreachable)
                return
            if not self._answer(ident, w):
                declined += 1
        if declined:
            self._tell(ident, w, declined)

    def _answer(self, ident: bytes, w: _WorkerState) -> bool:
        """Answer one granted slot with a task; False when there is nothing to send (or the
        worker already holds its capacity of this capture's tasks)."""
        if len(w.inflight) >= w.capacity:
            return False
        task = self.supply.take()
        if task is None:
            return False
        if not self._send(ident, task):
            resent = self.supply.lost(task)
            if self.on_lost is not None:
                self.on_lost(task, resent)
            return False
        w.inflight[task.seq] = task
        w.believed = max(0, w.believed - 1)
        self.inflight += 1
        return True

    def _send(self, ident: bytes, msg: Message) -> bool:
        try:
            self.sock.send_multipart([ident, *encode(msg)], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH (gone) or EAGAIN (full)
            w = self.workers.get(ident)
            log.debug("worker %s not reachable: %s", w.name if w else ident, exc)
            if exc.errno == zmq.EHOSTUNREACH and w is not None:
                self._lose(ident)
            return False

    def _reap(self) -> None:
        now = self.clock()
        for ident in [i for i, w in self.workers.items()
                      if now - w.last_seen > self.worker_timeout_s]:
            w = self.workers[ident]
            log.warning("worker %s silent for %.1f s: declared lost with %d frame(s)",
                        w.name, now - w.last_seen, len(w.inflight))
            self._lose(ident)

    def _lose(self, ident: bytes) -> None:
        w = self.workers.pop(ident)
        self.inflight -= len(w.inflight)
        for task in sorted(w.inflight.values(), key=lambda t: t.seq):
            resent = self.supply.lost(task)
            if self.on_lost is not None:
                self.on_lost(task, resent)
        if self.supply.ready():
            self.announce(force=True)
