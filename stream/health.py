"""Health of a role process: a heartbeat file the role keeps fresh, and ``stream health``.

Orchestrators ask "is this process alive, and is it doing its job?" (Kubernetes liveness
and readiness probes, Docker's HEALTHCHECK, a monitoring script next to systemd). A role
answers through a small JSON file in a run directory that nothing else writes:

- a thread of the role rewrites ``<run dir>/<role>-<pid>.json`` every second: a process
  that died (even ``kill -9``) or is frozen stops rewriting it;
- the role's own loop calls :func:`beat` each turn (one line in the loop, no I/O: it only
  stores a timestamp the thread writes out), so a loop that wedged shows as ``loop_ts``
  going old while the process still looks alive.

``stream health --role ROLE`` reads the files of that role and exits 0 (healthy) or 1 (not,
with one line saying why): no file, a file that stopped being rewritten, a loop that stopped
turning. Files of processes that are gone (same host and PID namespace, no such PID) are
ignored, so a role killed with ``-9`` shows as "no ROLE running" at once, not after the
age limit. Exit 1 for every failure because Docker reserves exit 2 for HEALTHCHECK.

The run directory is ``$STREAM_RUN_DIR``, else ``$XDG_RUNTIME_DIR/stream``, else
``/tmp/stream-<uid>`` (made 0700, and refused if another user owns it). A role that cannot
write there logs one warning and runs on without a heartbeat: health is never a reason
to stop working.

File format (version 1): ``{"v": 1, "role", "name", "pid", "host", "pidns", "ts",
"loop_ts", "started"}``; times are Unix seconds, ``loop_ts`` null until the loop first beats.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_DIR_ENV = "STREAM_RUN_DIR"
ROLES = ("sink", "capture", "worker")
INTERVAL_S = 1.0
"""How often the heartbeat file is rewritten."""

MAX_AGE_S = 10.0
"""Default for ``--max-age``: a file older than this means the process is dead or frozen."""

MAX_LOOP_AGE_S: dict[str, float] = {"sink": 30.0, "worker": 30.0, "capture": 120.0}
"""Default for ``--max-loop-age`` per role. A capture's loop may wait out a camera's
reconnect backoff (up to 30 s) plus an open attempt, so it gets more."""


def run_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where heartbeat files go (see the module docstring), read from ``env`` when called."""
    env = os.environ if env is None else env
    if env.get(RUN_DIR_ENV):
        return Path(env[RUN_DIR_ENV])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "stream"
    return _tmp_default()


def _tmp_default() -> Path:
    return Path("/tmp") / f"stream-{os.getuid()}"


def _pid_namespace() -> str:
    """The PID namespace of this process (``pid:[4026531836]``), "" where /proc has none."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:64]


class Heartbeat:
    """Keeps ``<directory>/<role>-<pid>.json`` fresh from a thread of its own.

    Args:
        directory: the run directory (made if missing, 0700).
        role: sink, capture or worker.
        name: the role's own name (source id, worker name), shown by ``stream health``.
    """

    def __init__(self, directory: Path, role: str, name: str,
                 interval_s: float = INTERVAL_S) -> None:
        self.directory = directory
        self.role = role
        self.name = name
        self.interval_s = interval_s
        self.pid = os.getpid()
        self.path = directory / f"{role}-{self.pid}.json"
        self.loop_ts: float | None = None
        self._started = time.time()
        self._host = socket.gethostname()
        self._pidns = _pid_namespace()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """The role's loop turned (called every turn: a float store, no I/O)."""
        self.loop_ts = time.time()

    def write(self) -> None:
        """Write the file atomically (a reader never sees half of it)."""
        record = {"v": 1, "role": self.role, "name": self.name, "pid": self.pid,
                  "host": self._host, "pidns": self._pidns, "ts": time.time(),
                  "loop_ts": self.loop_ts, "started": self._started}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, self.path)

    def start(self) -> None:
        """Prepare the directory, write once, then rewrite every ``interval_s``.

        Raises:
            OSError: the directory cannot be made or written, or another user owns it.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self.directory.stat().st_uid
        # Only the shared /tmp default could have been made by someone else to catch our
        # files; a directory named by STREAM_RUN_DIR (an emptyDir, a tmpfs owned by root)
        # is trusted as given.
        if self.directory == _tmp_default() and owner != os.getuid():
            raise PermissionError(f"{self.directory} belongs to uid {owner}, not to us")
        self.write()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failed = False
        while not self._stop.wait(self.interval_s):
            try:
                self.write()
                failed = False
            except OSError as exc:
                if not failed:  # once per outage, not every second
                    log.warning("heartbeat: cannot write %s: %s", self.path, exc)
                failed = True

    def stop(self) -> None:
        """Stop rewriting and remove the file (a role that ended is not running)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * self.interval_s)
        self.path.unlink(missing_ok=True)


_current: Heartbeat | None = None


def beat() -> None:
    """Tell the heartbeat this process's loop turned; nothing when no heartbeat runs.

    The one line a role's loop needs (``health.beat()``); cheap enough for every turn.
    """
    hb = _current
    if hb is not None:
        hb.beat()


@contextmanager
def heartbeat(role: str, name: str, directory: Path | None = None) -> Iterator[Heartbeat | None]:
    """Run a :class:`Heartbeat` for this process while the block runs (``stream <role>``).

    Yields the heartbeat, or None when the run directory is unusable (logged once: the role
    runs on without one).
    """
    global _current
    hb = Heartbeat(run_dir() if directory is None else directory, role, name)
    try:
        hb.start()
    except OSError as exc:
        log.warning("no heartbeat for `stream health` (%s): set %s to a writable directory",
                    exc, RUN_DIR_ENV)
        yield None
        return
    _current = hb
    try:
        yield hb
    finally:
        _current = None
        hb.stop()


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class Verdict:
    """What ``stream health`` found: healthy or not, and one line saying why."""

    healthy: bool
    message: str


def _gone(record: Mapping[str, Any]) -> bool:
    """True when the file's process provably no longer exists (same host and namespace)."""
    if record.get("host") != socket.gethostname() or record.get("pidns") != _pid_namespace():
        return False  # another machine or container: only the file's age can tell
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user
        return False
    try:  # a zombie (killed, not yet reaped by its parent) is gone too
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def read_records(directory: Path, role: str) -> list[dict[str, Any]]:
    """Every readable heartbeat record of ``role`` in ``directory`` (unreadable ones are
    skipped: a file being replaced is read again at the next probe)."""
    records = []
    for path in sorted(directory.glob(f"{role}-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("role") == role:
            records.append(record)
    return records


def check(directory: Path, role: str, name: str | None = None, *,
          max_age_s: float = MAX_AGE_S, max_loop_age_s: float | None = None,
          now: float | None = None) -> Verdict:
    """Healthy when at least one process of ``role`` (named ``name``, if given) is running
    and every such process keeps its file fresh and its loop turning.

    Args:
        max_age_s: the file must have been rewritten within this many seconds.
        max_loop_age_s: the loop must have beaten within this many seconds (once it has
            beaten at all); None = the role's default (:data:`MAX_LOOP_AGE_S`).
        now: Unix time (tests pass their own).
    """
    now = time.time() if now is None else now
    loop_limit = MAX_LOOP_AGE_S[role] if max_loop_age_s is None else max_loop_age_s
    if not directory.is_dir():
        return Verdict(False, f"no {role} running: {directory} does not exist (is the role "
                              f"started with the same {RUN_DIR_ENV}?)")
    records = [r for r in read_records(directory, role) if name is None or r.get("name") == name]
    alive = [r for r in records if not _gone(r)]
    what = role if name is None else f"{role} {name!r}"
    if not alive:
        gone = f" ({len(records)} ended without cleaning up)" if records else ""
        return Verdict(False, f"no {what} running in {directory}{gone}")
    lines = []
    for r in alive:
        who = f"{role} {r.get('name')!s} (pid {r.get('pid')})"
        age = now - float(r.get("ts") or 0.0)
        if age > max_age_s:
            return Verdict(False, f"{who}: no heartbeat for {age:.1f} s (limit {max_age_s:g} s):"
                                  " the process is frozen or gone")
        loop_ts = r.get("loop_ts")
        if loop_ts is not None and now - float(loop_ts) > loop_limit:
            return Verdict(False, f"{who}: its loop has not turned for {now - loop_ts:.1f} s "
                                  f"(limit {loop_limit:g} s): it is stuck")
        loop = "loop not started yet" if loop_ts is None else f"loop {now - loop_ts:.1f} s ago"
        lines.append(f"{who}: heartbeat {age:.1f} s ago, {loop}")
    return Verdict(True, "; ".join(lines))


def cmd_health(args: argparse.Namespace) -> int:
    """``stream health``: print the verdict; exit 0 healthy, 1 not."""
    directory = Path(args.dir) if args.dir else run_dir()
    verdict = check(directory, args.role, args.name, max_age_s=args.max_age,
                    max_loop_age_s=args.max_loop_age)
    print(("healthy: " if verdict.healthy else "unhealthy: ") + verdict.message,
          file=sys.stdout if verdict.healthy else sys.stderr)
    return 0 if verdict.healthy else 1


def add_health_parser(sub: Any) -> None:
    """Register ``stream health`` on the CLI's subparsers."""
    p = sub.add_parser(
        "health", help="exit 0 if a role process on this machine is alive and working",
        description="Check the heartbeat of a role process running on this machine (or in "
                    "this container): exit 0 when it is alive and its loop turns, 1 when "
                    "not (one line says why). For Kubernetes exec probes, Docker "
                    "HEALTHCHECK and monitoring scripts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  stream health --role worker                 any worker here, default limits\n"
               "  stream health --role capture --name gate    the capture of source 'gate'\n"
               "  stream health --role sink --max-age 5       stricter (a readiness probe)\n"
               f"\nThe roles write their heartbeat in ${RUN_DIR_ENV} (default "
               "$XDG_RUNTIME_DIR/stream, else /tmp/stream-UID): run the check with the same.")
    p.add_argument("--role", required=True, choices=ROLES, help="which role to check")
    p.add_argument("--name", help="only the process of this name (source id, worker --name)")
    p.add_argument("--dir", metavar="DIR", help=f"run directory (default ${RUN_DIR_ENV}, ...)")
    p.add_argument("--max-age", type=float, default=MAX_AGE_S, metavar="S",
                   help=f"heartbeat older than S seconds = frozen or gone (default {MAX_AGE_S:g})")
    p.add_argument("--max-loop-age", type=float, default=None, metavar="S",
                   help="loop not turned for S seconds = stuck (default: sink 30, worker 30, "
                        "capture 120)")
    p.set_defaults(func=cmd_health)
