"""RTSP connect failures against the real GStreamer RTSP server of tests/rtsp_server.py.

A wrong path (404) or wrong credentials (401) is a configuration error: the capture says so
at ERROR with what to fix, retries slowly, counts ``connect_failures`` in its status
counters, and never shows the password.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import find_free_port_base, inproc_capture_links
from rtsp_fixtures import RtspServer, gi_missing_reason

from stream.capture import Capture, CaptureSettings
from stream.capture.rtsp_probe import diagnose
from stream.capture.session import CONFIG_RETRY_S
from stream.protocol import Eos, Frame, Message, Status, decode
from stream.sources import OpenCVSource
from stream.transport import Sockets

pytestmark = [pytest.mark.rtsp, pytest.mark.timeout(90)]

_REASON = gi_missing_reason()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SECRET = "s3cr3t-MARKER"


@pytest.fixture(scope="module")
def server() -> Iterator[RtspServer]:
    srv = RtspServer(find_free_port_base(1), user="viewer", password=SECRET)
    srv.start()
    yield srv
    srv.stop()


def url(server: RtspServer, path: str = "/test", password: str = SECRET) -> str:
    return f"rtsp://viewer:{password}@127.0.0.1:{server.port}{path}"


def test_probe_tells_path_and_credential_errors_from_network_errors(
    server: RtspServer,
) -> None:
    # A DESCRIBE right after another may meet the shared media being torn down (503):
    # poll until the server answers 200.
    deadline = time.monotonic() + 10
    while True:
        ok = diagnose(url(server))
        assert ok is not None and not ok.config_error
        if "200" in ok.detail or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling interval
    assert "200" in ok.detail
    missing = diagnose(url(server, "/nope"))
    assert missing is not None and missing.config_error
    assert "404" in missing.detail and "path" in missing.hint
    wrong = diagnose(url(server, password="wrong"))
    assert wrong is not None and wrong.config_error
    assert "401" in wrong.detail and "password" in wrong.hint
    anonymous = diagnose(f"rtsp://127.0.0.1:{server.port}/test")
    assert anonymous is not None and "401" in anonymous.detail
    down = diagnose(f"rtsp://127.0.0.1:{find_free_port_base(1)}/test")
    assert down is not None and not down.config_error and "refused" in down.detail.lower()
    for d in (ok, missing, wrong, down):
        assert SECRET not in f"{d.detail} {d.hint}"


def capture_until(source_url: str, enough: Callable[[list[Message]], bool]) -> list[Message]:
    """Run a real capture of ``source_url`` (sink links on inproc) until ``enough`` says so
    about what the sink got, then stop it; returns every message the sink got."""
    stop = threading.Event()
    settings = CaptureSettings(stream="cam", url=source_url, kind="rtsp", policy="drop")
    msgs: list[Message] = []
    with Sockets() as sockets:
        links, sink = inproc_capture_links(sockets)
        cap = Capture(settings, OpenCVSource(source_url, "rtsp"), links, stop)
        thread = threading.Thread(target=cap.run)
        thread.start()
        deadline = time.monotonic() + 40
        try:
            while not enough(msgs):
                assert time.monotonic() < deadline, f"not enough in 40 s: {msgs[-5:]}"
                if sink.poll(100):
                    msgs.append(decode(sink.recv_multipart()))
        finally:
            stop.set()
            thread.join(30)
        assert not thread.is_alive()
        while sink.poll(200):
            msgs.append(decode(sink.recv_multipart()))
        sockets.close(linger_ms=0)
    return msgs


def reconnecting(msgs: list[Message]) -> bool:
    return any(isinstance(m, Status) and m.state == "reconnecting" for m in msgs)


@pytest.mark.parametrize(("path", "password", "code", "what"), [
    ("/nope", SECRET, "404", "check the path"),
    ("/test", "wrong-pw", "401", "check the user name and password"),
])
def test_a_wrong_path_or_password_is_an_error_retried_slowly_and_counted(
    server: RtspServer, caplog: pytest.LogCaptureFixture, path: str, password: str,
    code: str, what: str,
) -> None:
    """Defect 15: it used to be retried for ever at INFO with no word in the summary."""
    source_url = url(server, path, password)
    with caplog.at_level(logging.INFO):
        msgs = capture_until(source_url, reconnecting)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(code in e and what in e for e in errors), errors
    statuses = [m for m in msgs if isinstance(m, Status)]
    failures = [m for m in statuses if m.state == "reconnecting"]
    assert failures and code in failures[0].message and what in failures[0].message
    assert f"retrying in {CONFIG_RETRY_S:.1f} s" in failures[0].message  # slowly
    ended = [m for m in statuses if m.state == "ended"][-1]
    assert ended.counters["connect_failures"] == len(failures)
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert (eos.frames, eos.reason) == (0, "shutdown")
    shown = [r.getMessage() for r in caplog.records] + [m.message for m in statuses]
    assert not [line for line in shown if SECRET in line or "wrong-pw" in line]


def test_a_right_url_streams_and_stop_ends_it_with_the_captures_count(
    server: RtspServer, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        msgs = capture_until(url(server),
                             lambda got: sum(isinstance(m, Frame) for m in got) >= 20)
    seqs = [m.seq for m in msgs if isinstance(m, Frame)]
    (eos,) = [m for m in msgs if isinstance(m, Eos)]
    assert seqs == list(range(eos.frames)) and eos.reason == "shutdown"
    states = [m.state for m in msgs if isinstance(m, Status)]
    assert states[:2] == ["connecting", "streaming"] and states[-1] == "ended"
    assert SECRET not in " ".join(r.getMessage() for r in caplog.records)
