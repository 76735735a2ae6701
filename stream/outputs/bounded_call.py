"""Blocking library calls with a deadline: run on a thread of their own, abandoned if late.

Why: FFmpeg's RTSP muxer writes to its TCP socket with no timeout (PyAV's ``timeout``
covers opening and reading, not muxing; the RTSP ``timeout`` option is not applied to a
publisher's socket). A server that stops reading (frozen, or a network path that silently
drops everything) makes ``mux`` block until the kernel gives up on the connection, many
minutes later. Measured: a SIGSTOPped receiver blocked a 720p publisher for as long as it
was stopped. PyAV releases the GIL while it blocks, so the rest of the process runs; only
the caller would wait. Running the calls here bounds the caller's wait; a call that
overruns leaves its thread blocked (a daemon thread: it never delays the process's exit)
and the caller moves on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class BoundedCaller:
    """One thread that runs the calls handed to :meth:`call`, one at a time, in order.

    Args:
        name: the thread's name (for ``py-spy``, logs).
    """

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._last = False
        self._done = 0  # calls finished
        self._given = 0  # calls handed over
        self._error: BaseException | None = None
        self._pending_last: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def hung(self) -> bool:
        """A call handed over has not returned (it overran its deadline, or runs now)."""
        with self._cond:
            return self._done < self._given

    def call(self, job: Callable[[], None], timeout_s: float) -> None:
        """Run ``job`` on the thread and wait for it at most ``timeout_s``.

        Raises:
            TimeoutError: ``job`` has not returned in time (it goes on running; later calls
                are refused while it does).
            Exception: what ``job`` raised.
        """
        with self._cond:
            if self._done < self._given:
                raise TimeoutError("an earlier call has not returned")
            if self._last:
                raise RuntimeError("finished")
            self._job, self._error = job, None
            self._given += 1
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._done == self._given, timeout_s):
                raise TimeoutError(f"no answer within {timeout_s:g} s")
            error, self._error = self._error, None
        if error is not None:
            raise error

    def finish(self, last: Callable[[], None], wait_s: float) -> None:
        """Run ``last`` (e.g. a close) after any call still running, then end the thread;
        wait at most ``wait_s`` for that. Never raises: ``last`` must handle its errors."""
        with self._cond:
            if self._last:
                return
            self._last = True
            pending = self._done < self._given
            self._pending_last = last
            if not pending:
                self._job = last
                self._given += 1
            self._cond.notify_all()
        self._thread.join(wait_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None)
                job, self._job = self._job, None
            assert job is not None
            error: BaseException | None = None
            try:
                job()
            except BaseException as exc:  # handed back to the caller
                error = exc
            with self._cond:
                self._done += 1
                self._error = error
                self._cond.notify_all()
                if self._last:
                    if job is self._pending_last:
                        return
                    # The call that overran returned at last: now the closing call.
                    self._job = self._pending_last
                    self._given += 1
