"""CurveZMQ for every link between hosts: key files, the allow-list, refused-peer counting.

Keys are pyzmq certificate files (`zmq.auth.create_certificates`): ``NAME.key`` holds the
public key, ``NAME.key_secret`` the public and the secret key. `stream keys generate NAME`
writes a pair (:func:`generate`).

A :class:`Curve` is what one process knows: its own key pair, the folder of public keys it
lets in (``trusted``) and where to find the public keys of the servers it connects to.
:class:`stream.transport.Sockets` applies it: a socket that binds a tcp address is a CURVE
server, one that connects is a CURVE client that checks its server's key. ``ipc://`` and
``inproc://`` links stay on this machine and are left plain.

The allow-list runs as a ZAP handler (`zmq.auth.thread.ThreadAuthenticator` with a
credentials callback, :class:`Allowlist`): a key not in the folder is refused, counted, and
logged once per key; the folder is read again (at most once a second) when an unknown key
knocks, so adding a worker means dropping its ``.key`` file in, with no restart. A peer
that does not speak CURVE at all, or has the wrong server key, fails the handshake before
ZAP and never gets a message through either; a socket monitor (:class:`HandshakeWatch`)
counts those and logs them once per bound endpoint and kind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from stream.errors import ConfigError

log = logging.getLogger(__name__)

RELOAD_EVERY_S = 1.0
"""How often an unknown key may make the allow-list read its folder again."""


def generate(name: str, directory: str | Path) -> tuple[Path, Path]:
    """Write a new key pair ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600).

    Raises:
        ConfigError: a bad name, or a pair of that name is already there (never overwritten:
            a replaced key would lock out every peer that trusts the old one).
    """
    if not name or "/" in name or name.startswith(".") or not name.isprintable():
        raise ConfigError(f"key name {name!r}: use a plain file name like worker-1")
    folder = Path(directory)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} already exists: pick another name or remove it first")
    folder.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_public(path: str | Path, what: str) -> bytes:
    """The public key in a ``.key`` (or ``.key_secret``) file.

    Raises:
        ConfigError: the file is missing or not a certificate; the message says what it is for.
    """
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}; make one with `stream keys "
                          "generate NAME` and copy its .key file there") from None
    return public


def load_pair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file.

    Raises:
        ConfigError: missing, unreadable, or a public-only ``.key`` file.
    """
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the secret key {path}: {exc}; make one with "
                          "`stream keys generate NAME` (security.key names NAME.key_secret)"
                          ) from None
    if secret is None:
        raise ConfigError(f"{path} holds only a public key: security.key names the "
                          ".key_secret file of this machine's own pair")
    return public, secret


class Allowlist:
    """ZAP credentials callback: lets in the public keys of a folder, counts the rest.

    Args:
        folder: the trusted ``*.key`` files.
        always: keys trusted whatever the folder holds (the process's own).
    """

    def __init__(self, folder: Path, always: frozenset[bytes] = frozenset(),
                 clock: Any = time.monotonic) -> None:
        self.folder = folder
        self.always = always
        self.clock = clock
        self.refused: Counter[bytes] = Counter()
        self._lock = threading.Lock()
        self._keys: frozenset[bytes] = frozenset()
        self._loaded_at = -RELOAD_EVERY_S
        self._reload()

    def _reload(self) -> None:
        self._loaded_at = self.clock()
        try:
            keys = zmq.auth.load_certificates(self.folder)
        except (OSError, ValueError) as exc:
            log.error("cannot read the trusted keys in %s: %s", self.folder, exc)
            return
        self._keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator thread for every CURVE handshake (``key`` in z85)."""
        with self._lock:
            if key in self._keys or key in self.always:
                return True
            if self.clock() - self._loaded_at >= RELOAD_EVERY_S:
                self._reload()
                if key in self._keys:
                    return True
            self.refused[key] += 1
            if self.refused[key] == 1:
                log.warning("refused a connection from key %s...: not in %s (add its .key "
                            "file there to let it in)", key[:8].decode(errors="replace"),
                            self.folder)
            return False

    @property
    def count(self) -> int:
        """Connection attempts refused so far."""
        with self._lock:
            return sum(self.refused.values())


class HandshakeWatch:
    """Counts peers that fail the CURVE handshake before ZAP is asked (no CURVE at all, the
    wrong server key): one monitor socket and thread per bound socket, few per process."""

    EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._seen: set[tuple[str, int]] = set()
        self.count = 0

    def watch(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        """Start watching ``sock`` (bound at ``endpoint``); the monitor socket is handed to
        a thread of its own, its only user from then on."""
        mon = sock.get_monitor_socket(self.EVENTS)
        thread = threading.Thread(target=self._run, args=(mon, endpoint),
                                  name="curve-watch", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, mon: zmq.Socket[Any], endpoint: str) -> None:
        from zmq.utils.monitor import recv_monitor_message

        try:
            while not self._stop.is_set():
                if not mon.poll(100):
                    continue
                event = recv_monitor_message(mon)
                value = int(event["value"])
                log.debug("handshake failed on %s: %s", endpoint, event)
                with self._lock:
                    self.count += 1
                    first = (endpoint, value) not in self._seen
                    self._seen.add((endpoint, value))
                if first:
                    why = ("it does not use CURVE (no keys configured?)"
                           if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH else
                           "wrong server key or a broken handshake")
                    log.warning("refused a peer on %s: %s (logged once)", endpoint, why)
        finally:
            mon.close(linger=0)

    def stop(self) -> None:
        """Stop every watcher thread and close its monitor socket (before ``ctx.term``)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)


@dataclass
class Curve:
    """One process's CURVE keys: its own pair, whom it lets in, its servers' keys.

    Build it with :meth:`from_config` (roles) or :meth:`client` (subscribers).
    """

    public: bytes
    secret: bytes
    trusted: Path | None = None
    server_files: dict[str, Path] = field(default_factory=dict)
    _auth: ThreadAuthenticator | None = None
    _allow: Allowlist | None = None
    _watch: HandshakeWatch = field(default_factory=HandshakeWatch)

    @classmethod
    def from_config(cls, sec: Any) -> Curve | None:
        """From a :class:`~stream.config.SecurityConfig`; None when it names no key.

        Raises:
            ConfigError: the secret key file cannot be read.
        """
        if sec.key is None:
            return None
        public, secret = load_pair(sec.key)
        files: dict[str, Path] = {}
        for role in ("sink", "capture"):
            # Needed only if this process connects to one (then server_key says so).
            with contextlib.suppress(ValueError):
                files[role] = sec.server_key(role)
        return cls(public, secret, Path(sec.trusted) if sec.trusted else None, files)

    @classmethod
    def client(cls, key: str | Path, server_key: str | Path) -> Curve:
        """A client only (a subscriber): its own pair and the one server's public key."""
        public, secret = load_pair(key)
        return cls(public, secret, None, {"server": Path(server_key)})

    def server_key(self, role: str, override: str | Path | None = None) -> bytes:
        """The public key of the ``role`` server this process connects to.

        Raises:
            ConfigError: not configured, or the file cannot be read.
        """
        path = Path(override) if override else self.server_files.get(role)
        if path is None:
            raise ConfigError(f"security.{role}_key (or security.trusted holding {role}.key) "
                              f"is needed to connect to the {role} over CURVE")
        return load_public(path, f"the {role}'s public key")

    def serve(self, sock: zmq.Socket[Any], ctx: zmq.Context[Any], endpoint: str) -> None:
        """Make ``sock`` a CURVE server (before it binds ``endpoint``), starting the
        allow-list once and a handshake watch for the socket.

        Raises:
            ConfigError: no ``security.trusted`` folder to check clients against.
        """
        if self.trusted is None:
            raise ConfigError("security.trusted (a folder of public .key files) is needed to "
                              "bind with CURVE: it says whom to let in")
        if self._auth is None:
            self._allow = Allowlist(self.trusted, frozenset({self.public}))
            auth = ThreadAuthenticator(ctx, log=logging.getLogger("stream.security.zap"))
            auth.start()
            auth.configure_curve_callback(domain="*", credentials_provider=self._allow)
            self._auth = auth
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        self._watch.watch(sock, endpoint)

    def connect_as_client(self, sock: zmq.Socket[Any], server_key: bytes) -> None:
        """Make ``sock`` a CURVE client of the server with ``server_key`` (before connect)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = server_key

    @property
    def refused(self) -> int:
        """Connection attempts refused so far: by the allow-list, or failed handshakes."""
        return (self._allow.count if self._allow is not None else 0) + self._watch.count

    def stop(self) -> None:
        """Stop the authenticator and watcher threads (before the context is terminated)."""
        self._watch.stop()
        if self._auth is not None:
            if self.refused:
                keys = len(self._allow.refused) if self._allow is not None else 0
                log.info("refused %d connection attempt(s): %d from %d unknown key(s), %d "
                         "failed handshake(s)", self.refused, self.refused - self._watch.count,
                         keys, self._watch.count)
            self._auth.stop()
            self._auth = None


def uses_curve(endpoint: str) -> bool:
    """Whether a link leaves the machine (tcp); ipc:// and inproc:// stay plain."""
    return endpoint.startswith("tcp://")
