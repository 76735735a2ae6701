"""Both halves of the credit protocol between a capture and its workers.

Capture binds a ROUTER socket (:func:`task_socket`); each worker connects a DEALER
(:func:`worker_socket`) and sends ``credit`` messages: its capacity (tasks it can hold at
once) and the seqs it finished, after each inference and every half second as a heartbeat,
``bye`` on a clean exit. The capture half is :class:`Dispatcher`, the worker half
:class:`CreditSender`. A task goes only to a worker holding fewer of this capture's tasks
than its capacity, so:

* frames never sit in queues they cannot leave: latency stays bounded by the credits a
  worker asked for (its infer requests plus a small prefetch), not by socket buffers;
* capture always knows which seqs each worker holds. A worker silent for longer than
  ``worker_timeout_s`` (killed, machine gone) is declared lost and its frames are handed
  back to the capture, which re-sends them (lossless sources) or drops them with reason
  ``worker_lost`` (live sources);
* a live source never waits: no credit anywhere means the frame is dropped as ``busy``.

Credits are per capture (each capture sees only its own tasks). Nothing from the wire is
trusted: a capacity above :data:`MAX_CAPACITY` is capped (a worker cannot make a capture
hand it every frame), and malformed messages are counted, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import zmq

from stream import transport
from stream.errors import ProtocolError
from stream.protocol import Buffer, Credit, Task, decode, encode
from stream.runtime import Rejections
from stream.transport import Socket, Sockets

log = logging.getLogger(__name__)

M = TypeVar("M")

MAX_CAPACITY = 64
"""Most tasks of one capture a worker may hold: more than any CPU/GPU keeps in flight
(infer requests + prefetch), few enough that a lying worker cannot hoard a stream."""

HEARTBEAT_S = 0.5
"""How often a worker re-announces its credit when nothing finished (liveness)."""

TASK_HWM = 1000
"""Queue bound of the task link both ways; credits keep real use far below it."""


def task_socket(sockets: Sockets) -> Socket:
    """The capture's task socket: ROUTER (unroutable sends raise instead of vanishing)."""
    return sockets.socket(zmq.ROUTER, sndhwm=TASK_HWM, rcvhwm=TASK_HWM, linger_ms=0,
                          max_msg=transport.SMALL_MESSAGE_BYTES)


def worker_socket(sockets: Sockets) -> Socket:
    """A worker's link to one capture: DEALER; crops in, credits out."""
    return sockets.socket(zmq.DEALER, sndhwm=TASK_HWM, rcvhwm=TASK_HWM, linger_ms=500)


def decode_as(kind: type[M], frames: Sequence[Buffer], reject: Callable[[str], None],
              link: str) -> M | None:
    """Decode a message that must be a ``kind`` (a Credit from a worker, a Task from a
    capture); anything else is handed to ``reject`` (counted, logged) and None returned:
    bad input is never fatal (invariant 4)."""
    try:
        msg = decode(frames)
    except ProtocolError as exc:
        reject(f"malformed message on the {link}: {exc}")
        return None
    if not isinstance(msg, kind):
        reject(f"unexpected {type(msg).__name__} on the {link}")
        return None
    return msg


# --------------------------------------------------------------------------- capture half


@dataclass
class _WorkerState:
    name: str
    capacity: int = 0
    last_seen: float = 0.0
    inflight: dict[int, Task] = field(default_factory=dict)


class Dispatcher:
    """The capture half: tracks workers' credits and in-flight tasks on one ROUTER socket."""

    def __init__(
        self,
        sock: Socket,
        worker_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self.worker_timeout_s = worker_timeout_s
        self.clock = clock
        self.workers: dict[bytes, _WorkerState] = {}
        self._reject = Rejections(log)
        self._rr = 0
        self._lost: list[Task] = []

    @property
    def credits(self) -> int:
        """Tasks the workers can take right now."""
        return sum(max(0, w.capacity - len(w.inflight)) for w in self.workers.values())

    @property
    def inflight(self) -> int:
        """Tasks sent and not yet done or lost."""
        return sum(len(w.inflight) for w in self.workers.values())

    @property
    def rejected(self) -> int:
        """Messages from workers refused so far."""
        return self._reject.count

    def poll(self, timeout_ms: int = 0) -> None:
        """Take in every pending credit message and notice workers gone silent."""
        events = self.sock.poll(timeout_ms, zmq.POLLIN)
        while events:
            try:
                ident, *parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._on_message(ident.bytes, [p.buffer for p in parts])
        self._reap()

    def _on_message(self, ident: bytes, frames: list[memoryview]) -> None:
        msg = decode_as(Credit, frames, self._reject, "frames socket (from a worker)")
        if msg is None:
            return
        w = self.workers.get(ident)
        if w is None:
            if msg.bye:
                return
            w = self.workers[ident] = _WorkerState(msg.worker)
            log.info("worker %s joined", msg.worker)
        w.last_seen = self.clock()
        for seq in msg.done:
            w.inflight.pop(seq, None)
        w.capacity = min(msg.capacity, MAX_CAPACITY)
        if msg.bye:
            # A clean goodbye: whatever it still holds will not come back.
            log.info("worker %s left", w.name)
            self._lose(ident)

    def _reap(self) -> None:
        now = self.clock()
        for ident in [i for i, w in self.workers.items()
                      if now - w.last_seen > self.worker_timeout_s]:
            log.warning("worker %s silent for %.1f s: declared lost with %d frame(s)",
                        self.workers[ident].name, now - self.workers[ident].last_seen,
                        len(self.workers[ident].inflight))
            self._lose(ident)

    def _lose(self, ident: bytes) -> None:
        w = self.workers.pop(ident)
        self._lost.extend(w.inflight.values())

    def take_lost(self) -> list[Task]:
        """Tasks held by workers that left or went silent, oldest first (once each)."""
        lost = sorted(self._lost, key=lambda t: t.seq)
        self._lost = []
        return lost

    def try_send(self, task: Task) -> bool:
        """Send to a worker with a credit (round robin); False if nobody has one."""
        idents = [i for i, w in self.workers.items() if len(w.inflight) < w.capacity]
        while idents:
            self._rr = (self._rr + 1) % len(idents)
            ident = idents[self._rr]
            try:
                self.sock.send_multipart([ident, *encode(task)], flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:  # EHOSTUNREACH (gone) or EAGAIN (full): skip it
                log.debug("worker %s not reachable: %s", self.workers[ident].name, exc)
                idents.remove(ident)
                if exc.errno == zmq.EHOSTUNREACH:
                    self._lose(ident)
                continue
            self.workers[ident].inflight[task.seq] = task
            return True
        return False


# --------------------------------------------------------------------------- worker half


class CreditSender:
    """The worker half: tells every capture how many tasks it may send and which are done.

    One instance per worker, one DEALER socket per capture (index ``i``). Credits go out
    when a task finished (so the capture can send the next one at once) and every
    :data:`HEARTBEAT_S` (so the capture knows the worker is alive). Only the thread that
    owns the sockets may call it.
    """

    def __init__(self, name: str, capacity: int, socks: Sequence[Socket],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.capacity = capacity
        self.socks = list(socks)
        self.clock = clock
        self._done: list[list[int]] = [[] for _ in self.socks]
        self._last_beat: float | None = None

    def done(self, i: int, seq: int) -> None:
        """Task ``seq`` of capture ``i`` is finished (result or named drop sent)."""
        self._done[i].append(seq)

    def flush(self) -> None:
        """Send what is due: every finished seq now, everyone's credit on the heartbeat."""
        now = self.clock()
        beat = self._last_beat is None or now - self._last_beat >= HEARTBEAT_S
        if beat:
            self._last_beat = now
        for i in range(len(self.socks)):
            if beat or self._done[i]:
                self._send(i, bye=False)

    def bye(self) -> None:
        """A clean exit: capacity 0 and ``bye``; what was not reported done is re-sent."""
        for i in range(len(self.socks)):
            self._send(i, bye=True)

    def _send(self, i: int, bye: bool) -> None:
        done, self._done[i] = self._done[i], []
        msg = Credit(self.name, 0 if bye else self.capacity, tuple(done), bye)
        try:
            transport.send(self.socks[i], msg, zmq.NOBLOCK)
        except zmq.Again:
            self._done[i] = done + self._done[i]  # try again with the next heartbeat
