"""`stream bench`: how close the pipeline gets to the model's own speed, on your machine.

It measures back to back, on your IR and a clip it generates, and prints each figure as a
ratio to its yardstick measured in the same run (machines differ; ratios within one run
compare): figures.py does the arithmetic (pure), runs.py the measurements, suite.py the
order. The README's Performance section quotes its output.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

HELP = "measure the pipeline against the raw model on this machine (ratios, CPU per role)"

DESCRIPTION = """\
Measure, back to back on this machine and IR, and print as ratios:

  raw model      the IR alone at the THROUGHPUT and LATENCY hints: frames/s and median
                 request latency (benchmark_app if on PATH, else OpenVINO's Python API:
                 the line says which), and the inference precision OpenVINO picked
                 (bf16 on CPUs with AVX-512 bf16 or AMX, else f32, unless --precision).
                 When it picked another than f32, THROUGHPUT is measured at f32 too and
                 the line says which is the faster here: without AMX, f32 can be
                 (set model.precision: f32 then)
  labels only    `stream run` on a generated clip (default 1280x720 H.264, 25 fps; its
                 model.hint auto -> THROUGHPUT for a file), no video written:
                 labels/s / raw THROUGHPUT frames/s
  with video     the same, writing the overlaid video: labels/s / raw THROUGHPUT
  live           the clip paced in real time like a camera (model.hint auto -> LATENCY):
                 labels/s / raw LATENCY frames/s, or / the clip's 25 fps when that is
                 lower (no pipeline labels more than the camera sends), and the label
                 latency p50/p99 a subscriber sees / the LATENCY median request latency
                 (steady state: each stream's first second, the model's first slow
                 request and the frames behind it, is left out and its worst given apart;
                 so is the clip's end, from the first stream's last frame on: a live
                 source's last frame waits for a free request, several streams' last
                 frames for one another)
  N cameras      N live sources at once (--cameras, default 4, of a 640x360 clip): labels/s
                 in all / raw LATENCY (or / the frames sent, when lower), max/min labels/s
                 per stream (1.00 = fair), latency p50/p99 / the LATENCY median request
                 Each live run's yardstick is the mean of the raw LATENCY measured just
                 before and just after it: on a shared machine the model's own latency
                 can move by a quarter within minutes. --repeat N measures the live runs
                 N times and adds the median of each ratio.
  framework tax  the same two runs with a trivial IR (global average pool + one matmul to
                 1000 outputs: next to no compute) / OpenCV decoding the clip alone: what
                 the pipeline itself costs; the decode-only and both pipeline runs use
                 the clip repeated to --tax-frames (joined by ffmpeg without
                 re-encoding, when ffmpeg is on PATH), so a run at hundreds of frames/s
                 lasts long enough to be steady

The pipeline runs are `stream run` as you would start it: local roles linked over private
ipc:// sockets, label events on tcp, `model.hint: auto`.

Each pipeline line also gives the CPU milliseconds per frame of each role (capture,
worker, sink: what they log when they stop) over the frames after each role's first,
with the CPU seconds up to and including that first frame (imports, model compile,
opening the source) apart, and the capture's stage breakdown (decode, crop, waiting for
workers, sending to the sink): where the time goes. Run it on an idle machine: anything
else running shifts the figures, but less so their ratios.
"""

EPILOG = """\
examples:
  stream bench                          the default model (built if missing), full run (~4 min)
  stream bench --quick                  a short run (~1 min): rougher figures
  stream bench --model my.xml --precision f32
  stream bench --skip video,tax --frames 1000
  stream bench --cameras 8              the several-cameras run with 8 live sources
  stream bench --skip video,tax --repeat 3
                                        the live runs 3 times each, and their medians
"""


def add_bench_parser(sub: Any) -> None:
    """Register ``stream bench`` on the CLI's subparsers."""
    from stream.bench.suite import STEPS

    p = sub.add_parser("bench", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/convnext-tiny.xml", metavar="PATH.xml",
                   help="classification IR (default: convnext-tiny, built if missing)")
    p.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    p.add_argument("--precision", choices=["bf16", "f16", "f32"],
                   help="inference precision for every run (default: the device's, "
                        "and the raw THROUGHPUT at f32 beside it)")
    p.add_argument("--workers", type=int, default=1, help="local workers (default 1)")
    p.add_argument("--frames", type=int, help="clip length in frames (default 500; "
                   "--quick 100)")
    p.add_argument("--size", default="1280x720", metavar="WxH",
                   help="clip size (default 1280x720)")
    p.add_argument("--seconds", type=float,
                   help="seconds per raw-model measurement (default 15; --quick 4)")
    p.add_argument("--raw-tool", choices=["auto", "benchmark_app", "python"], default="auto",
                   help="what measures the raw model (auto: benchmark_app if on PATH)")
    p.add_argument("--cameras", type=int, default=4, metavar="N",
                   help="live sources in the several-cameras run (default 4; 640x360)")
    p.add_argument("--tax-frames", type=int, metavar="N",
                   help="frames of the framework-tax runs: the clip repeated to at least N "
                        "(default 2000; --quick: the clip once)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="measure the live runs N times each (1..10, default 1) and print "
                        "the median of each ratio: a 20 s live run's p99 rests on a few "
                        "labels")
    p.add_argument("--skip", default="", metavar="LIST",
                   help=f"leave out some of: {', '.join(STEPS)} (comma-separated)")
    p.add_argument("--quick", action="store_true", help="a short run: rougher figures")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the clip, configs and each run's log here (default: a "
                        "temporary directory, removed)")
    p.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the bench and print the report (stdout); progress goes to stderr."""
    from stream.bench.figures import render
    from stream.bench.suite import STEPS, Options, RealBackend, run_bench
    from stream.errors import ConfigError

    skip = frozenset(s.strip() for s in args.skip.split(",") if s.strip())
    if skip - set(STEPS):
        raise ConfigError(f"--skip: unknown step(s) {', '.join(sorted(skip - set(STEPS)))}; "
                          f"choose from {', '.join(STEPS)}")
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {args.size!r}: expected WxH, e.g. 1280x720") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise ConfigError(f"--size {args.size!r}: width and height must be even and >= 16")
    frames = args.frames or (100 if args.quick else 500)
    seconds = args.seconds or (4.0 if args.quick else 15.0)
    tax_frames = args.tax_frames if args.tax_frames is not None else (
        frames if args.quick else 2000)
    if (frames < 10 or seconds <= 0 or not 0 <= args.cameras <= 16 or tax_frames < 1
            or args.workers < 1 or not 1 <= args.repeat <= 10):
        raise ConfigError("--frames must be >= 10, --seconds > 0, --cameras 0..16, "
                          "--tax-frames >= 1, --workers >= 1 and --repeat 1..10")
    model = _model(args.model)

    def run(workdir: Path) -> int:
        opts = Options(model, workdir, args.device, args.precision, args.workers, frames,
                       (w, h), 25.0, seconds, args.raw_tool, skip, args.cameras,
                       tax_frames=tax_frames, repeat=args.repeat)
        report = run_bench(opts, RealBackend(),
                           lambda what: print(f"bench: {what} ...", file=sys.stderr,
                                              flush=True))
        print("\n".join(render(report)))
        return 0

    if args.keep:
        keep = Path(args.keep)
        keep.mkdir(parents=True, exist_ok=True)
        return run(keep)
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        return run(Path(tmp))


def _model(path: str) -> str:
    """The IR path, building the default model on first use (as `stream run` does)."""
    from stream.model.builder import DEFAULT_OUTPUT, ensure_default_model

    p = Path(path)
    if not p.exists() and (p == DEFAULT_OUTPUT or p.resolve() == DEFAULT_OUTPUT.resolve()):
        print(f"building the default model at {p} (first use)", file=sys.stderr)
        ensure_default_model(p)
    import openvino as ov

    from stream.model.runtime import inspect_classifier

    inspect_classifier(ov.Core(), p)  # a clear error now, not one per run
    return str(p.resolve())
