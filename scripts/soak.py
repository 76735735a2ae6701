#!/usr/bin/env python3
"""Soak run: a live source for a given time; prints RSS per process and latency over time.

A looping file read in real time (``realtime: true``: paced at its fps and subject to the
live drop policy, like a camera) runs through the whole pipeline while this script
subscribes to the label events. Every interval it prints, per role, the resident memory
(from /proc) and the label latency p50/p99 and labelled/s of that interval; at the end, the
growth of each process's RSS and the latency drift between the first and last intervals.

Usage:  python scripts/soak.py --minutes 30 [--interval 60] [--fps 8] [--model PATH.xml]
        [--source rtsp://...]   (default: a generated 640x360 clip, looped in real time)
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml


def children(pid: int) -> dict[int, str]:
    """pid -> role for every descendant of ``pid`` (roles read from their command line)."""
    out: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"stream" in cmd:
            words = [c.decode() for c in cmd if c]
            role = next((w for w in words if w in ("capture", "worker", "sink")), "?")
            name = words[words.index("--name") + 1] if "--name" in words else role
            out[int(stat.parent.name)] = name
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--interval", type=float, default=60, help="seconds between rows")
    ap.add_argument("--fps", type=float, default=8.0, help="source frame rate (real time)")
    ap.add_argument("--model", default="models/convnext-tiny.xml")
    ap.add_argument("--source", help="a live URL instead of the generated looping clip")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ports", type=int, default=6660, help="first of 3 free TCP ports")
    args = ap.parse_args()

    from stream.events import Subscriber
    from stream.model.builder import ensure_default_model
    from stream.samples import make_sample_clip

    if not Path(args.model).exists():
        ensure_default_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="stream-soak-"))
    if args.source:
        src = {"id": "soak", "url": args.source}
    else:
        clip = make_sample_clip(tmp / "soak.mp4", seconds=10, fps=args.fps, size=(640, 360))
        src = {"id": "soak", "url": str(clip), "realtime": True, "loop": True}
    events = f"tcp://127.0.0.1:{args.ports}"
    cfg = {"model": {"path": args.model}, "sources": [src],
           "workers": {"count": args.workers},
           "sink": {"events": events},
           "transport": {"sink": f"tcp://127.0.0.1:{args.ports + 1}",
                         "frames": f"tcp://127.0.0.1:{args.ports + 2}"}}
    cfg_path = tmp / "soak.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = subprocess.Popen([sys.executable, "-m", "stream", "run", str(cfg_path),
                            "--log-level", "WARNING"], stderr=subprocess.DEVNULL)

    lat: list[float] = []
    gaps = [0, -1]  # seqs skipped (dropped upstream), last seq seen
    lock = threading.Lock()
    stop = threading.Event()

    def listen() -> None:
        with Subscriber(events) as sub:
            while not stop.is_set():
                ev = sub.recv(0.5)
                if ev is None:
                    continue
                with lock:
                    if ev["type"] == "label":
                        lat.append(float(ev["latency_ms"]))
                        if gaps[1] >= 0:
                            gaps[0] += max(0, ev["seq"] - gaps[1] - 1)
                        gaps[1] = ev["seq"]

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    t0 = time.monotonic()
    rows: list[tuple[float, dict[str, float], float, float, float]] = []
    print(f"soak: {args.minutes} min, source {src['url']}, {args.fps} fps, "
          f"{args.workers} worker(s); rows every {args.interval:.0f} s", flush=True)
    try:
        while time.monotonic() - t0 < args.minutes * 60 and run.poll() is None:
            time.sleep(args.interval)
            with lock:
                window, lat[:] = list(lat), []
                dropped = gaps[0]
            procs = children(run.pid)
            mem = {name: rss_mb(pid) for pid, name in sorted(procs.items(), key=lambda x: x[1])}
            p50 = float(np.percentile(window, 50)) if window else float("nan")
            p99 = float(np.percentile(window, 99)) if window else float("nan")
            rate = len(window) / args.interval
            rows.append((time.monotonic() - t0, mem, p50, p99, rate))
            memtxt = "  ".join(f"{k} {v:6.1f} MB" for k, v in mem.items())
            print(f"{rows[-1][0] / 60:6.1f} min  labelled {rate:5.2f}/s  latency p50 "
                  f"{p50:7.1f} ms p99 {p99:7.1f} ms  dropped so far {dropped}  "
                  f"{memtxt}", flush=True)
    finally:
        stop.set()
        run.send_signal(signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()
        thread.join(5)
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print("\nRSS growth first → last row:")
        for name in last[1]:
            a, b = first[1].get(name, float("nan")), last[1][name]
            print(f"  {name:10s} {a:7.1f} → {b:7.1f} MB  ({b - a:+.1f} MB)")
        print(f"latency p50 {first[2]:.1f} → {last[2]:.1f} ms, p99 {first[3]:.1f} → "
              f"{last[3]:.1f} ms; labelled/s {first[4]:.2f} → {last[4]:.2f}")
    print(f"stream run exited with {run.returncode}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
