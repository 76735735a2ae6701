"""`stream events-proxy`: one XSUB/XPUB forwarder between a sink and many subscribers.

The sink publishes once, to the proxy; subscribers on any number of hosts connect to the
proxy (as Frigate's ZMQ proxy does). Subscriptions travel upstream, so the sink still sends
only the topics somebody asked for. With keys, both sides are CurveZMQ: the proxy is a
client of the sink (it checks the sink's public key, and the sink's trusted folder must hold
the proxy's) and a server to subscribers (only keys in ``--trusted`` get events; refused
keys are counted and logged once each).
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

import zmq

from stream.config.endpoints import check_endpoint, is_exposed
from stream.errors import ConfigError
from stream.events.schema import MAX_EVENT_BYTES
from stream.security import Curve, load_pair
from stream.transport import Sockets

log = logging.getLogger(__name__)

HWM = 10000
"""Events the proxy queues per subscriber (and from the sink) before ZMQ drops."""


def run_proxy(upstream: str, listen: str, curve: Curve | None, stop: threading.Event) -> int:
    """Forward events from ``upstream`` (the sink's PUB) to whoever connects to ``listen``
    until ``stop`` is set.

    Raises:
        ConfigError: an endpoint is malformed or cannot be bound, or a key is unreadable.
    """
    with Sockets(curve=curve) as sockets:
        xsub = sockets.socket(zmq.XSUB, rcvhwm=HWM, linger_ms=0, max_msg=MAX_EVENT_BYTES)
        sockets.connect(xsub, upstream, "upstream events", sockets.server_key("sink"))
        xpub = sockets.socket(zmq.XPUB, sndhwm=HWM, linger_ms=0, max_msg=64 << 10)
        bound = sockets.bind(xpub, listen, "events proxy")
        control = sockets.socket(zmq.PAIR, linger_ms=0)
        address = f"inproc://events-proxy-{id(control)}"
        sockets.bind(control, address, "proxy control")
        steer = sockets.socket(zmq.PAIR, linger_ms=0)
        sockets.connect(steer, address, "proxy control")

        def _stopper() -> None:  # the only user of `steer`
            stop.wait()
            steer.send(b"TERMINATE")

        threading.Thread(target=_stopper, name="proxy-stop", daemon=True).start()
        log.info("forwarding events from %s to subscribers on %s%s", upstream, bound,
                 " (CURVE)" if curve is not None else "")
        zmq.proxy_steerable(xsub, xpub, None, control)
        log.info("events proxy stopped")  # refusals are summed up when the sockets close
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    from stream.runtime import install_stop_handlers

    for flag, value in (("--upstream", args.upstream), ("--listen", args.listen)):
        try:
            check_endpoint(value)
        except ValueError as exc:
            raise ConfigError(f"{flag} {value!r}: {exc}") from None
    curve = None
    if args.key is not None:
        if args.trusted is None or args.upstream_key is None:
            raise ConfigError("--key needs --trusted (subscribers' public keys) and "
                              "--upstream-key (the sink's public key)")
        public, secret = load_pair(args.key)
        curve = Curve(public, secret, Path(args.trusted), {"sink": Path(args.upstream_key)})
    elif is_exposed(args.listen) and not args.insecure:
        raise ConfigError(f"--listen {args.listen} is reachable from other machines: give "
                          "--key/--trusted/--upstream-key (CURVE), or --insecure for a "
                          "closed network")
    stop = threading.Event()
    install_stop_handlers(stop)
    return run_proxy(args.upstream, args.listen, curve, stop)


EPILOG = """\
examples:
  stream events-proxy --upstream tcp://127.0.0.1:5560 --listen tcp://*:5562 \\
      --key keys/proxy.key_secret --trusted keys/subscribers --upstream-key keys/hub.key
  stream subscribe --endpoint tcp://PROXY_HOST:5562 --key keys/me.key_secret \\
      --server-key keys/proxy.key

The sink's security.trusted folder must hold proxy.key; the subscribers' public keys go
into --trusted.
"""


def add_proxy_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `events-proxy` on the main CLI."""
    p = subparsers.add_parser(
        "events-proxy", help="forward label events to many subscribers (XSUB/XPUB)",
        description=__doc__.split("\n\n")[0] if __doc__ else None, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, metavar="ENDPOINT",
                   help="the sink's events endpoint, e.g. tcp://hub:5560")
    p.add_argument("--listen", required=True, metavar="ENDPOINT",
                   help="where subscribers connect, e.g. tcp://*:5562")
    p.add_argument("--key", metavar="FILE.key_secret", help="the proxy's own key pair")
    p.add_argument("--trusted", metavar="DIR", help="subscribers' public keys (*.key)")
    p.add_argument("--upstream-key", metavar="FILE.key", help="the sink's public key")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --listen without keys (closed networks)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_proxy)
