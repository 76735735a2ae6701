"""The worker role: stateless OpenVINO inference on crops pulled from every capture.

Frames come in as raw u8 H×W×3 BGR crops (``task`` messages) and go straight into an
``AsyncInferQueue`` as zero-copy views of the ZeroMQ buffers; PrePostProcessor inside the
compiled model does the u8→f32 and NHWC→NCHW work. Credits belong to the worker: it holds
at most its infer requests (OpenVINO's optimal number: what runs at once) plus one prefetch
task IN ALL, whatever the number of captures; the prefetched task is already handed to
OpenVINO, queued behind the running ones, so no request waits on Python between two
tasks. It grants a freed slot to one ready capture at a time, fairly (the worker half is
:class:`~stream.grants.GrantScheduler`, the capture half :mod:`stream.dispatch`).

Completions arrive on OpenVINO's threads; the callback turns logits into a true softmax and
top-k and hands a ``result`` to :class:`~stream.worker_results.ResultSender`, the one
thread that uses the results socket (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zmq

from stream.config import StreamConfig, connect_endpoint
from stream.dispatch import decode_as, worker_socket
from stream.grants import GrantScheduler
from stream.health import beat
from stream.model.runtime import top_ids
from stream.protocol import Drop, Ready, Result, Task
from stream.runtime import CpuMeter, Rejections
from stream.transport import Socket, Sockets
from stream.worker_results import ResultSender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs besides its sockets and compiled model."""

    name: str
    top_k: int = 5
    send_probs: bool = True
    model: str = ""  # model identity announced in every credit (stream.model.identity)


class InferQueue(Protocol):
    """The slice of ``openvino.AsyncInferQueue`` the worker uses (the OpenVINO seam)."""

    def __len__(self) -> int: ...

    def set_callback(self, callback: Any) -> None: ...

    def is_ready(self) -> bool: ...

    def start_async(self, inputs: Any, userdata: Any = None, share_inputs: bool = False
                    ) -> None: ...

    def wait_all(self) -> None: ...


def default_worker_name() -> str:
    """``host:pid``: unique across machines, readable in logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def softmax_topk_f32(logits: np.ndarray, k: int) -> tuple[np.ndarray, list[int], list[float]]:
    """Probabilities over all classes (f32) and the top-k ids/scores, best first."""
    flat = logits.reshape(-1)
    top = top_ids(flat, min(k, flat.size))
    z = flat.astype(np.float32, copy=True)
    z -= z.max()
    np.exp(z, out=z)
    z /= z.sum()
    return z, [int(i) for i in top], [float(z[i]) for i in top]


class Worker:
    """Pulls tasks from every capture, runs them asynchronously, pushes results.

    One DEALER socket per capture carries ``ready`` notes and tasks in, and ``credit``
    messages out (one granted slot at a time, finished seqs, heartbeat: see
    :class:`~stream.grants.GrantScheduler`). The main thread owns those sockets and never
    blocks in
    OpenVINO: it only starts a request when one is idle (``AsyncInferQueue.is_ready``), so
    heartbeats keep flowing even when inference is slow. Completions are announced to it
    over an inproc socket by the sender thread, which owns the results socket.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        compiled: Any,
        input_hw: tuple[int, int],
        captures: list[Socket],
        results: Socket,
        sockets: Sockets,
        stop: threading.Event,
        requests: int = 0,
        prefetch: int = 1,
        infer_queue: InferQueue | None = None,
    ) -> None:
        self.s = settings
        self.compiled = compiled
        self.input_hw = input_hw
        self.captures = captures
        self.results = results
        self.sockets = sockets
        self.stop = stop
        n = requests or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.nireq = max(1, n)
        # Tasks held here in all, from every capture: enough to keep every request busy
        # while the next task is on its way, few enough to keep latency low.
        self.credits = GrantScheduler(settings.name, self.nireq, prefetch, captures,
                                      model=settings.model)
        self.capacity = self.credits.capacity
        if infer_queue is None:
            import openvino as ov  # the OpenVINO boundary lives here and in stream.model

            # As many requests as tasks held: a prefetched task waits inside OpenVINO,
            # which starts it the moment a stream frees, not here for the completion to
            # reach this thread.
            infer_queue = ov.AsyncInferQueue(compiled, self.capacity)
        self.queue: InferQueue = infer_queue
        self.slots = len(infer_queue)
        """Requests in the infer queue (``capacity`` when the worker builds it)."""
        self.queue.set_callback(self._done)
        self.pending: deque[tuple[int, Task, Any]] = deque()
        self.in_openvino = 0
        """Tasks handed to OpenVINO (running or queued there) and not finished."""
        self.counters: Counter[str] = Counter()
        self._rejections = Rejections(log)
        self._lock = threading.Lock()
        self.sender = ResultSender(results, self.counters, self._lock)
        self.infer_ms_total = 0.0
        self.cpu = CpuMeter()  # process cpu per finished task, from the first one on
        self._wake_addr = f"inproc://worker-wake-{id(self)}"

    def _done(self, request: Any, userdata: tuple[int, Task, float, Any]) -> None:
        """OpenVINO completion callback: logits → softmax/top-k → sender thread."""
        src, task, t0, _keepalive = userdata
        try:
            logits = request.get_output_tensor(0).data
            probs, ids, scores = softmax_topk_f32(logits, self.s.top_k)
            infer_ms = (time.perf_counter() - t0) * 1000.0
            with self._lock:
                self.infer_ms_total += infer_ms
            buf = probs.tobytes() if self.s.send_probs else None
            self.sender.put(src, task.seq, Result(task.stream, task.seq, task.ts, self.s.name,
                                                  tuple(ids), tuple(scores), infer_ms, buf),
                            ran=True)
        except Exception:  # never let a callback error kill the OpenVINO thread silently
            log.exception("inference callback failed for %s #%d", task.stream, task.seq)
            with self._lock:
                self.counters["callback_errors"] += 1
            # Still "done" for the capture (or it would wait for this seq for ever), and a
            # named drop for the sink.
            self.sender.put(src, task.seq, Drop(task.stream, task.seq, task.pts, task.ts,
                                                "inference_error"), ran=True)

    def _take_tasks(self, i: int) -> None:
        sock = self.captures[i]
        h, w = self.input_hw
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            msg: Task | Ready | None = decode_as(
                (Task, Ready), [p.buffer for p in parts], self._reject,
                "task socket (from a capture)")
            if msg is None:
                continue
            if isinstance(msg, Ready):
                self.credits.on_ready(i, msg)
                continue
            self.credits.received(i)
            if (msg.height, msg.width) != (h, w):
                self._reject(f"crop {msg.width}x{msg.height} from {msg.stream} does not match "
                             f"the model input {w}x{h}: are capture and worker using the "
                             "same model?")
                # Done for the capture, a named drop for the sink (via the sender thread,
                # the only user of the results socket).
                self.sender.put(i, msg.seq, Drop(msg.stream, msg.seq, msg.pts, msg.ts,
                                                 "bad_input"), ran=False)
                continue
            self.pending.append((i, msg, parts))
            self.counters["received"] += 1

    def _start_ready(self) -> None:
        h, w = self.input_hw
        while self.pending and self.queue.is_ready():
            i, task, parts = self.pending.popleft()
            arr = np.frombuffer(task.image, dtype=np.uint8).reshape(1, h, w, 3)
            # share_inputs: OpenVINO reads the ZeroMQ buffer in place; `parts` stays
            # referenced in userdata until the request completes.
            self.queue.start_async({0: arr}, (i, task, time.perf_counter(), parts),
                                   share_inputs=True)
            self.in_openvino += 1

    def run(self) -> int:
        """Work until ``stop`` is set; in-flight requests finish and their results go out."""
        # Completions reach this thread over an inproc PUSH→PULL pair (ZMQ sockets are not
        # thread-safe); the PUSH end is made here and handed to the sender thread.
        wake = self.sockets.socket(zmq.PULL, linger_ms=0)
        self.sockets.bind(wake, self._wake_addr, "worker wake-up")
        wake_tx = self.sockets.socket(zmq.PUSH, linger_ms=0)
        self.sockets.connect(wake_tx, self._wake_addr, "worker wake-up")
        self.sender.start(wake_tx)
        poller = zmq.Poller()
        poller.register(wake, zmq.POLLIN)
        for sock in self.captures:
            poller.register(sock, zmq.POLLIN)
        h, w = self.input_hw
        log.info("worker %s ready: %d infer requests at once, holds at most %d tasks "
                 "(the rest queued in OpenVINO), input %dx%d",
                 self.s.name, self.nireq, self.capacity, w, h)
        last_report = time.monotonic()
        try:
            while not self.stop.is_set():
                ready = dict(poller.poll(self._wait_ms()))
                beat()  # `stream health --role worker`: the loop turns
                if wake in ready:
                    self._collect_done(wake)
                for i, sock in enumerate(self.captures):
                    if sock in ready:
                        self._take_tasks(i)
                self._start_ready()
                self.credits.flush()
                now = time.monotonic()
                if now - last_report > 30:
                    last_report = now
                    log.info("worker %s: %s", self.s.name, dict(self.counters))
        finally:
            self._shutdown(wake)
        return 0

    def _wait_ms(self) -> int:
        """How long the loop may sleep when nothing arrives: 1 ms while a task waits for a
        request that finished but that OpenVINO has not marked idle yet (the completion
        reaches this thread before OpenVINO's own bookkeeping ends: no later message
        would wake the loop for it), else 100 ms (heartbeats, the stop flag)."""
        return 1 if self.pending and self.in_openvino < self.slots else 100

    def _collect_done(self, wake: Socket) -> None:
        while True:
            try:
                src, seq, ran = wake.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.credits.done(int(src), int(seq))
            if ran == b"1":
                self.in_openvino -= 1
            self.counters["done"] += 1
            self.cpu.first(self.counters["done"])

    def _shutdown(self, wake: Socket) -> None:
        """Finish running requests, hand back queued tasks (bye), flush results."""
        self.queue.wait_all()
        self.sender.close()  # bounded: what cannot be delivered is given up after 2 s
        self._collect_done(wake)
        # Tasks that never started are not "done": the bye tells captures to re-send them.
        self.pending.clear()
        self.credits.bye()
        if self.credits.ungranted:
            self.counters["ungranted"] += self.credits.ungranted
        done = self.counters["done"]
        per_frame = (f"; mean request time {self.infer_ms_total / done:.1f} ms; "
                     f"{self.cpu.report(done)}") if done else ""
        log.info("worker %s stopped: %s%s", self.s.name, dict(self.counters), per_frame)

    def _reject(self, why: str) -> None:
        self.counters["rejected"] += 1
        self._rejections(why)


def worker_model(path: str) -> Path:
    """The IR a worker runs: ``path``, first built there when it is the default model
    (as `stream run` does), so a fresh inference machine needs nothing copied.

    Raises:
        ModelError: another path that does not exist on this machine.
    """
    from stream.errors import ModelError
    from stream.model.builder import DEFAULT_OUTPUT, ensure_default_model

    xml = Path(path)
    if xml.is_file():
        return xml
    if xml.resolve() == DEFAULT_OUTPUT.resolve():
        log.info("no model at %s: building the default IR (first start on this machine)", xml)
        return ensure_default_model(xml)
    raise ModelError(f"no model at {xml} on this machine: copy the .xml and .bin there, or "
                     f"run `stream model build --output {xml}`")


def run_worker(cfg: StreamConfig, stop: threading.Event, host: str | None = None,
               name: str | None = None) -> int:
    """Wire and run one worker (``stream worker``): connect to every capture and the sink.

    Args:
        host: the machine the captures and sink run on (None: the configured addresses).
        name: worker name in results and logs (default ``host:pid``).
    """
    from stream.model.identity import ir_digest, model_identity
    from stream.model.runtime import compile_classifier, resolve_hint
    from stream.result_router import ResultRouter
    from stream.security import Curve

    m = cfg.model
    path = worker_model(m.path)
    compiled, info = compile_classifier(
        str(path), m.device, resolve_hint(m.hint, [s.is_live() for s in cfg.sources]),
        m.precision, m.streams, m.requests)
    identity = model_identity(info.width, info.height, info.num_classes, ir_digest(path))
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    chosen = "" if m.precision is not None or "float32" in str(precision) else (
        " (OpenVINO's default here; without AMX f32 can be the faster: `stream bench` "
        "measures both)")
    log.info("compiled %s (%s) on %s: inference precision %s%s", info.path, identity,
             m.device, precision, chosen)
    # CURVE (security.key): every capture's and the sink's public key is checked.
    with Sockets(curve=Curve.from_config(cfg.security)) as sockets:
        captures: list[Socket] = []
        for i, src in enumerate(cfg.sources):
            sock = worker_socket(sockets)
            sockets.connect(sock, cfg.frames_connect(i, host), "frames",
                            sockets.server_key("capture", src.capture_key))
            captures.append(sock)
        router = None
        if len(cfg.sink_places()) > 1:  # several sinks: each result to its stream's sink
            router = ResultRouter(sockets, cfg.sink_places(), host)
            results = router.front()
            router.start()
        else:
            # Results are small (top-k + probabilities); linger lets the last ones leave.
            results = sockets.socket(zmq.PUSH, sndhwm=1000, linger_ms=2000)
            sockets.connect(results, connect_endpoint(cfg.transport.sink, host), "sink",
                            sockets.server_key("sink"))
        worker = Worker(WorkerSettings(name or default_worker_name(), m.top_k,
                                       model=identity), compiled,
                        (info.height, info.width), captures, results, sockets, stop,
                        m.requests)
        try:
            return worker.run()
        finally:
            if router is not None:
                router.stop()  # forwards what is queued; before the sockets close
