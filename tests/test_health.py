"""`stream health` against real role processes: healthy while they run, not when they are
killed, frozen or stopped; and the verdicts on heartbeat files of stuck or foreign roles."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stream import health
from tests.conftest import find_free_port_base, wait_until


def stream_health(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a probe runs it."""
    return subprocess.run([sys.executable, "-m", "stream", "health", "--dir", str(run_dir),
                           *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def sink_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A real `stream sink --forever` whose heartbeat goes to its own run dir."""
    base = find_free_port_base(3)
    cfg = tmp_path / "sink.yaml"
    cfg.write_text(yaml.safe_dump({
        "sources": [{"id": "cam", "url": "rtsp://10.0.0.9/x"}],
        "sink": {"events": f"tcp://127.0.0.1:{base}"},
        "transport": {"sink": f"tcp://127.0.0.1:{base + 1}",
                      "frames": f"tcp://127.0.0.1:{base + 2}"},
    }))
    run_dir = tmp_path / "run"
    env = {**os.environ, health.RUN_DIR_ENV: str(run_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "stream", "sink", str(cfg), "--forever"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc, run_dir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_running_sink_is_healthy_and_a_killed_one_is_not(
        sink_process: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, run_dir = sink_process
    assert stream_health(run_dir, "--role", "sink").returncode == 1  # not started yet

    def loop_turning() -> bool:
        r = stream_health(run_dir, "--role", "sink")
        return r.returncode == 0 and "loop 0." in r.stdout

    wait_until(loop_turning, 30, "the sink's heartbeat with its loop turning", poll=0.2)
    ok = stream_health(run_dir, "--role", "sink")
    assert f"pid {proc.pid}" in ok.stdout
    # Another role, or another name, is not this one.
    assert stream_health(run_dir, "--role", "worker").returncode == 1
    assert stream_health(run_dir, "--role", "sink", "--name", "other").returncode == 1

    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    dead = stream_health(run_dir, "--role", "sink")
    assert dead.returncode == 1
    assert "no sink running" in dead.stderr
    assert "1 ended without cleaning up" in dead.stderr  # the file is still there


def test_a_frozen_sink_turns_unhealthy_and_recovers(
        sink_process: tuple[subprocess.Popen[bytes], Path]) -> None:
    """SIGSTOP: the process exists but does nothing; only the heartbeat's age can tell."""
    proc, run_dir = sink_process
    wait_until(lambda: stream_health(run_dir, "--role", "sink").returncode == 0, 30,
               "a healthy sink", poll=0.2)
    proc.send_signal(signal.SIGSTOP)
    try:
        frozen = wait_until(
            lambda: (r := stream_health(run_dir, "--role", "sink", "--max-age", "1.5"))
            .returncode == 1 and r, 20, "the frozen sink to be unhealthy", poll=0.2)
        assert "no heartbeat for" in frozen.stderr
    finally:
        proc.send_signal(signal.SIGCONT)
    wait_until(lambda: stream_health(run_dir, "--role", "sink", "--max-age", "1.5")
               .returncode == 0, 20, "the resumed sink to be healthy", poll=0.2)


def test_a_stopped_sink_removes_its_heartbeat(
        sink_process: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, run_dir = sink_process
    wait_until(lambda: list(run_dir.glob("sink-*.json")), 30, "the heartbeat file")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not list(run_dir.glob("sink-*.json"))
    r = stream_health(run_dir, "--role", "sink")
    assert r.returncode == 1 and "no sink running" in r.stderr
    assert "ended without cleaning up" not in r.stderr


def write_record(run_dir: Path, role: str, **fields: object) -> None:
    run_dir.mkdir(exist_ok=True)
    record = {"v": 1, "role": role, "name": "n", "pid": os.getpid(),
              "host": socket.gethostname(), "pidns": os.readlink("/proc/self/ns/pid"),
              "ts": 1000.0, "loop_ts": None, "started": 990.0, **fields}
    pid = record["pid"]
    (run_dir / f"{role}-{pid}.json").write_text(json.dumps(record))


def test_a_stuck_loop_is_unhealthy_although_the_process_lives(tmp_path: Path) -> None:
    write_record(tmp_path, "worker", ts=1000.0, loop_ts=960.0)
    stuck = health.check(tmp_path, "worker", now=1001.0)
    assert not stuck.healthy and "has not turned for 41.0 s" in stuck.message
    assert health.check(tmp_path, "worker", now=1001.0, max_loop_age_s=60).healthy
    # Before its first beat a loop is not judged (a worker compiling its model).
    write_record(tmp_path, "worker", ts=1000.0, loop_ts=None)
    assert health.check(tmp_path, "worker", now=1001.0).healthy
    assert not health.check(tmp_path, "worker", now=1011.5).healthy  # file too old


def test_a_record_from_another_host_is_judged_by_its_age_only(tmp_path: Path) -> None:
    """A PID means nothing on another machine or in another container."""
    write_record(tmp_path / "a", "capture", host="elsewhere", pid=999_999_999, ts=1000.0)
    assert health.check(tmp_path / "a", "capture", now=1002.0).healthy
    assert not health.check(tmp_path / "a", "capture", now=1020.0).healthy
    # The same PID on this host does not exist: gone at once, whatever the file's age.
    write_record(tmp_path / "b", "capture", pid=999_999_999, ts=1000.0)
    gone = health.check(tmp_path / "b", "capture", now=1000.5)
    assert not gone.healthy and "no capture running" in gone.message


def test_an_unusable_run_dir_never_stops_the_role(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with health.heartbeat("worker", "w", not_a_dir) as hb:
        assert hb is None
        health.beat()  # a no-op, not an error
    with health.heartbeat("worker", "w", tmp_path / "run") as hb:
        assert hb is not None and hb.path.exists()
        health.beat()
        assert hb.loop_ts is not None
        hb.write()
        assert json.loads(hb.path.read_text())["loop_ts"] == hb.loop_ts
    assert not hb.path.exists()


def test_the_default_run_dir() -> None:
    assert health.run_dir({"STREAM_RUN_DIR": "/x"}) == Path("/x")
    assert health.run_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/stream")
    assert health.run_dir({}) == Path(f"/tmp/stream-{os.getuid()}")
