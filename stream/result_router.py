"""A worker's link to several sinks: each result goes to the sink that owns its stream.

With one sink (the usual case) the worker's results socket connects straight to it and this
module is not used. With several (`sinks[]` in the config), the worker's results socket
connects to :class:`ResultRouter`'s inproc inbox instead; the router's thread, the only user
of its sockets, reads each message's stream id and forwards the frames unchanged (no copy)
to that sink's PUSH socket. Back-pressure is kept: while a sink does not take its results,
the router waits on it, the inproc queue fills, and the worker stops granting credits, as
it does with one sink. A result for a stream no sink owns (a capture not in this config) is
counted and dropped, logged once per stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import zmq

from stream.config import SinkPlace
from stream.errors import ProtocolError
from stream.protocol import decode
from stream.runtime import Rejections
from stream.transport import Socket, Sockets

log = logging.getLogger(__name__)

INBOX_HWM = 64
"""Results queued between the worker and the router (small: back-pressure stays close)."""


class ResultRouter:
    """Owns one PUSH socket per sink and an inproc inbox; see the module docstring.

    Args:
        sockets: the worker's socket factory (CURVE applied to the sink links).
        places: every sink (name, inbox endpoint, streams it owns).
        host: ``stream worker --connect HOST`` (wildcard hosts in the endpoints become it).
    """

    def __init__(self, sockets: Sockets, places: Sequence[SinkPlace],
                 host: str | None = None) -> None:
        self._sockets = sockets
        self._address = f"inproc://result-router-{id(self)}"
        self._inbox = sockets.socket(zmq.PULL, rcvhwm=INBOX_HWM, linger_ms=0)
        sockets.bind(self._inbox, self._address, "result router")
        key = sockets.server_key("sink")
        self._to: dict[str, Socket] = {}
        for place in places:
            push = sockets.socket(zmq.PUSH, sndhwm=1000, linger_ms=2000)
            sockets.connect(push, place.reach(host),
                            f"sink {place.name}", key)
            self._to.update((stream, push) for stream in place.streams)
        self._stop = threading.Event()
        self._reject = Rejections(log)
        self._thread = threading.Thread(target=self._run, name="result-router", daemon=True)

    def front(self) -> Socket:
        """A PUSH socket into the router: the worker's results socket."""
        push = self._sockets.socket(zmq.PUSH, sndhwm=INBOX_HWM, linger_ms=2000)
        self._sockets.connect(push, self._address, "result router")
        return push

    def start(self) -> None:
        """Start forwarding (the thread then owns the inbox and the sink sockets)."""
        self._thread.start()

    def _run(self) -> None:
        while True:
            if not self._inbox.poll(100):
                if self._stop.is_set():
                    return  # stopped, and nothing more came in for 100 ms
                continue
            frames = self._inbox.recv_multipart(copy=False)
            try:
                stream = decode([f.buffer for f in frames]).stream  # type: ignore[union-attr]
            except (ProtocolError, AttributeError) as exc:
                self._reject(f"malformed result from the worker itself: {exc}")
                continue
            out = self._to.get(stream)
            if out is None:
                self._reject(f"no sink owns stream {stream!r}: its results are dropped "
                             "(add it to a sinks[].streams of this worker's config)")
                continue
            self._forward(out, frames)

    def _forward(self, out: Socket, frames: list[zmq.Frame]) -> None:
        """Send, waiting while that sink is full; after stop, give up within 2 s."""
        deadline: float | None = None
        while True:
            try:
                out.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                pass
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + 2.0
                if time.monotonic() > deadline:
                    log.warning("a sink did not take a result within 2 s of stopping: "
                                "given up")
                    return
            out.poll(100, zmq.POLLOUT)

    def stop(self) -> None:
        """Forward what is queued, then end the thread (before the sockets close)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)
