"""The sink's inbox: receive from the PULL socket, decode, and count what is refused.

Nothing from the wire is trusted (DESIGN.md "Trust"): :func:`stream.protocol.decode`
refuses malformed messages and stream ids that break the id rule; this module counts each
refusal by kind and logs the first one of each kind per peer (then only counts), so a
hostile or misconfigured peer can neither kill the sink (invariant 4) nor flood its log.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable

import zmq

from stream.errors import ProtocolError
from stream.protocol import Message, decode
from stream.runtime import Rejections
from stream.transport import Socket

log = logging.getLogger(__name__)

def _peer(frame: zmq.Frame) -> str:
    """The sender's address as ZMQ knows it (TCP: its IP, e.g. ``::ffff:10.0.0.9``), or ``?``."""
    try:
        return str(frame.get("Peer-Address"))
    except (zmq.ZMQError, AttributeError, TypeError):  # ipc/inproc have no peer address
        return "?"


def refusal_kind(exc: Exception) -> str:
    """A short name for why a message was refused, for the counters."""
    text = str(exc)
    if "stream id" in text:
        return "bad_stream_id"
    if "protocol version" in text:
        return "version"
    return "malformed"


class Refusals:
    """Refused messages: counted by kind; logged through :class:`stream.runtime.Rejections`
    once per (peer, kind), so every role reports bad input the same way."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.by_kind: Counter[str] = Counter()
        self._rejections = Rejections(logger)

    @property
    def count(self) -> int:
        """Messages refused so far."""
        return self._rejections.count

    @property
    def logged(self) -> list[Hashable]:
        """The (peer, kind) pairs seen so far (each was logged when first seen)."""
        return list(self._rejections.by_key)

    def __call__(self, peer: str, kind: str, detail: str) -> None:
        """Count one refusal; log it if it is the first of its kind from that peer."""
        self.by_kind[kind] += 1
        self._rejections(f"from {peer} ({kind}): {detail}", key=(peer, kind))


class Intake:
    """Reads the sink's PULL socket in bursts and decodes what it can."""

    def __init__(self, sock: Socket, refusals: Refusals | None = None,
                 burst: int = 256) -> None:
        self.sock = sock
        self.refusals = refusals if refusals is not None else Refusals()
        self.burst = burst

    def receive(self, timeout_ms: int) -> list[tuple[Message, str]]:
        """Wait up to ``timeout_ms`` for messages; return up to ``burst`` decoded ones,
        each with its sender's address (refused ones are counted, not returned)."""
        out: list[tuple[Message, str]] = []
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return out
        for _ in range(self.burst):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            peer = _peer(parts[0])
            try:
                msg = decode([p.buffer for p in parts])
            except ProtocolError as exc:
                self.refusals(peer, refusal_kind(exc), str(exc))
                continue
            out.append((msg, peer))
        return out
