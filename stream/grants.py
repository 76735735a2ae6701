"""The worker half of scheduling: credits per WORKER, granted one slot at a time, fairly.

A worker has ``requests`` infer requests and may hold ``requests + prefetch`` tasks in all,
whatever the number of captures it serves (the capture half, and the conversation, are in
:mod:`stream.dispatch`). :class:`GrantScheduler` keeps, per capture: how many frames it
said it has ready (``ready``), whether it is live, when its newest frame was made, the
grants it has not answered yet, and when it last sent a task. Whenever a slot is free it
grants ONE slot, in rounds: every ready capture once per round, so streams share the worker
evenly whatever their number. Within a round the capture with the freshest live frame goes
first (then the one served least recently): with several cameras, a request that frees
takes the frame that has waited least, not the next camera in a fixed order. A LIVE
capture is granted only when an infer request is free (held + granted < requests): its
frame is picked at that moment, the newest, and never waits in the worker behind another.
A lossless capture (files) may also fill the prefetch slots, so the requests never idle
between two frames of a file, except while a camera sharing the worker waits for its turn
(a file always ready would otherwise refill the prefetch slot for ever and keep it out).

How fresh a frame is comes from the capture's ``age_ms`` (how long the frame has been
ready there, after decoding, on its own clock) and the time this worker read the note: no
clocks are compared across machines, and the time a note spent on the wire or in the
socket queue is not counted (the same for every camera on a quiet link). A live capture
does not announce each new frame; its note also says how often a newer one comes
(``interval_ms``), so the newest frame's age at any later moment is worked out here: the
frame the note spoke of, plus as many intervals as have passed since (one note a
heartbeat keeps that in step with the camera). A capture that sends no age (an older
build) is ordered by when it was served last; for one that sends no interval (an older
build, which announces each frame, or a camera before its second frame) the last note's
age is used as it is.

A grant unanswered for :data:`GRANT_TIMEOUT_S` (the capture went away) is forgotten, so
its slot comes back. A task that arrives without a grant (a late answer, a confused peer) is
still run (the frame is real) and counted ``ungranted``; it takes a slot like any other.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

import zmq

from stream import transport
from stream.dispatch import HEARTBEAT_S
from stream.protocol import Credit, Ready
from stream.transport import Socket

GRANT_TIMEOUT_S = 2.0
"""A capture answers a grant within milliseconds; one silent this long is gone."""


class GrantScheduler:
    """Grants, done seqs and heartbeats of one worker towards every capture (index ``i``).

    One instance per worker, one DEALER socket per capture. Only the thread that owns the
    sockets may call it. The worker tells it when a task arrives (:meth:`received`) and
    when one finished (:meth:`done`); :meth:`flush` sends what is due.
    """

    def __init__(self, name: str, requests: int, prefetch: int, socks: Sequence[Socket],
                 clock: Callable[[], float] = time.monotonic, model: str = "") -> None:
        self.name = name
        self.model = model
        """The model identity every credit carries, so captures can refuse a mismatch."""
        self.requests = max(1, requests)
        self.capacity = self.requests + max(0, prefetch)
        self.socks = list(socks)
        self.clock = clock
        n = len(self.socks)
        self.held = 0
        """Tasks received and not finished (queued or running)."""
        self.ungranted = 0
        self._ready = [0] * n
        self._live = [False] * n
        self._newest: list[float | None] = [None] * n  # when its newest frame was made
        self._interval: list[float | None] = [None] * n  # seconds between its new frames
        self._round: set[int] = set()  # captures served in the current round
        # per capture: (time, its previous last-served time) of each unanswered grant
        self._grants: list[deque[tuple[float, float]]] = [deque() for _ in range(n)]
        self._last_served = [float("-inf")] * n
        self._done: list[list[int]] = [[] for _ in range(n)]
        self._last_beat: float | None = None

    @property
    def granted(self) -> int:
        """Slots granted and not answered yet."""
        return sum(len(g) for g in self._grants)

    def on_ready(self, i: int, msg: Ready) -> None:
        """Capture ``i`` says how many frames it has ready (and hands back grants)."""
        self._live[i] = msg.live
        self._newest[i] = (None if msg.age_ms is None or not msg.live
                           else self.clock() - msg.age_ms / 1000.0)
        self._interval[i] = (msg.interval_ms / 1000.0 if msg.live and msg.interval_ms
                             else None)
        for _ in range(min(msg.declined, len(self._grants[i]))):
            # a grant handed back was no service: the capture keeps its turn
            self._last_served[i] = self._grants[i].popleft()[1]
            self._round.discard(i)
        # Grants still unanswered were sent before the capture wrote this note (one socket,
        # in order): they will take frames it counts here, so they are not ready again.
        self._ready[i] = max(0, msg.frames - len(self._grants[i]))

    def received(self, i: int) -> None:
        """A task from capture ``i`` arrived (it now holds a slot until :meth:`done`)."""
        self.held += 1
        if self._grants[i]:
            self._grants[i].popleft()
        else:
            self.ungranted += 1

    def done(self, i: int, seq: int) -> None:
        """Task ``seq`` of capture ``i`` is finished (result or named drop sent)."""
        self.held = max(0, self.held - 1)
        self._done[i].append(seq)

    def flush(self) -> None:
        """Grant every free slot, report finished seqs, heartbeat everyone when due."""
        now = self.clock()
        for g in self._grants:
            while g and now - g[0][0] > GRANT_TIMEOUT_S:
                g.popleft()
        beat = self._last_beat is None or now - self._last_beat >= HEARTBEAT_S
        if beat:
            self._last_beat = now
        # Done seqs first: a capture hears that a slot freed before any other capture is
        # granted it.
        for k in range(len(self.socks)):
            if beat or self._done[k]:
                self._send(k)
        while (i := self._pick()) is not None:
            if not self._send(i, grant=1):
                self._ready[i] = 0  # its link is full: try it again when it says ready
                continue
            self._grants[i].append((now, self._last_served[i]))
            self._last_served[i] = now
            self._round.add(i)
            self._ready[i] -= 1

    def _pick(self) -> int | None:
        """The ready capture to grant a slot now, if any may take one.

        Rounds: once every ready capture has been served, a new round starts. Among the
        ones that may take a slot now and are not served yet this round, the freshest live
        frame wins, then the capture served least recently. A ready capture not served yet
        this round that may not take this slot (a live one, while only the prefetch slot
        is free) is waited for: nobody is granted until a request frees, so a file always
        ready cannot keep a camera out by refilling the prefetch slot. "Served" is a grant
        it used: one handed back (its frame was taken by another worker) does not cost it
        its turn. With several workers, a camera whose frame another worker took still
        looks ready here until its next note, so a file may wait up to a frame interval
        for the prefetch slot; captures that send no age go after fresh ones in a round.
        """
        ready = [i for i, n in enumerate(self._ready) if n > 0]
        if not ready:
            return None
        if self._round.issuperset(ready):
            self._round.clear()
        used = self.held + self.granted
        due = [i for i in ready if i not in self._round]
        if any(used >= (self.requests if self._live[i] else self.capacity) for i in due):
            return None  # whose turn it is waits for a request to free
        if not due:
            return None
        now = self.clock()
        return min(due, key=lambda i: self._order(i, now))

    def newest_made(self, i: int, now: float) -> float | None:
        """When capture ``i``'s newest frame was made, as this worker works it out at
        ``now``: the frame its last note spoke of, plus the whole intervals since (None
        when it sends no age)."""
        made, interval = self._newest[i], self._interval[i]
        if made is not None and interval is not None and now > made:
            made += ((now - made) // interval) * interval
        return made

    def _order(self, i: int, now: float) -> tuple[int, float]:
        """Sort key within a round: fresh live frames first (newest made first), then the
        rest by when they were served last."""
        made = self.newest_made(i, now)
        return (1, self._last_served[i]) if made is None else (0, -made)

    def bye(self) -> None:
        """A clean exit: ``bye``; what was not reported done is re-sent by the captures."""
        for i in range(len(self.socks)):
            self._send(i, bye=True)

    def _send(self, i: int, grant: int = 0, bye: bool = False) -> bool:
        done, self._done[i] = self._done[i], []
        msg = Credit(self.name, 0 if bye else self.capacity, tuple(done), bye,
                     0 if bye else grant, self.model)
        try:
            transport.send(self.socks[i], msg, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self._done[i] = done + self._done[i]  # try again with the next flush
            return False
