"""`stream bench`: its arithmetic on a fake backend, its parsing of real log formats, and
one real short run on the colour-oracle IR whose printed figures must all be there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import video_frames

from stream.bench.figures import (
    Raw,
    Row,
    Run,
    Steady,
    benchmark_app_figures,
    fairness,
    live_ceiling,
    percentile,
    ratio,
    render,
    role_cpu,
    steady_latency,
    summary_row,
    worker_settings,
)
from stream.bench.runs import _labels_per_s as labels_per_s
from stream.bench.suite import Options, run_bench
from stream.runtime import CpuMeter

pytestmark = pytest.mark.timeout(120)

STDERR = """\
18:25:19 worker[4344] INFO model.hint auto -> THROUGHPUT (1 of 1 source(s) not live)
18:25:19 worker[4344] INFO compiled m.xml (224x224/1000/77) on CPU: inference precision \
<Type: 'bfloat16'> (OpenVINO's default here; without AMX f32 can be the faster: `stream \
bench` measures both)
18:25:23 capture[4345] INFO bench: stage ms/frame: source 2.1, preprocess 1.5, \
wait_workers 57.2, to_sink 0.1; process cpu 15.8 ms/frame over the 59 frames after the \
first (0.91 s of CPU up to and including the first)
18:25:23 sink[4343] INFO sink: process cpu 7.4 ms/frame over the 55 frames after the first 5 \
(0.40 s of CPU up to and including the first 5)
18:25:23 worker[4344] INFO worker w0 stopped: {'done': 60}; mean request time 90.5 ms; \
process cpu 68.2 ms/frame over the 59 frames after the first (2.13 s of CPU up to and \
including the first)
18:25:23 worker[4346] INFO worker w1 stopped: {'done': 40}; mean request time 80.0 ms; \
process cpu 60.0 ms/frame over the 39 frames after the first (1.90 s of CPU up to and \
including the first)
18:25:23 worker[4347] INFO worker w2 stopped: {'done': 1}; mean request time 80.0 ms; \
process cpu: 1.75 s of CPU up to and including the first; too few frames for a per-frame \
figure
18:25:23 worker[4348] INFO worker w3 stopped: {'done': 9}; process cpu 7.0 ms/frame
not a log line: process cpu 99.0 ms/frame over the 9 frames after the first (1.00 s of \
CPU up to and including the first)
"""

STDOUT = """\
stream           captured labelled  dropped written     fps  p50 ms  p99 ms  drops by reason
bench                  60       58        2       0    16.8     120     300  busy=2
  bench: capture counters: video_busy=1
"""


def test_role_logs_and_summary_are_parsed() -> None:
    cpu, startup, stages = role_cpu(STDERR)
    # a worker with one task has no per-frame figure, only its start-up CPU; the old
    # figure (total CPU / frames, start-up included) is not taken for the new one
    assert cpu == {"capture": 15.8, "sink": 7.4, "worker": 68.2, "worker#2": 60.0}
    assert startup == {"capture": 0.91, "sink": 0.40, "worker": 2.13, "worker#2": 1.90,
                       "worker#3": 1.75}
    assert stages == "source 2.1, preprocess 1.5, wait_workers 57.2, to_sink 0.1"
    assert worker_settings(STDERR) == ("bfloat16", "THROUGHPUT")
    row = summary_row(STDOUT, "bench")
    assert row is not None and (row.captured, row.labelled, row.dropped, row.fps) == (
        60, 58, 2, 16.8)
    assert summary_row(STDOUT, "other") is None and summary_row("no table", "bench") is None


def test_the_cpu_line_a_role_logs_is_the_one_the_bench_parses() -> None:
    used = [2.5]
    meter = CpuMeter(lambda: used[0])
    meter.first(1)
    used[0] += 0.2  # 40 more frames, 5 ms each
    line = f"18:25:23 capture[4345] INFO bench: stage ms/frame: source 1.0; {meter.report(41)}"
    assert role_cpu(line) == ({"capture": 5.0}, {"capture": 2.5}, "source 1.0")


def test_ratios_and_percentiles() -> None:
    assert ratio(12.0, 15.0) == "0.80x" and ratio(None, 1.0) == "n/a" and ratio(1, 0) == "n/a"
    assert percentile([], 50) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # numpy's default interpolation
    assert percentile([float(i) for i in range(101)], 99) == 99.0
    assert fairness({"a": 3.0, "b": 2.0}) == 1.5
    assert fairness({"a": 3.0, "b": 0.0}) is None and fairness({"a": 1.0}) is None
    raw = Raw("LATENCY", 30.0, 30.0, "bf16", "x")
    assert live_ceiling(raw, 25.0)[0] == 25.0  # the camera is the slower one
    assert live_ceiling(Raw("LATENCY", 14.0, 90.0, "f32", "x"), 25.0)[0] == 14.0


def test_steady_latency_leaves_out_each_streams_first_second() -> None:
    # two streams starting 0.5 s apart; each one's labels before its own first + 1 s are
    # start-up (a 150 ms first request, then a backlog draining); the last label of each
    # (shot at 11.967 and 12.99) is the end, apart
    labels = [("a", 10.0, 150.0), ("a", 10.4, 60.0), ("b", 10.5, 170.0), ("a", 10.99, 45.0),
              ("a", 11.0, 30.0), ("b", 11.2, 40.0), ("b", 11.5, 31.0), ("a", 12.0, 33.0),
              ("b", 13.0, 10.0)]
    got = steady_latency(labels)
    assert got.latencies == [30.0, 31.0] and got.warmup_ms == 170.0 and got.end_ms == 33.0
    no_warmup = steady_latency(labels, warmup_s=0.0)
    assert no_warmup.latencies == [v for _, _, v in labels[:7]] and no_warmup.warmup_ms is None
    assert steady_latency([]) == Steady([], None, None)


def test_the_sources_end_is_left_out_from_the_first_streams_last_frame_on() -> None:
    # Four streams end together (run P's shape): each one's last frame waits for the one
    # worker behind the others', 195-485 ms; frames shot before the first of those last
    # frames (shot at 21.84) are steady, whatever their latency. Oracle: by hand.
    steady_rows = [(s, 5.0 + i * 0.3, 100.0 + i) for i in range(30)
                   for s in ("b0", "b1", "b2", "b3")]
    # shot at 21.80 (before the first end): steady although it arrives after it
    late_but_steady = ("b0", 21.80 + 0.120, 120.0)
    ends = [("b1", 21.84 + 0.195, 195.0), ("b2", 21.84 + 0.319, 319.0),
            ("b3", 21.87 + 0.407, 407.0), ("b0", 21.92 + 0.485, 485.0)]
    got = steady_latency([*steady_rows, late_but_steady, *ends], warmup_s=0.0)
    assert sorted(got.latencies) == sorted([v for *_, v in steady_rows] + [120.0])
    assert got.end_ms == 485.0 and max(got.latencies) == 129.0


def test_labels_per_s_prefers_the_subscribers_arrivals_then_the_sinks_rate() -> None:
    arrivals = [10.0 + i / 20 for i in range(21)]  # 21 labels over 1 s: 20/s
    assert labels_per_s(Row(40, 40, 0, 25.0), arrivals) == pytest.approx(20.0)
    # the subscriber got under half the labels: the sink's rate, scaled to the labelled
    assert labels_per_s(Row(100, 60, 40, 25.0), arrivals[:5]) == pytest.approx(15.0)
    # a run too short for the sink's rate (0.0): what the subscriber got, however few
    assert labels_per_s(Row(50, 50, 0, 0.0), arrivals[:5]) == pytest.approx(20.0)
    assert labels_per_s(Row(50, 50, 0, 0.0), arrivals[:1]) == 0.0


_BENCHMARK_APP_TAIL = """\
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'bfloat16'>
[ INFO ] Count:            15422 iterations
[ INFO ] Duration:         1000.16 ms
[ INFO ] Latency:
[ INFO ]    Median:        {median}
[ INFO ]    Average:       86.11 us
[ INFO ] Throughput:   15419.48 FPS
"""


@pytest.mark.parametrize("median, ms", [("84.47 us", 0.08447), ("119.30 ms", 119.3)])
def test_benchmark_app_output_in_either_latency_unit(median: str, ms: float) -> None:
    # benchmark_app switches to us when the mean request takes under a millisecond
    # (a light IR); ms read as us would make every latency ratio 1000x off
    got = benchmark_app_figures("THROUGHPUT", _BENCHMARK_APP_TAIL.format(median=median))
    assert got is not None
    assert (got.fps, got.precision) == (15419.48, "bfloat16")
    assert got.median_ms == pytest.approx(ms)
    assert benchmark_app_figures("THROUGHPUT", "[ ERROR ] no such model") is None


class FakeBackend:
    """Fixed figures, so every printed ratio is known; the trivial IR step fails."""

    def __init__(self, default_precision: str = "f32", f32_fps: float = 21.0) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.raw_calls: list[str] = []
        self.raw_precisions: list[str | None] = []  # what each raw call asked for
        self.clips: list[str] = []
        self.default_precision = default_precision  # what "the device" picks
        self.f32_fps = f32_fps  # THROUGHPUT frames/s when f32 is asked for

    def make_clip(self, path: Path, frames: int, size: tuple[int, int], fps: float) -> str:
        self.clips.append(path.name)
        return f"{size[0]}x{size[1]} {frames} frames"

    def repeat_clip(self, src: Path, dst: Path, times: int) -> tuple[Path, str] | None:
        self.repeated = (src.name, times)
        return dst, f"the clip {times} times in a row"

    def trivial_ir(self, xml: Path) -> Path:
        return xml

    def raw_model(self, model: str, hint: str, seconds: float, device: str,
                  precision: str | None, tool: str) -> Raw:
        # THROUGHPUT drifts between the start and the end: 14 then 16 frames/s (mean 15);
        # LATENCY is 12 frames/s and its median request 70, 90, 110, ... ms, one step per
        # measurement (each live run's yardstick is the mean of the two around it)
        self.raw_precisions.append(precision)
        if precision == "f32" and self.default_precision != "f32":
            return Raw(hint, self.f32_fps, 95.0, "f32", "fake")
        self.raw_calls.append(hint)
        n = self.raw_calls.count(hint)
        if hint == "LATENCY":
            return Raw(hint, 12.0, 50.0 + 20.0 * n, self.default_precision, "fake")
        fps, med = (14.0, 140.0) if n == 1 else (16.0, 160.0)
        return Raw(hint, fps, med, self.default_precision, "fake")

    def decode_fps(self, clip: Path) -> float:
        return 400.0

    def pipeline(self, name: str, clip: Path, model: str, workdir: Path,
                 **kwargs: Any) -> Run:
        self.calls.append((name, {**kwargs, "clip": clip.name}))
        if name == "trivial IR, with video":
            raise RuntimeError("encoder missing")
        live = kwargs.get("live", False)
        per_stream = ({"bench0": 2.9, "bench1": 2.7, "bench2": 2.7, "bench3": 2.7}
                      if kwargs.get("sources", 1) == 4 else {})
        fps = {"labels only": 14.4, "with video": 13.5, "live, realtime file": 11.4,
               "trivial IR, labels only": 260.0, "4 live cameras": 11.0}[name.split(" (")[0]]
        # repeated live runs: the k-th one's p99 is 160 + 40 (k - 1) ms
        k = sum(1 for n, _ in self.calls if n.split(" (")[0] == name.split(" (")[0])
        return Run(name, 100, 100, fps, {"capture": 3.0, "worker": 60.0, "sink": 1.0},
                   "source 2.0, preprocess 1.0", "f32", "LATENCY" if live else "THROUGHPUT",
                   100.0 if live else None, 120.0 + 40.0 * k if live else None, per_stream,
                   {"capture": 0.5, "worker": 2.0, "sink": 0.25},
                   warmup_ms=150.0 if live else None, end_ms=480.0 if live else None)


def test_report_ratios_on_a_fake_backend(tmp_path: Path) -> None:
    fake = FakeBackend()
    report = run_bench(Options("m.xml", tmp_path), fake)
    text = "\n".join(render(report))
    assert ("THROUGHPUT hint: 14.00 frames/s, median request 140.0 ms; at the end 16.00 "
            "frames/s, 160.0 ms; yardstick (mean) 15.00 frames/s, 150.0 ms") in text
    # THROUGHPUT around the file runs; LATENCY before, between and after the live runs
    assert fake.raw_calls == ["THROUGHPUT", "THROUGHPUT", "LATENCY", "LATENCY", "LATENCY"]
    assert ("LATENCY hint:    12.00, 12.00, 12.00 frames/s, median request 70.0, 90.0, "
            "110.0 ms (before, between and after the live runs") in text
    assert re.search(r"labels only\s+14\.40 labels/s = 0\.96x raw THROUGHPUT", text)
    assert re.search(r"with video\s+13\.50 labels/s = 0\.90x raw THROUGHPUT", text)
    # live: the model (12 fps) is slower than the 25 fps source, so it is the ceiling
    assert re.search(r"live, realtime file\s+11\.40 labels/s = 0\.95x raw LATENCY", text)
    # its yardstick: the mean of the 70 and 90 ms measured around it
    assert ("p50 100 ms = 1.25x, p99 160 ms = 2.00x the LATENCY median request (80.0 ms "
            "around this run); each stream's first 1 s left out (start-up: worst 150 ms), "
            "and the sources' end (their last frames, each waiting for a free request: "
            "worst 480 ms)") in text
    # 4 cameras: 11 labels/s in all against the model's 12 (below the 100 fps sent), and
    # the mean of 90 and 110 ms
    assert re.search(r"4 live cameras\s+11\.00 labels/s in all = 0\.92x raw LATENCY", text)
    assert ("per stream 2.90, 2.70, 2.70, 2.70 labels/s: max/min 1.07; label latency p50 "
            "100 ms = 1.00x, p99 160 ms = 1.60x the LATENCY median request (100.0 ms") in text
    assert "median of" not in text  # one run each: nothing to take a median of
    assert "OpenCV decode-only 400.0 frames/s" in text
    # the tax runs on the 500-frame clip repeated to >= 2000 frames: 4 times
    assert fake.repeated == ("bench-clip.mp4", 4)
    assert "framework tax (trivial IR: global average pool + one matmul) on the clip 4 " \
        "times in a row (2000 frames)" in text
    assert {kw["clip"] for n, kw in fake.calls if n.startswith("trivial")} == {
        "bench-clip-tax.mp4"}
    assert {kw["clip"] for n, kw in fake.calls if not n.startswith("trivial")} <= {
        "bench-clip.mp4", "bench-clip-small.mp4"}
    assert re.search(r"trivial IR, labels only\s+260\.00 labels/s = 0\.65x decode-only", text)
    assert ("CPU ms/frame after the first frame: capture 3.0, worker 60.0, sink 1.0; "
            "start-up CPU s: capture 0.50, worker 2.00, sink 0.25") in text
    # the failed step is a note; nothing else is lost
    assert "note: trivial IR, with video: not measured (RuntimeError: encoder missing)" in text
    names = [n for n, _ in fake.calls]
    assert names == ["labels only", "with video", "live, realtime file", "4 live cameras",
                     "trivial IR, labels only", "trivial IR, with video"]
    assert all(kw["hint"] == "auto" for _, kw in fake.calls)


def test_repeated_live_runs_each_have_their_own_yardstick(tmp_path: Path) -> None:
    fake = FakeBackend()
    report = run_bench(Options("m.xml", tmp_path, skip=frozenset({"video", "tax"}),
                               repeat=3), fake)
    text = "\n".join(render(report))
    assert [n for n, _ in fake.calls] == [
        "labels only", "live, realtime file (1 of 3)", "4 live cameras (1 of 3)",
        "live, realtime file (2 of 3)", "4 live cameras (2 of 3)",
        "live, realtime file (3 of 3)", "4 live cameras (3 of 3)"]
    assert fake.raw_calls.count("LATENCY") == 7  # before, between and after the six runs
    assert fake.clips == ["bench-clip.mp4", "bench-clip-small.mp4"]  # each made once
    # LATENCY medians 70, 90, ..., 190 ms: the live runs sit between 70/90, 110/130 and
    # 150/170 (yardsticks 80, 120, 160 ms), the camera runs between 90/110, 130/150 and
    # 170/190 (100, 140, 180 ms). p50 is 100 ms in every run, p99 160, 200, 240 ms.
    for got in ("p50 100 ms = 1.25x, p99 160 ms = 2.00x the LATENCY median request (80.0",
                "p50 100 ms = 0.83x, p99 200 ms = 1.67x the LATENCY median request (120.0",
                "p50 100 ms = 0.62x, p99 240 ms = 1.50x the LATENCY median request (160.0",
                "p99 160 ms = 1.60x the LATENCY median request (100.0",
                "p99 200 ms = 1.43x the LATENCY median request (140.0",
                "p99 240 ms = 1.33x the LATENCY median request (180.0"):
        assert got in text, got
    assert ("live, realtime file, median of 3 runs (each / its own yardstick): labels/s "
            "0.95x, latency p50 0.83x, p99 1.67x") in text
    assert ("4 live cameras, median of 3 runs (each / its own yardstick): labels/s 0.92x, "
            "max/min 1.07, latency p50 0.71x, p99 1.43x") in text


def test_skip_leaves_steps_out(tmp_path: Path) -> None:
    fake = FakeBackend()
    report = run_bench(Options("m.xml", tmp_path, skip=frozenset({"video", "tax", "cameras"})),
                       fake)
    assert [n for n, _ in fake.calls] == ["labels only", "live, realtime file"]
    assert report.decode_fps is None and report.with_video is None
    bad = subprocess.run([sys.executable, "-m", "stream", "bench", "--skip", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown step(s) nope" in bad.stderr


@pytest.mark.parametrize("f32_fps, verdict", [
    # 14 frames/s at the default: f32 at 21 is 1.50x, at 10.5 0.75x, at 14.5 1.04x
    (21.0, "= 1.50x the default bfloat16's frames/s: f32 is the faster on this machine; "
           "set model.precision: f32"),
    (10.5, "= 0.75x the default bfloat16's frames/s: the default bfloat16 is the faster; "
           "keep it"),
    (14.5, "= 1.04x the default bfloat16's frames/s: within 5%, either will do"),
])
def test_a_default_precision_other_than_f32_is_weighed_against_f32(
        tmp_path: Path, f32_fps: float, verdict: str) -> None:
    fake = FakeBackend("bfloat16", f32_fps)
    opts = Options("m.xml", tmp_path, skip=frozenset({"video", "live", "cameras", "tax"}))
    text = "\n".join(render(run_bench(opts, fake)))
    # one f32 measurement, right after the first THROUGHPUT one; every other at the default
    assert fake.raw_precisions == [None, "f32", None]
    assert f"THROUGHPUT at f32: {f32_fps:.2f} frames/s, median request 95.0 ms {verdict}" \
        in text, text
    # the pipeline's yardstick stays the default's THROUGHPUT (14 and 16: mean 15)
    assert re.search(r"labels only\s+14\.40 labels/s = 0\.96x raw THROUGHPUT", text)


@pytest.mark.parametrize("opts", [
    {"precision": "bf16"},  # the user chose one: every run is at it, nothing to weigh
    {"skip": frozenset({"precision", "video", "live", "cameras", "tax"})},
])
def test_no_f32_measurement_when_the_precision_is_chosen_or_skipped(
        tmp_path: Path, opts: dict[str, Any]) -> None:
    fake = FakeBackend("bfloat16")
    options = Options("m.xml", tmp_path, **{"skip": frozenset({"live", "cameras", "tax"}),
                                            **opts})
    text = "\n".join(render(run_bench(options, fake)))
    assert "f32" not in fake.raw_precisions and "at f32" not in text


def test_no_f32_measurement_when_the_default_is_f32(tmp_path: Path) -> None:
    fake = FakeBackend("f32")
    text = "\n".join(render(run_bench(Options("m.xml", tmp_path), fake)))
    assert fake.raw_precisions == [None] * 5 and "at f32" not in text


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m is not None, f"{pattern!r} not in:\n{text}"
    return float(m.group(1))


def test_real_short_run(oracle_model: tuple[Path, Path], tmp_path: Path) -> None:
    """The whole bench on the tiny oracle IR and a small clip: every figure is printed
    and positive (their size is the machine's business, not a test's)."""
    res = subprocess.run(
        [sys.executable, "-m", "stream", "bench", "--model", str(oracle_model[0]), "--quick",
         "--frames", "50", "--size", "320x240", "--seconds", "0.5", "--raw-tool", "python",
         "--cameras", "2", "--tax-frames", "100",
         "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=110)
    out = res.stdout
    assert res.returncode == 0, res.stderr[-2000:]
    assert "note:" not in out or not shutil.which("ffmpeg"), out
    assert "raw model (OpenVINO Python API), precision" in out
    assert _number(r"THROUGHPUT hint: ([\d.]+) frames/s", out) > 0
    # at the device's default precision; if that is not f32, at f32 too (with a verdict)
    default = re.search(r"precision (\w+):", out)
    assert default is not None, out
    if default[1].lower() not in ("f32", "float32"):
        assert _number(r"THROUGHPUT at f32: ([\d.]+) frames/s", out) > 0
        assert re.search(r"frames/s: (f32 is|the default \w+ is|within 5%)", out), out
    else:
        assert "at f32" not in out
    # LATENCY before the live run, between it and the cameras' run, and after that
    lat = re.search(r"LATENCY hint: +([\d., ]+) frames/s, median request ([\d., ]+) ms", out)
    assert lat is not None, out
    for figures in lat.groups():
        values = [float(v) for v in figures.split(", ")]
        assert len(values) == 3 and min(values) > 0, lat.group(0)
    for name in ("labels only", "with video", "live, realtime file",
                 "trivial IR, labels only", "trivial IR, with video"):
        assert _number(rf"  {re.escape(name)} +([\d.]+) labels/s", out) > 0
    assert _number(r"label latency p50 ([\d.]+) ms", out) > 0
    # a live stream's first second is start-up, apart (2 s of frames: some are after it),
    # and so is its end (its last frame)
    assert _number(r"first 1 s left out \(start-up: worst ([\d.]+) ms\)", out) > 0
    assert _number(r"the sources' end \(their last frames, each waiting for a free "
                   r"request: worst ([\d.]+) ms\)", out) > 0
    assert _number(r"2 live cameras +([\d.]+) labels/s in all", out) > 0
    assert _number(r"max/min ([\d.]+)", out) >= 1.0
    assert _number(r"OpenCV decode-only ([\d.]+) frames/s", out) > 0
    cpu_lines = [ln for ln in out.splitlines() if "CPU ms/frame after the first frame:" in ln]
    assert len(cpu_lines) == 6
    for line in cpu_lines:
        per_frame, startup = line.split("; start-up CPU s: ")
        for role in ("capture", "worker", "sink"):
            assert _number(rf"{role} ([\d.]+)", startup) > 0
            # A sink whose first release held every frame of so short a run has no frame
            # after it to count (it logs "too few frames"); capture and worker always do.
            if role != "sink" or "sink " in per_frame:
                assert _number(rf"{role} ([\d.]+)", per_frame) > 0
    # the worker says when the precision is OpenVINO's pick rather than f32 or the user's
    worker_log = (tmp_path / "labels-only.log").read_text()
    assert "inference precision <Type: '" in worker_log
    hinted = "without AMX f32 can be the faster: `stream bench` measures both" in worker_log
    assert hinted == (default[1].lower() not in ("f32", "float32")), worker_log[-2000:]
    # the clip was really 50 frames: every file run labelled all of them
    assert out.count("(50/50 labelled") >= 2
    if shutil.which("ffmpeg"):
        # --tax-frames 100: the tax ran on the clip joined twice, and labelled all 100 frames
        assert "on the clip 2 times in a row (100 frames)" in out
        assert out.count("(100/100 labelled") == 2, out
    else:  # nothing to join it with: the clip once, and a note says so
        assert "on the clip (50 frames)" in out and "no ffmpeg on PATH" in out


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")
def test_repeat_clip_joins_a_clip_whose_path_has_quotes_and_spaces(tmp_path: Path) -> None:
    """The framework tax's longer clip: the clip N times, frame for frame (counted by
    ffprobe), wherever the bench's folder is; a clip ffmpeg cannot read is a clear error
    and leaves nothing behind."""
    from stream.bench.runs import make_clip, repeat_clip

    folder = tmp_path / "it's a dir"
    folder.mkdir()
    clip = folder / "c.mp4"
    make_clip(clip, 12, (64, 48), 25.0)
    got = repeat_clip(clip, folder / "joined.mp4", 3)
    assert got is not None and got[1] == "the clip 3 times in a row"
    assert video_frames(got[0]) == 3 * video_frames(clip) == 36
    assert sorted(p.name for p in folder.iterdir()) == ["c.mp4", "joined.mp4"]
    bad = folder / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(RuntimeError, match="ffmpeg could not join the clip"):
        repeat_clip(bad, folder / "out.mp4", 2)
    assert not (folder / "out.mp4").exists() and not (folder / "out.txt").exists()
