"""One sink output on its own thread behind a bounded queue, dropping and counting its own frames.

The sink offers every released frame to every output through an :class:`OutputRunner`.
The runner keeps the output's slowness and failures to itself:

- ``offer(frame, wait=False)`` never blocks: when the output is ``queue_size`` frames
  behind, the frame is dropped and counted ``queue_full`` (live streams);
  ``offer(frame, wait=True)`` waits for room instead (files: every frame is promised).
- A ``write`` that raises is counted ``failed`` and reported ONCE per stream and session
  through :meth:`OutputRunner.take_errors`. When the output says ``retry_after_error =
  False`` (a file on a full disk), the rest of that stream's frames are counted ``failed``
  without being queued, until :meth:`OutputRunner.end_stream`: the next session starts fresh.
- ``end_stream`` is a control item queued behind the stream's frames, outside the frame
  bound, so it never blocks and is never dropped.

Per stream, ``written + queue_full + failed`` equals the frames offered once the runner is
closed (a frame still inside a ``write`` that never returned by ``close``'s deadline is the
one exception, and ``close`` reports it).
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

from stream.outputs.base import Output, OutputFrame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    """A queued frame (``frame`` set) or a stream's end (``frame`` None), or the close mark.

    ``generation`` counts the ``end_stream`` calls for the stream before this item was
    queued: a failure blocks only the items of its own generation and session.
    """

    stream: str
    generation: int
    frame: OutputFrame | None = None
    close: bool = False


class OutputRunner:
    """One Output on its own thread behind a bounded queue.

    Args:
        output: the output; its methods are only ever called from the runner's thread.
        queue_size: frames that may wait for the output (besides the one it is writing)
            before ``offer(wait=False)`` drops.
    """

    def __init__(self, output: Output, queue_size: int = 8) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.output = output
        self.queue_size = queue_size
        self._cond = threading.Condition()
        self._items: collections.deque[_Item] = collections.deque()
        self._frames_queued = 0
        self._counts: dict[str, collections.Counter[str]] = {}
        self._generation: dict[str, int] = {}
        self._failed: dict[str, tuple[int, int]] = {}  # stream -> (generation, session)
        self._reported: set[tuple[str, int]] = set()  # (stream, generation) already reported
        self._errors: list[tuple[str, str]] = []
        self._open: set[str] = set()  # streams with frames queued since their last end
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"output-{output.name}",
                                        daemon=True)

    def start(self) -> None:
        """Start the output's thread."""
        self._thread.start()

    # -- the sink's side ------------------------------------------------------------------

    def offer(self, frame: OutputFrame, wait: bool) -> bool:
        """Queue a frame for the output.

        Args:
            frame: the released frame (its image is read-only and shared by every output).
            wait: True blocks until there is room (lossless streams); False drops the frame
                when ``queue_size`` frames are already waiting.

        Returns:
            True if queued; False if dropped: counted ``queue_full`` (the queue was full) or
            ``failed`` (this stream's output failed in this session, or the runner closed).
        """
        with self._cond:
            gen = self._generation.get(frame.stream, 0)
            counts = self._counts.setdefault(frame.stream, collections.Counter())
            if self._closing or self._failed.get(frame.stream) == (gen, frame.session):
                counts["failed"] += 1
                return False
            if self._frames_queued >= self.queue_size:
                if not wait:
                    counts["queue_full"] += 1
                    return False
                while self._frames_queued >= self.queue_size and not self._closing:
                    self._cond.wait()
                if self._closing or self._failed.get(frame.stream) == (gen, frame.session):
                    counts["failed"] += 1
                    return False
            self._items.append(_Item(frame.stream, gen, frame))
            self._frames_queued += 1
            self._open.add(frame.stream)
            self._cond.notify_all()
            return True

    def end_stream(self, stream: str) -> None:
        """The stream's session ended: the output finishes it after the frames queued so far.

        Never blocks and is never dropped. Frames offered after this call belong to the next
        session and are written again even if this session's output failed.
        """
        with self._cond:
            gen = self._generation.get(stream, 0)
            self._generation[stream] = gen + 1
            self._open.discard(stream)
            if not self._closing:
                self._items.append(_Item(stream, gen))
                self._cond.notify_all()

    def take_errors(self) -> list[tuple[str, str]]:
        """(stream, message) for each error reported since the last call, oldest first.

        A stream's first failure in a session is reported, later ones are only counted. An
        error of ``close`` that belongs to no stream is reported with stream ``""``.
        """
        with self._cond:
            errors, self._errors = self._errors, []
            return errors

    def depth(self) -> int:
        """Frames waiting in the queue now (of every stream; at most ``queue_size``)."""
        with self._cond:
            return self._frames_queued

    def counts(self, stream: str) -> collections.Counter[str]:
        """A copy of the stream's counters: ``written``, ``queue_full``, ``failed``."""
        with self._cond:
            return collections.Counter(self._counts.get(stream, ()))

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, end the streams still open, close the output, join.

        Bounded by ``timeout_s``: if the output does not finish in time (a write that hangs),
        the frames still queued are counted ``failed``, an error is reported, and the
        (daemon) thread is left behind rather than hanging the sink.
        """
        with self._cond:
            if self._closing:
                return
            for stream in sorted(self._open):
                self._items.append(_Item(stream, self._generation.get(stream, 0)))
            self._open.clear()
            self._items.append(_Item("", 0, close=True))
            self._closing = True
            self._cond.notify_all()
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()  # never started: still drain, so counts add up
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            return
        with self._cond:
            left = 0
            while self._items:
                item = self._items.popleft()
                if item.frame is not None:
                    self._counts[item.stream]["failed"] += 1
                    left += 1
            self._frames_queued = 0
            self._errors.append(("", f"output {self.output.name} did not finish within "
                                     f"{timeout_s:g} s; {left} queued frames not written"))
        log.error("output %s did not finish within %g s", self.output.name, timeout_s)

    # -- the output's thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    if self._closing:  # close gave up on us and took the queue: done
                        return
                    self._cond.wait()
                item = self._items.popleft()
                if item.frame is not None:
                    self._frames_queued -= 1  # room for the next: the bound is frames waiting
                    self._cond.notify_all()
            if item.close:
                self._call_close()
                return
            if item.frame is None:
                self._call_end(item)
            else:
                self._call_write(item, item.frame)

    def _call_write(self, item: _Item, frame: OutputFrame) -> None:
        with self._cond:
            blocked = self._failed.get(item.stream) == (item.generation, frame.session)
        ok = False
        error: Exception | None = None
        if not blocked:
            try:
                self.output.write(frame)
                ok = True
            except Exception as exc:  # any output error is this output's, never the sink's
                error = exc
        with self._cond:
            counts = self._counts[item.stream]
            counts["written" if ok else "failed"] += 1
            if error is not None:
                self._report(item.stream, item.generation, error)
                if not self.output.retry_after_error:
                    self._failed[item.stream] = (item.generation, frame.session)
            elif ok and self.output.retry_after_error:
                # A peer that came back: its next outage is news again.
                self._reported.discard((item.stream, item.generation))

    def _call_end(self, item: _Item) -> None:
        error: Exception | None = None
        try:
            self.output.end_stream(item.stream)
        except Exception as exc:
            error = exc
        with self._cond:
            if error is not None:
                self._report(item.stream, item.generation, error)
            if self._failed.get(item.stream, (-1, 0))[0] == item.generation:
                del self._failed[item.stream]
            self._reported.discard((item.stream, item.generation))

    def _call_close(self) -> None:
        try:
            self.output.close()
        except Exception as exc:
            with self._cond:
                self._errors.append(("", f"output {self.output.name}: {exc}"))
            log.error("output %s: close failed: %s", self.output.name, exc)

    def _report(self, stream: str, generation: int, error: Exception) -> None:
        """Record the stream's first error of this session (caller holds the lock)."""
        if (stream, generation) in self._reported:
            return
        self._reported.add((stream, generation))
        message = str(error) or type(error).__name__
        self._errors.append((stream, message))
        log.error("output %s, stream %s: %s", self.output.name, stream, message)

