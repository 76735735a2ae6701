"""CURVE on the socket factory: keys from `stream keys generate`, the ZAP allow-list, refusals.

Real sockets over tcp on loopback: a trusted client's messages arrive, a client with a key
pair of its own (knowing the server's public key, which is public) or without CURVE at all
gets nothing through, and the refused key is counted once per attempt, logged once.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from conftest import find_free_port_base, wait_until

from stream.errors import ConfigError
from stream.security import Allowlist, Curve, generate, load_public
from stream.transport import Sockets


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """server, good and rogue pairs; only good's public key is in trusted/."""
    for name in ("server", "good", "rogue"):
        generate(name, tmp_path)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "good.key").write_bytes((tmp_path / "good.key").read_bytes())
    return tmp_path


def _server(keys: Path) -> Curve:
    from stream.security import load_pair

    public, secret = load_pair(keys / "server.key_secret")
    return Curve(public, secret, keys / "trusted")


def _send_one(keys: Path, name: str | None, endpoint: str, payload: bytes) -> None:
    curve = None if name is None else Curve.client(keys / f"{name}.key_secret",
                                                    keys / "server.key")
    with Sockets(curve=curve) as sockets:
        push = sockets.socket(zmq.PUSH, linger_ms=300)
        sockets.connect(push, endpoint, "test", sockets.server_key("server"))
        push.send(payload)
        sockets.close(linger_ms=300)


def test_generate_writes_a_pyzmq_pair_and_never_overwrites(tmp_path: Path) -> None:
    public, secret = generate("worker-1", tmp_path / "k")
    assert (public.name, secret.name) == ("worker-1.key", "worker-1.key_secret")
    assert secret.stat().st_mode & 0o077 == 0
    pub, sec = zmq.auth.load_certificate(secret)
    assert sec is not None and pub == load_public(public, "x")
    with pytest.raises(ConfigError, match="already exists"):
        generate("worker-1", tmp_path / "k")
    with pytest.raises(ConfigError, match="plain file name"):
        generate("../x", tmp_path)


def test_keys_generate_cli(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "stream", "keys", "generate", "hub", "--dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "hub.key").exists() and (tmp_path / "hub.key_secret").exists()
    assert "hub.key" in run.stdout


def test_trusted_client_gets_through_others_are_refused_and_counted(
        keys: Path, caplog: pytest.LogCaptureFixture) -> None:
    endpoint = f"tcp://127.0.0.1:{find_free_port_base(1)}"
    caplog.set_level(logging.WARNING, "stream.security")
    with Sockets(curve=_server(keys)) as server:
        pull = server.socket(zmq.PULL, linger_ms=0)
        server.bind(pull, endpoint, "test")
        for _ in range(2):
            _send_one(keys, "rogue", endpoint, b"forged")
        _send_one(keys, "good", endpoint, b"hello")
        assert pull.poll(5000), "the trusted client's message never arrived"
        assert pull.recv() == b"hello"
        # Two by the allow-list (one key); a peer without CURVE fails the handshake before
        # ZAP: the socket monitor counts it (how libzmq names the failure varies: a
        # mechanism mismatch, or a broken pipe when the peer gives up first).
        def peer_lines() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith("refused a peer on")]
        with Sockets() as plain_peer:
            push = plain_peer.socket(zmq.PUSH, linger_ms=0)
            plain_peer.connect(push, endpoint, "test")
            push.send(b"plain", zmq.NOBLOCK)  # queued: the connection never completes
            wait_until(peer_lines, 10, "the plain peer's failed handshake to be logged")
        assert not pull.poll(300), "a refused peer's message got through"
        assert server.curve is not None and server.curve._allow is not None
        assert server.curve._allow.count == 2
        assert server.refused >= 3
    by_key = [r for r in caplog.records if "refused a connection from key" in r.getMessage()]
    assert len(by_key) == 1, "logged once per key"
    assert len(peer_lines()) == len(set(peer_lines())), "logged once per endpoint and kind"


def test_allowlist_reads_the_folder_again_for_a_new_key(keys: Path) -> None:
    now = [0.0]
    allow = Allowlist(keys / "trusted", clock=lambda: now[0])
    rogue = load_public(keys / "rogue.key", "x")
    assert not allow.callback("*", rogue)
    (keys / "trusted" / "rogue.key").write_bytes((keys / "rogue.key").read_bytes())
    assert not allow.callback("*", rogue), "read again at most once a second"
    now[0] += 1.5
    assert allow.callback("*", rogue)
    assert allow.count == 2


def test_connect_without_server_key_is_a_config_error(keys: Path) -> None:
    with Sockets(curve=Curve.client(keys / "good.key_secret", keys / "server.key")) as s:
        sock = s.socket(zmq.PUSH, linger_ms=0)
        with pytest.raises(ConfigError, match="public key"):
            s.connect(sock, "tcp://127.0.0.1:9", "sink")
        s.connect(sock, "inproc://plain", "local link")  # local links stay plain
    with pytest.raises(ConfigError, match="only a public key"):
        Curve.client(keys / "good.key", keys / "server.key")
