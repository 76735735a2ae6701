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

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from stream.protocol import Drop, Eos, Frame, Hello, Result

MAX_AHEAD = 100_000
"""A seq this far past the next one expected is refused as bogus (another deployment?)."""

LATENCY_SAMPLES = 100_000
"""Latency samples kept per stream for the percentiles (the most recent ones)."""


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
class Session:
    """One capture session of a stream as this sink saw it."""

    number: int
    first_seq: int  # the first seq this sink is responsible for
    eos: Eos | None = None
    announced: int | None = None  # the frame count its hello announced (files; an estimate)

    @property
    def captured(self) -> int | None:
        """Frames the capture issued from ``first_seq`` on, by its own count (eos)."""
        return None if self.eos is None else max(0, self.eos.frames - self.first_seq)


@dataclass
class StreamStats:
    """Per-stream totals over every session; ``labelled + sum(dropped) == captured`` once
    every session has drained and sent its eos."""

    labelled: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    late: int = 0  # results after their seq was released (or for frames never seen)
    late_frames: int = 0  # frames that came after their seq was released
    sessions: list[Session] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # capture's last status counters
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    first_t: float | None = None
    last_t: float | None = None

    @property
    def resolved(self) -> int:
        """Seqs released so far: labelled + dropped."""
        return self.labelled + sum(self.dropped.values())

    @property
    def captured(self) -> int | None:
        """The capture's own count over all sessions; None unless every one sent an eos."""
        counts = [s.captured for s in self.sessions]
        if not counts or any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    def fps(self) -> float:
        """Seqs released (labelled + dropped) per second, first release to last (0 until
        there is half a second of it: two frames a millisecond apart say nothing)."""
        if self.first_t is None or self.last_t is None or self.last_t - self.first_t < 0.5:
            return 0.0
        return (self.resolved - 1) / (self.last_t - self.first_t)

    def latency(self, q: float) -> float | None:
        """The q-th percentile of capture → publish latency (ms); None before any label."""
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self.latencies_ms, float), q))


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
        self.hello: Hello | None = None
        self.eos_at = 0.0
        self.closed = False  # the current session has been drained and reported ended
        self.control_max = -1  # highest seq of a stamp or drop since the last hello
        self.seen_since_hello = False  # a frame, result or drop came since the last hello
        self.first_seen: float | None = None  # when the sink first held a frame of it
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
        if self.first_seen is None:
            self.first_seen = now
        self.seen_since_hello = True
        if isinstance(msg, Drop) or (isinstance(msg, Frame) and msg.image is None):
            self.control_max = max(self.control_max, msg.seq)
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
        if self._restarted_by(msg):
            out = self.release(now, force="capture_restarted")
            if not self.closed:
                out.append(SessionEnded(self.stream, self.session.number, restarted=True))
            self.stats.sessions.append(Session(self.session.number + 1, msg.seq))
            self.next_seq = msg.seq
            self.pending.clear()
            self.closed = False
        self.hello = msg
        self.control_max = -1
        self.seen_since_hello = False
        self.session.announced = msg.total_frames
        self._sync(msg.seq)
        return out

    def _restarted_by(self, hello: Hello) -> bool:
        """Whether ``hello`` starts a new capture session rather than announcing this one.

        Full frames travel on the capture's video link, hello/stamps/drops on its control
        link, and the sink reads both in turn: a session's first full frames (and their
        labels) may come before its hello. So only what the control link said counts: a
        capture restarted when its seq went back behind a stamp or drop already seen since
        the last hello, behind what was released, or after the session's eos. A first
        hello is a restart only for a sink that joined mid-stream (seq behind where it
        joined).
        """
        if not self.synced:
            return False
        if self.hello is None:
            return hello.seq < self.session.first_seq
        # A capture process always starts at seq 0, and a live reconnect announces the next
        # seq (> 0 once it captured anything): seq 0 after frames of this session is a
        # restart even when all of them came as full frames and none was released yet.
        return (self.eos is not None or hello.seq <= self.control_max
                or hello.seq < self.next_seq or (hello.seq == 0 and self.seen_since_hello))

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

    def _awaits_hello(self, now: float) -> bool:
        """Hold a stream's first frames until its hello says what kind of stream it is.

        Full frames (video link) can come before the hello (control link); released
        before it, a file's frames would be treated as live ones (outputs not waited for,
        frames dropped). A stamp or drop means the hello was sent before it on the same
        link, so a sink that joined mid-stream (and will never see the hello) goes on at
        once; otherwise the hold ends after the reorder timeout.
        """
        if self.hello is not None or self.control_max >= 0:
            return False
        return self.first_seen is None or now - self.first_seen < self.timeout_s

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
        if self._awaits_hello(now) and force is None:
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
