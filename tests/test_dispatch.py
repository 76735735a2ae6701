"""Both halves of scheduling over real ROUTER/DEALER sockets (stream/dispatch.py, grants.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import msgpack
import pytest
from fake_worker import ScriptedWorker

from stream import transport
from stream.capture.policy import policy_for
from stream.capture.session import Captured
from stream.capture.supply import FrameQueue, LatestFrame, Pending
from stream.dispatch import (
    HEARTBEAT_S,
    MAX_CAPACITY,
    Dispatcher,
    task_socket,
    worker_socket,
)
from stream.grants import GRANT_TIMEOUT_S, GrantScheduler
from stream.protocol import MAX_AGE_MS, Credit, Ready, Task, decode, encode
from stream.transport import Sockets

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def task(seq: int) -> Task:
    return Task("cam1", seq, seq / 25, 1.0 + seq, 2, 2, bytes(12))


class Link:
    """A dispatcher on a real ROUTER with a lossless queue, and a scripted worker."""

    def __init__(self, sockets: Sockets, supply: FrameQueue | LatestFrame) -> None:
        router = task_socket(sockets)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = worker_socket(sockets)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        self.clock = Clock()
        self.lost: list[tuple[int, bool]] = []
        self.d = Dispatcher(router, 5.0, self.clock, supply,
                            lambda t, resent: self.lost.append((t.seq, resent)))
        self.w = ScriptedWorker(dealer, "w1", capacity=3)
        self.supply = supply

    def until(self, pred, what: str) -> None:  # type: ignore[no-untyped-def]
        end = time.monotonic() + 5
        while not pred():
            assert time.monotonic() < end, what
            self.d.poll(20)
            self.w.recv(0)

    def join(self) -> None:
        self.w.hello()
        self.until(lambda: self.d.workers, "the worker never joined")


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    with Sockets() as s:
        yield s
        s.close(linger_ms=0)


def test_a_grant_is_answered_with_one_task_or_handed_back(sockets: Sockets) -> None:
    q = FrameQueue("cam1", size=4)
    link = Link(sockets, q)
    link.join()
    link.w.grant(1)
    link.until(lambda: link.w.ready, "no answer to a grant with nothing ready")
    assert link.w.ready[-1] == Ready("cam1", 0, False, declined=1)
    assert q.put(task(0), 0) and q.put(task(1), 0)
    link.until(lambda: any(r.frames == 2 for r in link.w.ready), "ready was not announced")
    link.w.grant(1)
    link.until(lambda: link.w.tasks, "no task for the grant")
    assert [t.seq for t in link.w.tasks] == [0] and q.ready() == 1 and link.d.inflight == 1


def test_live_supply_sends_the_newest_frame_and_returns_the_superseded_ones(
    sockets: Sockets,
) -> None:
    def make(p: Pending) -> Task:
        return task(p.seq)

    latest = LatestFrame("cam1", make)
    link = Link(sockets, latest)
    link.join()
    frame = Captured(bytes(1), 0.0)  # type: ignore[arg-type]
    superseded = [latest.offer(Pending(seq, 0.0, frame)) for seq in range(10)]
    assert [p.seq for p in superseded if p is not None] == list(range(9))
    link.until(lambda: any(r.frames == 1 and r.live for r in link.w.ready), "no ready note")
    link.w.grant(1)
    link.until(lambda: link.w.tasks, "no task for the grant")
    assert [t.seq for t in link.w.tasks] == [9]


def test_a_live_capture_tells_age_and_interval_not_each_new_frame(sockets: Sockets) -> None:
    """A live note gives the newest frame's age and the interval between frames (a running
    mean, weight 0.1 a gap), on the capture's own clock. Newer frames are not announced one
    by one while the worker already counts one ready: the heartbeat brings the news. An
    outage (a gap over 4 mean intervals) starts the mean again."""
    clock = Clock()  # the capture's (the supply's); link.clock is the dispatcher's
    latest = LatestFrame("cam1", lambda p: task(p.seq), clock=clock)
    link = Link(sockets, latest)
    link.join()
    frame = Captured(bytes(1), 0.0)  # type: ignore[arg-type]
    latest.offer(Pending(0, 0.0, frame))
    clock.t += 0.025
    link.until(lambda: link.w.ready, "the first frame was not announced")
    assert link.w.ready == [Ready("cam1", 1, True, age_ms=25.0)]  # one frame: no interval
    for seq, gap in ((1, 0.015), (2, 0.040), (3, 0.050)):  # gaps 40, 40, 50 ms
        clock.t += gap
        latest.offer(Pending(seq, 0.0, frame))
    clock.t += 0.006
    for _ in range(5):  # newer frames, no heartbeat due: nothing to say
        link.d.poll(10)
    assert not link.w.recv(100) and len(link.w.ready) == 1
    link.clock.t += HEARTBEAT_S
    link.until(lambda: len(link.w.ready) == 2, "no heartbeat note")
    # 40, then 40 + 0.1 * (40 - 40), then 40 + 0.1 * (50 - 40)
    assert link.w.ready[1] == Ready("cam1", 1, True, age_ms=6.0, interval_ms=41.0)
    clock.t += 1.0
    latest.offer(Pending(4, 0.0, frame))  # after a 1 s outage: the mean starts again
    link.clock.t += HEARTBEAT_S
    link.until(lambda: len(link.w.ready) == 3, "no heartbeat note after the outage")
    assert link.w.ready[2] == Ready("cam1", 1, True, age_ms=0.0)
    clock.t += 0.040
    latest.offer(Pending(5, 0.0, frame))
    clock.t += 3 * 86_400  # a frame stuck for days: said as the largest age, still valid
    link.clock.t += HEARTBEAT_S
    link.until(lambda: len(link.w.ready) == 4, "the stuck frame was not announced")
    assert link.w.ready[3] == Ready("cam1", 1, True, age_ms=MAX_AGE_MS, interval_ms=40.0)


def test_a_live_frame_wakes_the_dispatch_thread_only_where_none_waited() -> None:
    """The drop policy wakes the dispatch thread (to tell workers) for a frame that made
    the ready count go from 0 to 1, not for one that superseded a waiting frame (dropped
    as busy, nothing new for the workers); after a grant took the frame, the next wakes."""
    wakes: list[int] = []
    drops: list[tuple[int, str]] = []
    latest = LatestFrame("cam1", lambda p: task(p.seq))
    router = SimpleNamespace(
        frames=latest, dispatch=SimpleNamespace(wake=lambda: wakes.append(1)),
        drop=lambda seq, pts, ts, why: drops.append((seq, why)))
    frame = Captured(bytes(1), 0.0)  # type: ignore[arg-type]
    policy = policy_for("drop")
    for seq in range(3):
        assert policy.dispatch(router, Pending(seq, 0.0, frame))  # type: ignore[arg-type]
    assert len(wakes) == 1 and drops == [(0, "busy"), (1, "busy")]
    taken = latest.take()
    assert taken is not None and taken.seq == 2
    assert policy.dispatch(router, Pending(3, 0.0, frame))  # type: ignore[arg-type]
    assert len(wakes) == 2 and len(drops) == 2


def test_silent_worker_is_lost_and_its_frames_are_sent_again(sockets: Sockets) -> None:
    q = FrameQueue("cam1", size=4)
    link = Link(sockets, q)
    link.join()
    for seq in (0, 1, 2):
        assert q.put(task(seq), 0)
    link.w.grant(3)
    link.until(lambda: len(link.w.tasks) == 3, "tasks did not arrive")
    link.clock.t += 4.9
    link.d.poll(0)
    assert link.lost == [] and len(link.d.workers) == 1
    link.clock.t += 0.2
    link.d.poll(0)
    assert link.lost == [(0, True), (1, True), (2, True)] and link.d.workers == {}
    assert [q.take().seq for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]


def test_bye_hands_back_unfinished_frames(sockets: Sockets) -> None:
    q = FrameQueue("cam1", size=4)
    link = Link(sockets, q)
    link.join()
    assert q.put(task(0), 0) and q.put(task(1), 0)
    link.w.grant(2)
    link.until(lambda: len(link.w.tasks) == 2, "tasks did not arrive")
    link.w.bye(done=(0,))
    link.until(lambda: not link.d.workers, "bye not heard")
    assert link.lost == [(1, True)] and link.d.inflight == 0


def test_garbage_from_a_worker_is_counted_not_fatal(sockets: Sockets) -> None:
    link = Link(sockets, FrameQueue("cam1"))
    link.w.sock.send_multipart([b"\xc1garbage"])
    link.w.sock.send_multipart([msgpack.packb({"v": 1, "t": "credit", "worker": "old",
                                               "capacity": 3, "done": [], "bye": False})])
    transport.send(link.w.sock, task(0))  # a valid message, but not one a worker may send
    link.until(lambda: link.d.rejected == 3, "garbage not counted")
    link.join()


def test_a_worker_granting_without_limit_gets_at_most_the_cap(sockets: Sockets) -> None:
    q = FrameQueue("cam1", size=MAX_CAPACITY * 3)
    link = Link(sockets, q)
    link.w.capacity = 1 << 20
    link.join()
    for seq in range(MAX_CAPACITY * 3):
        assert q.put(task(seq), 0)
    for _ in range(4):
        link.w.grant(1 << 20)
    link.until(lambda: len(link.w.tasks) >= MAX_CAPACITY, "tasks did not arrive")
    for _ in range(20):  # anything more would arrive now
        link.d.poll(10)
        link.w.recv(10)
    assert len(link.w.tasks) == MAX_CAPACITY == link.d.inflight


def test_credit_v1_from_an_older_build_is_refused_with_both_versions() -> None:
    from stream.errors import ProtocolError
    from stream.protocol import decode as dec

    head = msgpack.unpackb(encode(Credit("w", 3, grant=1))[0])
    assert head["v"] == 2 and head["grant"] == 1
    with pytest.raises(ProtocolError, match="speaks 2"):
        dec([msgpack.packb({**head, "v": 1})])
    assert dec(encode(Ready("cam1", 3, True, 1))) == Ready("cam1", 3, True, 1)


# --------------------------------------------------------------------------- worker half


class Captures:
    """``n`` capture ROUTERs, one GrantScheduler on the worker's DEALERs."""

    def __init__(self, sockets: Sockets, n: int, requests: int, prefetch: int) -> None:
        self.routers = []
        dealers = []
        for _ in range(n):
            r = task_socket(sockets)
            port = r.bind_to_random_port("tcp://127.0.0.1")
            d = worker_socket(sockets)
            d.connect(f"tcp://127.0.0.1:{port}")
            self.routers.append(r)
            dealers.append(d)
        self.clock = Clock()
        self.g = GrantScheduler("w1", requests, prefetch, dealers, self.clock)
        self.g.flush()  # heartbeat: every capture learns the worker
        self.idents = [self._recv(i)[0] for i in range(n)]

    def _recv(self, i: int) -> tuple[bytes, Credit]:
        assert self.routers[i].poll(5000), f"nothing from the worker on capture {i}"
        ident, *frames = self.routers[i].recv_multipart()
        msg = decode(frames)
        assert isinstance(msg, Credit)
        return ident, msg

    def grants(self) -> list[int]:
        """Grants each capture received since the last call."""
        out = []
        for r in self.routers:
            n = 0
            while r.poll(50):
                msg = decode(r.recv_multipart()[1:])
                assert isinstance(msg, Credit)
                n += msg.grant
            out.append(n)
        return out


def test_worker_grants_fairly_and_never_holds_more_than_requests_plus_prefetch(
    sockets: Sockets,
) -> None:
    caps = Captures(sockets, 4, requests=2, prefetch=1)
    for i in range(4):
        caps.g.on_ready(i, Ready(f"c{i}", 5, live=False))
    caps.g.flush()
    first = caps.grants()
    assert sum(first) == 3 and max(first) == 1, first  # 3 slots, one each, round robin
    served = [i for i, n in enumerate(first) if n]
    for i in served:
        caps.g.received(i)
    caps.g.flush()
    assert caps.grants() == [0, 0, 0, 0], "all slots held: nothing more granted"
    caps.g.done(served[0], 0)
    caps.g.flush()
    again = caps.grants()
    waiting = ({0, 1, 2, 3} - set(served)).pop()
    assert again[waiting] == 1 and sum(again) == 1, "the one not served yet goes first"


def test_live_captures_are_granted_only_when_a_request_is_free(sockets: Sockets) -> None:
    caps = Captures(sockets, 2, requests=2, prefetch=1)
    caps.g.on_ready(0, Ready("live", 1, live=True))
    caps.g.flush()
    assert caps.grants() == [1, 0]
    caps.g.received(0)
    caps.g.on_ready(0, Ready("live", 1, live=True))
    caps.g.flush()
    assert caps.grants() == [1, 0]
    caps.g.received(0)  # both requests busy now
    caps.g.on_ready(0, Ready("live", 1, live=True))
    caps.g.on_ready(1, Ready("file", 3, live=False))
    caps.g.flush()
    assert caps.grants() == [0, 1], "the prefetch slot is for lossless frames only"


def test_each_round_serves_every_camera_once_freshest_first(sockets: Sockets) -> None:
    """Three live cameras, one request: 60 grants in rounds of three, each camera once per
    round, and within a round the one whose frame is newest (by the ages the captures sent,
    at the time each note came) goes first. The oracle below keeps its own round and ages."""
    import random

    rng = random.Random(7)
    caps = Captures(sockets, 3, requests=1, prefetch=0)
    served_in_round: set[int] = set()
    counts = [0, 0, 0]
    for _ in range(60):
        made = {}
        for i in range(3):
            age_ms = rng.uniform(0.0, 40.0)
            caps.g.on_ready(i, Ready(f"c{i}", 1, True, age_ms=age_ms))
            made[i] = caps.clock.t - age_ms / 1000
            caps.clock.t += 0.001  # the notes come one after another
        if served_in_round == {0, 1, 2}:
            served_in_round.clear()
        expected = max((i for i in range(3) if i not in served_in_round), key=made.__getitem__)
        caps.g.flush()
        got = caps.grants()
        assert got == [int(i == expected) for i in range(3)], (got, made, served_in_round)
        served_in_round.add(expected)
        counts[expected] += 1
        caps.g.received(expected)
        caps.g.done(expected, counts[expected])
        caps.clock.t += 0.03
    assert counts == [20, 20, 20]


def test_the_freshest_frame_is_worked_out_from_age_and_interval(sockets: Sockets) -> None:
    """Notes come once, not per frame: the worker works out when each camera's newest frame
    was made from the note's age plus the whole intervals since. Hand-made times: camera 0
    said 30 ms old, a frame every 40 ms; camera 1 said 10 ms old, every 40 ms; 15 ms later
    camera 0 has a frame 5 ms old (made 40 ms after the one it spoke of) and camera 1's is
    25 ms old: camera 0 goes first, though its note said older. Without an interval (an
    older capture, which announces every frame) the note's age stands as it was."""
    caps = Captures(sockets, 2, requests=1, prefetch=0)
    t0 = caps.clock.t
    caps.g.on_ready(0, Ready("c0", 1, True, age_ms=30.0, interval_ms=40.0))
    caps.g.on_ready(1, Ready("c1", 1, True, age_ms=10.0, interval_ms=40.0))
    caps.clock.t = t0 + 0.015
    assert caps.g.newest_made(0, caps.clock.t) == pytest.approx(t0 + 0.010)
    assert caps.g.newest_made(1, caps.clock.t) == pytest.approx(t0 - 0.010)
    caps.g.flush()
    assert caps.grants() == [1, 0]

    plain = Captures(sockets, 2, requests=1, prefetch=0)
    t0 = plain.clock.t
    plain.g.on_ready(0, Ready("c0", 1, True, age_ms=30.0))
    plain.g.on_ready(1, Ready("c1", 1, True, age_ms=10.0))
    plain.clock.t = t0 + 0.015
    assert plain.g.newest_made(0, plain.clock.t) == pytest.approx(t0 - 0.030)
    plain.g.flush()
    assert plain.grants() == [0, 1]


def test_captures_that_send_no_age_are_served_round_robin(sockets: Sockets) -> None:
    """An older capture build sends no ``age_ms``: plain round robin, least recently served
    first, as before freshness existed; a file (not live) is never ordered by age."""
    caps = Captures(sockets, 3, requests=1, prefetch=0)
    order = []
    for _ in range(9):
        caps.g.on_ready(0, Ready("old", 1, True))
        caps.g.on_ready(1, Ready("file", 3, False, age_ms=0.0))
        caps.g.on_ready(2, Ready("old2", 1, True))
        caps.g.flush()
        got = caps.grants()
        assert sum(got) == 1, got
        i = got.index(1)
        order.append(i)
        caps.g.received(i)
        caps.g.done(i, len(order))
        caps.clock.t += 0.03
    assert order == [0, 1, 2] * 3, order


def test_a_file_always_ready_cannot_keep_a_live_camera_out(sockets: Sockets) -> None:
    """One request plus one prefetch slot, a file that always has frames and a camera: the
    file may not refill the prefetch slot while the camera waits for its turn; the next
    request that frees goes to the camera. 40 completions: each gets half (the oracle is
    the test's own count of the grants each capture received)."""
    caps = Captures(sockets, 2, requests=1, prefetch=1)
    caps.g.on_ready(0, Ready("file", 4, False))
    caps.g.on_ready(1, Ready("cam", 1, True, age_ms=5.0))
    caps.g.flush()
    first = caps.grants()
    assert sum(first) == 2, first  # the camera's request and the file's prefetch, or the file twice
    holding = [i for i, n in enumerate(first) for _ in range(n)]
    for i in holding:
        caps.g.received(i)
    counts = [first[0], first[1]]
    for seq in range(40):
        caps.g.done(holding.pop(0), seq)
        caps.g.on_ready(0, Ready("file", 4, False))
        caps.g.on_ready(1, Ready("cam", 1, True, age_ms=5.0))
        caps.g.flush()
        got = caps.grants()
        for i, n in enumerate(got):
            counts[i] += n
            holding.extend([i] * n)
            for _ in range(n):
                caps.g.received(i)
        caps.clock.t += 0.03
    assert abs(counts[0] - counts[1]) <= 2, counts


def test_a_note_written_before_a_grant_arrived_does_not_earn_a_second_grant(
    sockets: Sockets,
) -> None:
    """Two requests, one camera: a grant is on its way when the capture announces a newer
    frame. That note counts a frame the grant will take, so no second grant (which the
    capture could only hand back) goes out until the task arrives."""
    caps = Captures(sockets, 1, requests=2, prefetch=0)
    caps.g.on_ready(0, Ready("cam", 1, True, age_ms=1.0))
    caps.g.flush()
    assert caps.grants() == [1]
    caps.g.on_ready(0, Ready("cam", 1, True, age_ms=0.5))  # written before the grant came
    caps.g.flush()
    assert caps.grants() == [0]
    caps.g.received(0)  # the grant's task: the note after it is a new frame
    caps.g.on_ready(0, Ready("cam", 1, True, age_ms=0.2))
    caps.g.flush()
    assert caps.grants() == [1]


def test_an_unanswered_grant_expires_and_a_declined_one_comes_back(sockets: Sockets) -> None:
    caps = Captures(sockets, 2, requests=1, prefetch=0)
    caps.g.on_ready(0, Ready("a", 1, live=True))
    caps.g.flush()
    assert caps.grants() == [1, 0] and caps.g.granted == 1
    caps.g.on_ready(1, Ready("b", 1, live=True))
    caps.g.flush()
    assert caps.grants() == [0, 0], "the only slot is granted to a"
    caps.g.on_ready(0, Ready("a", 0, live=True, declined=1))  # a had nothing after all
    caps.g.flush()
    assert caps.grants() == [0, 1]
    caps.clock.t += GRANT_TIMEOUT_S + 0.1  # b went away without answering
    caps.g.on_ready(0, Ready("a", 1, live=True))
    caps.g.flush()
    assert caps.grants()[0] == 1 and caps.g.granted == 1


def test_bye_is_sent_to_every_capture(sockets: Sockets) -> None:
    caps = Captures(sockets, 2, requests=1, prefetch=1)
    caps.g.bye()
    for i in range(2):
        _, msg = caps._recv(i)
        assert msg.bye and msg.capacity == 0 and msg.grant == 0



def test_a_worker_with_another_model_input_is_refused_and_never_gets_a_frame(
        sockets: Sockets, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 9: a worker announcing a 320x320 model to a capture that crops 224x224 is
    refused (logged once, counted), while a worker with the right model takes frames."""
    q = FrameQueue("cam1", size=4)
    router = task_socket(sockets)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    d = Dispatcher(router, 5.0, Clock(), q, lambda t, resent: None, input_size=(224, 224))
    wrong_sock, right_sock = worker_socket(sockets), worker_socket(sockets)
    wrong_sock.connect(f"tcp://127.0.0.1:{port}")
    right_sock.connect(f"tcp://127.0.0.1:{port}")
    wrong, right = ScriptedWorker(wrong_sock, "wrong"), ScriptedWorker(right_sock, "right")
    for _ in range(3):
        transport.send(wrong_sock, Credit("wrong", 4, grant=1, model="320x320/1000/0123456789ab"))
    transport.send(right_sock, Credit("right", 4, model="224x224/1000/0123456789ab"))
    assert q.put(task(0), 0) and q.put(task(1), 0)
    end = time.monotonic() + 5
    while not (d.refused_workers and [w.name for w in d.workers.values()] == ["right"]):
        assert time.monotonic() < end, "the workers were not sorted out"
        d.poll(20)
    transport.send(right_sock, Credit("right", 4, grant=2, model="224x224/1000/0123456789ab"))
    while len(right.tasks) < 2:
        assert time.monotonic() < end, "the right worker got no frames"
        d.poll(20)
        right.recv(0)
        wrong.recv(0)
    wrong.recv(50)
    assert wrong.tasks == [] and [t.seq for t in right.tasks] == [0, 1]
    assert d.rejected == 3
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "320x320" in refusals[0].getMessage()


def test_the_model_identity_round_trips_and_is_optional_on_the_wire() -> None:
    with_model = Credit("w", 3, (1,), grant=1, model="224x224/1000/0123456789ab")
    assert decode(encode(with_model)) == with_model
    head = msgpack.unpackb(encode(Credit("w", 3))[0])
    bare = decode(encode(Credit("w", 3)))
    assert "model" not in head and isinstance(bare, Credit) and bare.model == ""
