"""The worker's results thread: the only user of the results socket (to the sink).

OpenVINO completion callbacks (and the main thread, for refused tasks) hand it
``(capture, seq, message, ran)``; it sends the message to the sink and then tells the main
thread, over an inproc PUSH, that ``seq`` of ``capture`` is finished and whether it had run
in OpenVINO (a task refused before it started frees no infer request). ZeroMQ sockets are
not thread-safe, so each socket here has exactly one user.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter

import zmq

from stream import transport
from stream.protocol import Drop, Result
from stream.transport import Socket

log = logging.getLogger(__name__)

GIVE_UP_S = 2.0
"""Once the worker closes, how long everything still queued may take to reach the sink."""


class ResultSender:
    """Delivers results and finished seqs on a thread of its own (see the module docstring).

    Args:
        results: the PUSH socket to the sink (or the result router's front).
        counters: the worker's counters (``undelivered`` is added under ``lock``).
    """

    def __init__(self, results: Socket, counters: Counter[str], lock: threading.Lock) -> None:
        self.results = results
        self.counters = counters
        self.lock = lock
        self._outbox: queue.SimpleQueue[tuple[int, int, Result | Drop | None, bool] | None] = (
            queue.SimpleQueue())
        self._closing = threading.Event()
        self._give_up_at: float | None = None
        self._thread: threading.Thread | None = None

    def start(self, wake: Socket) -> None:
        """Start the thread; ``wake`` (PUSH to the main thread) becomes its own."""
        self._thread = threading.Thread(target=self._run, args=(wake,), name="results",
                                        daemon=True)
        self._thread.start()

    def put(self, capture: int, seq: int, msg: Result | Drop | None, ran: bool) -> None:
        """Queue ``msg`` for the sink and the "finished" note for the main thread."""
        self._outbox.put((capture, seq, msg, ran))

    def close(self) -> None:
        """Deliver what is queued (giving up after :data:`GIVE_UP_S`), stop the thread."""
        self._closing.set()
        self._outbox.put(None)
        if self._thread is not None:
            self._thread.join()

    def _run(self, wake: Socket) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            src, seq, msg, ran = item
            if msg is not None:
                self._deliver(msg)
            wake.send_multipart([b"%d" % src, b"%d" % seq, b"1" if ran else b"0"])

    def _deliver(self, msg: Result | Drop) -> None:
        """Send to the sink; while the sink is away, wait (credits stop flowing, so the
        captures feel the back-pressure) but give up once the worker is closing."""
        while True:
            try:
                transport.send(self.results, msg, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                log.error("cannot send %s #%d to the sink: %s", msg.stream, msg.seq, exc)
                return
            if self._closing.is_set():
                # One grace for everything still queued, not one per message.
                self._give_up_at = self._give_up_at or time.monotonic() + GIVE_UP_S
                if time.monotonic() > self._give_up_at:
                    with self.lock:
                        self.counters["undelivered"] += 1
                    return
            self.results.poll(100, zmq.POLLOUT)
