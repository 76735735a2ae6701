"""ZeroMQ endpoint syntax: validation, per-capture ports, bind vs connect addresses.
"""

from __future__ import annotations

import ipaddress
import re

from stream.errors import ConfigError

# --------------------------------------------------------------------------- endpoints

_ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")
WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", "[::]"})
"""Hosts that bind every interface; a peer connects to them by another name."""
_WILDCARD_HOSTS = WILDCARD_HOSTS
_PORT = re.compile(r"[0-9]{1,5}")


def split_tcp(endpoint: str) -> tuple[str, int]:
    """Split `tcp://host:port` into (host, port); ValueError with a user-facing message."""
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port):
        raise ValueError("a tcp endpoint needs a host and a port, like tcp://127.0.0.1:5570")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"tcp port must be 1..65535, not {number}")
    return host, number


def check_endpoint(value: str) -> str:
    if not value.startswith(_ENDPOINT_SCHEMES):
        raise ValueError(
            "a ZeroMQ endpoint must start with tcp://, ipc:// or inproc:// "
            "(like tcp://127.0.0.1:5561)"
        )
    if value.startswith("tcp://"):
        split_tcp(value)
    elif value.endswith("://"):
        raise ValueError("the endpoint has no address after the scheme")
    return value


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DOTTED = re.compile(r"[0-9.]+")


def _host_problem(host: str) -> str | None:
    """Why `host` is not a bare host name, IPv4 address or [IPv6] address (None if it is)."""
    if not host:
        return "the host is empty"
    if "://" in host or "/" in host:
        return "give only the host, without a scheme or path: like 10.0.0.5 or hub.example"
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return "between [ ] goes an IPv6 address, like [fd00::5]"
        return None
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "give only the host, without a port: the ports come from the config"
        return f"write an IPv6 address in brackets: [{host}]"
    if _DOTTED.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "not a valid IPv4 address (four numbers 0..255, like 10.0.0.5)"
        return None
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        return ("not a valid host name: letters, digits and - between dots, like "
                "hub or hub.example.com")
    return None


def check_host(host: str, flag: str = "--connect") -> str:
    """A host given on the command line, checked before any socket is made.

    Args:
        host: a bare host name (`hub`, `hub.example.com`), an IPv4 address or an IPv6
            address in brackets (`[fd00::5]`).
        flag: how the user gave it, for the message.

    Returns:
        The host, unchanged.

    Raises:
        ConfigError: anything else (`hub/`, `tcp://hub`, `hub:5561`, a bare IPv6 address),
            with a message saying how to write it.
    """
    problem = _host_problem(host)
    if problem is not None:
        raise ConfigError(f"{flag} {host!r}: {problem}")
    return host


def connect_endpoint(endpoint: str, host: str | None = None) -> str:
    """The address a peer connects to for an endpoint that is bound as written in the config.

    Args:
        endpoint: a validated endpoint, e.g. `tcp://*:5561`.
        host: the machine to connect to (e.g. from `stream worker --connect HOST`); None keeps
            the configured host, turning a bind wildcard (`*`, `0.0.0.0`) into `127.0.0.1`.

    Returns:
        `tcp://host:port` for tcp endpoints; ipc:// and inproc:// endpoints unchanged.

    Raises:
        ConfigError: a tcp endpoint without a valid port, or a malformed `host`
            (see :func:`check_host`).
    """
    if host is not None:
        check_host(host)
    if not endpoint.startswith("tcp://"):
        return endpoint
    try:
        bound_host, port = split_tcp(endpoint)
    except ValueError as exc:
        raise ConfigError(f"{endpoint}: {exc}") from None
    if host is None:
        host = "127.0.0.1" if bound_host in _WILDCARD_HOSTS else bound_host
    return f"tcp://{host}:{port}"


def same_address(a: str, b: str) -> bool:
    """Whether two endpoints would bind the same address on one machine (best effort)."""
    if a.startswith("tcp://") and b.startswith("tcp://"):
        host_a, port_a = split_tcp(a)
        host_b, port_b = split_tcp(b)
        local = {"127.0.0.1", "localhost"}
        return port_a == port_b and (
            host_a == host_b
            or host_a in _WILDCARD_HOSTS
            or host_b in _WILDCARD_HOSTS
            or (host_a in local and host_b in local)
        )
    return a == b




def is_exposed(endpoint: str) -> bool:
    """Whether binding ``endpoint`` listens beyond this machine: a tcp address that is not
    loopback (``127.x``, ``localhost``, ``::1``). ipc:// and inproc:// never are."""
    if not endpoint.startswith("tcp://"):
        return False
    try:
        host, _ = split_tcp(endpoint)
    except ValueError:
        return True
    host = host.strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a wildcard or a host name: reachable from elsewhere
