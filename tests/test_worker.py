"""A real worker (OpenVINO, the colour-oracle IR) between a hand-played capture and a sink.

The test plays both neighbours with real sockets: the capture half of scheduling, by hand
(a ROUTER on the frames endpoint: ``ready``, then one task per granted slot) and the sink
(a PULL on the sink endpoint). What the worker returns is checked against the colours this
test painted; what it granted, against what it may hold.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import ORACLE_COLOURS, find_free_port_base, write_config

from stream.config import load_config
from stream.dispatch import task_socket
from stream.protocol import Credit, Drop, Ready, Result, Task, decode, encode
from stream.transport import Sockets
from stream.worker import run_worker

pytestmark = pytest.mark.timeout(90)


def test_worker_labels_tasks_frees_credits_and_says_bye(
    tmp_path: Path, oracle_model: tuple[Path, Path],
) -> None:
    base = find_free_port_base(3)
    cfg = load_config(write_config(tmp_path / "cfg.yaml", port_base=base,
                                   model=oracle_model[0],
                                   sources=[{"id": "cam", "url": "x.mp4"}]))
    stop = threading.Event()
    codes: list[int] = []
    with Sockets() as sockets:
        tasks = task_socket(sockets)
        sockets.bind(tasks, f"tcp://127.0.0.1:{base + 2}", "frames")
        sink = sockets.socket(zmq.PULL, linger_ms=0)
        sockets.bind(sink, f"tcp://127.0.0.1:{base + 1}", "sink")
        worker = threading.Thread(target=lambda: codes.append(run_worker(cfg, stop, None, "w1")))
        worker.start()
        try:
            deadline = time.monotonic() + 60
            assert tasks.poll(60_000), "worker never joined"
            ident, *frames = tasks.recv_multipart()
            hello = decode(frames)
            assert isinstance(hello, Credit) and hello.worker == "w1"
            assert 2 <= hello.capacity <= 65 and hello.grant == 0
            classes = [2, 3, 4, 1, 0, 5, 6, 7, 2, 3, 4, 1]
            # the capture's side by hand: "12 frames ready", then one task per granted slot
            tasks.send_multipart([ident, *encode(Ready("cam", len(classes), False))])
            results: dict[int, Result] = {}
            sent = granted = 0
            done: set[int] = set()
            while len(results) < len(classes) or len(done) < len(classes):
                assert time.monotonic() < deadline, f"only {len(results)} results"
                if tasks.poll(10):
                    _, *frames = tasks.recv_multipart()
                    credit = decode(frames)
                    assert isinstance(credit, Credit)
                    granted += credit.grant
                    done.update(credit.done)
                    # never more granted than it may hold: requests + prefetch, all captures
                    assert granted - len(done) <= hello.capacity
                    while sent < granted and sent < len(classes):
                        crop = np.full((224, 224, 3), ORACLE_COLOURS[classes[sent]], np.uint8)
                        task = Task("cam", sent, sent / 25, 1.0, 224, 224, crop.tobytes())
                        tasks.send_multipart([ident, *encode(task)])
                        sent += 1
                if sink.poll(0):
                    msg = decode(sink.recv_multipart())
                    assert isinstance(msg, Result), msg
                    results[msg.seq] = msg
            assert [results[i].ids[0] for i in range(len(classes))] == classes
            assert done == set(range(len(classes))), "every finished seq is reported done"
            # a crop of the wrong size is a named drop, not a crash
            bad = Task("cam", 99, None, 1.0, 8, 8, bytes(8 * 8 * 3))
            tasks.send_multipart([ident, *encode(bad)])
            assert sink.poll(10_000)
            dropped = decode(sink.recv_multipart())
            assert isinstance(dropped, Drop) and (dropped.seq, dropped.reason) == (99, "bad_input")
        finally:
            stop.set()
            worker.join(30)
        assert not worker.is_alive() and codes == [0]
        deadline = time.monotonic() + 10
        while True:  # the bye arrives after stop
            assert time.monotonic() < deadline, "no bye from the stopped worker"
            if tasks.poll(50):
                credit = decode(tasks.recv_multipart()[1:])
                if isinstance(credit, Credit) and credit.bye:
                    break
        sockets.close(linger_ms=0)


class _Gate:
    """An infer queue of ``n`` requests whose "idle again" the test says (OpenVINO marks a
    request idle only after its completion callback returned, which can be after the
    completion reached the worker's loop)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.idle = n
        self.started: list[int] = []

    def __len__(self) -> int:
        return self.n

    def set_callback(self, callback: object) -> None:
        pass

    def is_ready(self) -> bool:
        return self.idle > 0

    def start_async(self, inputs: object, userdata: Any = None,
                    share_inputs: bool = False) -> None:
        assert self.idle > 0, "started on a busy queue"
        self.idle -= 1
        self.started.append(userdata[1].seq)

    def wait_all(self) -> None:
        pass


def test_a_task_waiting_for_a_request_that_finished_is_retried_within_a_millisecond() -> None:
    from stream.worker import Worker, WorkerSettings

    with Sockets() as sockets:
        wake = sockets.socket(zmq.PULL, linger_ms=0)
        wake.bind("inproc://test-wake")
        done = sockets.socket(zmq.PUSH, linger_ms=0)
        done.connect("inproc://test-wake")
        gate = _Gate(2)
        w = Worker(WorkerSettings("w1"), None, (2, 2), [sockets.socket(zmq.DEALER)],
                   sockets.socket(zmq.PUSH), sockets, threading.Event(), requests=1,
                   prefetch=1, infer_queue=gate)
        assert w.capacity == w.slots == 2
        assert w._wait_ms() == 100, "nothing waiting: the loop may sleep"

        def task(seq: int) -> tuple[int, Task, None]:
            return (0, Task("cam", seq, None, 1.0, 2, 2, bytes(12)), None)

        def finished(seq: int, ran: bool = True) -> None:
            done.send_multipart([b"0", b"%d" % seq, b"1" if ran else b"0"])
            assert wake.poll(1000)
            w._collect_done(wake)

        w.pending.extend([task(5), task(5), task(7)])  # seq 5 twice: re-sent to this worker
        w._start_ready()
        assert gate.started == [5, 5] and len(w.pending) == 1
        assert w._wait_ms() == 100, "both requests busy: a completion will wake the loop"
        finished(8, ran=False)  # a task refused before it ran frees no request
        assert w._wait_ms() == 100
        finished(5)  # done, but OpenVINO has not marked its request idle yet
        w._start_ready()
        assert gate.started == [5, 5]
        assert w._wait_ms() == 1, "no message will wake the loop for seq 7: poll again"
        gate.idle += 1  # OpenVINO's bookkeeping ends
        w._start_ready()
        assert gate.started == [5, 5, 7] and not w.pending
        assert w._wait_ms() == 100
