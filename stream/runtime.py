"""Process lifecycle shared by every role: logging, stop flag, signal handlers, children.

One recipe everywhere (STYLE.md habit 8): SIGTERM and SIGINT set a stop event that the
role's loop polls; a parent stops its children with terminate → wait(timeout) → kill; end
of stream is an explicit message sent in ``finally``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from types import FrameType

from stream.config.redact import redact_url

log = logging.getLogger(__name__)


class _RedactingFormatter(logging.Formatter):
    """Formats like a normal formatter, then removes credentials from any URL in the line."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when made.

    ``stream.cli.main`` can run more than once in a process (tests, embedding): a handler
    bound to an earlier, since closed, stderr would fail on every line.
    """

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(role: str, level: str | int = "INFO") -> None:
    """Log to stderr with the role name on every line; credentials are always redacted."""
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(
        _RedactingFormatter(f"%(asctime)s {role}[%(process)d] %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def install_stop_handlers(stop: threading.Event) -> None:
    """Make SIGTERM and SIGINT set ``stop`` (a second signal exits at once)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(130)
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def stop_process(proc: subprocess.Popen[bytes], name: str, timeout: float = 5.0) -> int | None:
    """terminate → wait(timeout) → kill; returns the exit code (None if it never ended)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killing it", name, timeout)
            proc.kill()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode


def spawn_role(argv: Sequence[str], config_json: str, name: str,
               pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """Start ``python -m stream <argv>`` with the config on its stdin (never on argv/env).

    Children get their own session, so a Ctrl-C on the terminal reaches only the parent,
    which then stops them in order (captures first, so the sink can drain). ``pass_fds``
    stay open in the child under the same numbers (the sink's ``--ready-fd`` pipe).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", *argv],
        stdin=subprocess.PIPE,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    assert proc.stdin is not None
    proc.stdin.write(config_json.encode())
    proc.stdin.close()
    log.debug("started %s (pid %d)", name, proc.pid)
    return proc


def signal_ready(fd: int | None) -> None:
    """Tell the process that started this role that its sockets are bound: one line on the
    pipe it passed (``--ready-fd``), then close it. No pipe (a role started by hand): nothing.

    A parent that is already gone is not an error: the role carries on.
    """
    if fd is None:
        return
    try:
        os.write(fd, b"ready\n")
    except OSError as exc:
        log.debug("could not say ready on fd %d: %s", fd, exc)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def wait_ready(proc: subprocess.Popen[bytes], fd: int, stop: threading.Event,
               timeout_s: float) -> str:
    """Wait until the child ``proc`` says ready on the pipe ``fd`` (see :func:`signal_ready`).

    Returns ``"ready"``; ``"exited"`` when the pipe closed without it (the child ended, e.g.
    it could not bind); ``"stopped"`` when ``stop`` was set; ``"timeout"`` after
    ``timeout_s``. Closes ``fd`` in every case.
    """
    deadline = time.monotonic() + timeout_s
    try:
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            # The child's own exit is checked too: a process it started could hold the pipe.
            exited = proc.poll() is not None
            readable, _, _ = select.select([fd], [], [], 0 if exited else min(0.2, left))
            if readable:
                return "ready" if os.read(fd, 64) else "exited"
            if exited:
                return "exited"
        return "stopped"
    finally:
        os.close(fd)


def watch_parent(stop: threading.Event, interval_s: float = 0.5) -> None:
    """Set ``stop`` if the process that started us goes away (``stream run`` killed -9).

    Children run in their own session (so a terminal Ctrl-C reaches only the parent); this
    is what keeps them from outliving a parent that could not stop them itself.
    """
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(interval_s):
            if os.getppid() != parent:
                log.warning("the parent process (%d) is gone: stopping", parent)
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """A role's process CPU per frame in its steady state, start-up CPU apart.

    Start-up (imports, compiling the model, opening the source, the crop plan) costs a
    fixed amount of CPU once; divided over a short run it would swamp the per-frame figure.
    A role calls :meth:`first` once its first frame is handled (later calls do nothing),
    with how many frames it has counted by then, and :meth:`report` when it stops: the CPU
    used since :meth:`first` over the frames counted since, and the CPU used up to it.

    Args:
        cpu: CPU seconds this process has used so far (injected in tests).
    """

    def __init__(self, cpu: Callable[[], float] = cpu_seconds) -> None:
        self._cpu = cpu
        self.at_first: float | None = None  # CPU seconds when the first frame was handled
        self.frames_at_first = 0

    def first(self, frames: int = 1) -> None:
        """The first frame is handled (``frames``: the count so far, that frame included)."""
        if self.at_first is None:
            self.at_first = self._cpu()
            self.frames_at_first = frames

    def report(self, frames: int) -> str:
        """``process cpu X ms/frame over the N frames after the first (S s of CPU up to
        and including the first)`` for a total count of ``frames``; with no frame counted
        after the first, only the start-up CPU; with no first frame, ``""``."""
        if self.at_first is None:
            return ""
        now = self._cpu()
        first = "the first" if self.frames_at_first == 1 else f"the first {self.frames_at_first}"
        startup = f"{self.at_first:.2f} s of CPU up to and including {first}"
        after = frames - self.frames_at_first
        if after < 1:
            return f"process cpu: {startup}; too few frames for a per-frame figure"
        return (f"process cpu {1000 * (now - self.at_first) / after:.1f} ms/frame over the "
                f"{after} frames after {first} ({startup})")


class Rejections:
    """Counts messages a role refused and logs each kind once, never the whole flood.

    Invariant 4: bad input is counted and reported, never fatal, and a flood of it must not
    flood the log either. With a ``key`` (e.g. ``(peer, reason)``) the first refusal of each
    key is logged, so a misbehaving peer shows up once per reason while a second one is still
    noticed; without a key the first ten are logged. Every thousandth refusal is logged in
    any case, so a flood stays visible. At most :attr:`MAX_KEYS` keys are remembered (a peer
    could invent new ones without end); past that, only the thousandths are logged.

    Attributes:
        count: refusals so far, all keys together.
        by_key: refusals per key (only for calls that gave one).
    """

    MAX_KEYS = 1000

    def __init__(self, logger: logging.Logger) -> None:
        self.count = 0
        self.by_key: dict[Hashable, int] = {}
        self._log = logger
        self._unkeyed = 0

    def __call__(self, why: str, key: Hashable | None = None) -> None:
        """Count one refused message; ``why`` says what was wrong with it (no secrets)."""
        self.count += 1
        if key is None:
            self._unkeyed += 1
            first = self._unkeyed <= 10
        elif key in self.by_key:
            self.by_key[key] += 1
            first = False
        elif len(self.by_key) < self.MAX_KEYS:
            self.by_key[key] = 1
            first = True
        else:
            first = False
        if first or self.count % 1000 == 0:
            self._log.warning("rejected message #%d: %s", self.count, why)
