"""The capture's two links to the sink, and bounded sends on them.

Wire agreement with the sink (docs/architecture.md): a capture connects TWO PUSH sockets
to the sink endpoint, so small messages never queue behind full frames:

    control  hello, stamps (``Frame`` without image), ``Drop``, ``Status``, ``Eos``;
             SNDHWM :data:`CONTROL_HWM`, small messages only
    video    ``Frame`` WITH image only; SNDHWM = ``transport.hwm`` (the memory bound of
             full frames queued for the sink)

Every send has a bound: "until sent or stop" (lossless sources), "never wait" (live
sources), or a deadline that ignores stop (the final status and ``eos``, which must leave
even after SIGTERM).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import zmq

from stream import transport
from stream.protocol import Message
from stream.transport import Socket, Sockets

CONTROL_HWM = 10000
"""Control messages the capture may queue for the sink (~100 bytes each)."""
CONTROL_LINGER_MS = 2000
"""At exit, how long the control link may spend delivering the last status and eos."""
VIDEO_LINGER_MS = 1000
"""At exit, how long queued full frames may take to leave."""


class Link:
    """One PUSH socket to the sink, with sends that wait as long as the caller says."""

    def __init__(self, sock: Socket, stop: threading.Event) -> None:
        self.sock = sock
        self.stop = stop

    def send(self, msg: Message, timeout_s: float | None, *, until_stop: bool = True) -> bool:
        """Queue ``msg``; True if it was queued.

        Args:
            timeout_s: None waits for room without limit, 0 never waits.
            until_stop: give up as soon as stop is set (False: only the deadline counts).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                transport.send(self.sock, msg, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            now = time.monotonic()
            if (until_stop and self.stop.is_set()) or (deadline is not None and now >= deadline):
                return False
            wait_ms = 100 if deadline is None else max(1, min(100, int((deadline - now) * 1000)))
            self.sock.poll(wait_ms, zmq.POLLOUT)


@dataclass
class CaptureLinks:
    """Every socket a capture uses: tasks to workers (ROUTER) and the two sink links."""

    tasks: Socket
    control: Socket
    video: Socket


def sink_links(sockets: Sockets, video_hwm: int) -> tuple[Socket, Socket]:
    """The (control, video) PUSH sockets, made by ``sockets``; connect both to the sink."""
    control = sockets.socket(zmq.PUSH, sndhwm=CONTROL_HWM, linger_ms=CONTROL_LINGER_MS,
                             max_msg=transport.SMALL_MESSAGE_BYTES)
    video = sockets.socket(zmq.PUSH, sndhwm=video_hwm, linger_ms=VIDEO_LINGER_MS)
    return control, video
