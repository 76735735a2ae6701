"""A real worker (OpenVINO, the colour-oracle IR) between a capture's Dispatcher and a sink.

The test plays both neighbours with real sockets: the capture half of the credit protocol
(:class:`~stream.dispatch.Dispatcher` on the frames endpoint) and the sink (a PULL on the
sink endpoint). What the worker returns is checked against the colours this test painted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import ORACLE_COLOURS, find_free_port_base, write_config

from stream.config import load_config
from stream.dispatch import Dispatcher, task_socket
from stream.protocol import Drop, Result, Task, decode
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
        dispatcher = Dispatcher(tasks)
        worker = threading.Thread(target=lambda: codes.append(run_worker(cfg, stop, None, "w1")))
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while not dispatcher.workers:
                assert time.monotonic() < deadline and worker.is_alive(), "worker never joined"
                dispatcher.poll(50)
            (state,) = dispatcher.workers.values()
            assert state.name == "w1" and 1 <= state.capacity <= 64
            classes = [2, 3, 4, 1, 0, 5, 6, 7, 2, 3, 4, 1]
            results: dict[int, Result] = {}
            sent = 0
            while len(results) < len(classes):
                assert time.monotonic() < deadline, f"only {len(results)} results"
                dispatcher.poll(10)
                if sent < len(classes):
                    crop = np.full((224, 224, 3), ORACLE_COLOURS[classes[sent]], np.uint8)
                    if dispatcher.try_send(Task("cam", sent, sent / 25, 1.0, 224, 224,
                                                crop.tobytes())):
                        sent += 1
                if sink.poll(10):
                    msg = decode(sink.recv_multipart())
                    assert isinstance(msg, Result), msg
                    results[msg.seq] = msg
            assert [results[i].ids[0] for i in range(len(classes))] == classes
            # every finished seq is reported done: nothing stays in flight
            while dispatcher.inflight:
                assert time.monotonic() < deadline, "done seqs never came back"
                dispatcher.poll(50)
            # a crop of the wrong size is a named drop, not a crash
            assert dispatcher.try_send(Task("cam", 99, None, 1.0, 8, 8, bytes(8 * 8 * 3)))
            assert sink.poll(10_000)
            bad = decode(sink.recv_multipart())
            assert isinstance(bad, Drop) and (bad.seq, bad.reason) == (99, "bad_input")
        finally:
            stop.set()
            worker.join(30)
        assert not worker.is_alive() and codes == [0]
        deadline = time.monotonic() + 10
        while dispatcher.workers:  # the bye arrives after stop
            assert time.monotonic() < deadline, "no bye from the stopped worker"
            dispatcher.poll(50)
        sockets.close(linger_ms=0)
