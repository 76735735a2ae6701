"""PURE: per-stream join, reorder, timeouts, sessions and accounting for the sink.

No sockets, no threads, no clock of its own: every call takes ``now`` (monotonic seconds),
so each rule is tested exactly. Each stream keeps a small table keyed by ``seq`` and
releases entries strictly in ``seq`` order (invariant 2). An entry is complete when its
``Frame`` (a stamp, or the full image: they travel on different sockets, so the image may
come after the result) and its ``Result`` or ``Drop`` are both in::

    frame + result   → labelled
    frame + drop     → dropped with the capture's reason (the frame is still shown)
    frame, no result → after ``timeout_s``: dropped as ``worker_lost``
    result, no frame → after ``timeout_s``: labelled without a frame (nothing to draw)
    no entry at all  → after ``timeout_s`` with a later seq (or the eos) known: ``lost``

A lossless stream (``policy: wait``: files) never times out an entry that is waiting for
its frame, its result or its drop: its capture sends one ``Frame`` per seq, re-sends the
tasks of a lost worker and drops frames itself when it must. Results that come after
their seq was released are counted as ``late``, frames as ``late_frames``.

Every stream is its own :class:`StreamOrder`: it joins, times out, restarts and releases
without looking at any other stream. A ``Hello`` whose seq goes back (or that follows an
eos) starts a new *session* of that one stream: the old session's pending entries are
released as ``capture_restarted`` and nothing of any other stream is touched.

Accounting: ``labelled + sum(dropped)`` counts what this sink resolved; ``captured`` comes
only from the capture's own count in its ``Eos`` (``frames`` minus the seq where this sink
began), and is ``None`` while any session of the stream has not sent one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from stream.protocol import Drop, Eos, Frame, Hello, Result
from stream.sink.announcements import Announcements
from stream.sink.stats import Session, StreamStats

MAX_AHEAD = 100_000
"""A seq this far past the next one expected is refused as bogus (another deployment?)."""


class Refused(ValueError):
    """A message the ordering will not take (counted and logged by the caller, never fatal)."""


@dataclass(frozen=True)
class Outcome:
    """What became of one seq (or of a gap of ``count`` seqs whose stamps never came).

    Exactly one of ``result`` (labelled) and ``reason`` (dropped) is set.
    """

    stream: str
    session: int
    seq: int
    frame: Frame | None
    result: Result | None
    reason: str | None
    count: int = 1


@dataclass(frozen=True)
class SessionEnded:
    """A session of ``stream`` is over: drained after its eos, or its capture restarted."""

    stream: str
    session: int
    restarted: bool


Released = Outcome | SessionEnded


@dataclass
class _Entry:
    seen: float
    frame: Frame | None = None
    result: Result | None = None
    drop: str | None = None


class StreamOrder:
    """Join, reorder, time out and account one stream (all its sessions)."""

    def __init__(self, stream: str, timeout_s: float) -> None:
        self.stream = stream
        self.timeout_s = timeout_s
        self.next_seq = 0
        self.pending: dict[int, _Entry] = {}
        self.synced = False  # next_seq set from the first stamp or hello this sink saw
        self.eos_at = 0.0
        self.closed = False  # the current session has been drained and reported ended
        self.told = Announcements()
        self.stats = StreamStats(sessions=[Session(1, 0)])

    @property
    def session(self) -> Session:
        """The current session."""
        return self.stats.sessions[-1]

    @property
    def eos(self) -> Eos | None:
        """The current session's end-of-stream, if it came."""
        return self.session.eos

    @property
    def done(self) -> bool:
        """The current session sent its eos and every seq up to it was released."""
        eos = self.eos
        return eos is not None and self.next_seq >= eos.frames

    @property
    def hello(self) -> Hello | None:
        """The current session's hello, if it came."""
        return self.told.hello

    @property
    def lossless(self) -> bool:
        """A ``wait``-policy stream: its capture re-sends or drops frames itself."""
        return self.hello is not None and self.hello.policy == "wait"

    def _sync(self, seq: int) -> None:
        # A sink (re)started mid-stream begins where the stream is, instead of declaring
        # every earlier seq lost.
        if not self.synced:
            self.synced = True
            self.next_seq = self.session.first_seq = min([seq, *self.pending])

    def take(self, msg: Frame | Result | Drop, now: float) -> None:
        """Fold a frame, result or drop into the table.

        Raises:
            Refused: the seq is more than :data:`MAX_AHEAD` past the next one expected.
        """
        if not isinstance(msg, Result):
            self._sync(msg.seq)
        base = self.next_seq if self.synced or not self.pending else min(self.pending)
        if msg.seq > base + MAX_AHEAD or (not self.synced and len(self.pending) >= MAX_AHEAD):
            raise Refused(f"{msg.stream} seq {msg.seq} is more than {MAX_AHEAD} ahead of "
                          f"{base}: another deployment on this port?")
        if msg.seq < self.next_seq:
            if isinstance(msg, Result):
                self.stats.late += 1
            elif isinstance(msg, Frame) and msg.image is not None:
                self.stats.late_frames += 1
            return
        self.told.saw(msg, now)
        e = self.pending.get(msg.seq)
        if e is None:
            e = self.pending[msg.seq] = _Entry(seen=now)
        if isinstance(msg, Frame):
            # A second stamp for a known seq (capture re-sent the task to another worker)
            # restarts the entry's clock; an image is never replaced by a stamp.
            e.seen = now
            if e.frame is None or msg.image is not None:
                e.frame = msg
        elif isinstance(msg, Result):
            e.result = msg
        else:
            e.drop = msg.reason

    def take_hello(self, msg: Hello, now: float) -> list[Released]:
        """A capture (re)started this stream; a restart ends the old session first."""
        out: list[Released] = []
        restart = self.synced and self.told.restarted_by(
            msg, self.session.first_seq, self.next_seq, self.eos is not None)
        if restart:
            out = self.release(now, force="capture_restarted")
            if not self.closed:
                out.append(SessionEnded(self.stream, self.session.number, restarted=True))
            self.stats.sessions.append(Session(self.session.number + 1, msg.seq))
            self.next_seq = msg.seq
            self.pending.clear()
            self.closed = False
        self.told.announce(msg)
        self.session.announced = msg.total_frames
        self._sync(msg.seq)
        return out

    def take_eos(self, msg: Eos, now: float) -> None:
        """The capture's own count of the seqs it issued in this session."""
        self.session.eos, self.eos_at = msg, now

    def take_counters(self, counters: Mapping[str, int]) -> None:
        """Keep the capture's last running counters (from its status messages)."""
        self.stats.counters = dict(counters)

    def _next_known(self, seq: int) -> int | None:
        """The first seq after ``seq`` the sink knows of (a pending entry, or the eos end)."""
        later = [s for s in self.pending if s > seq]
        if later:
            return min(later)
        eos = self.eos
        return eos.frames if eos is not None and seq < eos.frames else None

    def _known_since(self, seq: int) -> float | None:
        """When the sink first learned that ``seq`` exists (a later seq or eos arrived)."""
        times = [e.seen for s, e in self.pending.items() if s > seq]
        eos = self.eos
        if eos is not None and seq < eos.frames:
            times.append(self.eos_at)
        return min(times) if times else None

    def _waits(self, e: _Entry, now: float) -> bool:
        """Whether an incomplete entry at the head still waits (no ``force``)."""
        if self.lossless:
            return True  # its capture sends every frame, result or drop: never give up
        return now - e.seen < self.timeout_s

    def release(self, now: float, force: str | None = None) -> list[Released]:
        """Everything of this stream that is ready, in seq order (with ``force``, every
        pending seq up to the last one known, dropped as ``force`` if unresolved)."""
        out: list[Released] = []
        if not self.synced:
            # Only results so far (no hello, no frame): nothing to order them against.
            # Forced out, they count as late: results for frames this sink never saw.
            if force is not None:
                self.stats.late += len(self.pending)
                self.pending.clear()
            return out
        if force is None and self.told.awaits_hello(now, self.timeout_s):
            return out
        session = self.session.number
        while not self.done:
            seq = self.next_seq
            e = self.pending.get(seq)
            if e is None:
                # Seqs whose stamps never came: give up on the whole gap at once, when a
                # later seq (or the eos) has been known for the timeout.
                since, nxt = self._known_since(seq), self._next_known(seq)
                if since is None or nxt is None or (force is None and
                                                    now - since < self.timeout_s):
                    break  # nothing later is known (no eos: the stream goes on)
                out.append(Outcome(self.stream, session, seq, None, None, force or "lost",
                                   nxt - seq))
                self._count(None, force or "lost", nxt - seq, now)
                self.next_seq = nxt
                continue
            complete = e.frame is not None and (e.result is not None or e.drop is not None)
            if not complete and force is None and self._waits(e, now):
                break
            if e.drop is not None:
                reason: str | None = e.drop
            elif e.result is not None:
                reason = None  # labelled, even if its frame never came (the label did)
            else:
                reason = force or "worker_lost"
            result = e.result if reason is None else None
            out.append(Outcome(self.stream, session, seq, e.frame, result, reason))
            self._count(result, reason, 1, now)
            del self.pending[seq]
            self.next_seq = seq + 1
        if self.done and not self.closed:
            self.closed = True
            out.append(SessionEnded(self.stream, session, restarted=False))
        return out

    def _count(self, result: Result | None, reason: str | None, n: int, now: float) -> None:
        if reason is None:
            self.stats.labelled += n
        else:
            self.stats.dropped[reason] += n
        self.stats.first_t = now if self.stats.first_t is None else self.stats.first_t
        self.stats.last_t = now


class Ordering:
    """Every stream's :class:`StreamOrder`, created on first sight of a stream id."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.streams: dict[str, StreamOrder] = {}

    def stream(self, stream: str) -> StreamOrder:
        """The stream's state (made on first use)."""
        st = self.streams.get(stream)
        if st is None:
            st = self.streams[stream] = StreamOrder(stream, self.timeout_s)
        return st

    def handle(self, msg: Frame | Result | Drop | Hello | Eos, now: float) -> list[Released]:
        """Fold one message in; returns what a new session forced out (else nothing).

        Raises:
            Refused: a bogus seq (see :meth:`StreamOrder.take`).
        """
        st = self.stream(msg.stream)
        if isinstance(msg, Hello):
            return st.take_hello(msg, now)
        if isinstance(msg, Eos):
            st.take_eos(msg, now)
        else:
            st.take(msg, now)
        return []

    def release(self, now: float, force: str | None = None) -> list[Released]:
        """What every stream has ready, stream by stream, each in seq order."""
        out: list[Released] = []
        for st in self.streams.values():
            out.extend(st.release(now, force))
        return out

    def finished(self, expected: tuple[str, ...]) -> bool:
        """Every expected stream sent its eos and was drained (False if none expected)."""
        return bool(expected) and all(
            s in self.streams and self.streams[s].done for s in expected)

    def all_drained(self) -> bool:
        """Every stream seen so far is done (and there is at least one)."""
        return bool(self.streams) and all(st.done for st in self.streams.values())
