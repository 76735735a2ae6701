"""Faults (issue 4): workers killed mid-run, fuzzed sockets, slow subscribers, shutdown.

Everything here is real: `stream` processes started as a user would, real ZeroMQ sockets,
H.264 clips made by ffmpeg, the colour-oracle IR from conftest.py (correct class known).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from stream import transport
from stream.events import Subscriber
from stream.protocol import Credit, Eos, Frame, Hello, Result, Task, decode, encode
from tests.conftest import ORACLE_COLOURS, make_clip, runs_of_classes, write_config

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/usr/bin/ffmpeg").exists(), reason="needs Debian's ffmpeg"),
]


def stream_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream", *args]


def role_pids(parent: int, name: str) -> list[int]:
    """Pids of the children of ``parent`` whose command line contains ``name``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and name in cmd:
            pids.append(int(stat.parent.name))
    return pids


class EventLog:
    """Collects events from the sink in a thread (subscribed before the run starts)."""

    def __init__(self, endpoint: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self, endpoint: str) -> None:
        with Subscriber(endpoint) as sub:
            self._ready.set()
            while not self._stop.is_set():
                ev = sub.recv(0.2)
                if ev is not None:
                    self.events.append(ev)

    def of(self, kind: str, stream: str | None = None) -> list[dict[str, Any]]:
        return [e for e in list(self.events)
                if e["type"] == kind and (stream is None or e["stream"] == stream)]

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < end, "timed out waiting for events"
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def events_at() -> Iterator[Callable[[str], EventLog]]:
    logs: list[EventLog] = []

    def make(endpoint: str) -> EventLog:
        logs.append(EventLog(endpoint))
        return logs[-1]

    yield make
    for log in logs:
        log.close()


def summary_row(stdout: str, stream: str, stderr: str = "") -> dict[str, Any]:
    """The sink's summary line for a stream: captured, labelled, dropped, written, reasons."""
    for line in stdout.splitlines():
        cols = line.split()
        if cols and cols[0] == stream and cols[1].isdigit():
            reasons = dict(re.findall(r"(\w+)=(\d+)", line))
            return {"captured": int(cols[1]), "labelled": int(cols[2]),
                    "dropped": int(cols[3]), "written": int(cols[4]),
                    "reasons": {k: int(v) for k, v in reasons.items()}}
    raise AssertionError(f"no summary row for {stream} in:\n{stdout}\n{stderr}")


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.mark.parametrize("policy", ["wait", "drop"])
def test_worker_killed_mid_run(policy: str, tmp_path: Path, oracle_model: tuple[Path, Path],
                               free_port_base: Callable[[int], int],
                               events_at: Callable[[str], EventLog]) -> None:
    """kill -9 one of two workers mid-stream: every frame still ends labelled or dropped
    with a reason (wait: re-sent, so all labelled), and the output video keeps every frame."""
    classes = runs_of_classes(150, seed=7)
    clip = make_clip(tmp_path / "clip.mp4", classes, fps=30.0)
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       workers=2, output_dir=tmp_path / "out",
                       sources=[{"id": "cam", "url": str(clip), "realtime": True,
                                 "policy": policy}])
    ev = events_at(f"tcp://127.0.0.1:{base}")
    run = subprocess.Popen(stream_cmd("run", str(cfg)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        ev.wait_for(lambda: len(ev.of("label", "cam")) >= 30, 60)
        (victim,) = role_pids(run.pid, "--name worker-0")
        os.kill(victim, signal.SIGKILL)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    row = summary_row(out, "cam")
    assert row["captured"] == len(classes)
    assert row["labelled"] + row["dropped"] == row["captured"]
    assert sum(row["reasons"].values()) == row["dropped"]
    if policy == "wait":
        assert row["labelled"] == len(classes), f"lossless source lost frames: {row}"
    assert row["written"] == row["captured"]
    assert count_frames(tmp_path / "out" / "cam.mp4") == row["captured"]
    ev.wait_for(lambda: bool(ev.of("summary", "cam")), 10)
    labels_seen = ev.of("label", "cam")
    seqs = [e["seq"] for e in labels_seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e["labels"][0]["id"] == classes[e["seq"]] for e in labels_seen)
    print(f"worker-kill ({policy}): {row}")


def fuzz_messages(n: int, seed: int, valid: list[list[bytes]]) -> Iterator[list[bytes]]:
    """Random multipart messages: noise, random msgpack, mutated and truncated valid ones."""
    rng = random.Random(seed)
    types = ["task", "frame", "result", "hello", "drop", "eos", "status", "credit", "x"]
    for i in range(n):
        kind = i % 5
        if kind == 0:
            yield [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 4))]
        elif kind == 1:
            head = {"v": rng.choice([1, 1, 2, 0, "1", None]), "t": rng.choice(types),
                    "stream": rng.choice(["cam", "", "x" * 100, 5]),
                    "seq": rng.choice([0, -1, 2**64 - 1, "a", None]),
                    "width": rng.choice([224, 0, 10**9]), "height": 224}
            yield [msgpack.packb(head), rng.randbytes(rng.randrange(0, 300))]
        elif kind == 2:
            # Mutate the header: a mutated pixel buffer is just another valid image.
            frames = [bytes(f) for f in rng.choice(valid)]
            j = 0
            b = bytearray(frames[j])
            for _ in range(rng.randrange(1, 6)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            frames[j] = bytes(b)
            yield frames
        elif kind == 3:
            frames = [bytes(f) for f in rng.choice(valid)]
            yield [frames[0][: rng.randrange(len(frames[0]))], *frames[1:]]
        else:
            yield [*[bytes(f) for f in rng.choice(valid)][:1], b"\x00" * rng.randrange(5)]


def test_sink_survives_10000_fuzzed_messages(tmp_path: Path, oracle_model: tuple[Path, Path],
                                            free_port_base: Callable[[int], int],
                                            events_at: Callable[[str], EventLog]) -> None:
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       sources=[{"id": "cam", "url": "unused.mp4"}])
    events_at(f"tcp://127.0.0.1:{base}")
    sink = subprocess.Popen(stream_cmd("sink", str(cfg)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(f"tcp://127.0.0.1:{base + 1}")
    try:
        probs = np.full(8, 0.125, "<f4").tobytes()
        valid = [[bytes(f) for f in encode(m)] for m in (
            Hello("cam", "file", 25.0, 4, 4, 1, "x", "wait"),
            Frame("cam", 0, 0.0, 1.0, 4, 4, bytes(48)),
            Result("cam", 0, 1.0, "w", (2,), (0.9,), 1.0, probs),
        )]
        for msg in fuzz_messages(10_000, seed=1, valid=valid):
            push.send_multipart(msg)
        # After the storm, one real frame: the sink must still label it and end cleanly.
        for m in (Hello("cam", "file", 25.0, 4, 4, 1, "x", "wait"),
                  Frame("cam", 0, 0.0, time.time(), 4, 4, None),
                  Result("cam", 0, time.time(), "w", (2, 1), (0.9, 0.1), 1.0, probs),
                  Eos("cam", 1, "end")):
            transport.send(push, m)
        out, err = sink.communicate(timeout=60)
    finally:
        push.close()
        ctx.term()
        if sink.poll() is None:
            sink.kill()
            sink.communicate()
    assert sink.returncode == 0, err
    assert "Traceback" not in err
    m = re.search(r"rejected malformed messages: (\d+)", out)
    assert m and int(m.group(1)) > 5000, out
    # Mutated messages that still decode are legitimate frames of "cam" (and a hello with
    # seq 0 after them starts a new session), so only the accounting is exact here.
    row = summary_row(out, "cam")
    assert row["labelled"] >= 1
    assert row["labelled"] + row["dropped"] == row["captured"]


def test_worker_survives_10000_fuzzed_messages(tmp_path: Path, oracle_model: tuple[Path, Path],
                                              free_port_base: Callable[[int], int]) -> None:
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       sources=[{"id": "cam", "url": "unused.mp4"}])
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    # A ROUTER silently drops what exceeds its high-water mark; the storm must not push
    # the final valid task out of the queue: block instead.
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDTIMEO, 60_000)
    router.bind(f"tcp://127.0.0.1:{base + 2}")
    inbox = ctx.socket(zmq.PULL)
    inbox.setsockopt(zmq.LINGER, 0)
    inbox.bind(f"tcp://127.0.0.1:{base + 1}")
    worker = subprocess.Popen(stream_cmd("worker", str(cfg)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert router.poll(60_000), "the worker never announced itself"
        ident, *frames = router.recv_multipart()
        credit = decode(frames)
        assert isinstance(credit, Credit) and credit.capacity >= 1
        crop = np.full((224, 224, 3), ORACLE_COLOURS[5], np.uint8)
        valid = [[bytes(f) for f in encode(Task("cam", 0, 0.0, 1.0, 224, 224, crop.tobytes()))],
                 [bytes(f) for f in encode(Credit("x", 1))]]
        for msg in fuzz_messages(10_000, seed=2, valid=valid):
            router.send_multipart([ident, *msg])
        task = Task("cam", 12345, 0.0, 1.0, 224, 224, crop.tobytes())
        router.send_multipart([ident, *encode(task)])
        deadline = time.monotonic() + 60
        got = None
        while time.monotonic() < deadline and got is None:
            if inbox.poll(500):
                msg = decode(inbox.recv_multipart())
                if isinstance(msg, Result) and msg.seq == 12345:
                    got = msg
        assert got is not None, "no result for the valid task after the fuzz storm"
        assert got.ids[0] == 5 and got.scores[0] > 0.9
        assert worker.poll() is None, "the worker died"
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=10)
    finally:
        router.close()
        inbox.close()
        ctx.term()
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert "Traceback" not in err
    assert "rejected message" in err


def test_sigint_drains_and_closes_a_playable_video(tmp_path: Path,
                                                   oracle_model: tuple[Path, Path],
                                                   free_port_base: Callable[[int], int],
                                                   events_at: Callable[[str], EventLog]) -> None:
    classes = runs_of_classes(300, seed=3)
    clip = make_clip(tmp_path / "clip.mp4", classes, fps=25.0)
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       output_dir=tmp_path / "out",
                       sources=[{"id": "cam", "url": str(clip), "realtime": True}])
    ev = events_at(f"tcp://127.0.0.1:{base}")
    run = subprocess.Popen(stream_cmd("run", str(cfg)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        ev.wait_for(lambda: len(ev.of("label", "cam")) >= 20, 60)
        t0 = time.monotonic()
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert took < 5.0, f"shutdown took {took:.1f} s"
    row = summary_row(out, "cam")
    assert 20 <= row["captured"] < len(classes)
    assert row["labelled"] + row["dropped"] == row["captured"]
    assert count_frames(tmp_path / "out" / "cam.mp4") == row["written"] == row["captured"]


def test_a_subscriber_that_never_reads_does_not_slow_the_pipeline(
    tmp_path: Path, oracle_model: tuple[Path, Path], free_port_base: Callable[[int], int],
) -> None:
    """A camera-like source (50 fps, paced) with a connected subscriber that never reads
    vs none: the pipeline keeps the source's pace either way, within 5%.

    Paced, the rate is set by the source, not by how busy this shared 2-core machine
    happens to be, so the comparison is stable; a publisher that blocked on the stalled
    subscriber (its queue fills within the first second) would fall far behind it.
    """
    classes = runs_of_classes(250, seed=5)
    clip = make_clip(tmp_path / "clip.mp4", classes, size=(320, 240), fps=50.0)
    xml, labels = oracle_model

    def run_once(stalled: bool) -> tuple[float, dict[str, Any]]:
        base = free_port_base(3)
        cfg = write_config(tmp_path / f"cfg{base}.yaml", port_base=base, model=xml,
                           labels=labels,
                           sources=[{"id": "cam", "url": str(clip), "realtime": True}])
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1)
        sub.setsockopt(zmq.RCVBUF, 4096)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        if stalled:
            sub.connect(f"tcp://127.0.0.1:{base}")
        try:
            res = subprocess.run(stream_cmd("run", str(cfg)), capture_output=True, text=True,
                                 timeout=180)
        finally:
            sub.close()
            ctx.term()
        assert res.returncode == 0, res.stderr
        row = summary_row(res.stdout, "cam", res.stderr)
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith("cam "))
        return float(line.split()[5]), row

    free_fps, free_row = run_once(False)
    stalled_fps, stalled_row = run_once(True)
    ratio = stalled_fps / free_fps
    print(f"slow subscriber: {stalled_fps:.1f} fps vs {free_fps:.1f} fps without "
          f"(ratio {ratio:.3f}); labelled {stalled_row['labelled']} vs {free_row['labelled']}")
    assert ratio >= 0.95
    assert stalled_row["labelled"] >= 0.95 * free_row["labelled"]
    assert stalled_row["captured"] == free_row["captured"] == len(classes)


def test_capture_killed_mid_run_does_not_wedge_the_rest(
    tmp_path: Path, oracle_model: tuple[Path, Path], free_port_base: Callable[[int], int],
    events_at: Callable[[str], EventLog],
) -> None:
    """kill -9 the capture (no eos ever comes): the sink still ends with a summary and the
    run exits, within the reorder timeout plus the launcher's grace."""
    classes = runs_of_classes(300, seed=9)
    clip = make_clip(tmp_path / "clip.mp4", classes, fps=25.0)
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       reorder_timeout_s=1.0,
                       sources=[{"id": "cam", "url": str(clip), "realtime": True}])
    ev = events_at(f"tcp://127.0.0.1:{base}")
    run = subprocess.Popen(stream_cmd("run", str(cfg)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        ev.wait_for(lambda: len(ev.of("label", "cam")) >= 20, 60)
        (victim,) = role_pids(run.pid, "capture")
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        out, err = run.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 2, "a capture that died must make the run fail"
    assert "capture failed for cam" in err
    assert took < 1.0 + 5.0 + 15.0
    row = summary_row(out, "cam", err)
    assert row["labelled"] >= 20 and row["labelled"] + row["dropped"] == row["captured"]


def test_sink_restart_resumes_the_flow(tmp_path: Path, oracle_model: tuple[Path, Path],
                                       free_port_base: Callable[[int], int],
                                       events_at: Callable[[str], EventLog]) -> None:
    """Roles run standalone (as on several machines); kill -9 the sink mid-stream: capture
    and worker keep going, and a new sink picks the stream up where it is."""
    classes = runs_of_classes(500, seed=11)
    clip = make_clip(tmp_path / "clip.mp4", classes, fps=25.0)
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       sources=[{"id": "cam", "url": str(clip), "realtime": True}])
    ev = events_at(f"tcp://127.0.0.1:{base}")
    procs: dict[str, subprocess.Popen[str]] = {}

    def start(name: str, *args: str) -> None:
        procs[name] = subprocess.Popen(stream_cmd(*args), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)

    try:
        start("sink", "sink", str(cfg), "--forever")
        start("worker", "worker", str(cfg))
        start("capture", "capture", str(cfg), "--source", "cam")
        ev.wait_for(lambda: len(ev.of("label", "cam")) >= 15, 60)
        procs["sink"].kill()
        procs["sink"].communicate()
        first_gone = max(e["seq"] for e in ev.of("label", "cam"))
        time.sleep(1.0)  # the stream goes on without a sink for a while
        assert procs["capture"].poll() is None and procs["worker"].poll() is None
        start("sink", "sink", str(cfg), "--forever")
        ev.wait_for(lambda: any(e["seq"] > first_gone + 10 for e in ev.of("label", "cam")),
                    60)
        after = [e["seq"] for e in ev.of("label", "cam") if e["seq"] > first_gone]
        assert after == sorted(after), "the new sink must keep seq order"
        for name in ("capture", "worker", "sink"):
            procs[name].send_signal(signal.SIGTERM)
        for name in ("capture", "worker", "sink"):
            procs[name].communicate(timeout=15)
            assert procs[name].returncode == 0, name
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_corrupt_video_is_decoded_as_far_as_it_goes(tmp_path: Path,
                                                    oracle_model: tuple[Path, Path],
                                                    free_port_base: Callable[[int], int]) -> None:
    """Garbage bytes in the middle of an H.264 file: no crash, no hang, and the summary
    still adds up for whatever the decoder could read."""
    classes = runs_of_classes(120, seed=13)
    clip = make_clip(tmp_path / "clip.mp4", classes)
    data = bytearray(clip.read_bytes())
    rng = random.Random(0)
    start = len(data) // 3
    for i in range(start, start + len(data) // 4, 97):
        data[i] = rng.randrange(256)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       sources=[{"id": "cam", "url": str(bad)}])
    res = subprocess.run(stream_cmd("run", str(cfg)), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    row = summary_row(res.stdout, "cam", res.stderr)
    assert row["captured"] > 0
    assert row["labelled"] + row["dropped"] == row["captured"]
