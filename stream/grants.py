"""The worker half of scheduling: credits per WORKER, granted one slot at a time, fairly.

A worker has ``requests`` infer requests and may hold ``requests + prefetch`` tasks in all,
whatever the number of captures it serves (the capture half, and the conversation, are in
:mod:`stream.dispatch`). :class:`GrantScheduler` keeps, per capture: how many frames it
said it has ready (``ready``), whether it is live, the grants it has not answered yet, and
when it last sent a task. Whenever a slot is free it grants ONE slot to the ready
capture served least recently (round robin among those waiting), so streams share the
worker evenly whatever their number. A LIVE capture is granted when an infer request is
free (held + granted < requests), or just before one frees (:class:`ServiceTimes`: every
request busy, the earliest expected to finish within the time a grant takes to come back
as a task): its frame is picked at that moment, the newest, and waits in the worker at most
that lead, while the request does not idle for a round trip between two live frames. A
lossless capture (files) may also fill the prefetch slots, so the requests never idle
between two frames of a file.

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
EARLY_MARGIN_S = 0.001
"""An early live grant goes out this much before the measured lead: a task that comes a
little early waits a millisecond; one that comes late leaves the request idle."""


class ServiceTimes:
    """When the next running request should free, and how long a grant takes to return.

    Both are moving averages (weight :data:`ALPHA` on the newest sample) of what this worker
    measured: ``service_s`` from a request's start to the main thread hearing it finished,
    ``lead_s`` from a grant leaving to its task arriving (the capture crops in between).
    Nothing is predicted before the first sample of each.
    """

    ALPHA = 0.2

    def __init__(self) -> None:
        self.service_s: float | None = None
        self.lead_s: float | None = None
        self._running: dict[tuple[int, int], float] = {}  # (capture, seq) -> start time

    @property
    def running(self) -> int:
        return len(self._running)

    @staticmethod
    def _avg(old: float | None, sample: float) -> float:
        return sample if old is None else old + ServiceTimes.ALPHA * (sample - old)

    def started(self, key: tuple[int, int], now: float) -> None:
        self._running[key] = now

    def finished(self, key: tuple[int, int], now: float) -> None:
        """A request finished (a task that never started, e.g. refused, is ignored)."""
        t0 = self._running.pop(key, None)
        if t0 is not None:
            self.service_s = self._avg(self.service_s, now - t0)

    def answered(self, sent: float, now: float) -> None:
        """A granted task arrived ``now``; its grant left at ``sent``."""
        self.lead_s = self._avg(self.lead_s, max(0.0, now - sent))

    def early_at(self) -> float | None:
        """When an early grant should go out: the earliest expected finish less the lead."""
        if self.service_s is None or self.lead_s is None or not self._running:
            return None
        return min(self._running.values()) + self.service_s - self.lead_s - EARLY_MARGIN_S


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
        # per capture: (time, its previous last-served time) of each unanswered grant
        self._grants: list[deque[tuple[float, float]]] = [deque() for _ in range(n)]
        self._last_served = [float("-inf")] * n
        self._done: list[list[int]] = [[] for _ in range(n)]
        self._last_beat: float | None = None
        self.times = ServiceTimes()
        self.early = 0
        """Live slots granted before a request freed (see :class:`ServiceTimes`)."""

    @property
    def granted(self) -> int:
        """Slots granted and not answered yet."""
        return sum(len(g) for g in self._grants)

    def on_ready(self, i: int, msg: Ready) -> None:
        """Capture ``i`` says how many frames it has ready (and hands back grants)."""
        self._ready[i] = msg.frames
        self._live[i] = msg.live
        for _ in range(min(msg.declined, len(self._grants[i]))):
            # a grant handed back was no service: the capture keeps its turn
            self._last_served[i] = self._grants[i].popleft()[1]

    def received(self, i: int) -> None:
        """A task from capture ``i`` arrived (it now holds a slot until :meth:`done`)."""
        self.held += 1
        if self._grants[i]:
            self.times.answered(self._grants[i].popleft()[0], self.clock())
        else:
            self.ungranted += 1

    def started(self, i: int, seq: int) -> None:
        """Task ``seq`` of capture ``i`` went into an infer request."""
        self.times.started((i, seq), self.clock())

    def done(self, i: int, seq: int) -> None:
        """Task ``seq`` of capture ``i`` is finished (result or named drop sent)."""
        self.held = max(0, self.held - 1)
        self.times.finished((i, seq), self.clock())
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
        while (i := self._pick(now)) is not None:
            if not self._send(i, grant=1):
                self._ready[i] = 0  # its link is full: try it again when it says ready
                continue
            if self._live[i] and self.held + self.granted >= self.requests:
                self.early += 1
            self._grants[i].append((now, self._last_served[i]))
            self._last_served[i] = now
            self._ready[i] -= 1

    def _live_limit(self, now: float) -> int:
        """Slots live captures may fill now: the requests, plus one just before one frees.

        Early only when every request is running and nothing else waits for one (held
        counts running and queued tasks), and there is a prefetch slot to lend.
        """
        at = self.times.early_at()
        if (at is not None and now >= at and self.capacity > self.requests
                and self.held == self.times.running >= self.requests):
            return self.requests + 1
        return self.requests

    def next_early_s(self, now: float) -> float | None:
        """Seconds until a live capture that is ready now may be granted early (None: no
        early grant is in view); the worker wakes up then instead of at its poll timeout."""
        at = self.times.early_at()
        if at is None or not any(r > 0 and live for r, live in zip(self._ready, self._live,
                                                                    strict=True)):
            return None
        if self.held + self.granted != self.requests or self.capacity <= self.requests:
            return None
        return max(0.0, at - now)

    def _pick(self, now: float) -> int | None:
        """The ready capture served least recently that may take a slot now, if any.

        "Served" is when it was last granted a slot it used: a grant it had to give back
        (its frame was taken by another worker) does not cost it its turn.
        """
        used = self.held + self.granted
        live_limit = self._live_limit(now)
        best: int | None = None
        for i, ready in enumerate(self._ready):
            limit = live_limit if self._live[i] else self.capacity
            if ready > 0 and used < limit and (
                    best is None or self._last_served[i] < self._last_served[best]):
                best = i
        return best

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
