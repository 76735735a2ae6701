"""Live RTSP sources against a real GStreamer RTSP server: reconnect, stall, secrets, SIGTERM.

Each test runs ``python -m stream run`` on a tiny 8-class IR built here, subscribes to the
sink's events (conftest's EventLog) and drives ``tests/rtsp_server.py`` (started, stopped,
restarted by the test). Skipped only when Debian's python3 lacks the GStreamer bindings
(CI installs them). After SIGTERM the counts are checked against the capture's own
``N frames captured`` line and the label events the subscriber received; how long things
took (reconnect, exit) is printed here and measured by ``scripts/latency.py``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    EventLog,
    assert_in_order,
    captured_by_capture,
    find_free_port_base,
    summary_row,
    wait_until,
)
from rtsp_fixtures import Pipeline, RtspServer, build_tiny_model, gi_missing_reason

pytestmark = [pytest.mark.rtsp, pytest.mark.timeout(90)]

_REASON = gi_missing_reason()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

# The pipeline's own startup (3 processes, OpenVINO compile, the RTSP probe) plus margin.
START_S = 30.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def servers() -> Iterator[list[RtspServer]]:
    made: list[RtspServer] = []
    yield made
    for s in made:
        s.stop()


@pytest.fixture
def run(tmp_path: Path, model: tuple[Path, Path]) -> Iterator[Any]:
    """Factory: run(url) → (Pipeline, EventLog), both subscribed/started; torn down after."""
    made: list[tuple[Pipeline, EventLog]] = []

    def start(url: str) -> tuple[Pipeline, EventLog]:
        p = Pipeline(tmp_path, url, *model)
        log = EventLog(p.events_endpoint)  # connect first: no event is missed
        p.start()
        made.append((p, log))
        return p, log

    yield start
    for p, log in made:
        if p.proc is not None and p.proc.poll() is None:
            p.terminate()
        log.close()


def labels(log: EventLog, since: float = 0.0) -> list[dict[str, Any]]:
    return log.of("label", "cam", since=since)


def assert_ended(p: Pipeline, log: EventLog, code: int) -> None:
    """SIGTERM gave a clean exit: code 0, status ended, and the eos brought the capture's
    own count to the summary, which accounts for every frame the subscriber saw."""
    err = p.stderr()
    assert code == 0, err[-3000:]
    assert "terminate called" not in err  # a helper thread unwound through OpenCV
    ended = wait_until(lambda: [e for e in log.of("status", "cam") if e["state"] == "ended"],
                       5, "the `ended` status")
    assert "shutdown" in ended[-1]["message"]
    captured = captured_by_capture(err, "cam")
    assert captured is not None, f"no `cam: N frames captured` line:\n{err[-3000:]}"
    row = summary_row(p.stdout(), "cam", err)
    assert row.captured == captured, "the eos (the capture's own count) did not reach the sink"
    assert row.labelled + row.dropped == captured
    summary = wait_until(lambda: log.of("summary", "cam"), 5, "the summary event")[-1]
    assert (summary["captured"], summary["labelled"]) == (captured, row.labelled)
    seqs = log.seqs("cam")
    assert_in_order(seqs)
    assert len(seqs) == row.labelled and (not seqs or seqs[-1] < captured)


def test_server_restart_labels_resume(servers: list[RtspServer], run: Any) -> None:
    srv = RtspServer(find_free_port_base(1))
    servers.append(srv)
    srv.start()
    p, log = run(srv.url)
    wait_until(lambda: len(labels(log)) >= 10, START_S, "10 label events")
    # The very first `connecting` may be published before the subscriber's connection is
    # up (PUB/SUB keeps nothing for late joiners); `streaming` comes after it, or first.
    assert log.states()[:2] in (["connecting", "streaming"], ["streaming"])
    before = max(e["seq"] for e in labels(log))

    t_stop = time.monotonic()
    srv.stop()
    wait_until(lambda: "reconnecting" in log.states(since=t_stop), 15,
               "`reconnecting` status")
    ready = srv.start()
    wait_until(lambda: labels(log, ready), 30, "labels after the restart")
    t_label = log.first_time(lambda e: e["type"] == "label", since=ready)
    assert t_label is not None
    print(f"\nreconnect: first label {t_label - ready:.2f} s after the server was READY")

    after = [e["seq"] for e in labels(log, ready)]
    assert min(after) > before
    assert_in_order(log.seqs("cam"))
    states = log.states(since=t_stop)
    assert "reconnecting" in states and "streaming" in states
    assert states.index("reconnecting") < len(states) - 1 - states[::-1].index("streaming")
    last = [e for e in log.of("status") if e["state"] == "streaming"][-1]
    assert last["counters"].get("reconnects", 0) >= 1
    assert_ended(p, log, p.terminate()[0])


def test_server_down_at_start(servers: list[RtspServer], run: Any) -> None:
    srv = RtspServer(find_free_port_base(1))
    servers.append(srv)
    p, log = run(srv.url)
    # It keeps retrying: several failed attempts, the process alive.
    wait_until(lambda: log.states().count("reconnecting") >= 2, START_S,
               "two failed connection attempts")
    assert p.proc is not None and p.proc.poll() is None
    assert not labels(log)
    ready = srv.start()
    wait_until(lambda: labels(log, ready), 40, "labels once the server is up")
    t_label = log.first_time(lambda e: e["type"] == "label", since=ready)
    assert t_label is not None
    print(f"\nlate server: first label {t_label - ready:.2f} s after the server was READY")
    states = log.states()
    assert "connecting" in states and "streaming" in states  # (the first may predate the SUB)
    assert_ended(p, log, p.terminate()[0])


def test_stall_triggers_watchdog(servers: list[RtspServer], run: Any) -> None:
    srv = RtspServer(find_free_port_base(1), stall_after=4.0)
    servers.append(srv)
    srv.start()
    p, log = run(srv.url)
    wait_until(lambda: labels(log), START_S, "labels before the stall")
    wait_until(lambda: "STALLED" in srv.lines, 15, "the server to stall")
    t_stall = time.monotonic()
    wait_until(lambda: "stalled" in log.states(), 15, "`stalled` status")
    t_seen = log.first_time(lambda e: e["type"] == "status" and e["state"] == "stalled")
    assert t_seen is not None
    print(f"\nstall noticed {t_seen - t_stall:.2f} s after the server stopped sending")
    wait_until(lambda: "reconnecting" in log.states(since=t_seen), 10,
               "`reconnecting` after stall")
    stalled = next(e for e in log.of("status") if e["state"] == "stalled")
    assert stalled["counters"]["stalls"] == 1
    assert_ended(p, log, p.terminate()[0])


def test_credentials_never_leak(servers: list[RtspServer], run: Any) -> None:
    user, password = "alice", "Pw-s3cr3t-9q7"
    srv = RtspServer(find_free_port_base(1), user=user, password=password)
    servers.append(srv)
    srv.start()
    url = srv.url.replace("rtsp://", f"rtsp://{user}:{password}@")
    p, log = run(url)
    wait_until(lambda: len(labels(log)) >= 5, START_S, "labels from the auth-enabled server")
    assert_ended(p, log, p.terminate()[0])
    assert password not in p.stderr()
    assert password not in p.stdout()
    for _, ev in log.events:
        assert password not in repr(ev), ev
    # The URL is still shown, redacted (the first `connecting` event may precede the
    # subscription, so look in the log, which has every state change).
    assert "connecting rtsp://***:***@127.0.0.1" in p.stderr()


def test_wrong_password_is_retried_and_redacted(servers: list[RtspServer], run: Any) -> None:
    """A 401 is a configuration error: said so (slow retries go on, the process lives), the
    summary counts the failed connects the subscriber saw, and the password shows nowhere."""
    password = "Wr0ng-pass-x1"
    srv = RtspServer(find_free_port_base(1), user="alice", password="right-one")
    servers.append(srv)
    srv.start()
    p, log = run(srv.url.replace("rtsp://", f"rtsp://alice:{password}@"))
    try:
        failed = wait_until(lambda: [e for e in log.of("status", "cam")
                                     if e["state"] == "reconnecting"], 2 * START_S,
                            "a failed attempt")
    except pytest.fail.Exception:  # say what the run did (once seen flaky under CI load)
        pytest.fail(f"no failed attempt reported; states {log.states()}\n{p.stderr()[-3000:]}")
    assert "401" in failed[0]["message"], failed[0]
    assert p.proc is not None and p.proc.poll() is None
    assert_ended(p, log, p.terminate()[0])
    attempts = log.states("cam").count("reconnecting")
    # The summary shows the capture's own final count, which its `ended` status carries
    # too, and every failed attempt the subscriber saw is in it. Once (2026-11-28, full
    # suite under load) the summary said 2 while the subscriber had seen 1 `reconnecting`;
    # the cause is not found yet, so a mismatch prints the whole story.
    ended = [e for e in log.of("status", "cam") if e["state"] == "ended"][-1]
    final = ended["counters"].get("connect_failures", 0)
    story = f"states {log.states('cam')}\n{p.stdout()}\n{p.stderr()[-3000:]}"
    assert final >= attempts >= 1, story
    assert f"cam: connect failures: {final}" in p.stdout(), story
    for _, ev in log.events:
        assert password not in repr(ev), ev
    assert password not in p.stderr() and password not in p.stdout()


@pytest.mark.parametrize("state", ["connecting", "backoff", "streaming"])
def test_sigterm_in_each_state(state: str, servers: list[RtspServer], run: Any) -> None:
    port = find_free_port_base(1)
    black_hole: socket.socket | None = None
    if state == "connecting":
        # Accepts TCP (kernel backlog) and never answers: FFmpeg blocks in open.
        black_hole = socket.socket()
        black_hole.bind(("127.0.0.1", port))
        black_hole.listen(8)
    elif state == "streaming":
        srv = RtspServer(port)
        servers.append(srv)
        srv.start()
    try:
        p, log = run(f"rtsp://127.0.0.1:{port}/test")
        if state == "connecting":
            # The black hole holds FFmpeg's open for OPEN_TIMEOUT_S (10 s): SIGTERM lands
            # inside it, whenever in those 10 s the `connecting` event is seen.
            wait_until(lambda: "connecting" in log.states(), START_S, "`connecting`")
        elif state == "backoff":
            wait_until(lambda: "reconnecting" in log.states(), START_S, "`reconnecting`")
        else:
            wait_until(lambda: labels(log), START_S, "labels")
        code, took = p.terminate()
        print(f"\nSIGTERM while {state}: exited in {took:.2f} s")
        assert_ended(p, log, code)
    finally:
        if black_hole is not None:
            black_hole.close()
