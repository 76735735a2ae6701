"""ZeroMQ socket factories: every socket gets a high-water mark, timeouts and linger.

The roles talk over three kinds of links (DESIGN.md "Roles", docs/architecture.md):

    capture  ROUTER --bind--> frames endpoint <--connect-- DEALER worker  (crops ⇄ credits)
    capture  PUSH --connect-> sink endpoint   <--bind----- PULL   sink    (stamps, full frames)
    worker   PUSH --connect-> sink endpoint                                (results)

Captures bind and workers connect, so workers can join and leave at run time on any machine
(the credit protocol of :mod:`stream.dispatch` bounds what is in flight); the sink binds one
PULL socket that every capture and worker connects to. ``linger`` is bounded so a dead peer
never keeps a process from exiting (invariant 5).
"""

from __future__ import annotations

import zmq

from stream.errors import ConfigError
from stream.protocol import Message, encode

LINGER_MS = 1000


def _configure(sock: zmq.Socket[bytes], *, sndhwm: int, rcvhwm: int, linger_ms: int) -> None:
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    # Detect dead TCP peers (a machine that vanished) within tens of seconds.
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)


def bind(sock: zmq.Socket[bytes], endpoint: str, what: str) -> None:
    """Bind with an error that names the endpoint and says what to change."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ConfigError(
            f"cannot bind the {what} endpoint {endpoint}: {exc.strerror}; "
            "is another stream process already running? pick another endpoint in the config"
        ) from None


def connect(sock: zmq.Socket[bytes], endpoint: str, what: str) -> None:
    """Connect with an error that names the endpoint (a malformed address fails here)."""
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ConfigError(
            f"cannot connect to the {what} endpoint {endpoint}: {exc.strerror}"
        ) from None


def push_socket(
    ctx: zmq.Context[zmq.Socket[bytes]], *, hwm: int, linger_ms: int = LINGER_MS
) -> zmq.Socket[bytes]:
    """A PUSH socket with a bounded send queue."""
    sock = ctx.socket(zmq.PUSH)
    _configure(sock, sndhwm=hwm, rcvhwm=hwm, linger_ms=linger_ms)
    return sock


def pull_socket(
    ctx: zmq.Context[zmq.Socket[bytes]], *, hwm: int, linger_ms: int = 0
) -> zmq.Socket[bytes]:
    """A PULL socket with a bounded receive queue."""
    sock = ctx.socket(zmq.PULL)
    _configure(sock, sndhwm=hwm, rcvhwm=hwm, linger_ms=linger_ms)
    return sock


def send(sock: zmq.Socket[bytes], msg: Message, flags: int = 0) -> None:
    """Send one protocol message; buffers go out without a copy.

    Raises:
        zmq.Again: with ``flags=zmq.NOBLOCK`` when the peer's queue is full.
    """
    frames = encode(msg)
    sock.send_multipart(frames, flags=flags, copy=False)
