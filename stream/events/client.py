"""Publishing and subscribing over ZeroMQ PUB/SUB: the sink's publisher, the client API.

Both sides make their sockets through :class:`stream.transport.Sockets`, the one socket
factory (HWM, ``MAXMSGSIZE``, linger, keepalive).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import zmq

from stream.errors import ConfigError, ProtocolError
from stream.events.schema import (
    DEFAULT_ENDPOINT,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    STATUS_TOPIC_PREFIX,
    STATUS_TYPES,
    decode_event,
    encode_event,
)
from stream.security import Curve, uses_curve
from stream.transport import Closing, Sockets

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- publisher


class EventPublisher(Closing):
    """Publishes events on a ZMQ PUB socket without ever blocking the caller.

    Not thread-safe (ZMQ sockets are not): publish from the thread that owns it.

    Attributes:
        published: events handed to the socket.
        dropped: events the socket refused (``zmq.Again``). A PUB socket also drops
            silently, per subscriber, when that subscriber's queue is full; ZMQ does not
            report those.
    """

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        """Wrap an already bound (or connected) PUB socket; the publisher then owns it."""
        self._socket = socket
        self.published = 0
        self.dropped = 0

    @classmethod
    def bind(cls, ctx: zmq.Context[Any] | Sockets, endpoint: str,
             hwm: int = 1000) -> EventPublisher:
        """Create a PUB socket bound to ``endpoint`` (``tcp://127.0.0.1:*`` picks a free port).

        The socket is made by the one socket factory (:class:`stream.transport.Sockets`).

        Args:
            ctx: the calling process's :class:`~stream.transport.Sockets` (which then owns
                the socket too), or a bare ZMQ context (the publisher makes its own
                ``Sockets`` on it).
            endpoint: where subscribers connect, e.g. ``tcp://0.0.0.0:5560``.
            hwm: events queued per subscriber before ZMQ drops for that subscriber.

        Raises:
            ConfigError: ``hwm`` < 1, or the endpoint is invalid or already in use.
        """
        if hwm < 1:  # 0 would mean "unbounded" to ZMQ: a dead subscriber could eat all memory
            raise ConfigError(f"events hwm must be at least 1, got {hwm}")
        sockets = ctx if isinstance(ctx, Sockets) else Sockets(ctx)
        sock = sockets.socket(zmq.PUB, sndhwm=hwm, linger_ms=0, max_msg=MAX_EVENT_BYTES)
        try:
            sockets.serve(sock, endpoint)  # CURVE server when the Sockets has keys
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            if exc.errno == zmq.EADDRINUSE:
                raise ConfigError(
                    f"events endpoint {endpoint} is already in use (another sink or program "
                    "is bound to it); pick another with --events or sink.events in the config"
                ) from None
            raise ConfigError(
                f"cannot bind events endpoint {endpoint!r}: {exc.strerror}; use an endpoint "
                "like tcp://0.0.0.0:5560 (--events or sink.events in the config)"
            ) from None
        return cls(sock)

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound last (resolves a ``*`` port), e.g. ``tcp://127.0.0.1:40123``."""
        last = self._socket.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def publish(self, event: Mapping[str, Any]) -> bool:
        """Send one event without blocking.

        Returns:
            ``True`` if the socket took it, ``False`` if it was dropped (counted in ``dropped``).

        Raises:
            ProtocolError: the event cannot be encoded (see :func:`encode_event`).
        """
        frames = encode_event(event)
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.published += 1
        return True

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket; events still queued for subscribers get ``linger_ms`` to leave.

        The default (0) closes at once; the sink passes a second so its final ``summary``
        events reach subscribers that are keeping up, while a stalled one cannot hold it.
        """
        if not self._socket.closed:
            self._socket.close(linger=linger_ms)


# --------------------------------------------------------------------------- subscriber


class Subscriber(Closing):
    """A SUB socket that yields validated events of chosen streams and types.

    Use as a context manager, or call :meth:`close`. :func:`subscribe` wraps it in a
    generator for ``for`` loops.

    Attributes:
        received: events returned by :meth:`recv`.
        malformed: messages skipped because :func:`decode_event` refused them (including
            event types or versions this build does not know).
        filtered: valid events skipped because their stream or type was not asked for
            (ZMQ topic prefixes are coarser than the exact filter).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        streams: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        *,
        ctx: zmq.Context[Any] | None = None,
        hwm: int = 1000,
        curve: Curve | None = None,
    ) -> None:
        """Connect to ``endpoint`` and subscribe.

        Args:
            endpoint: the sink's events endpoint, e.g. ``tcp://127.0.0.1:5560``.
            streams: stream ids to receive (exact match); ``None`` for all.
            types: event types to receive (see :data:`EVENT_TYPES`); ``None`` for all.
            ctx: ZMQ context to use; by default a private one, terminated by :meth:`close`.
            hwm: events queued locally before ZMQ drops (bounds memory if you read slowly).
            curve: this subscriber's key pair and the publisher's public key
                (``Curve.client(key, server_key)``), for a sink or events proxy that
                requires CURVE; None = plain.

        Raises:
            ConfigError: an unknown event type, an empty stream list, ``hwm`` < 1, or an
                endpoint ZMQ cannot connect to.
        """
        self.streams, self.types = _check_filters(streams, types)
        if hwm < 1:
            raise ConfigError(f"subscriber hwm must be at least 1, got {hwm}")
        self.received = 0
        self.malformed = 0
        self.filtered = 0
        # The one socket factory: owns a private context when none is given, and
        # terminates it on close.
        self._sockets = Sockets(ctx, curve)
        self._socket = self._sockets.socket(zmq.SUB, rcvhwm=hwm, linger_ms=0,
                                            max_msg=MAX_EVENT_BYTES)
        try:
            for topic in _topics(self.streams, self.types):
                self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
            if curve is not None and uses_curve(endpoint):
                curve.connect_as_client(self._socket, curve.server_key("server"))
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(
                f"cannot connect to events endpoint {endpoint!r}: {exc.strerror}; use "
                f"tcp://HOST:PORT, e.g. {DEFAULT_ENDPOINT}"
            ) from None

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Return the next matching event, or ``None`` after ``timeout`` seconds without one.

        Malformed and unrequested messages are skipped (and counted) without restarting
        the timeout. ``timeout=None`` waits forever; Ctrl-C interrupts the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                wait_ms: int | None = None
            else:
                wait_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait_ms, zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            try:
                event = decode_event(frames)
            except ProtocolError as exc:
                self.malformed += 1
                log.debug("skipped malformed event (%d so far): %s", self.malformed, exc)
                continue
            if (self.streams is not None and event["stream"] not in self.streams) or (
                self.types is not None and event["type"] not in self.types
            ):
                self.filtered += 1
                continue
            self.received += 1
            return event

    def close(self) -> None:
        """Close the socket (linger 0) and terminate the context if this object created it."""
        sockets = getattr(self, "_sockets", None)
        if sockets is not None:
            sockets.close(linger_ms=0)


def _check_filters(
    streams: Iterable[str] | None, types: Iterable[str] | None
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    if isinstance(streams, str) or isinstance(types, str):
        # "cam1" would otherwise be read as the streams "c", "a", "m", "1".
        raise ConfigError("streams and types must be lists of strings, not a single string")
    s = None if streams is None else frozenset(streams)
    t = None if types is None else frozenset(types)
    if s is not None and not s:
        raise ConfigError("streams is empty: pass None to receive every stream")
    if t is not None:
        unknown = sorted(t - set(EVENT_TYPES))
        if unknown or not t:
            raise ConfigError(
                f"unknown event type(s) {unknown}; choose from {', '.join(EVENT_TYPES)}"
            )
    return s, t


def _topics(streams: frozenset[str] | None, types: frozenset[str] | None) -> list[str]:
    """ZMQ prefixes to subscribe to: as narrow as prefixes allow (the exact filter follows)."""
    want_status = types is None or bool(types & STATUS_TYPES)
    want_labels = types is None or bool(types - STATUS_TYPES)
    if streams is None:
        # Label topics are bare stream ids, so no prefix selects "labels only".
        return [""] if want_labels else [STATUS_TOPIC_PREFIX]
    topics = []
    for s in sorted(streams):
        if want_labels:
            topics.append(s)
        if want_status:
            topics.append(STATUS_TOPIC_PREFIX + s)
    return topics


def subscribe(
    endpoint: str = DEFAULT_ENDPOINT,
    streams: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    timeout: float | None = None,
    ctx: zmq.Context[Any] | None = None,
    curve: Curve | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield events from a sink, for example::

        for event in stream.events.subscribe("tcp://127.0.0.1:5560", streams=["cam1"]):
            print(event["seq"], event["labels"][0]["name"])

    Args:
        endpoint: the sink's events endpoint.
        streams: stream ids to receive (exact match, "cam1" does not match "cam10");
            ``None`` for every stream.
        types: event types to receive; ``None`` for all of :data:`EVENT_TYPES`.
        timeout: stop after this many seconds without an event; ``None`` waits forever.
        ctx: ZMQ context; by default a private one.
        curve: keys for a publisher that requires CURVE:
            ``stream.security.Curve.client("me.key_secret", "hub.key")``.

    Returns:
        A generator of decoded event dicts. The socket opens on the first ``next()`` and is
        closed when the loop ends, the generator is closed, or it is garbage-collected.
        Like any PUB/SUB feed, events published before the connection is up are not seen.

    Raises:
        ConfigError: bad filters or timeout (at once), or an unusable endpoint (on first
            iteration).
    """
    _check_filters(streams, types)
    if timeout is not None and not timeout >= 0:
        raise ConfigError(f"timeout must be >= 0 seconds or None, got {timeout}")
    # Materialise iterables now so a one-shot iterator is not consumed twice.
    s = None if streams is None else list(streams)
    t = None if types is None else list(types)
    return _iterate(endpoint, s, t, timeout, ctx, curve)


def _iterate(
    endpoint: str,
    streams: list[str] | None,
    types: list[str] | None,
    timeout: float | None,
    ctx: zmq.Context[Any] | None,
    curve: Curve | None = None,
) -> Iterator[dict[str, Any]]:
    # The socket is created inside the generator so that a generator which is never
    # started holds no socket; the with-block closes it on exhaustion, close() and GC.
    with Subscriber(endpoint, streams, types, ctx=ctx, curve=curve) as sub:
        while True:
            event = sub.recv(timeout)
            if event is None:
                return
            yield event


