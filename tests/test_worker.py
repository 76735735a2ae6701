"""A real worker (OpenVINO, the colour-oracle IR) between a hand-played capture and a sink.

The test plays both neighbours with real sockets: the capture half of scheduling, by hand
(a ROUTER on the frames endpoint: ``ready``, then one task per granted slot) and the sink
(a PULL on the sink endpoint). What the worker returns is checked against the colours this
test painted; what it granted, against what it may hold.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

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


class _BusyOnce:
    """An infer queue whose finished request is not marked idle yet (OpenVINO's callback
    bookkeeping still running when the completion reaches the worker's loop)."""

    def set_callback(self, callback: object) -> None:
        pass

    def is_ready(self) -> bool:
        return False

    def start_async(self, inputs: object, userdata: object = None,
                    share_inputs: bool = False) -> None:
        raise AssertionError("never ready")

    def wait_all(self) -> None:
        pass


def test_a_task_waiting_for_a_request_that_finished_is_retried_within_a_millisecond() -> None:
    from stream.worker import Worker, WorkerSettings

    with Sockets() as sockets:
        w = Worker(WorkerSettings("w1"), None, (2, 2), [], sockets.socket(zmq.PUSH), sockets,
                   threading.Event(), requests=1, prefetch=1, infer_queue=_BusyOnce())
        assert w.capacity == 2
        assert w._wait_ms() == 100, "nothing waiting: the loop may sleep"
        task = Task("cam", 7, None, 1.0, 2, 2, bytes(12))
        w.pending.append((0, task, None))
        w.in_openvino = Counter({(0, 5): 1})  # one of its two requests is free by its count
        w._start_ready()
        assert len(w.pending) == 1
        assert w._wait_ms() == 1, "no message will wake the loop for this task: poll again"
        w.in_openvino = Counter({(0, 5): 2})  # a seq re-sent runs twice: both held
        assert w._wait_ms() == 100
