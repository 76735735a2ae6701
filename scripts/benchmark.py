#!/usr/bin/env python3
"""Pipeline throughput against OpenVINO's own ceiling, measured back to back on one machine.

Runs, in this order and on the same IR:
  1. benchmark_app -hint throughput (the yardstick: raw inference frames/s);
  2. `stream run` on a 720p H.264 clip, labels only (no video written);
  3. the same with the overlaid video written;
and prints labelled frames/s of each run, its ratio to benchmark_app, and the per-stage
timings the roles log (capture: decode, preprocess, waiting for workers; worker: request
time; sink: draw + encode). DESIGN.md's targets: >= 0.95x without video, >= 0.75x with.

Usage:  python scripts/benchmark.py [--frames 400] [--model models/convnext-tiny.xml]
        [--workers 1] [--precision f32|bf16|f16] [--bench-seconds 20] [--repeat 2]
Needs ffmpeg (libx264) for the H.264 clip; without it the clip is MPEG-4 part 2 (says so).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_clip(path: Path, frames: int, fps: int = 30) -> str:
    """A 1280x720 clip with motion everywhere (so the decoder does real work)."""
    h, w = 720, 1280
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        proc = subprocess.Popen(
            [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
             "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "fast",
             "-pix_fmt", "yuv420p", "-g", "60", str(path)], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        write = proc.stdin.write
        codec = "H.264 (libx264)"
    else:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
        write = lambda b: writer.write(np.frombuffer(b, np.uint8).reshape(h, w, 3))  # noqa: E731
        codec = "MPEG-4 part 2 (no ffmpeg found: not H.264)"
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 24, (h, w, 3), dtype=np.uint8)
    for i in range(frames):
        t = i / fps
        f = np.empty((h, w, 3), np.uint8)
        f[..., 0] = 127 + 120 * np.sin(xx / 53 + 2 * t)
        f[..., 1] = 127 + 120 * np.sin(yy / 41 - 3 * t)
        f[..., 2] = 127 + 120 * np.cos((xx - yy) / 77 + t)
        f = cv2.add(f, np.roll(noise, i * 7, axis=1))
        write(f.tobytes())
    if ffmpeg:
        proc.stdin.close()
        proc.wait()
    else:
        writer.release()
    return codec


def benchmark_app(model: str, seconds: int, precision: str | None) -> tuple[float, str]:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    cmd = [exe, "-m", model, "-d", "CPU", "-hint", "throughput", "-t", str(seconds)]
    if precision:
        cmd += ["-infer_precision", precision]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    fps = float(re.search(r"Throughput:\s+([\d.]+)\s+FPS", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"INFERENCE_PRECISION_HINT:\s*(?:<Type: ')?([\w]+)", out)
    return fps, m.group(1) if m else "device default"


def run_pipeline(clip: Path, model: str, workers: int, output: Path | None,
                 precision: str | None, ports: int) -> tuple[float, int, str]:
    cfg = {
        "model": {"path": model, **({"precision": precision} if precision else {})},
        "sources": [{"id": "bench", "url": str(clip)}],
        "workers": {"count": workers},
        "sink": {"events": f"tcp://127.0.0.1:{ports}",
                 **({"output_dir": str(output)} if output else {})},
        "transport": {"sink": f"tcp://127.0.0.1:{ports + 1}",
                      "frames": f"tcp://127.0.0.1:{ports + 2}"},
    }
    import yaml

    cfg_path = clip.with_suffix(f".{ports}.yaml")
    cfg_path.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "stream", "run", str(cfg_path)],
                         capture_output=True, text=True)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        print(res.stdout, res.stderr, sep="\n")
        raise SystemExit(f"stream run failed (exit {res.returncode})")
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("bench "))
    cols = row.split()
    labelled, fps = int(cols[2]), float(cols[5])
    stages = [ln.split(" INFO ", 1)[1] for ln in res.stderr.splitlines()
              if "stage ms/frame" in ln or "mean request time" in ln or "draw + encode" in ln
              or "process cpu" in ln]
    return fps, labelled, f"wall {wall:.1f} s; " + " | ".join(stages)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--model", default="models/convnext-tiny.xml")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--precision", choices=["f32", "bf16", "f16"], default=None,
                    help="inference precision for both benchmark_app and stream "
                         "(default: the device's, e.g. bf16 on AMX CPUs)")
    ap.add_argument("--bench-seconds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2,
                    help="rounds; a shared VM's speed drifts ±10%% between runs, so each "
                         "round compares against its own benchmark_app")
    ap.add_argument("--ports", type=int, default=6560, help="first of 3 free TCP ports")
    args = ap.parse_args()
    if not Path(args.model).exists():
        from stream.model.builder import ensure_default_model

        ensure_default_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "bench720.mp4"
        codec = make_clip(clip, args.frames)
        print(f"clip: {args.frames} frames 1280x720, {codec}; {args.repeat} round(s) of "
              "benchmark_app → labels only → with video (ratios within a round)")
        ratios: dict[str, list[float]] = {"labels only": [], "with video": []}
        for r in range(args.repeat):
            ceiling, prec = benchmark_app(args.model, args.bench_seconds, args.precision)
            print(f"[{r + 1}] benchmark_app: {ceiling:.2f} FPS (throughput hint, "
                  f"precision {prec})")
            for name, out in (("labels only", None), ("with video", Path(tmp) / "out")):
                fps, n, stages = run_pipeline(clip, args.model, args.workers, out,
                                              args.precision, args.ports + 10 * r
                                              + (5 if out else 0))
                ratios[name].append(fps / ceiling)
                print(f"[{r + 1}] stream run, {name}: {fps:.2f} labelled/s = "
                      f"{fps / ceiling:.2f}x ({n}/{args.frames} labelled)\n      {stages}")
        for name, rs in ratios.items():
            print(f"{name}: ratio median {statistics.median(rs):.2f} "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in rs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
