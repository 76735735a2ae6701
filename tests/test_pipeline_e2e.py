"""End to end: `stream run` as a user runs it, on real H.264 clips, real ZMQ, real OpenVINO.

The oracle model (conftest) makes the right answer known for every frame, so these tests
check the product's promises exactly: one label event per frame, in seq order, with the
right class (DESIGN invariants 1 and 2), output videos with every frame and the labels
drawn, and clean failures on bad input (invariant 4).

Slow joiner: the sink binds its PUB socket when it starts, and the subscriber (conftest's
EventLog) is connected before the run starts, with a 10 ms reconnect interval, so it joins
within milliseconds of the bind. Label events only start after a worker has imported
OpenVINO and compiled the model (~0.5-1 s later on this machine), so none can be lost at
the start; the tests also check that a status event arrived before the first label event.
Counts are checked against the frames each test encoded and the capture's own
``N frames captured`` line, never against the sink's figures alone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import (
    ORACLE_COLOURS,
    ORACLE_NAMES,
    EventLog,
    captured_by_capture,
    find_free_port_base,
    make_clip,
    port_is_free,
    runs_of_classes,
    summary_rows,
    video_frames,
    write_config,
)

from stream.model.labels import load_labels

E2E_TIMEOUT = 240  # pytest-timeout per end-to-end test (the box may be shared)
RUN_TIMEOUT = 180.0  # one `stream run`
BAD_INPUT_TIMEOUT = 30.0  # a bad input must be reported within this
LABEL_KEYS = {"v", "type", "stream", "seq", "pts", "ts", "labels", "latency_ms"}
DROP_REASONS = {"busy", "worker_lost", "shutdown", "lost", "bad_input"}


# --------------------------------------------------------------------------- helpers


@dataclass
class Ran:
    code: int
    out: str
    err: str


def run_stream(args: Sequence[str], cwd: Path, timeout: float = RUN_TIMEOUT) -> Ran:
    """`python -m stream ARGS` in ``cwd``; on timeout SIGTERM (children stop in order) and
    fail the test: the timeout bounds a hang, it is not a speed target."""
    proc = subprocess.Popen([sys.executable, "-m", "stream", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"`stream {' '.join(args)}` did not end within {timeout:.0f} s\n{err[-3000:]}")
    return Ran(proc.returncode, out, err)


def wait_summaries(log: EventLog, streams: Sequence[str]) -> list[dict[str, Any]]:
    """Every event received once the summary events of all ``streams`` are in."""
    log.wait_for(lambda: {e["stream"] for e in log.of("summary")} >= set(streams), 10,
                 f"summary events of {list(streams)}")
    return [e for _, e in list(log.events)]


def of_type(events: list[dict[str, Any]], t: str, stream: str | None = None) -> list[dict]:
    return [e for e in events if e["type"] == t and (stream is None or e["stream"] == stream)]


def read_video(path: Path) -> tuple[float, float, list[np.ndarray]]:
    """(CAP_PROP_FRAME_COUNT, fps, every decoded frame) of a video file."""
    cap = cv2.VideoCapture(str(path))
    try:
        assert cap.isOpened(), f"cannot open {path}"
        count, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    return count, fps, frames


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- fixtures


def test_clip_decodes_and_oracle_is_right(tmp_path: Path, oracle_model: tuple[Path, Path]) -> None:
    """The fixtures themselves: OpenCV decodes every frame and the oracle names its colour."""
    from stream.model.runtime import compile_classifier
    from stream.preprocess import center_crop_resize

    classes = runs_of_classes(30, seed=7)
    clip = make_clip(tmp_path / "c.mp4", classes, size=(320, 240), fps=25)
    compiled, info = compile_classifier(oracle_model[0], hint="LATENCY")
    assert (info.input_name, info.output_name, info.num_classes) == ("image", "probs", 8)
    count, fps, frames = read_video(clip)
    assert count == len(frames) == 30 and fps == pytest.approx(25)
    for i, frame in enumerate(frames):
        assert np.abs(frame.astype(int) - ORACLE_COLOURS[classes[i]]).max() <= 12
        logits = compiled({0: center_crop_resize(frame, (224, 224))[None]})[0]
        assert int(np.argmax(logits)) == classes[i], i
    assert load_labels(oracle_model[1]) == list(ORACLE_NAMES)


# --------------------------------------------------------------------------- oracle run


@pytest.mark.timeout(E2E_TIMEOUT)
def test_oracle_run_labels_every_frame_in_order(
    tmp_path: Path, oracle_model: tuple[Path, Path], event_log: Callable[[str], EventLog]
) -> None:
    xml, labels = oracle_model
    clips = {
        "s1": (runs_of_classes(60, seed=1), (320, 240)),
        "s2": (runs_of_classes(45, seed=2), (640, 360)),
    }
    for sid, (classes, size) in clips.items():
        make_clip(tmp_path / f"{sid}.mp4", classes, size=size, fps=25)
    base = find_free_port_base(4)
    out_dir = tmp_path / "out"
    cfg = write_config(
        tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels, workers=3, top_k=3,
        output_dir=out_dir,
        sources=[{"id": sid, "url": str(tmp_path / f"{sid}.mp4")} for sid in clips],
    )
    log = event_log(f"tcp://127.0.0.1:{base}")
    ran = run_stream(["run", str(cfg)], cwd=tmp_path)
    assert ran.code == 0, ran.err[-3000:]
    events = wait_summaries(log, list(clips))
    first_label = next(i for i, e in enumerate(events) if e["type"] == "label")
    assert any(e["type"] == "status" for e in events[:first_label]), "joined late"

    table = summary_rows(ran.out)
    for sid, (classes, size) in clips.items():
        n = len(classes)  # the frames this test encoded: the oracle for every count below
        assert captured_by_capture(ran.err, sid) == n, ran.err[-3000:]
        assert (table[sid].captured, table[sid].labelled, table[sid].written) == (n, n, n), ran.out
        got = of_type(events, "label", sid)
        assert [e["seq"] for e in got] == list(range(n))
        for e in got:
            assert set(e) == LABEL_KEYS
            assert e["v"] == 1 and e["stream"] == sid
            assert e["labels"][0]["id"] == classes[e["seq"]], e
            assert len(e["labels"]) == 3
            scores = [x["score"] for x in e["labels"]]
            assert scores == sorted(scores, reverse=True)
            assert sum(scores) <= 1 + 1e-5 and scores[0] > 0.5
            assert all(x["name"] == ORACLE_NAMES[x["id"]] for x in e["labels"])
            assert e["latency_ms"] >= 0
        (summary,) = of_type(events, "summary", sid)
        assert (summary["captured"], summary["labelled"], summary["dropped"]) == (n, n, {})

        count, fps, frames = read_video(out_dir / f"{sid}.mp4")
        assert count == len(frames) == n
        assert fps == pytest.approx(25, abs=0.01)
        w, h = size
        assert frames[0].shape == (h, w, 3)
        for seq in range(0, n, 5):
            colour = np.array(ORACLE_COLOURS[classes[seq]])
            diff = np.abs(frames[seq].astype(int) - colour).max(axis=2)
            # The label panel sits top left: darkened box and text (text only on black).
            assert (diff[: h // 6, : w // 4] > 48).mean() > 0.05, f"{sid}#{seq}: no overlay"
            # Elsewhere the frame is the input colour within codec tolerance (measured <= 9).
            assert diff[h // 2:, w // 2:].max() <= 16, f"{sid}#{seq}: picture changed"


@pytest.mark.timeout(E2E_TIMEOUT)
def test_realtime_drop_policy_accounts_for_every_frame(
    tmp_path: Path, oracle_model: tuple[Path, Path], event_log: Callable[[str], EventLog]
) -> None:
    xml, labels = oracle_model
    n = 60
    make_clip(tmp_path / "live.mp4", runs_of_classes(n, seed=3), size=(640, 360), fps=30)
    base = find_free_port_base(3)
    cfg = write_config(
        tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels, workers=1,
        sources=[{"id": "live", "url": str(tmp_path / "live.mp4"), "realtime": True}],
    )
    log = event_log(f"tcp://127.0.0.1:{base}")
    ran = run_stream(["run", str(cfg)], cwd=tmp_path)
    assert ran.code == 0, ran.err[-3000:]
    events = wait_summaries(log, ["live"])
    (summary,) = of_type(events, "summary", "live")
    dropped = summary["dropped"]
    assert captured_by_capture(ran.err, "live") == n, ran.err[-3000:]
    assert summary["captured"] == n
    assert summary["labelled"] + sum(dropped.values()) == summary["captured"], summary
    assert set(dropped) <= DROP_REASONS, dropped
    seqs = [e["seq"] for e in of_type(events, "label", "live")]
    assert len(seqs) == summary["labelled"] and seqs == sorted(set(seqs))
    row = summary_rows(ran.out)["live"]
    assert (row.captured, row.labelled, row.dropped) == (
        n, summary["labelled"], sum(dropped.values()))


# --------------------------------------------------------------------------- real model


@pytest.fixture(scope="session")
def convnext_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real-size default IR (generated weights), built once per session (~10 s)."""
    from stream.model.builder import ensure_default_model

    return ensure_default_model(tmp_path_factory.mktemp("model") / "convnext-tiny.xml")


def _default_ports_free() -> bool:
    # `stream run --source` cannot move these (no flag for them)
    return all(port_is_free(port) for port in (5561, 5570))


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT)
def test_real_convnext_tiny_labels_every_frame(
    tmp_path: Path, convnext_tiny: Path, event_log: Callable[[str], EventLog]
) -> None:
    n = 24
    clip = make_clip(tmp_path / "clip.mp4", runs_of_classes(n, seed=4), size=(320, 240))
    base = find_free_port_base(3)
    events_ep = f"tcp://127.0.0.1:{base}"
    if _default_ports_free():
        args = ["run", "--source", str(clip), "--model", str(convnext_tiny), "--workers", "1",
                "--events", events_ep]
    else:  # a user's stream (or another test run) holds the defaults: same run, own ports
        cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=tmp_path / "x.xml",
                           sources=[{"id": "clip", "url": str(clip)}], top_k=5)
        args = ["run", str(cfg), "--model", str(convnext_tiny)]
    log = event_log(events_ep)
    ran = run_stream(args, cwd=tmp_path)
    assert ran.code == 0, ran.err[-3000:]
    got = of_type(wait_summaries(log, ["clip"]), "label", "clip")
    assert [e["seq"] for e in got] == list(range(n))
    names = load_labels(None)
    assert len(names) == 1000
    for e in got:
        assert set(e) == LABEL_KEYS and len(e["labels"]) == 5
        for x in e["labels"]:
            assert 0 <= x["id"] < 1000 and x["name"] == names[x["id"]]
            assert 0 <= x["score"] <= 1
        assert sum(x["score"] for x in e["labels"]) <= 1 + 1e-5
    row = summary_rows(ran.out)["clip"]
    assert row.captured == row.labelled == n
    assert not (tmp_path / "models").exists()  # --model given: nothing built in the cwd


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def wrong_shape_ir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IR whose input is [1,3,10]: readable, but not an image classifier."""
    import openvino as ov
    import openvino.opset13 as ops

    param = ops.parameter([1, 3, 10], ov.Type.f32, name="image")
    out = ops.reduce_mean(param, ops.constant(np.array([2], np.int64)), keep_dims=False)
    xml = tmp_path_factory.mktemp("badmodel") / "bad.xml"
    ov.save_model(ov.Model([ops.result(out)], [param], "bad"), str(xml))
    return xml


def _assert_clean_failure(ran: Ran) -> None:
    """Exit 2 (a user error, cli.py), one `error:` line, no traceback (and within
    BAD_INPUT_TIMEOUT: run_stream fails the test otherwise)."""
    assert ran.code == 2, (ran.code, ran.err)
    assert "Traceback" not in ran.err, ran.err
    assert len(error_lines(ran.err)) == 1, ran.err


@pytest.mark.timeout(60)
def test_missing_file_source(tmp_path: Path, oracle_model: tuple[Path, Path]) -> None:
    ran = run_stream(["run", "--source", "/nonexistent.mp4", "--model", str(oracle_model[0]),
                      "--events", f"tcp://127.0.0.1:{find_free_port_base(1)}"],
                     cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    _assert_clean_failure(ran)
    assert "/nonexistent.mp4" in error_lines(ran.err)[0]


@pytest.mark.timeout(60)
def test_text_file_named_mp4(tmp_path: Path, oracle_model: tuple[Path, Path]) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    ran = run_stream(["run", "--source", str(fake), "--model", str(oracle_model[0]),
                      "--events", f"tcp://127.0.0.1:{find_free_port_base(1)}"],
                     cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    _assert_clean_failure(ran)
    assert "notes.mp4" in error_lines(ran.err)[0]


@pytest.mark.timeout(60)
def test_wrong_shape_model(
    tmp_path: Path, oracle_model: tuple[Path, Path], wrong_shape_ir: Path
) -> None:
    clip = make_clip(tmp_path / "c.mp4", [0, 1, 2], size=(64, 48))
    base = find_free_port_base(3)
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=oracle_model[0],
                       sources=[{"id": "c", "url": str(clip)}])
    ran = run_stream(["run", str(cfg), "--model", str(wrong_shape_ir)], cwd=tmp_path,
                     timeout=BAD_INPUT_TIMEOUT)
    _assert_clean_failure(ran)
    assert "[1,3,10]" in error_lines(ran.err)[0]


@pytest.mark.timeout(60)
def test_run_without_arguments(tmp_path: Path) -> None:
    ran = run_stream(["run"], cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    _assert_clean_failure(ran)
    assert "--source" in error_lines(ran.err)[0]


@pytest.mark.timeout(60)
def test_validate_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sources:\n  - id: a\n    url: a.mp4\n    polcy: wait\n")
    ran = run_stream(["validate", str(cfg)], cwd=tmp_path, timeout=BAD_INPUT_TIMEOUT)
    _assert_clean_failure(ran)
    line = error_lines(ran.err)[0]
    assert "sources[0].polcy" in line and "'policy'" in line



@pytest.mark.timeout(E2E_TIMEOUT)
def test_image_folder_source(tmp_path: Path, oracle_model: tuple[Path, Path],
                             event_log: Callable[[str], EventLog]) -> None:
    """A folder of still images is a stream: file-name order, one label per image, a video
    at the first image's size (later sizes are scaled to it)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    classes = [3, 3, 5, 1, 7, 0, 2, 2]
    for i, c in enumerate(classes):
        size = (320, 240) if i % 2 == 0 else (200, 300)
        img = np.full((size[1], size[0], 3), ORACLE_COLOURS[c], np.uint8)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), img)
    (folder / "notes.txt").write_text("not an image")
    base = find_free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       output_dir=tmp_path / "out",
                       sources=[{"id": "photos", "url": str(folder), "fps": 5}])
    log = event_log(f"tcp://127.0.0.1:{base}")
    ran = run_stream(["run", str(cfg)], cwd=tmp_path)
    assert ran.code == 0, ran.err
    got = of_type(wait_summaries(log, ["photos"]), "label", "photos")
    assert [e["seq"] for e in got] == list(range(len(classes)))
    assert [e["labels"][0]["id"] for e in got] == classes
    assert [e["pts"] for e in got] == pytest.approx([i / 5 for i in range(len(classes))])
    cap = cv2.VideoCapture(str(tmp_path / "out" / "photos.mp4"))
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    cap.release()
    assert width == 320
    assert video_frames(tmp_path / "out" / "photos.mp4") == len(classes)
