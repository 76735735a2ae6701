"""ZeroMQ socket factory: every socket of every role is made, configured and closed here.

The roles talk over these links (DESIGN.md "Roles", docs/architecture.md):

    capture  ROUTER --bind--> frames endpoint <--connect-- DEALER worker  (ready, crops ⇄ grants)
    capture  PUSH ×2 --connect-> sink endpoint <--bind---- PULL   sink    (control; video)
    worker   PUSH --connect-> sink endpoint                                (results)
    sink     PUB  --bind----> events endpoint <--connect-- SUB   subscribers

Every socket gets a high-water mark (a bounded queue), ``MAXMSGSIZE`` on the receiving side
(a peer cannot make us allocate what it likes: DESIGN.md "Trust"), a bounded ``linger`` (a
dead peer never keeps a process from exiting: invariant 5) and TCP keepalive (a machine that
vanished is noticed). :class:`Sockets` owns a context and every socket made from it, and
closes them all before terminating the context, so no error path can leave ``term()``
waiting on a forgotten socket (a bad ``--connect`` address used to hang the capture).

With a :class:`~stream.security.Curve` every tcp link is CurveZMQ: :meth:`Sockets.bind`
makes the socket a CURVE server behind the allow-list, :meth:`Sockets.connect` a client
that checks the server's public key (``server_key``). ipc:// and inproc:// stay plain.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Self

import zmq

from stream.errors import ConfigError
from stream.protocol import Message, encode
from stream.security import Curve, uses_curve

log = logging.getLogger(__name__)

LINGER_MS = 1000
"""Default time a closing socket may spend delivering what it still holds."""

MAX_MESSAGE_BYTES = 64 << 20
"""Largest message any socket accepts (ZMQ ``MAXMSGSIZE``): a 4K BGR frame is ~25 MB."""

SMALL_MESSAGE_BYTES = 1 << 20
"""Limit for links that only carry small messages (credits, stamps, results, events)."""

Socket = zmq.Socket[bytes]


class Closing:
    """``with`` support: leaving the block calls ``close()`` (Sockets, the events client)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Sockets(Closing):
    """A ZMQ context plus every socket made from it; use as a context manager.

    Args:
        ctx: an existing context to share (tests, inproc links); ``None`` makes a new one,
            which :meth:`close` then terminates.
        curve: this process's CURVE keys; ``None`` = plain links (loopback, closed networks).
    """

    def __init__(self, ctx: zmq.Context[Any] | None = None, curve: Curve | None = None) -> None:
        self._own = ctx is None
        self.ctx: zmq.Context[Any] = zmq.Context() if ctx is None else ctx
        self.curve = curve
        self._socks: list[Socket] = []

    def server_key(self, role: str, override: str | None = None) -> bytes | None:
        """The public key of the ``role`` server (``sink``, ``capture``) to pass to
        :meth:`connect`; None without CURVE.

        Raises:
            ConfigError: CURVE is on and the key file is not configured or unreadable.
        """
        return None if self.curve is None else self.curve.server_key(role, override)

    def serve(self, sock: Socket, endpoint: str) -> None:
        """Apply the server side of CURVE to ``sock`` before it binds ``endpoint`` (for
        sockets bound elsewhere than :meth:`bind`, like the events publisher)."""
        if self.curve is not None and uses_curve(endpoint):
            self.curve.serve(sock, self.ctx, endpoint)

    def socket(
        self,
        kind: int,
        *,
        sndhwm: int = 1000,
        rcvhwm: int = 1000,
        linger_ms: int = LINGER_MS,
        max_msg: int = MAX_MESSAGE_BYTES,
    ) -> Socket:
        """A configured socket of ``kind`` (``zmq.PUSH``, ...), owned by this object.

        Args:
            sndhwm, rcvhwm: high-water marks in messages (>= 1: 0 would be unbounded).
            linger_ms: how long :meth:`close` lets queued outgoing messages leave.
            max_msg: ``MAXMSGSIZE``: a peer sending more is disconnected by ZMQ.
        """
        if sndhwm < 1 or rcvhwm < 1:
            raise ValueError("high-water marks must be >= 1 (0 means unbounded to ZMQ)")
        sock: Socket = self.ctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.LINGER, linger_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, max_msg)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)
        # Without it libzmq silently never connects to tcp://[::1]:... (IPv4 still works).
        sock.setsockopt(zmq.IPV6, 1)
        if kind == zmq.ROUTER:
            # An unroutable send (a worker that left) raises instead of vanishing.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socks.append(sock)
        return sock

    def bind(self, sock: Socket, endpoint: str, what: str) -> str:
        """Bind with an error that names the endpoint and says what to change.

        Returns:
            The endpoint actually bound (a ``*`` port resolved).
        Raises:
            ConfigError: the address is malformed or in use.
        """
        self.serve(sock, endpoint)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            hint = ("is another stream process already running? pick another endpoint in "
                    "the config" if exc.errno == zmq.EADDRINUSE else
                    "write it like tcp://0.0.0.0:5561 or ipc:///run/stream/sink")
            raise ConfigError(
                f"cannot bind the {what} endpoint {endpoint}: {exc.strerror}; {hint}"
            ) from None
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def connect(self, sock: Socket, endpoint: str, what: str,
                server_key: bytes | None = None) -> None:
        """Connect with an error that names the endpoint (a malformed address fails here).

        Args:
            server_key: the server's CURVE public key (:meth:`server_key`); needed for a
                tcp endpoint when this object has CURVE keys.

        Raises:
            ConfigError: the address is malformed (ZMQ connects lazily: an unreachable
                host is not an error, the peer may come later), or CURVE is on and no
                server key was given.
        """
        if self.curve is not None and uses_curve(endpoint):
            if server_key is None:
                raise ConfigError(f"the {what} endpoint {endpoint} needs the server's public "
                                  "key for CURVE (security.sink_key / capture_key)")
            self.curve.connect_as_client(sock, server_key)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(
                f"cannot connect to the {what} endpoint {endpoint}: {exc.strerror}; write it "
                "like tcp://HOST:PORT (--connect takes a bare host name or address)"
            ) from None

    @property
    def refused(self) -> int:
        """Connections refused by the CURVE allow-list so far (0 without CURVE)."""
        return 0 if self.curve is None else self.curve.refused

    def close(self, linger_ms: int | None = None) -> None:
        """Close every socket (with its own linger, or ``linger_ms``), then the context."""
        for sock in self._socks:
            if not sock.closed:
                sock.close(linger=linger_ms)
        self._socks.clear()
        if self.curve is not None:
            self.curve.stop()
        if self._own and not self.ctx.closed:
            self.ctx.term()


def send(sock: Socket, msg: Message, flags: int = 0) -> None:
    """Send one protocol message; buffers go out without a copy.

    Raises:
        zmq.Again: with ``flags=zmq.NOBLOCK`` when the peer's queue is full.
    """
    sock.send_multipart(encode(msg), flags=flags, copy=False)

