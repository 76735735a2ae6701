"""Credit-based task dispatch from one capture to any number of workers.

Capture binds a ROUTER socket; each worker connects a DEALER and sends ``credit``
messages: its capacity (tasks it can hold at once) and the seqs it finished, after each
inference and every half second as a heartbeat, ``bye`` on a clean exit. A task goes only
to a worker holding fewer of this capture's tasks than its capacity, so:

* frames never sit in queues they cannot leave: latency stays bounded by the credits a
  worker asked for (its infer requests plus a small prefetch), not by socket buffers;
* capture always knows which seqs each worker holds. A worker silent for longer than
  ``worker_timeout_s`` (killed, machine gone) is declared lost and its frames are handed
  back to the capture, which re-sends them (lossless sources) or drops them with reason
  ``worker_lost`` (live sources);
* a live source never waits: no credit anywhere means the frame is dropped as ``busy``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from stream.errors import ProtocolError
from stream.protocol import Credit, Task, decode, encode
from stream.runtime import Rejections

log = logging.getLogger(__name__)


@dataclass
class _WorkerState:
    name: str
    capacity: int = 0
    last_seen: float = 0.0
    inflight: dict[int, Task] = field(default_factory=dict)


class Dispatcher:
    """Tracks workers' credits and in-flight tasks on one ROUTER socket."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
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
        return sum(len(w.inflight) for w in self.workers.values())

    def poll(self, timeout_ms: int = 0) -> None:
        """Take in every pending credit message and notice workers gone silent."""
        events = self.sock.poll(timeout_ms, zmq.POLLIN)
        while events:
            try:
                ident, *parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._on_message(ident.bytes, [p.buffer for p in parts])
            events = 1
        self._reap()

    def _on_message(self, ident: bytes, frames: list[memoryview]) -> None:
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            self._reject(f"malformed message from a worker: {exc}")
            return
        if not isinstance(msg, Credit):
            self._reject(f"unexpected {type(msg).__name__} on the frames socket")
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
        w.capacity = msg.capacity
        if msg.bye:
            # A clean goodbye: whatever it still holds will not come back.
            log.info("worker %s left", w.name)
            self._lose(ident)

    @property
    def rejected(self) -> int:
        """Messages from workers refused so far."""
        return self._reject.count

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


def router_socket(ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    """The capture's task socket: ROUTER, unroutable sends raise instead of vanishing."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.setsockopt(zmq.LINGER, 0)
    return sock
