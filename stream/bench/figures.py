"""PURE: the arithmetic of `stream bench`: role logs and summary rows in, ratios and lines out.

Every figure is a ratio to its yardstick measured in the same run on the same machine
(DESIGN.md: machines differ, so only ratios within one run compare):

- pipeline labels/s on a file vs. the raw model at the THROUGHPUT hint;
- a live source's labels/s vs. the raw model at the LATENCY hint, and its label latency
  (p50/p99, seen by a subscriber) vs. that hint's median request latency;
- the framework tax: the pipeline with a trivial IR vs. OpenCV decoding the same clip.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# "HH:MM:SS role[pid] LEVEL message" (stream.runtime.setup_logging)
_LOG_LINE = re.compile(r"^\S+ (?P<role>[\w.-]+)\[\d+\] \w+ (?P<msg>.*)$")
# stream.runtime.CpuMeter.report: "process cpu X ms/frame over the N frames after the
# first (S s of CPU up to and including the first)"; or, too few frames, only the S part.
_CPU = re.compile(r"process cpu (?P<ms>\d+(?:\.\d+)?) ms/frame over the \d+ frames after")
_STARTUP = re.compile(r"process cpu\b.*?(?P<s>\d+(?:\.\d+)?) s of CPU up to and including")
_STAGES = re.compile(r"stage ms/frame: (?P<stages>[^;]*)")
_PRECISION = re.compile(r"inference precision (?:<Type: ')?(?P<p>[\w]+)")
_HINT = re.compile(r"model\.hint auto -> (?P<h>[A-Z_]+)")


@dataclass(frozen=True)
class Raw:
    """The model alone, as ``benchmark_app`` measures it (``tool`` says which ran)."""

    hint: str
    fps: float
    median_ms: float
    precision: str
    tool: str


@dataclass(frozen=True)
class Run:
    """One ``stream run`` of the bench: what the sink's table and the roles' logs said."""

    name: str
    labelled: int
    frames: int
    fps: float  # labelled frames per second
    # role -> CPU ms per frame after its first frame (cpu_startup_s: CPU s up to that one)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    stages: str = ""  # the capture's "stage ms/frame" breakdown
    precision: str = ""  # what the worker's compiled model runs at (its log line)
    hint: str = ""  # the hint model.hint auto resolved to (the worker's log line)
    p50_ms: float | None = None  # label latency seen by a subscriber (live runs)
    p99_ms: float | None = None
    per_stream: dict[str, float] = field(default_factory=dict)  # labels/s, several streams
    cpu_startup_s: dict[str, float] = field(default_factory=dict)  # role -> CPU s
    # the worst label latency in each stream's first WARMUP_S, left out of p50/p99
    warmup_ms: float | None = None
    # the worst of the labels left out at the sources' end (see steady_latency)
    end_ms: float | None = None


@dataclass(frozen=True)
class Live:
    """A live run and its yardstick: the raw LATENCY figures measured just before and just
    after it, averaged (the model's own latency moves on a shared machine)."""

    run: Run
    base: Raw | None


WARMUP_S = 1.0
"""A live stream's first second of labels is its start-up, not its steady state: the
first request of a freshly compiled model is slow (130-170 ms for convnext-tiny here), and
the frames that waited behind it take a few more to drain."""


@dataclass(frozen=True)
class Steady:
    """A live run's label latencies in its steady state, and the worst of each part left
    out (None when that part held no label)."""

    latencies: list[float]
    warmup_ms: float | None  # the worst in the streams' first ``WARMUP_S``
    end_ms: float | None  # the worst of the frames from the first source's end on


def steady_latency(labels: Sequence[tuple[str, float, float]], warmup_s: float = WARMUP_S
                   ) -> Steady:
    """The latencies of a live run's steady state: what a camera that never ends sees.

    Left out: each stream's start-up (labels that arrived less than ``warmup_s`` after
    that stream's first), and the end of the sources (labels of frames shot at or after
    the moment the first stream's last labelled frame was shot). A live source that ends
    (the bench's clip read in real time) keeps its last frame for the next free request,
    and with several streams ending together their last frames wait for the one worker
    in turn: four 640x360 streams' last labels came 165-485 ms after their frames where
    the run's p99 before the end was 125-132 ms. The worst of each part is kept apart.

    ``labels`` are (stream, arrival time in s, latency in ms), in arrival order; a frame
    was shot at ``arrival - latency / 1000``.
    """
    first: dict[str, float] = {}
    last_shot: dict[str, float] = {}
    for stream, arrival, latency in labels:
        first.setdefault(stream, arrival)
        last_shot[stream] = arrival - latency / 1000.0
    end = min(last_shot.values(), default=0.0) - 1e-6  # float slack: shot times are derived
    steady: list[float] = []
    warmup: float | None = None
    ended: float | None = None
    for stream, arrival, latency in labels:
        if arrival - latency / 1000.0 >= end:
            ended = latency if ended is None else max(ended, latency)
        elif arrival - first[stream] >= warmup_s:
            steady.append(latency)
        else:
            warmup = latency if warmup is None else max(warmup, latency)
    return Steady(steady, warmup, ended)


_BA_FPS = re.compile(r"Throughput:\s+([\d.]+)\s+FPS")
# benchmark_app prints latencies in us when the mean request takes under a millisecond
_BA_MEDIAN = re.compile(r"Median:\s+([\d.]+)\s+(ms|us)\b")
_BA_PRECISION = re.compile(r"INFERENCE_PRECISION_HINT:\s*(?:<Type: ')?(\w+)")


def benchmark_app_figures(hint: str, stdout: str) -> Raw | None:
    """Frames/s, median request latency (ms) and precision from ``benchmark_app``'s
    output; None when it printed no throughput or no median."""
    fps = _BA_FPS.search(stdout)
    med = _BA_MEDIAN.search(stdout)
    if fps is None or med is None:
        return None
    prec = _BA_PRECISION.search(stdout)
    median_ms = float(med[1]) / (1000.0 if med[2] == "us" else 1.0)
    return Raw(hint, float(fps[1]), median_ms, prec[1] if prec else "device default",
               "benchmark_app")


def worker_settings(stderr: str) -> tuple[str, str]:
    """(inference precision, hint ``auto`` resolved to) from the worker's log lines."""
    p = _PRECISION.search(stderr)
    h = _HINT.search(stderr)
    return (p["p"] if p else "", h["h"] if h else "")


def role_cpu(stderr: str) -> tuple[dict[str, float], dict[str, float], str]:
    """Each role's CPU per frame and its start-up CPU, from the lines the roles log at exit.

    Roles (capture, worker, sink) log ``process cpu X ms/frame over the N frames after the
    first (S s of CPU up to and including the first)``: X is the CPU per frame after the
    first, S the start-up CPU (imports, model compile, opening the source, the first
    frame), which a short run would otherwise spread over its few frames. A role with too
    few frames logs only S. Several processes of one role (two workers) are kept apart
    as ``worker``, ``worker#2``, ... Returns ``({role: X ms}, {role: S s}, the capture's
    stage breakdown)``.
    """
    cpu: dict[str, float] = {}
    startup: dict[str, float] = {}
    stages = ""
    for line in stderr.splitlines():
        m = _LOG_LINE.match(line.strip())
        if m is None:
            continue
        up = _STARTUP.search(m["msg"])
        if up is not None:
            role, n = m["role"], 2
            while role in startup:
                role, n = f"{m['role']}#{n}", n + 1
            startup[role] = float(up["s"])
            c = _CPU.search(m["msg"])
            if c is not None:
                cpu[role] = float(c["ms"])
        s = _STAGES.search(m["msg"])
        if s is not None:
            stages = s["stages"].strip()
    return cpu, startup, stages


@dataclass(frozen=True)
class Row:
    """A stream's row of the sink's summary table (stream.sink.report.HEAD)."""

    captured: int | None
    labelled: int
    dropped: int
    fps: float


def summary_row(stdout: str, stream: str) -> Row | None:
    """The row of ``stream`` in the sink's summary table, or None if there is none."""
    lines = stdout.splitlines()
    head = next((i for i, ln in enumerate(lines) if ln.split()[:2] == ["stream", "captured"]),
                None)
    if head is None:
        return None
    for line in lines[head + 1:]:
        cols = line.split()
        if len(cols) >= 6 and cols[0] == stream:
            try:
                captured = None if cols[1] == "?" else int(cols[1])
                return Row(captured, int(cols[2]), int(cols[3]), float(cols[5]))
            except ValueError:
                return None
    return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, as numpy's default); None if empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def fraction(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either side is missing or the base is not positive."""
    return None if value is None or base is None or base <= 0 else value / base


def ratio(value: float | None, base: float | None) -> str:
    """``"0.93x"``, or ``"n/a"`` when either side is missing or the base is zero."""
    got = fraction(value, base)
    return "n/a" if got is None else f"{got:.2f}x"


def live_ceiling(raw_latency: Raw | None, source_fps: float) -> tuple[float | None, str]:
    """A live source's yardstick: the model's LATENCY frames/s, or the source's own fps
    when the camera is the slower of the two (no pipeline labels more than it sends)."""
    if raw_latency is None:
        return None, "raw LATENCY (not measured)"
    if source_fps < raw_latency.fps:
        return source_fps, f"the {source_fps:g} fps sent (< raw LATENCY)"
    return raw_latency.fps, "raw LATENCY"


def fairness(per_stream: dict[str, float]) -> float | None:
    """Max over min labels/s of the streams (1.00 = perfectly fair); None if one got 0."""
    rates = list(per_stream.values())
    if len(rates) < 2 or min(rates) <= 0:
        return None
    return max(rates) / min(rates)


def _live_lines(live: Live, source_fps: float) -> list[str]:
    """A live run: labels/s / its ceiling (the sources' fps or raw LATENCY), with several
    sources their fairness, and latency / the LATENCY median request; then CPU."""
    run, base = live.run, live.base
    several = bool(run.per_stream)
    ceiling, what = live_ceiling(base, _sources(run) * source_fps)
    head = (f"  {run.name:<30} {run.fps:7.2f} labels/s{' in all' if several else ''} = "
            f"{ratio(run.fps, ceiling)} {what} ({run.labelled}/{run.frames} labelled"
            f"{_settings(run)})")
    latency = f"label latency {_latency(run, base)}"
    if several:
        fair = fairness(run.per_stream)
        each = ", ".join(f"{v:.2f}" for v in run.per_stream.values())
        latency = (f"per stream {each} labels/s: max/min "
                   f"{'n/a' if fair is None else f'{fair:.2f}'}; {latency}")
    return [head, f"      {latency}", f"      {_cpu_text(run)}"]


def _sources(run: Run) -> int:
    """How many live sources a run had (its per-stream figures; one when it has none)."""
    return max(1, len(run.per_stream))


def _median_ms(base: Raw | None) -> float | None:
    return base.median_ms if base else None


def _latency(run: Run, base: Raw | None) -> str:
    """``p50 X ms = Rx, p99 Y ms = Rx the LATENCY median request (M ms around this run)``."""
    med = _median_ms(base)
    p50 = f"{run.p50_ms:.0f}" if run.p50_ms is not None else "n/a"
    p99 = f"{run.p99_ms:.0f}" if run.p99_ms is not None else "n/a"
    around = f" ({med:.1f} ms around this run)" if med is not None else ""
    warm = (f"; each stream's first {WARMUP_S:g} s left out (start-up: worst "
            f"{run.warmup_ms:.0f} ms)" if run.warmup_ms is not None else "")
    if run.end_ms is not None:
        warm += (f"{', and' if warm else ';'} the sources' end (their last frames, each "
                 f"waiting for a free request: worst {run.end_ms:.0f} ms)")
    return (f"p50 {p50} ms = {ratio(run.p50_ms, med)}, p99 {p99} ms = "
            f"{ratio(run.p99_ms, med)} the LATENCY median request{around}{warm}")


def _median_of(runs: Sequence[Live], source_fps: float) -> str:
    """The median over repeated runs of each ratio (each run against its own yardstick)."""
    def median(values: Sequence[float | None]) -> str:
        got = [v for v in values if v is not None]
        return f"{percentile(got, 50):.2f}" if got else "n/a"

    fps = [fraction(x.run.fps, live_ceiling(x.base, _sources(x.run) * source_fps)[0])
           for x in runs]
    p50 = [fraction(x.run.p50_ms, _median_ms(x.base)) for x in runs]
    p99 = [fraction(x.run.p99_ms, _median_ms(x.base)) for x in runs]
    fair = (f", max/min {median([fairness(x.run.per_stream) for x in runs])}"
            if runs[0].run.per_stream else "")
    kind = runs[0].run.name.split(" (")[0]
    return (f"  {kind}, median of {len(runs)} runs (each / its own yardstick): labels/s "
            f"{median(fps)}x{fair}, latency p50 {median(p50)}x, p99 {median(p99)}x")


def _settings(run: Run) -> str:
    parts = [f"hint {run.hint}" if run.hint else "", run.precision]
    return "".join(f", {p}" for p in parts if p)


def _cpu_text(run: Run) -> str:
    text = ("CPU ms/frame after the first frame: "
            + ", ".join(f"{k} {v:.1f}" for k, v in run.cpu_ms.items())
            if run.cpu_ms else "CPU per frame: not logged")
    if run.cpu_startup_s:
        text += "; start-up CPU s: " + ", ".join(f"{k} {v:.2f}"
                                                 for k, v in run.cpu_startup_s.items())
    return text


def _cpu_and_stages(run: Run) -> str:
    """A file run's second line: CPU per role, then the capture's stage breakdown."""
    return f"      {_cpu_text(run)}" + (f"; capture stages: {run.stages}" if run.stages else "")


@dataclass(frozen=True)
class Report:
    """Everything one `stream bench` measured; :func:`render` turns it into lines."""

    model: str
    clip: str
    raw_throughput: Raw
    # The LATENCY hint measured before, between and after the live runs, in order.
    raw_latency: list[Raw] = field(default_factory=list)
    labels_only: Run | None = None
    with_video: Run | None = None
    live: list[Live] = field(default_factory=list)  # one source, paced (each repetition)
    decode_fps: float | None = None
    source_fps: float = 25.0  # the clip's frame rate: a live source's own ceiling
    tax_labels: Run | None = None
    tax_video: Run | None = None
    notes: list[str] = field(default_factory=list)
    # THROUGHPUT measured again after the file runs: a shared machine drifts, so their
    # yardstick is the mean of the start and end figures.
    raw_throughput_end: Raw | None = None
    cameras: list[Live] = field(default_factory=list)  # several live sources at once
    tax_clip: str = ""  # what the framework tax ran on (the clip, or it repeated)
    # THROUGHPUT at f32 right after the first THROUGHPUT measurement, when the device's
    # default precision is not f32 and the user did not choose one
    raw_f32: Raw | None = None


F32_NAMES = ("f32", "float32")
"""How benchmark_app and OpenVINO's Python API name f32."""

PRECISION_MARGIN = 1.05
"""f32 and the device's default precision within 5% of each other: neither is the faster."""


def is_f32(precision: str) -> bool:
    """The precision a raw measurement ran at is f32 (as either tool names it)."""
    return precision.lower() in F32_NAMES


def precision_line(default: Raw, f32: Raw) -> str:
    """The THROUGHPUT hint at f32 against the device's default precision, measured one
    after the other, and which to use: OpenVINO picks bf16 wherever the CPU has AVX-512
    bf16 or AMX, but without AMX f32 can be the faster (convnext-tiny on one such Xeon:
    25 frames/s at f32 against 16.5 at bf16, on another CPU the reverse)."""
    gain = fraction(f32.fps, default.fps)
    line = (f"  THROUGHPUT at f32: {f32.fps:.2f} frames/s, median request "
            f"{f32.median_ms:.1f} ms = {ratio(f32.fps, default.fps)} the default "
            f"{default.precision}'s frames/s")
    if gain is None:
        return line
    if gain > PRECISION_MARGIN:
        return (line + ": f32 is the faster on this machine; set model.precision: f32 "
                "(stream bench --precision f32 measures the pipeline at it)")
    if gain < 1 / PRECISION_MARGIN:
        return line + f": the default {default.precision} is the faster; keep it"
    return line + ": within 5%, either will do"


def mean_raw(start: Raw | None, end: Raw | None) -> Raw | None:
    """The yardstick of a hint: the mean of its start and end measurements (or the one)."""
    if start is None or end is None:
        return start or end
    return Raw(start.hint, (start.fps + end.fps) / 2, (start.median_ms + end.median_ms) / 2,
               start.precision, start.tool)


def _raw_line(label: str, start: Raw | None, end: Raw | None) -> list[str]:
    if start is None:
        return []
    line = f"  {label} {start.fps:.2f} frames/s, median request {start.median_ms:.1f} ms"
    if end is not None:
        mean = mean_raw(start, end)
        assert mean is not None
        line += (f"; at the end {end.fps:.2f} frames/s, {end.median_ms:.1f} ms; yardstick "
                 f"(mean) {mean.fps:.2f} frames/s, {mean.median_ms:.1f} ms")
    return [line]


def _latency_raw_line(raws: Sequence[Raw]) -> list[str]:
    if not raws:
        return []
    fps = ", ".join(f"{x.fps:.2f}" for x in raws)
    med = ", ".join(f"{x.median_ms:.1f}" for x in raws)
    where = ("before and after the live run" if len(raws) == 2 else
             "before, between and after the live runs" if len(raws) > 2 else "once")
    return [f"  LATENCY hint:    {fps} frames/s, median request {med} ms ({where}; a live "
            "run's yardstick is the mean of the two around it)"]


def _file_lines(run: Run, base: float, what: str, settings: str = "") -> list[str]:
    """A file run: labels/s / ``base`` (its yardstick, named ``what``), then CPU and stages."""
    return [f"  {run.name:<30} {run.fps:7.2f} labels/s = {ratio(run.fps, base)} {what} "
            f"({run.labelled}/{run.frames} labelled{settings})", _cpu_and_stages(run)]


def render(r: Report) -> list[str]:
    """The printed report: one line per figure, its ratio to its yardstick, then CPU."""
    t0 = r.raw_throughput
    t = mean_raw(t0, r.raw_throughput_end) or t0
    out = [f"model {r.model}; clip {r.clip}",
           f"raw model ({t0.tool}), precision {t0.precision}:",
           *_raw_line("THROUGHPUT hint:", t0, r.raw_throughput_end),
           *([precision_line(t0, r.raw_f32)] if r.raw_f32 is not None else []),
           *_latency_raw_line(r.raw_latency)]
    out.append("pipeline (stream run), each figure / its yardstick:")
    for run in (r.labels_only, r.with_video):
        if run is not None:
            out += _file_lines(run, t.fps, "raw THROUGHPUT", _settings(run))
    for runs in (r.live, r.cameras):
        for live in runs:
            out.extend(_live_lines(live, r.source_fps))
        if len(runs) > 1:
            out.append(_median_of(runs, r.source_fps))
    if r.decode_fps is not None:
        on = f" on {r.tax_clip}" if r.tax_clip else ""
        out.append(f"framework tax (trivial IR: global average pool + one matmul){on}, "
                   f"/ OpenCV decode-only {r.decode_fps:.1f} frames/s:")
        for run in (r.tax_labels, r.tax_video):
            if run is not None:
                out += _file_lines(run, r.decode_fps, "decode-only")
    out.extend(f"note: {n}" for n in r.notes)
    return out
