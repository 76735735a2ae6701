"""Faults (issue 4): workers killed mid-run, fuzzed sockets, slow subscribers, shutdown.

Everything here is real: `stream` processes started as a user would, real ZeroMQ sockets,
H.264 clips made by ffmpeg, the colour-oracle IR from conftest.py (correct class known).
Every count is checked against one the sink did not compute: the number of frames the test
put in the clip, the capture's own ``N frames captured`` line, the frames ffprobe finds in
the output video, and the label events a real subscriber received. How fast things happen
(shutdown time, pace with a stalled subscriber) is printed by ``scripts/latency.py``.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from conftest import (
    CAPTURED_UNKNOWN,
    ORACLE_COLOURS,
    EventLog,
    assert_in_order,
    captured_by_capture,
    make_clip,
    reap,
    requires_ffmpeg,
    runs_of_classes,
    summary_row,
    video_frames,
    write_config,
)

from stream import transport
from stream.protocol import Credit, Eos, Frame, Hello, Result, Status, Task, decode, encode

pytestmark = [pytest.mark.timeout(240), requires_ffmpeg]


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


def await_labels(log: EventLog, proc: subprocess.Popen[str], count: int,
                 timeout: float = 60) -> None:
    """Wait for ``count`` label events of ``cam``; fail with the run's output if it ends."""
    log.wait_for(lambda: len(log.of("label", "cam")) >= count or proc.poll() is not None,
                 timeout, f"{count} label events")
    if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.fail(f"the run ended (exit {proc.returncode}) before {count} label events "
                    f"({len(log.of('label', 'cam'))} seen):\n{out}\n{err[-3000:]}")


def run_and_kill(cfg: Path, log: EventLog, labels_first: int, role: str,
                 timeout: float) -> tuple[int, str, str]:
    """``stream run CONFIG``; once ``labels_first`` labels came, kill -9 the one child
    whose command line names ``role``; returns the run's (exit code, stdout, stderr)."""
    run = subprocess.Popen(stream_cmd("run", str(cfg)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        await_labels(log, run, labels_first)
        (victim,) = role_pids(run.pid, role)
        os.kill(victim, signal.SIGKILL)
        try:
            out, err = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # A hang: stop it (SIGTERM: the roles say where they stand as they stop) and
            # fail with what the run said, so a hang can be told apart from a slow run.
            run.terminate()
            try:
                out, err = run.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                run.kill()
                out, err = run.communicate(timeout=15)
            raise AssertionError(f"stream run did not exit within {timeout:.0f} s of the "
                                 f"kill; stdout:\n{out[-2000:]}\nstderr:\n{err[-6000:]}"
                                 ) from None
    finally:
        reap(run)
    return run.returncode, out, err


def assert_labels_right(log: EventLog, stream: str, classes: list[int]) -> list[int]:
    """The subscriber's label events of ``stream``: in seq order, none twice, each naming
    the colour the test painted into that frame. Returns their seqs."""
    got = log.of("label", stream)
    seqs = [e["seq"] for e in got]
    assert_in_order(seqs)
    wrong = [e["seq"] for e in got if e["labels"][0]["id"] != classes[e["seq"]]]
    assert not wrong, f"wrong class for seqs {wrong[:10]}"
    return seqs


@pytest.mark.parametrize("policy", ["wait", "drop"])
def test_worker_killed_mid_run(policy: str, tmp_path: Path, oracle_model: tuple[Path, Path],
                               free_port_base: Callable[[int], int],
                               event_log: Callable[[str], EventLog]) -> None:
    """kill -9 one of two workers mid-stream: every frame of the clip still ends labelled
    or dropped with a reason (wait: re-sent, so all labelled), and the output video holds
    what the table says was written (wait: every frame)."""
    classes = runs_of_classes(150, seed=7)
    n = len(classes)
    clip = make_clip(tmp_path / "clip.mp4", classes, fps=30.0)
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       workers=2, output_dir=tmp_path / "out",
                       sources=[{"id": "cam", "url": str(clip), "realtime": True,
                                 "policy": policy}])
    log = event_log(f"tcp://127.0.0.1:{base}")
    code, out, err = run_and_kill(cfg, log, 30, "--name worker-0", 120)
    assert code == 0, err
    row = summary_row(out, "cam", err)
    assert captured_by_capture(err, "cam") == n, err[-3000:]
    assert row.captured == n
    assert row.labelled + row.dropped == n
    assert sum(row.reasons.values()) == row.dropped
    log.wait_for(lambda: log.of("summary", "cam"), 10, "the summary event")
    seqs = assert_labels_right(log, "cam", classes)
    assert len(seqs) == row.labelled, "the subscriber's label events and the table disagree"
    if policy == "wait":
        assert seqs == list(range(n)), f"lossless source lost frames: {row}"
        assert row.written == n
    else:  # a live source sends a stamp instead of a frame the link cannot take (video_busy)
        assert row.written <= n
    assert video_frames(tmp_path / "out" / "cam.mp4") == row.written
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
                                            event_log: Callable[[str], EventLog]) -> None:
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       sources=[{"id": "cam", "url": "unused.mp4"}])
    log = event_log(f"tcp://127.0.0.1:{base}")
    sink = subprocess.Popen(stream_cmd("sink", str(cfg)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(f"tcp://127.0.0.1:{base + 1}")
    try:
        # The subscriber must be hearing the sink before the storm (PUB/SUB drops what is
        # published before a subscription arrives): a status until it comes through.
        deadline = time.monotonic() + 30
        while not log.of("status", "cam"):
            assert time.monotonic() < deadline, "the sink never published a status"
            transport.send(push, Status("cam", "connecting", time.time()))
            time.sleep(0.05)  # the resend interval of the probe, not a wait for an outcome
        probs = np.full(8, 0.125, "<f4").tobytes()
        valid = [[bytes(f) for f in encode(m)] for m in (
            Hello("cam", "file", 25.0, 4, 4, 1, "x", "wait"),
            Frame("cam", 0, 0.0, 1.0, 4, 4, bytes(48)),
            Result("cam", 0, 1.0, "w", (2,), (0.9,), 1.0, probs),
        )]
        for msg in fuzz_messages(10_000, seed=1, valid=valid):
            push.send_multipart(msg)
        # After the storm, one real frame (top-2 ids 2, 1: no fuzzed result has two ids):
        # the sink must still label it and end cleanly.
        for m in (Hello("cam", "file", 25.0, 4, 4, 1, "x", "wait"),
                  Frame("cam", 0, 0.0, time.time(), 4, 4, None),
                  Result("cam", 0, time.time(), "w", (2, 1), (0.9, 0.1), 1.0, probs),
                  Eos("cam", 1, "end")):
            transport.send(push, m)
        out, err = sink.communicate(timeout=60)
    finally:
        push.close()
        ctx.term()
        reap(sink)
    assert sink.returncode == 0, err
    assert "Traceback" not in err
    m = re.search(r"rejected malformed messages: (\d+)", out)
    assert m and int(m.group(1)) > 5000, out
    # Mutated messages that still decode are legitimate frames and hellos of "cam" (sessions
    # that never send an eos, so the table cannot know what they captured). What is exact:
    # the real frame was labelled once, and every label the table counts reached the
    # subscriber.
    row = summary_row(out, "cam", err)
    log.wait_for(lambda: log.of("summary", "cam"), 10, "the summary event")
    got = log.of("label", "cam")
    real = [e for e in got if e["seq"] == 0 and [x["id"] for x in e["labels"]] == [2, 1]]
    assert len(real) == 1, got[-5:]
    assert len(got) == row.labelled
    assert sum(row.reasons.values()) == row.dropped


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
        reap(worker)
    assert worker.returncode == 0, err
    assert "Traceback" not in err
    assert "rejected message" in err


def test_sigint_drains_and_closes_a_playable_video(tmp_path: Path,
                                                   oracle_model: tuple[Path, Path],
                                                   free_port_base: Callable[[int], int],
                                                   event_log: Callable[[str], EventLog]) -> None:
    """SIGINT mid-file: exit 0, the capture's eos carries its own count into the summary,
    every frame it captured is accounted, and the video holds every frame the sink wrote
    (a live source may send some as stamps only: video_busy)."""
    classes = runs_of_classes(300, seed=3)
    clip = make_clip(tmp_path / "clip.mp4", classes, fps=25.0)
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       output_dir=tmp_path / "out",
                       sources=[{"id": "cam", "url": str(clip), "realtime": True}])
    log = event_log(f"tcp://127.0.0.1:{base}")
    run = subprocess.Popen(stream_cmd("run", str(cfg)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        await_labels(log, run, 20)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        reap(run)
    assert run.returncode == 0, err
    captured = captured_by_capture(err, "cam")
    assert captured is not None, f"no `cam: N frames captured` line from the capture:\n{err}"
    assert 20 <= captured < len(classes), "SIGINT came mid-file"
    row = summary_row(out, "cam", err)
    assert row.captured == captured, "the summary must take the capture's own count (eos)"
    assert row.labelled + row.dropped == captured
    log.wait_for(lambda: log.of("summary", "cam"), 10, "the summary event")
    seqs = assert_labels_right(log, "cam", classes)
    assert len(seqs) == row.labelled and (not seqs or seqs[-1] < captured)
    # A realtime source is live: a full frame the video link cannot take at once goes to the
    # sink as a stamp only (counted as video_busy), so those frames are not in the video.
    busy = sum(int(n) for n in re.findall(r"\bvideo_busy=(\d+)", out))
    assert row.written + busy == captured and row.written > captured // 2
    assert video_frames(tmp_path / "out" / "cam.mp4") == row.written


def test_a_subscriber_that_never_reads_does_not_stall_the_pipeline(
    tmp_path: Path, oracle_model: tuple[Path, Path], free_port_base: Callable[[int], int],
    event_log: Callable[[str], EventLog],
) -> None:
    """A subscriber that never reads (1-message queue, 4 KB socket buffer) next to one that
    does: the lossless file is labelled to its last frame and the run ends; the reading
    subscriber gets every seq once, in order. A publisher that blocked on the stalled
    subscriber (its queue fills within a few events) would hang the run instead.
    (The pace with and without it is a figure: ``scripts/latency.py``.)"""
    classes = runs_of_classes(250, seed=5)
    n = len(classes)
    clip = make_clip(tmp_path / "clip.mp4", classes, size=(320, 240), fps=50.0)
    xml, labels = oracle_model
    base = free_port_base(3)
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       sources=[{"id": "cam", "url": str(clip)}])
    log = event_log(f"tcp://127.0.0.1:{base}")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(f"tcp://127.0.0.1:{base}")
    try:
        res = subprocess.run(stream_cmd("run", str(cfg)), capture_output=True, text=True,
                             timeout=180)
    finally:
        stalled.close()
        ctx.term()
    assert res.returncode == 0, res.stderr
    assert captured_by_capture(res.stderr, "cam") == n
    row = summary_row(res.stdout, "cam", res.stderr)
    assert (row.captured, row.labelled, row.dropped) == (n, n, 0)
    log.wait_for(lambda: log.of("summary", "cam"), 10, "the summary event")
    assert assert_labels_right(log, "cam", classes) == list(range(n))


def test_capture_killed_mid_run_does_not_wedge_the_rest(
    tmp_path: Path, oracle_model: tuple[Path, Path], free_port_base: Callable[[int], int],
    event_log: Callable[[str], EventLog],
) -> None:
    """kill -9 the capture (no eos ever comes): the run still ends, with exit 2 and a
    summary that says the captured count is unknown instead of making one up; what the
    subscriber saw is in order, without duplicates, and inside what the sink resolved."""
    classes = runs_of_classes(300, seed=9)
    clip = make_clip(tmp_path / "clip.mp4", classes, fps=25.0)
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       reorder_timeout_s=1.0,
                       sources=[{"id": "cam", "url": str(clip), "realtime": True}])
    log = event_log(f"tcp://127.0.0.1:{base}")
    code, out, err = run_and_kill(cfg, log, 20, "capture", 60)
    assert code == 1, "a capture that died is a run-time failure (exit 1)"
    assert "capture failed for cam (exit -9)" in err
    assert captured_by_capture(err, "cam") is None, "a killed capture cannot report a count"
    row = summary_row(out, "cam", err)
    assert row.captured is None and CAPTURED_UNKNOWN.search(out), (
        f"no eos came, so captured must be unknown, not assumed:\n{out}")
    summary = log.wait_for(lambda: log.of("summary", "cam"), 10, "the summary event")[-1]
    assert summary["captured"] is None, summary  # the event says unknown too (null)
    seqs = assert_labels_right(log, "cam", classes)
    assert len(seqs) == row.labelled == summary["labelled"] >= 20
    resolved = row.labelled + row.dropped
    assert sum(row.reasons.values()) == row.dropped
    assert seqs[-1] < resolved <= len(classes), "labels outside the frames the sink resolved"


def test_sink_restart_resumes_the_flow(tmp_path: Path, oracle_model: tuple[Path, Path],
                                       free_port_base: Callable[[int], int],
                                       event_log: Callable[[str], EventLog]) -> None:
    """Roles run standalone (as on several machines); kill -9 the sink mid-stream: capture
    and worker keep going (same processes throughout), and a new sink picks the stream up
    where it is, in order."""
    classes = runs_of_classes(500, seed=11)
    clip = make_clip(tmp_path / "clip.mp4", classes, fps=25.0)
    base = free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       sources=[{"id": "cam", "url": str(clip), "realtime": True}])
    log = event_log(f"tcp://127.0.0.1:{base}")
    procs: dict[str, subprocess.Popen[str]] = {}

    def start(name: str, *args: str) -> None:
        procs[name] = subprocess.Popen(stream_cmd(*args), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)

    try:
        start("sink", "sink", str(cfg), "--forever")
        start("worker", "worker", str(cfg))
        start("capture", "capture", str(cfg), "--source", "cam")
        await_labels(log, procs["sink"], 15)
        procs["sink"].kill()
        procs["sink"].communicate()
        killed_at = time.monotonic()
        last_before = max(log.seqs("cam"))
        # The source is paced at 25 fps, so it moves on while the new sink starts.
        start("sink", "sink", str(cfg), "--forever")
        log.wait_for(lambda: any(s > last_before + 10 for s in log.seqs("cam", killed_at)),
                     60, "labels from the new sink")
        after = log.seqs("cam", killed_at)
        assert_in_order(after, "label seqs after the restart")
        assert after[0] > last_before, "the new sink repeated or reordered old seqs"
        assert all(e["labels"][0]["id"] == classes[e["seq"]]
                   for e in log.of("label", "cam", killed_at))
        assert procs["capture"].poll() is None and procs["worker"].poll() is None
        for name in ("capture", "worker", "sink"):
            procs[name].send_signal(signal.SIGTERM)
        for name in ("capture", "worker", "sink"):
            procs[name].communicate(timeout=15)
            assert procs[name].returncode == 0, name
    finally:
        for p in procs.values():
            reap(p)


def test_corrupt_video_is_decoded_as_far_as_it_goes(tmp_path: Path,
                                                    oracle_model: tuple[Path, Path],
                                                    free_port_base: Callable[[int], int],
                                                    event_log: Callable[[str], EventLog]) -> None:
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
    log = event_log(f"tcp://127.0.0.1:{base}")
    res = subprocess.run(stream_cmd("run", str(cfg)), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    captured = captured_by_capture(res.stderr, "cam")
    assert captured is not None and 0 < captured <= len(classes), res.stderr[-3000:]
    row = summary_row(res.stdout, "cam", res.stderr)
    assert row.captured == captured, "the summary must take the capture's own count (eos)"
    assert row.labelled + row.dropped == captured
    log.wait_for(lambda: log.of("summary", "cam"), 10, "the summary event")
    seqs = log.seqs("cam")
    assert_in_order(seqs)  # (classes unchecked: a damaged frame may decode to any colour)
    assert len(seqs) == row.labelled and (not seqs or seqs[-1] < captured)
