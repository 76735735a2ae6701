"""``stream run``: start every role of a deployment on this machine and stop them cleanly.

Order matters. The sink starts first (it binds the inbox and the events socket), then the
workers, then the captures. At the end the captures finish first (each sends ``eos``), the
sink drains and exits once every frame is accounted for, and only then are the workers
stopped. On Ctrl-C/SIGTERM the same order is forced: captures are told to stop, the sink
gets a bounded time to drain, then everything left is terminated → killed.

Children run as ``python -m stream <role> -`` with the config (secrets expanded) written to
their stdin, never on the command line where ``ps`` would show it.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time

from stream.config import StreamConfig
from stream.runtime import spawn_role, stop_process

log = logging.getLogger(__name__)


def run_all(cfg: StreamConfig, stop: threading.Event, log_level: str = "INFO") -> int:
    """Run the whole deployment until the sources end (files) or ``stop`` is set.

    Returns:
        0 when every stream ended normally, 2 if a capture failed (bad source), 1 if the
        sink failed or every worker died.
    """
    cfg_json = cfg.model_dump_json()
    common = ["--log-level", log_level]
    sink = spawn_role(["sink", "-", *common], cfg_json, "sink")
    workers: list[subprocess.Popen[bytes]] = []
    captures: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i in range(cfg.workers.count):
            workers.append(spawn_role(["worker", "-", "--name", f"worker-{i}", *common],
                                      cfg_json, f"worker-{i}"))
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
        if sink.poll() is None and captures_done_at is None:
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
    failed = {sid: p.returncode for sid, p in captures.items() if p.returncode not in (0, None,
                                                                                     -15)}
    if failed:
        log.error("capture failed for %s", ", ".join(f"{k} (exit {v})" for k, v in
                                                      failed.items()))
        code = code or 2
    if sink_code not in (0, -15):
        code = code or 1
    return code
