"""`stream run` on one machine: private endpoints, a clear clash on the public one, and exit
codes that carry the children's failures (issue 7, items 11 and 17)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import EventLog, find_free_port_base, make_clip, runs_of_classes

from stream import launcher
from stream.config import config_from_dict
from stream.errors import ConfigError

RUN_TIMEOUT = 180.0
E2E_TIMEOUT = 300


def _popen(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stream", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def _has_labels(log: EventLog, stream: str, n: int) -> bool:
    return len(log.seqs(stream)) >= n


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"`stream run` did not end within {timeout:.0f} s\n{err[-3000:]}")
    return proc.returncode, out, err


# --------------------------------------------------------------------------- defect 17


@pytest.mark.timeout(E2E_TIMEOUT)
def test_two_runs_on_one_machine_both_label_every_frame(
    tmp_path: Path, oracle_model: tuple[Path, Path], event_log: Callable[[str], EventLog]
) -> None:
    """Two `stream run --source` at once: on old main the second could not bind 5561."""
    xml, _ = oracle_model
    lengths = {"one": 40, "two": 30}
    procs, logs = {}, {}
    for i, (name, n) in enumerate(lengths.items()):
        make_clip(tmp_path / f"{name}.mp4", runs_of_classes(n, seed=10 + i), size=(160, 120))
    for name in lengths:
        events = f"tcp://127.0.0.1:{find_free_port_base(1)}"
        logs[name] = event_log(events)
        procs[name] = _popen(["run", "--source", str(tmp_path / f"{name}.mp4"), "--model",
                              str(xml), "--events", events], cwd=tmp_path)
    for name, n in lengths.items():
        code, _, err = _finish(procs[name], RUN_TIMEOUT)
        assert code == 0, err[-3000:]
        assert "Address already in use" not in err
        # the captures start once the sink is bound (its ready line), so none logs before it
        lines = err.splitlines()
        bound = next(i for i, ln in enumerate(lines) if " INFO label events on " in ln)
        assert all(" capture[" not in ln for ln in lines[:bound]), err[-3000:]
        log = logs[name]
        log.wait_for(partial(_has_labels, log, name, n), 5, f"{n} label events of {name}")
        assert log.seqs(name) == list(range(n))


@pytest.mark.timeout(60)
def test_private_endpoints_replace_only_what_the_user_did_not_name(tmp_path: Path) -> None:
    base = {"sources": [{"id": "a", "url": "a.mp4"}, {"id": "b", "url": "b.mp4"}]}
    with launcher.private_dir() as folder:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        cfg = launcher.with_private_endpoints(config_from_dict(base), folder)
        assert cfg.transport.sink == f"ipc://{folder}/sink"
        assert cfg.transport.frames_endpoints(2) == [f"ipc://{folder}/frames-0",
                                                     f"ipc://{folder}/frames-1"]
        named = config_from_dict({**base, "transport": {"sink": "tcp://127.0.0.1:7001"}})
        cfg = launcher.with_private_endpoints(named, folder)
        assert cfg.transport.sink == "tcp://127.0.0.1:7001"
        assert cfg.transport.frames == f"ipc://{folder}/frames"
        remote = config_from_dict({**base, "workers": {"count": 0}})
        assert launcher.with_private_endpoints(remote, folder).transport == remote.transport
    assert not folder.exists()


def test_a_config_file_keeps_its_named_endpoints_through_the_cli(tmp_path: Path) -> None:
    """`stream run CONFIG` must not turn the file's defaults into 'named' endpoints."""
    from stream.cli import _config_for_run, build_parser

    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  - id: a\n    url: a.mp4\ntransport:\n  hwm: 4\n")
    args = build_parser().parse_args(["run", str(path), "--workers", "2"])
    cfg = _config_for_run(args)
    assert cfg.transport.model_fields_set == {"hwm"}
    with launcher.private_dir() as folder:
        assert launcher.with_private_endpoints(cfg, folder).transport.sink.startswith("ipc://")


@pytest.mark.timeout(60)
def test_events_clash_is_one_clear_error(tmp_path: Path, oracle_model: tuple[Path, Path]
                                         ) -> None:
    """A second run on a busy events endpoint says which flag fixes it (exit 2, no traceback)."""
    clip = make_clip(tmp_path / "c.mp4", [0, 1, 2], size=(64, 48))
    port = find_free_port_base(1)
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as held:
        held.setsockopt(zmq.LINGER, 0)
        held.bind(f"tcp://127.0.0.1:{port}")
        proc = _popen(["run", "--source", str(clip), "--model", str(oracle_model[0]),
                       "--events", f"tcp://127.0.0.1:{port}"], cwd=tmp_path)
        code, _, err = _finish(proc, 60)
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--events auto" in errors[0], err


@pytest.mark.timeout(E2E_TIMEOUT)
def test_events_auto_picks_a_free_port_and_prints_it(
    tmp_path: Path, oracle_model: tuple[Path, Path]
) -> None:
    clip = make_clip(tmp_path / "c.mp4", [0, 1, 2, 3], size=(64, 48))
    proc = _popen(["run", "--source", str(clip), "--model", str(oracle_model[0]),
                   "--events", "auto"], cwd=tmp_path)
    code, _, err = _finish(proc, RUN_TIMEOUT)
    assert code == 0, err[-3000:]
    line = next(x for x in err.splitlines() if x.startswith("label events on "))
    endpoint = line.split()[3]
    assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":5560")


def test_check_bindable_names_the_key_of_a_busy_transport_endpoint() -> None:
    port = find_free_port_base(2)
    cfg = config_from_dict({"sources": [{"id": "a", "url": "a.mp4"}],
                            "sink": {"events": f"tcp://127.0.0.1:{port}"},
                            "transport": {"sink": f"tcp://127.0.0.1:{port + 1}"}})
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as held:
        held.setsockopt(zmq.LINGER, 0)
        held.bind(f"tcp://127.0.0.1:{port + 1}")
        with pytest.raises(ConfigError, match=r"transport\.sink .* in use.*in the config"):
            launcher.check_bindable(cfg)
    launcher.check_bindable(cfg)  # free again: no error


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("captures", "sink", "code", "said"),
    [
        ({"a": 0, "b": 0}, 0, 0, None),
        ({"a": 0}, 1, 1, "an output failed"),
        ({"a": 0}, 2, 2, "the sink failed (exit 2)"),
        ({"a": 2, "b": 0}, 0, 2, "capture failed for a (exit 2)"),
        ({"a": 1, "b": 2}, 0, 1, "capture failed for a (exit 1), b (exit 2)"),
        ({"a": -15}, -15, 0, None),
        ({"a": None}, 0, 1, "a (did not stop)"),
    ],
)
def test_exit_code_mapping(caplog: pytest.LogCaptureFixture, captures: dict[str, int | None],
                           sink: int, code: int, said: str | None) -> None:
    with caplog.at_level("ERROR", logger="stream.launcher"):
        assert launcher.exit_code(0, captures, sink) == code
    if said is None:
        assert not caplog.records
    else:
        assert said in caplog.text


# Real child processes stand in for the roles (the seam is `spawn_role`). A fake sink says
# ready the way the real one does: a line on the pipe named after --ready-fd.
SAY_READY = "import os, sys; os.write(int(sys.argv[1]), b'ready\\n')"


class FakeRoles:
    """`spawn_role` for the launcher tests: runs ``script[role]`` (the sink's gets its ready
    fd as argv[1]) and records, per role, whether the sink's marker file existed at spawn."""

    def __init__(self, script: dict[str, str], marker: Path | None = None) -> None:
        self.script = script
        self.marker = marker
        self.spawned: list[tuple[str, bool]] = []  # (role, sink ready at that moment)

    def __call__(self, argv: list[str], config_json: str, name: str,
                 pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        role = argv[0]
        self.spawned.append((role, self.marker is not None and self.marker.exists()))
        extra = [argv[argv.index("--ready-fd") + 1]] if role == "sink" else []
        return subprocess.Popen([sys.executable, "-c", self.script[role], *extra],
                                pass_fds=pass_fds)

    def roles(self) -> list[str]:
        return [role for role, _ in self.spawned]


def _one_source_config() -> Any:
    return config_from_dict({"sources": [{"id": "a", "url": "a.mp4"}],
                             "sink": {"events": f"tcp://127.0.0.1:{find_free_port_base(1)}"}})


@pytest.mark.timeout(60)
def test_a_sink_exiting_1_makes_run_exit_1(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """The sink says an output failed (exit 1, issue item 11) after the captures ended
    normally."""
    roles = FakeRoles({"sink": f"{SAY_READY}; import time; time.sleep(0.5); sys.exit(1)",
                       "capture": "import sys; sys.exit(0)",
                       "worker": "import time; time.sleep(60)"})
    monkeypatch.setattr(launcher, "spawn_role", roles)
    with caplog.at_level("ERROR", logger="stream.launcher"):
        assert launcher.run_all(_one_source_config(), threading.Event()) == 1
    assert "the sink exited 1: an output failed" in caplog.text
    assert sorted(roles.roles()) == ["capture", "sink", "worker"]


@pytest.mark.timeout(60)
def test_captures_start_only_once_the_sink_is_bound(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """The workers start beside the sink (their model loads meanwhile); the captures only
    after the sink said ready, here 1 s after its start: before it, a capture and a worker
    could label frames the sink then publishes in one burst as it binds, before a waiting
    subscriber has joined (the bench's subscriber once missed 32 of 50 that way)."""
    marker = tmp_path / "sink-ready"
    sink = (f"import os, sys, time; time.sleep(1.0); open({str(marker)!r}, 'w').close(); "
            "os.write(int(sys.argv[1]), b'ready\\n'); time.sleep(1.0)")
    roles = FakeRoles({"sink": sink, "capture": "import sys; sys.exit(0)",
                       "worker": "import time; time.sleep(60)"}, marker)
    monkeypatch.setattr(launcher, "spawn_role", roles)
    assert launcher.run_all(_one_source_config(), threading.Event()) == 0
    assert roles.spawned == [("sink", False), ("worker", False), ("capture", True)]


@pytest.mark.timeout(60)
def test_a_sink_that_fails_before_ready_starts_no_capture(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A sink that cannot start (exit 2: e.g. its output folder is read-only) ends the run
    with its code at once: no capture is started for nothing."""
    roles = FakeRoles({"sink": "import sys, time; time.sleep(0.3); sys.exit(2)",
                       "capture": "import sys; sys.exit(0)",
                       "worker": "import time; time.sleep(60)"})
    monkeypatch.setattr(launcher, "spawn_role", roles)
    t0 = time.monotonic()
    with caplog.at_level("ERROR", logger="stream.launcher"):
        assert launcher.run_all(_one_source_config(), threading.Event()) == 2
    assert roles.roles() == ["sink", "worker"]
    assert "the sink failed (exit 2)" in caplog.text
    assert time.monotonic() - t0 < 10  # the worker stopped at once (terminate), no drain


@pytest.mark.timeout(60)
def test_a_stop_while_the_sink_starts_ends_the_run_without_captures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C before the sink is ready: nothing waits for a drain of streams that never
    started (the sink's 15 s drain wait is for captures that sent their eos)."""
    roles = FakeRoles({"sink": "import time; time.sleep(60)",
                       "capture": "import sys; sys.exit(0)",
                       "worker": "import time; time.sleep(60)"})
    monkeypatch.setattr(launcher, "spawn_role", roles)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    launcher.run_all(_one_source_config(), stop)
    assert roles.roles() == ["sink", "worker"]
    assert time.monotonic() - t0 < 10


def test_private_dir_is_removed_even_on_error() -> None:
    with pytest.raises(RuntimeError), launcher.private_dir() as folder:
        (folder / "sink").write_text("x")
        raise RuntimeError
    assert not folder.exists()
    assert os.access(folder.parent, os.W_OK)


def test_check_bindable_probes_a_sources_own_frames_bind_address() -> None:
    """A source with its own frames endpoint binds `frames_bind`, not transport.frames +
    i: the clash check must probe the address the capture will really bind."""
    port = find_free_port_base(3)
    cfg = config_from_dict({
        "sources": [{"id": "a", "url": "a.mp4", "frames": f"tcp://127.0.0.1:{port + 2}"}],
        "sink": {"events": f"tcp://127.0.0.1:{port}"},
        "transport": {"sink": f"tcp://127.0.0.1:{port + 1}"}})
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as held:
        held.setsockopt(zmq.LINGER, 0)
        held.bind(f"tcp://127.0.0.1:{port + 2}")
        with pytest.raises(ConfigError, match=r"capture a.*in use"):
            launcher.check_bindable(cfg)


def test_run_refuses_a_config_with_several_sinks_up_front() -> None:
    """`stream run` starts one sink; a sinks[] config is run role by role, and saying so
    before anything starts beats a sink child failing mid-launch."""
    port = find_free_port_base(4)
    cfg = config_from_dict({
        "sources": [{"id": "a", "url": "a.mp4"}, {"id": "b", "url": "b.mp4"}],
        "sinks": [
            {"name": "east", "inbox": f"tcp://127.0.0.1:{port}",
             "events": f"tcp://127.0.0.1:{port + 1}", "streams": ["a"]},
            {"name": "west", "inbox": f"tcp://127.0.0.1:{port + 2}",
             "events": f"tcp://127.0.0.1:{port + 3}", "streams": ["b"]},
        ]})
    with pytest.raises(ConfigError, match=r"several sinks \(east, west\).*stream sink CONFIG"):
        launcher.run_all(cfg, threading.Event())
