"""``stream run``: start every role of a deployment on this machine and stop them cleanly.

Order matters. The sink starts first (it binds the inbox and the events socket), then the
workers; the captures start once the sink says it is bound (a pipe, ``--ready-fd``), so the
first labels come after the events socket is up, not in a burst at its start that a
subscriber waiting for the sink would miss. At the end the captures finish first (each sends
``eos``), the sink drains and exits once every frame is accounted for, and only then are the
workers stopped. On Ctrl-C/SIGTERM the same order is forced: captures are told to stop, the
sink gets a bounded time to drain, then everything left is terminated → killed.

Children run as ``python -m stream <role> -`` with the config (secrets expanded) written to
their stdin, never on the command line where ``ps`` would show it.

Endpoints: the links between this run's own processes (the sink's inbox, each capture's
frames endpoint) are private unless the config names them: ``ipc://`` sockets in a temporary
directory of this run (mode 0700, removed at the end), so two ``stream run`` on one machine
never collide and no other user can reach them. With ``workers.count: 0`` the configured
endpoints are kept, because the workers are started elsewhere and connect to those. The
events endpoint is public (subscribers connect to it); a clash there is reported before
anything starts, with the flag that fixes it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import zmq

from stream.config import StreamConfig, config_from_dict
from stream.errors import ConfigError
from stream.runtime import spawn_role, stop_process, wait_ready
from stream.transport import Sockets

log = logging.getLogger(__name__)

IPC_PATH_MAX = 100
"""Longest ipc:// socket path we make (the kernel's limit for a Unix socket is 107 bytes)."""
SINK_READY_S = 30.0
"""A sink not bound after this long: the captures start anyway (with a warning)."""


# --------------------------------------------------------------------------- endpoints


@contextmanager
def private_dir() -> Iterator[Path]:
    """A directory only this user can enter (mode 0700), removed with its sockets at the end."""
    path = Path(tempfile.mkdtemp(prefix="stream-run-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def with_private_endpoints(cfg: StreamConfig, folder: Path) -> StreamConfig:
    """``cfg`` with the internal links moved to ipc:// sockets in ``folder``.

    Only endpoints the user did not name (pydantic's ``model_fields_set``) are moved, and
    none when ``workers.count`` is 0 (remote workers must reach the configured ones).

    Raises:
        ConfigError: ``folder`` is too long a path for a Unix socket.
    """
    named = cfg.transport.model_fields_set if "transport" in cfg.model_fields_set else set()
    moved = {"sink", "frames"} - named
    if not moved or cfg.workers.count == 0:
        return cfg
    longest = f"{folder}/frames-{len(cfg.sources) - 1}"
    if len(longest) > IPC_PATH_MAX:
        raise ConfigError(
            f"the temporary directory {folder} is too long a path for ipc:// sockets: set "
            "TMPDIR to a short path (like /tmp), or name transport.sink and transport.frames "
            "in the config"
        )
    data = cfg.model_dump()
    if "sink" in moved:
        data["transport"]["sink"] = f"ipc://{folder}/sink"
    if "frames" in moved:
        data["transport"]["frames"] = f"ipc://{folder}/frames"
    return config_from_dict(data, "stream run")


def check_bindable(cfg: StreamConfig) -> None:
    """Bind every tcp endpoint this run will bind, once, so a clash fails now and clearly.

    Raises:
        ConfigError: an address is in use (another ``stream run``?), naming the flag or key
            that moves it.
    """
    bound = [("sink.events", cfg.sink.events), ("transport.sink", cfg.transport.sink)]
    bound += [(f"transport.frames (capture {src.id})", cfg.frames_bind(i))
              for i, src in enumerate(cfg.sources)]
    with Sockets() as sockets:
        for key, endpoint in bound:
            if not endpoint.startswith("tcp://"):
                continue
            probe = sockets.socket(zmq.PUB, linger_ms=0)
            try:
                probe.bind(endpoint)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE:
                    raise ConfigError(f"{key}: cannot bind {endpoint}: {exc.strerror}") from None
                if key == "sink.events":
                    hint = ("give this run its own with --events tcp://127.0.0.1:PORT, or "
                            "--events auto for a free port")
                else:
                    hint = f"set {key.split(' ')[0]} to a free address in the config"
                raise ConfigError(f"{key} {endpoint} is already in use (another `stream "
                                  f"run`?): {hint}") from None
            finally:
                probe.close(linger=0)


# --------------------------------------------------------------------------- running


def run_all(cfg: StreamConfig, stop: threading.Event, log_level: str = "INFO") -> int:
    """Run the whole deployment until the sources end (files) or ``stop`` is set.

    Returns:
        0 when every stream ended normally; 2 if a capture or the sink refused its input
        (bad source, endpoint in use); 1 if an output failed (the sink's exit 1: e.g. a full
        disk), a process crashed, or every worker died.

    Raises:
        ConfigError: an endpoint of this run is in use, before anything is started.
    """
    if cfg.sinks:
        names = ", ".join(e.name for e in cfg.sinks)
        raise ConfigError(
            f"this config splits its streams over several sinks ({names}): `stream run` "
            "runs one sink; start each role on its own: `stream sink CONFIG --name NAME` per "
            "sink, `stream capture CONFIG --source ID` per source, `stream worker CONFIG` "
            "(docs/deploy.md)")
    with private_dir() as folder:
        run_cfg = with_private_endpoints(cfg, folder)
        check_bindable(run_cfg)
        return _run(run_cfg, stop, log_level)


def _run(cfg: StreamConfig, stop: threading.Event, log_level: str) -> int:
    cfg_json = cfg.model_dump_json()
    common = ["--log-level", log_level]
    ready, ready_w = os.pipe()
    try:
        sink = spawn_role(["sink", "-", "--ready-fd", str(ready_w), *common], cfg_json, "sink",
                          pass_fds=(ready_w,))
    except BaseException:
        os.close(ready)
        raise
    finally:
        os.close(ready_w)
    workers: list[subprocess.Popen[bytes]] = []
    captures: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i in range(cfg.workers.count):
            workers.append(spawn_role(["worker", "-", "--name", f"worker-{i}", *common],
                                      cfg_json, f"worker-{i}"))
        # The workers load their model meanwhile; they get no work before a capture starts.
        if _sink_ready(sink, ready, stop):
            for src in cfg.sources:
                captures[src.id] = spawn_role(["capture", "-", "--source", src.id, *common],
                                              cfg_json, f"capture {src.id}")
    except BaseException:
        for proc in [*captures.values(), *workers, sink]:
            stop_process(proc, "child", timeout=5.0)
        raise
    code = 0
    captures_done_at: float | None = None
    # A capture killed without its eos would leave the sink waiting for ever: once every
    # capture has exited, the sink gets its reorder timeout plus a margin to finish.
    grace = cfg.sink.reorder_timeout_s + 5.0
    try:
        while sink.poll() is None:
            if stop.wait(0.2):
                break
            if workers and all(w.poll() is not None for w in workers):
                log.error("every worker exited (codes %s): stopping; see the worker errors "
                          "above", [w.returncode for w in workers])
                code = 1
                break
            if captures_done_at is None and all(p.poll() is not None for p in captures.values()):
                captures_done_at = time.monotonic()
            if captures_done_at is not None and time.monotonic() - captures_done_at > grace:
                log.warning("the sink is still waiting %.0f s after every capture exited "
                            "(was one killed?): stopping it", grace)
                break
        # Captures first: each sends eos, so the sink can account for every frame.
        # A capture's shutdown drains its in-flight frames (up to 2 s live) and sends eos
        # (up to 5 s): give it that before killing it.
        for sid, proc in captures.items():
            stop_process(proc, f"capture {sid}", timeout=10.0)
        if sink.poll() is None and captures and captures_done_at is None:
            try:
                sink.wait(timeout=15.0)
            except subprocess.TimeoutExpired:
                log.warning("sink still draining after 15 s: stopping it")
    finally:
        sink_code = stop_process(sink, "sink", timeout=10.0)
        for i, w in enumerate(workers):
            stop_process(w, f"worker-{i}", timeout=5.0)
        for sid, proc in captures.items():
            stop_process(proc, f"capture {sid}", timeout=2.0)
    return exit_code(code, {sid: p.returncode for sid, p in captures.items()}, sink_code)


def _sink_ready(sink: subprocess.Popen[bytes], fd: int, stop: threading.Event) -> bool:
    """Wait for the sink to bind its sockets before any capture starts (closes ``fd``).

    Started together, a capture and a worker could label the first frames before the sink
    binds: the sink would then publish them in one burst at its start, before a subscriber
    that was waiting for it had (re)connected, and that subscriber would miss them.

    Returns:
        True to start the captures: the sink is ready, or still not after
        :data:`SINK_READY_S` (then as before, with a warning). False when the sink exited
        first (its own error says why) or ``stop`` was set.
    """
    state = wait_ready(sink, fd, stop, SINK_READY_S)
    if state == "timeout":
        log.warning("the sink is not ready after %.0f s: starting the captures anyway",
                    SINK_READY_S)
    return state in ("ready", "timeout")


def exit_code(code: int, captures: dict[str, int | None], sink_code: int | None) -> int:
    """The exit code of ``stream run`` from its children's, each failure said in one line.

    A child's exit 2 is a user error (its own ``error:`` line says what), 1 a failure at run
    time: for the sink, that an output failed (its summary says which). -15 is our own
    SIGTERM reaching a child before its handler was installed: not a failure.
    """
    failed = {sid: c for sid, c in captures.items() if c not in (0, -15)}
    if failed:
        log.error("capture failed for %s", ", ".join(
            f"{sid} ({'did not stop' if c is None else f'exit {c}'})" for sid, c in failed.items()))
        code = code or (2 if all(c == 2 for c in failed.values()) else 1)
    if sink_code == 1:
        log.error("the sink exited 1: an output failed (e.g. a full disk) or the sink "
                  "crashed; its summary or error above says which")
        code = code or 1
    elif sink_code not in (0, -15):
        log.error("the sink failed (%s)",
                  "did not stop" if sink_code is None else f"exit {sink_code}")
        code = code or (2 if sink_code == 2 else 1)
    return code
