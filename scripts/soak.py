#!/usr/bin/env python3
"""Soak run: N live sources for a given time; prints RSS per process and latency over time.

A looping file read in real time (``realtime: true``: paced at its fps and subject to the
live drop policy, like a camera) runs through the whole pipeline, once per source, while this
script subscribes to the label events. Every interval it prints a row: the resident memory
(from /proc) of every process of the run (the launcher, the sink, each worker and each
capture: one capture process per source), the label latency p50/p99 over all streams,
labelled/s in total and per stream (min/max over the streams), and the frames dropped so far
(seqs skipped in the label events). At the end, each process's RSS growth first -> last row
and max/min in percent, and whether it stayed within ±5%.

Usage:  python scripts/soak.py --minutes 30 [--sources 4] [--interval 60] [--fps 8]
        [--model PATH.xml] [--source rtsp://...]
        (default: a generated 640x360 clip, looped in real time; with --sources N every
        source reads the same clip, or the same --source URL)
"""

from __future__ import annotations

import argparse
import math
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

ROLES = ("capture", "worker", "sink")
FLAT = 0.05  # issue 8: RSS per role flat within ±5%


def children(pid: int) -> dict[int, str]:
    """pid -> name for every child of ``pid`` (read from its command line): ``--name`` if
    given (workers), ``capture ID`` for the capture of source ``--source ID``, else the role."""
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
            role = next((w for w in words if w in ROLES), "?")
            if "--name" in words[:-1]:
                name = words[words.index("--name") + 1]
            elif role == "capture" and "--source" in words[:-1]:
                name = f"capture {words[words.index('--source') + 1]}"
            else:
                name = role
            out[int(stat.parent.name)] = name
    return out


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:  # exited since children() saw it
        pass
    return float("nan")


def order(name: str) -> tuple[int, str]:
    """Pipeline order: captures, workers, sink, then the launcher (``run``)."""
    role = name.split()[0].split("-")[0]
    return ((*ROLES, "run").index(role) if role in (*ROLES, "run") else 9, name)


class Row(NamedTuple):
    t: float  # seconds since start
    mem: dict[str, float]  # process name -> RSS MB
    p50: float
    p99: float
    rate: float  # labelled/s, all streams
    rates: dict[str, float]  # labelled/s per stream


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--interval", type=float, default=60, help="seconds between rows")
    ap.add_argument("--fps", type=float, default=8.0, help="source frame rate (real time)")
    ap.add_argument("--sources", type=int, default=1,
                    help="live streams at once (ids soak0..soakN-1; 'soak' when 1)")
    ap.add_argument("--model", default="models/convnext-tiny.xml")
    ap.add_argument("--source", help="a live URL instead of the generated looping clip")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ports", type=int, default=6660,
                    help="first of N+2 free TCP ports (N = --sources)")
    args = ap.parse_args()
    if args.sources < 1:
        ap.error("--sources must be at least 1")

    from stream.events import Subscriber
    from stream.model.builder import ensure_default_model
    from stream.samples import make_sample_clip

    if not Path(args.model).exists():
        ensure_default_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="stream-soak-"))
    ids = ["soak"] if args.sources == 1 else [f"soak{i}" for i in range(args.sources)]
    if args.source:
        url, live = args.source, {}
    else:
        url = str(make_sample_clip(tmp / "soak.mp4", seconds=10, fps=args.fps, size=(640, 360)))
        live = {"realtime": True, "loop": True}
    events = f"tcp://127.0.0.1:{args.ports}"
    cfg = {"model": {"path": args.model},
           "sources": [{"id": sid, "url": url, **live} for sid in ids],
           "workers": {"count": args.workers},
           "sink": {"events": events},
           "transport": {"sink": f"tcp://127.0.0.1:{args.ports + 1}",  # frames: port + i
                         "frames": f"tcp://127.0.0.1:{args.ports + 2}"}}
    cfg_path = tmp / "soak.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = subprocess.Popen([sys.executable, "-m", "stream", "run", str(cfg_path),
                            "--log-level", "WARNING"], stderr=subprocess.DEVNULL)

    lat: list[float] = []
    count = dict.fromkeys(ids, 0)  # labels per stream this interval
    dropped = dict.fromkeys(ids, 0)  # seqs skipped (dropped upstream), whole run
    last_seq: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def listen() -> None:
        with Subscriber(events, types=["label"]) as sub:
            while not stop.is_set():
                ev = sub.recv(0.5)
                if ev is None:
                    continue
                sid, seq = ev["stream"], int(ev["seq"])
                with lock:
                    lat.append(float(ev["latency_ms"]))
                    count[sid] = count.get(sid, 0) + 1
                    if sid in last_seq:
                        dropped[sid] = dropped.get(sid, 0) + max(0, seq - last_seq[sid] - 1)
                    last_seq[sid] = seq

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    t0 = last = time.monotonic()
    rows: list[Row] = []
    header: list[str] = []
    print(f"soak: {args.minutes} min, {len(ids)} source(s) {url}, {args.fps} fps each, "
          f"{args.workers} worker(s); rows every {args.interval:.0f} s; RSS in MB", flush=True)
    try:
        while time.monotonic() - t0 < args.minutes * 60 and run.poll() is None:
            time.sleep(args.interval)
            with lock:
                now = time.monotonic()
                window, lat[:] = list(lat), []
                counts = dict(count)
                count.update(dict.fromkeys(count, 0))
                gone = sum(dropped.values())
            span, last = now - last, now
            procs = children(run.pid)
            procs[run.pid] = "run"
            mem = {name: rss_mb(pid) for pid, name in sorted(procs.items(),
                                                             key=lambda x: order(x[1]))}
            p50 = float(np.percentile(window, 50)) if window else math.nan
            p99 = float(np.percentile(window, 99)) if window else math.nan
            rates = {sid: n / span for sid, n in counts.items()}
            rows.append(Row(now - t0, mem, p50, p99, len(window) / span, rates))
            if list(mem) != header:
                header = list(mem)
                print(f"{'min':>5} {'lab/s':>6} {'stream min/max':>14} {'p50 ms':>7} "
                      f"{'p99 ms':>7} {'dropped':>7}  "
                      + "  ".join(f"{k:>{max(len(k), 6)}}" for k in header), flush=True)
            print(f"{rows[-1].t / 60:5.1f} {rows[-1].rate:6.2f} "
                  f"{min(rates.values()):6.2f}/{max(rates.values()):<7.2f} {p50:7.1f} "
                  f"{p99:7.1f} {gone:7d}  "
                  + "  ".join(f"{v:>{max(len(k), 6)}.1f}" for k, v in mem.items()),
                  flush=True)
    finally:
        stop.set()
        run.send_signal(signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()
        thread.join(5)
    if len(rows) >= 2:
        first, final = rows[0], rows[-1]
        names = sorted({k for r in rows for k in r.mem}, key=order)
        width = max(len(k) for k in names)
        print(f"\nRSS first → last row ({first.t / 60:.1f} → {final.t / 60:.1f} min), min/max "
              f"over all rows; flat = every row within ±{FLAT:.0%} of the first:")
        flat_all = True
        for name in names:
            seen = [r.mem[name] for r in rows if not math.isnan(r.mem.get(name, math.nan))]
            if not seen:
                continue
            a, b, lo, hi = seen[0], seen[-1], min(seen), max(seen)
            flat = (name in final.mem and len(seen) == len(rows)
                    and all(abs(v / a - 1) <= FLAT for v in seen))
            flat_all &= flat
            note = "" if len(seen) == len(rows) else f"  (in {len(seen)}/{len(rows)} rows)"
            print(f"  {name:{width}s} {a:7.1f} → {b:7.1f} MB ({b / a - 1:+6.1%})  min "
                  f"{lo:7.1f} max {hi:7.1f} (max/min {hi / lo - 1:+6.1%})  "
                  f"{'within' if flat else 'OUTSIDE'} ±{FLAT:.0%}{note}")
        print(f"every process within ±{FLAT:.0%}: {'yes' if flat_all else 'NO'}")
        print(f"latency p50 {first.p50:.1f} → {final.p50:.1f} ms, p99 {first.p99:.1f} → "
              f"{final.p99:.1f} ms; labelled/s {first.rate:.2f} → {final.rate:.2f} in all, "
              f"per stream {min(final.rates.values()):.2f}–{max(final.rates.values()):.2f} "
              f"in the last row")
    print(f"stream run exited with {run.returncode}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
