"""The measurements of `stream bench`: each one real, on this machine (the I/O half).

- :func:`raw_model`: the IR alone at a hint: ``benchmark_app`` when it is on PATH (the
  yardstick OpenVINO users know), else the same loop in OpenVINO's Python API (an
  ``AsyncInferQueue`` at the device's optimal number of requests, u8 input as the worker
  feeds it);
- :func:`decode_fps`: OpenCV decoding the clip and nothing else;
- :func:`pipeline`: ``stream run`` as a subprocess on a generated clip (a file, or the same
  file paced in real time like a camera), label events timed by a subscriber;
- :func:`make_clip` and :func:`trivial_ir`: the inputs, generated on the spot.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream.bench.figures import (
    Raw,
    Row,
    Run,
    benchmark_app_figures,
    percentile,
    role_cpu,
    steady_latency,
    summary_row,
    worker_settings,
)
from stream.errors import ModelError

STREAM = "bench"  # the stream id of every bench run


def make_clip(path: Path, frames: int, size: tuple[int, int], fps: float = 25.0) -> str:
    """A generated clip (stream.samples), re-encoded to H.264 when ffmpeg is on PATH.

    Returns:
        What it is, for the report: size, frames, fps and codec.
    """
    from stream.samples import make_sample_clip

    mp4v = path.with_name(path.stem + "-mp4v.mp4")
    make_sample_clip(mp4v, seconds=frames / fps, fps=fps, size=size)
    codec = "MPEG-4 part 2 (no ffmpeg on PATH for H.264)"
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(mp4v),
                        "-c:v", "libx264", "-preset", "fast", "-pix_fmt", "yuv420p", "-g", "50",
                        "-an", str(path)], check=True, capture_output=True, timeout=300)
        mp4v.unlink()
        codec = "H.264"
    else:
        mp4v.replace(path)
    return f"{size[0]}x{size[1]} {frames} frames at {fps:g} fps, {codec}"


def repeat_clip(src: Path, dst: Path, times: int) -> tuple[Path, str] | None:
    """``src`` played ``times`` times in a row, as one file (ffmpeg stream copy: no
    re-encoding, so it takes a second); None when ffmpeg is not on PATH.

    The framework tax runs at hundreds of frames/s: on the 500-frame clip they would last
    two seconds, mostly ramp-up. Repeating the clip gives them a steady window.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    listing = dst.with_suffix(".txt")
    quoted = str(src.resolve()).replace("'", "'\\''")  # the concat list's own escaping
    listing.write_text(f"file '{quoted}'\n" * times, encoding="utf-8")
    try:
        res = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f",
                              "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                              str(dst)], capture_output=True, text=True, timeout=300)
    finally:
        listing.unlink(missing_ok=True)
    if res.returncode != 0:
        dst.unlink(missing_ok=True)
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"ffmpeg could not join the clip (exit {res.returncode}): {tail}")
    return dst, f"the clip {times} times in a row"


def trivial_ir(xml: Path) -> Path:
    """An IR with next to no compute: global average pool, then one matmul to 1000 outputs.

    Same contract as convnext-tiny (``image`` f32 [1,3,224,224] → ``probs`` [1,1000]), so
    the pipeline does all its usual work around an inference that costs microseconds.
    """
    import openvino as ov
    import openvino.opset13 as ops

    image = ops.parameter([1, 3, 224, 224], ov.Type.f32, name="image")
    image.output(0).set_names({"image"})
    pooled = ops.reduce_mean(image, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    weights = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32) / 255
    logits = ops.matmul(pooled, ops.constant(weights), False, False)
    logits.output(0).set_names({"probs"})
    model = ov.Model([ops.result(logits, name="probs")], [image], "trivial-gap-matmul")
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def raw_model(model: str, hint: str, seconds: float, device: str, precision: str | None,
              tool: str = "auto") -> Raw:
    """Frames/s and median request latency of the IR alone at ``hint``.

    Args:
        tool: ``benchmark_app``, ``python`` or ``auto`` (benchmark_app when on PATH).
    """
    exe = shutil.which("benchmark_app") or shutil.which(
        "benchmark_app", path=str(Path(sys.executable).parent))
    if tool == "benchmark_app" or (tool == "auto" and exe):
        if not exe:
            raise ModelError("benchmark_app is not on PATH (pip install openvino puts it "
                             "beside python); use --raw-tool python")
        return _benchmark_app(exe, model, hint, seconds, device, precision)
    return _python_loop(model, hint, seconds, device, precision)


def _benchmark_app(exe: str, model: str, hint: str, seconds: float, device: str,
                   precision: str | None) -> Raw:
    cmd = [exe, "-m", model, "-d", device, "-hint", hint.lower(), "-t",
           str(max(1, round(seconds)))]
    if precision:
        cmd += ["-infer_precision", precision]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180)
    got = benchmark_app_figures(hint, res.stdout)
    if res.returncode != 0 or got is None:
        tail = (res.stdout + res.stderr).strip().splitlines()[-3:]
        raise ModelError(f"benchmark_app failed on {model} (exit {res.returncode}): "
                         + " | ".join(tail))
    return got


def _python_loop(model: str, hint: str, seconds: float, device: str,
                 precision: str | None) -> Raw:
    import openvino as ov

    from stream.model.runtime import compile_classifier

    compiled, info = compile_classifier(model, device, hint, precision)
    nireq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, max(1, nireq))
    times: list[float] = []
    queue.set_callback(lambda _req, t0: times.append(time.perf_counter() - t0))
    frame = np.random.default_rng(0).integers(0, 256, (1, info.height, info.width, 3),
                                              np.uint8)
    queue.start_async({0: frame}, time.perf_counter())  # warm-up, not counted
    queue.wait_all()
    times.clear()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        queue.start_async({0: frame}, time.perf_counter())
    queue.wait_all()
    elapsed = time.perf_counter() - t0
    med = percentile(times, 50) or 0.0
    prec = str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # "<Type: 'bfloat16'>"
    named = re.search(r"'(\w+)'", prec)
    return Raw(hint, len(times) / elapsed, 1000 * med, named[1] if named else prec,
               "OpenVINO Python API")


def decode_fps(clip: Path) -> float:
    """Frames/s of OpenCV decoding ``clip`` alone (the framework tax's yardstick)."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    try:
        n = 0
        t0 = time.perf_counter()
        while cap.grab():
            ok, _ = cap.retrieve()
            n += ok
        return n / (time.perf_counter() - t0)
    finally:
        cap.release()


def free_ports(n: int, low: int = 20000, high: int = 32000) -> int:
    """The first of ``n`` consecutive loopback ports that can be bound right now."""
    rng = np.random.default_rng()
    for _ in range(200):
        base = int(rng.integers(low, high - n))
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no {n} consecutive free ports on 127.0.0.1")


class _Listener:
    """A subscriber thread that times every label event's arrival against its ``ts``."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        from stream.events import Subscriber

        # Connected before the run starts: retrying every 10 ms (ZMQ's default is 100) joins
        # the sink within milliseconds of its bind, well before its first label.
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.ctx.setsockopt(zmq.RECONNECT_IVL, 10)
        self.sub = Subscriber(endpoint, types=["label"], ctx=self.ctx)
        self.labels: list[tuple[str, float, float]] = []  # (stream, arrival, latency ms)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="bench-subscriber",
                                       daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        # After stop, what already arrived is still read (a thread that lagged behind on a
        # busy machine would otherwise lose the last labels): until 0.2 s bring nothing.
        while True:
            ev = self.sub.recv(timeout=0.2)
            if ev is None:
                if self.stop.is_set():
                    return
                continue
            now = time.time()
            self.labels.append((str(ev["stream"]), now, 1000 * (now - float(ev["ts"]))))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sub.close()
        self.ctx.term()


def pipeline(name: str, clip: Path, model: str, workdir: Path, *, workers: int = 1,
             video: bool = False, live: bool = False, hint: str = "auto",
             device: str = "CPU", precision: str | None = None, sources: int = 1,
             timeout: float = 900) -> Run:
    """One ``stream run`` of ``clip``, labels only or with the overlaid video written.

    ``live`` paces the file at its own fps (``realtime: true``), as a camera would send it,
    and the labels/s and latency come from a subscriber connected before the start.
    ``sources`` > 1 runs that many streams of the same clip at once (``bench0``, ...).
    """
    import yaml

    ids = [STREAM] if sources == 1 else [f"{STREAM}{i}" for i in range(sources)]
    events = f"tcp://127.0.0.1:{free_ports(1)}"
    out = workdir / f"{name.replace(' ', '-')}-out"
    cfg: dict[str, Any] = {
        "sources": [{"id": sid, "url": str(clip), **({"realtime": True} if live else {})}
                    for sid in ids],
        "model": {"path": model, "device": device, "hint": hint,
                  **({"precision": precision} if precision else {})},
        "workers": {"count": workers},
        # No `transport`: `stream run` links its local roles over private ipc:// sockets,
        # as it does for a user who names none.
        "sink": {"events": events, **({"output_dir": str(out)} if video else {})},
    }
    path = workdir / f"{name.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    listener = _Listener(events)
    try:
        res = subprocess.run([sys.executable, "-m", "stream", "run", str(path), "--http", "off"],
                             capture_output=True, text=True, timeout=timeout)
    finally:
        listener.close()
    (workdir / f"{name.replace(' ', '-')}.log").write_text(res.stdout + res.stderr)
    found = {sid: summary_row(res.stdout, sid) for sid in ids}
    rows = {sid: r for sid, r in found.items() if r is not None}
    if res.returncode != 0 or len(rows) < len(ids):
        tail = " | ".join(res.stderr.strip().splitlines()[-4:])
        raise RuntimeError(f"stream run ({name}) failed with exit {res.returncode}: {tail}")
    cpu, startup, stages = role_cpu(res.stderr)
    precision, resolved = worker_settings(res.stderr)
    per_stream = {sid: _labels_per_s(row, [t for s, t, _ in listener.labels if s == sid])
                  for sid, row in rows.items()}
    labelled = sum(r.labelled for r in rows.values())
    frames = sum((r.captured if r.captured is not None else r.labelled + r.dropped)
                 for r in rows.values())
    steady = steady_latency(listener.labels)
    return Run(name, labelled, frames, sum(per_stream.values()), cpu, stages,
               precision, resolved or hint,
               percentile(steady.latencies, 50) if live else None,
               percentile(steady.latencies, 99) if live else None,
               per_stream if sources > 1 else {}, startup,
               warmup_ms=steady.warmup_ms if live else None,
               end_ms=steady.end_ms if live else None)


def _labels_per_s(row: Row, arrivals: Sequence[float]) -> float:
    """Label events per second, first to last, as the subscriber received them (steady
    state: start-up is not counted); the sink's own rate if the subscriber got too few,
    and the few it got when the sink has no rate either (a run under its 0.5 s)."""
    spread = len(arrivals) >= 2 and arrivals[-1] > arrivals[0]
    if spread and len(arrivals) >= max(10, row.labelled // 2):
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    done = row.labelled + row.dropped
    if row.fps > 0 and done:
        return float(row.fps * row.labelled / done)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if spread else 0.0
