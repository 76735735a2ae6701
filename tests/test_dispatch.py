"""Both halves of credit-based dispatch over real ROUTER/DEALER sockets (stream/dispatch.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
import zmq

from stream import transport
from stream.dispatch import (
    HEARTBEAT_S,
    MAX_CAPACITY,
    CreditSender,
    Dispatcher,
    task_socket,
    worker_socket,
)
from stream.protocol import Credit, Task, decode
from stream.transport import Sockets

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def link() -> Iterator[tuple[Dispatcher, zmq.Socket[bytes], Clock]]:
    with Sockets() as sockets:
        router = task_socket(sockets)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = worker_socket(sockets)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        clock = Clock()
        try:
            yield Dispatcher(router, worker_timeout_s=5.0, clock=clock), dealer, clock
        finally:
            sockets.close(linger_ms=0)


def task(seq: int) -> Task:
    return Task("cam1", seq, seq / 25, 1.0 + seq, 2, 2, bytes(12))


def wait_for(pred, d: Dispatcher, deadline_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline_s
    while not pred():
        assert time.monotonic() < end, "condition not met before the deadline"
        d.poll(20)


def recv_task(dealer: zmq.Socket[bytes]) -> Task:
    assert dealer.poll(5000), "no task arrived"
    msg = decode(dealer.recv_multipart())
    assert isinstance(msg, Task)
    return msg


def test_no_worker_no_send(link: tuple[Dispatcher, zmq.Socket[bytes], Clock]) -> None:
    d, _, _ = link
    d.poll(0)
    assert not d.try_send(task(0))
    assert d.credits == 0


def test_sends_only_within_capacity_and_done_frees_a_slot(
    link: tuple[Dispatcher, zmq.Socket[bytes], Clock],
) -> None:
    d, dealer, _ = link
    transport.send(dealer, Credit("w1", 2))
    wait_for(lambda: d.credits == 2, d)
    assert d.try_send(task(0)) and d.try_send(task(1))
    assert not d.try_send(task(2)), "a third task would exceed the worker's capacity"
    assert [recv_task(dealer).seq, recv_task(dealer).seq] == [0, 1]
    assert d.inflight == 2
    transport.send(dealer, Credit("w1", 2, done=(0,)))
    wait_for(lambda: d.inflight == 1, d)
    assert d.try_send(task(2))
    assert recv_task(dealer).seq == 2


def test_silent_worker_is_lost_and_its_frames_come_back(
    link: tuple[Dispatcher, zmq.Socket[bytes], Clock],
) -> None:
    d, dealer, clock = link
    transport.send(dealer, Credit("w1", 3))
    wait_for(lambda: d.credits == 3, d)
    for seq in (5, 3, 4):
        assert d.try_send(task(seq))
    clock.t += 4.9
    d.poll(0)
    assert d.take_lost() == [] and len(d.workers) == 1
    clock.t += 0.2
    d.poll(0)
    assert [t.seq for t in d.take_lost()] == [3, 4, 5]  # oldest first
    assert d.take_lost() == [], "each lost task is handed back once"
    assert d.workers == {}


def test_bye_hands_back_unfinished_frames(
    link: tuple[Dispatcher, zmq.Socket[bytes], Clock],
) -> None:
    d, dealer, _ = link
    transport.send(dealer, Credit("w1", 2))
    wait_for(lambda: d.credits == 2, d)
    assert d.try_send(task(0)) and d.try_send(task(1))
    transport.send(dealer, Credit("w1", 0, done=(0,), bye=True))
    wait_for(lambda: not d.workers, d)
    assert [t.seq for t in d.take_lost()] == [1]


def test_garbage_from_a_worker_is_counted_not_fatal(
    link: tuple[Dispatcher, zmq.Socket[bytes], Clock],
) -> None:
    d, dealer, _ = link
    dealer.send_multipart([b"\xc1garbage"])
    dealer.send_multipart([msgpack.packb({"v": 99, "t": "credit"})])
    transport.send(dealer, task(0))  # a valid message, but not one a worker may send
    wait_for(lambda: d.rejected == 3, d)
    transport.send(dealer, Credit("w1", 1))
    wait_for(lambda: d.credits == 1, d)


def test_a_worker_cannot_claim_more_than_the_capacity_cap(
    link: tuple[Dispatcher, zmq.Socket[bytes], Clock],
) -> None:
    d, dealer, _ = link
    transport.send(dealer, Credit("greedy", 1_000_000))
    wait_for(lambda: d.workers, d)
    assert d.credits == MAX_CAPACITY
    sent = 0
    while d.try_send(task(sent)):
        sent += 1
        assert sent <= MAX_CAPACITY
    assert sent == MAX_CAPACITY


def test_credit_sender_reports_done_seqs_heartbeats_and_bye(
    link: tuple[Dispatcher, zmq.Socket[bytes], Clock],
) -> None:
    """The worker half against the capture half: what one sends the other understands."""
    d, dealer, capture_clock = link
    clock = Clock()
    credits = CreditSender("w1", 3, [dealer], clock=clock)
    credits.flush()  # the first call is a heartbeat: the capture learns the capacity
    wait_for(lambda: d.credits == 3, d)
    for seq in range(3):
        assert d.try_send(task(seq))
        recv_task(dealer)
    assert d.credits == 0
    credits.done(0, 1)
    credits.flush()  # not a heartbeat yet, but a finished seq goes out at once
    wait_for(lambda: d.inflight == 2, d)
    (state,) = d.workers.values()
    seen = state.last_seen
    capture_clock.t += 1.0
    clock.t += HEARTBEAT_S / 2
    credits.flush()  # nothing finished, no heartbeat due: nothing sent
    d.poll(200)
    assert state.last_seen == seen, "a credit went out before the heartbeat was due"
    credits.done(0, 2)  # ... until a seq finishes
    clock.t += HEARTBEAT_S / 2
    credits.flush()
    wait_for(lambda: d.inflight == 1, d)
    assert state.last_seen == seen + 1.0
    credits.bye()
    wait_for(lambda: not d.workers, d)
    assert [t.seq for t in d.take_lost()] == [0]
