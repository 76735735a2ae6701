#!/usr/bin/env python3
"""Live sources sharing workers: labelled fps per stream, fairness and label latency.

For each source count in ``--sources`` (default 1 and 4), runs ``stream run`` of the tree
``--tree`` (default: this checkout; point it at a ``git worktree`` of an older commit to
compare) on N generated clips read with ``realtime: true`` and ``loop: true`` (live
sources: drop policy, paced at 25 fps), with one worker, and listens to the label events
like any subscriber. After ``--warmup`` seconds it counts, for ``--seconds``:

  * labelled fps of each stream, their max/min ratio and total;
  * label latency (the events' ``latency_ms``: capture wall time → label published) p50/p99;

and, with ``--raw``, the model alone through OpenVINO at the worker's hint
(AsyncInferQueue, like ``benchmark_app``): throughput and median request latency, so each
figure above can be read as a ratio (issue 8 targets). One source is 1280x720, several are
640x360 each (the issue's cases; ``--size`` overrides).

The machine is shared and noisy: compare figures from ONE run of this script, never
across runs. Usage:

    python scripts/scheduling.py --model models/convnext-tiny.xml [--tree /tmp/old] [--raw]
    python scripts/scheduling.py --model oracle        # the tests' tiny colour IR
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from conftest import (  # noqa: E402
    EventLog,
    build_oracle_ir,
    find_free_port_base,
    make_clip,
    runs_of_classes,
    write_config,
)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def run_live(tree: Path, model: Path, n: int, size: tuple[int, int], tmp: Path,
             warmup: float, seconds: float, hint: str | None = None) -> dict[str, object]:
    """One ``stream run`` with ``n`` live sources; the figures of its steady window."""
    clips = []
    for i in range(n):
        clip = tmp / f"live{n}-{i}-{size[0]}x{size[1]}.mp4"
        if not clip.exists():
            make_clip(clip, runs_of_classes(250, seed=i), size=size, fps=25)
        clips.append(clip)
    base = find_free_port_base(2 + n)
    cfg = write_config(tmp / f"live{n}.yaml", port_base=base, model=model, workers=1,
                       sources=[{"id": f"cam{i}", "url": str(c), "realtime": True,
                                 "loop": True} for i, c in enumerate(clips)])
    if hint is not None:  # the same hint in both trees isolates the scheduling
        data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
        data["model"]["hint"] = hint
        cfg.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    events = EventLog(f"tcp://127.0.0.1:{base}", types=["label"])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([sys.executable, "-m", "stream", "run", str(cfg)], cwd=tree,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 180
        while not events.of("label"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"no label from {tree}: {proc.communicate()[1][-2000:]}")
            time.sleep(0.2)  # polling interval
        start = time.monotonic() + warmup
        time.sleep(warmup + seconds)  # the measured window itself
        end = start + seconds
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        events.close()
    window = [e for t, e in events.events if start <= t < end]
    fps = {f"cam{i}": sum(1 for e in window if e["stream"] == f"cam{i}") / seconds
           for i in range(n)}
    lat = [float(e["latency_ms"]) for e in window]
    return {"fps": fps, "lat": lat}


def raw_model(model: Path, hint: str, seconds: float) -> tuple[float, float]:
    """(inferences/s, median request ms) of the model alone, AsyncInferQueue at ``hint``."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(model), "CPU", {"PERFORMANCE_HINT": hint})
    n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, n)
    shape = [d.get_length() for d in compiled.input(0).get_partial_shape()]
    data = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    times: list[float] = []
    queue.set_callback(lambda _r, t0: times.append(time.perf_counter() - t0))
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        queue.start_async({0: data}, time.perf_counter())
        count += 1
    queue.wait_all()
    return count / seconds, 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="oracle",
                    help="IR .xml, or 'oracle' for the tests' tiny colour classifier")
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout whose `stream` runs (a git worktree of an old commit "
                         "to compare)")
    ap.add_argument("--sources", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--size", default=None, help="WxH of every clip (default: 1280x720 for "
                    "one source, 640x360 for more)")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--raw", action="store_true",
                    help="also measure the model alone (throughput, median request latency)")
    ap.add_argument("--hint", default=None,
                    help="model.hint written into the run's config (default: the tree's own "
                         "default); --raw uses it too (THROUGHPUT when not given)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="stream-sched-") as d:
        tmp = Path(d)
        model = build_oracle_ir(tmp / "oracle.xml") if args.model == "oracle" \
            else Path(args.model).resolve()
        print(f"tree {args.tree}  model {model.name}  hint {args.hint or 'default'}  "
              f"window {args.seconds:.0f} s after {args.warmup:.0f} s warm-up  (shared "
              "machine: compare within one run)")
        if args.raw:
            hint = args.hint if args.hint not in (None, "auto") else "THROUGHPUT"
            raw_fps, med = raw_model(model, hint, 10.0)
            print(f"raw model ({hint}): {raw_fps:.2f} inferences/s, median request "
                  f"{med:.1f} ms")
        for n in args.sources:
            w, h = map(int, (args.size or ("1280x720" if n == 1 else "640x360")).split("x"))
            got = run_live(args.tree, model, n, (w, h), tmp, args.warmup, args.seconds,
                           args.hint)
            fps = got["fps"]
            lat = got["lat"]
            assert isinstance(fps, dict) and isinstance(lat, list)
            per = " ".join(f"{v:.2f}" for v in fps.values())
            ratio = max(fps.values()) / max(min(fps.values()), 1e-9)
            line = (f"{n} x {w}x{h}@25 live: labelled fps per stream [{per}], max/min "
                    f"{ratio:.2f}, total {sum(fps.values()):.2f}")
            if lat:
                line += f"; latency p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms"
            print(line, flush=True)


if __name__ == "__main__":
    main()
