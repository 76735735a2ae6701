"""`stream events-proxy`: every event reaches a subscriber through the proxy, CURVE on both
sides; a subscriber whose key is not trusted gets nothing and is counted as refused.

Real sockets on loopback, the proxy on a thread of this process (the same `run_proxy` the
CLI runs), the publisher made by the sink's own factory (`EventPublisher.bind` on a
`Sockets` with keys).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import find_free_port_base, wait_until

from stream.events import EventPublisher, Subscriber
from stream.events.proxy import run_proxy
from stream.security import Curve, generate, load_pair
from stream.transport import Sockets


def _label(seq: int) -> dict[str, object]:
    return {"v": 1, "type": "label", "stream": "cam1", "seq": seq, "pts": seq / 25,
            "ts": 1.0 + seq, "labels": [{"id": 1, "name": "x", "score": 0.5}],
            "latency_ms": 1.0}


def test_every_event_through_the_proxy_and_a_rogue_gets_none(tmp_path: Path) -> None:
    for name in ("sink", "proxy", "sub", "rogue"):
        generate(name, tmp_path)
    (tmp_path / "sink-trusted").mkdir()
    (tmp_path / "sink-trusted" / "proxy.key").write_bytes((tmp_path / "proxy.key").read_bytes())
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "sub.key").write_bytes((tmp_path / "sub.key").read_bytes())
    base = find_free_port_base(2)
    upstream, listen = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"
    sink_pub, sink_sec = load_pair(tmp_path / "sink.key_secret")
    proxy_pub, proxy_sec = load_pair(tmp_path / "proxy.key_secret")
    proxy_curve = Curve(proxy_pub, proxy_sec, tmp_path / "subs",
                        {"sink": tmp_path / "sink.key"})
    stop = threading.Event()
    with Sockets(curve=Curve(sink_pub, sink_sec, tmp_path / "sink-trusted")) as sink:
        pub = EventPublisher.bind(sink, upstream)
        proxy = threading.Thread(target=run_proxy, args=(upstream, listen, proxy_curve, stop))
        proxy.start()
        try:
            good = Subscriber(listen, curve=Curve.client(tmp_path / "sub.key_secret",
                                                         tmp_path / "proxy.key"))
            rogue = Subscriber(listen, curve=Curve.client(tmp_path / "rogue.key_secret",
                                                          tmp_path / "proxy.key"))
            with good, rogue:
                # PUB/SUB joins late: publish a probe until it arrives through the proxy.
                def probe() -> bool:
                    pub.publish(_label(0) | {"stream": "probe"})
                    return good.recv(timeout=0.05) is not None
                wait_until(probe, 20, "the subscription to reach the sink through the proxy")
                while good.recv(timeout=0.2) is not None:
                    pass  # extra probes
                for seq in range(500):
                    assert pub.publish(_label(seq))
                got = [good.recv(timeout=5) for _ in range(500)]
                assert [e["seq"] for e in got if e] == list(range(500))
                assert rogue.recv(timeout=0.5) is None, "an untrusted subscriber got events"
                assert proxy_curve.refused >= 1
        finally:
            stop.set()
            proxy.join(10)
            pub.close()
    assert not proxy.is_alive()


def test_cli_refuses_an_exposed_listen_without_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    code = main(["events-proxy", "--upstream", "tcp://127.0.0.1:5560", "--listen",
                 "tcp://*:5562"])
    assert code == 2
    assert "--insecure" in capsys.readouterr().err
