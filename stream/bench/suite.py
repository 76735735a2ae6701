"""The order of `stream bench`'s measurements, over a backend that a test can replace.

Measured back to back, so the ratios compare figures of one machine state: raw model,
THROUGHPUT → the same at f32 when the device's default precision is another (OpenVINO's pick
is not always the faster) → pipeline labels only → with video → raw THROUGHPUT again (the
file runs' yardstick is the mean of the two: a shared machine drifts) → the live runs, each
between two raw LATENCY measurements (its yardstick is the mean of the one just before and
the one just after it: on a shared machine the model's own latency moves by a quarter within
minutes), a live (real-time paced) source, then several live sources of a smaller clip,
``repeat`` times → OpenCV decode-only → pipeline with the trivial IR, labels only and with
video (on the clip repeated to ``tax_frames``, when ffmpeg can join it: at hundreds of
frames/s the clip alone lasts seconds). A step that fails is reported as a note and the
others still run: the user gets every figure that could be measured, and the reason for the
rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from stream.bench.figures import Live, Raw, Report, Run, is_f32, mean_raw

log = logging.getLogger(__name__)
T = TypeVar("T")

STEPS = ("precision", "video", "live", "cameras", "tax")  # what --skip may leave out


@dataclass(frozen=True)
class Options:
    """What the user asked for (see ``stream bench --help``)."""

    model: str
    workdir: Path
    device: str = "CPU"
    precision: str | None = None
    workers: int = 1
    frames: int = 500
    size: tuple[int, int] = (1280, 720)
    fps: float = 25.0
    raw_seconds: float = 15.0
    raw_tool: str = "auto"
    skip: frozenset[str] = field(default_factory=frozenset)
    cameras: int = 4  # live sources of the several-cameras run
    camera_size: tuple[int, int] = (640, 360)
    tax_frames: int = 2000  # the framework tax runs on the clip repeated to at least this
    repeat: int = 1  # times each live run (one source, several) is measured


class Backend(Protocol):
    """The measurements (stream.bench.runs is the real one)."""

    def make_clip(self, path: Path, frames: int, size: tuple[int, int], fps: float) -> str: ...

    def repeat_clip(self, src: Path, dst: Path, times: int) -> tuple[Path, str] | None: ...

    def trivial_ir(self, xml: Path) -> Path: ...

    def raw_model(self, model: str, hint: str, seconds: float, device: str,
                  precision: str | None, tool: str) -> Raw: ...

    def decode_fps(self, clip: Path) -> float: ...

    def pipeline(self, name: str, clip: Path, model: str, workdir: Path,
                 **kwargs: Any) -> Run: ...


class RealBackend:
    """The measurements of :mod:`stream.bench.runs`, on this machine."""

    def make_clip(self, path: Path, frames: int, size: tuple[int, int], fps: float) -> str:
        from stream.bench.runs import make_clip

        return make_clip(path, frames, size, fps)

    def repeat_clip(self, src: Path, dst: Path, times: int) -> tuple[Path, str] | None:
        from stream.bench.runs import repeat_clip

        return repeat_clip(src, dst, times)

    def trivial_ir(self, xml: Path) -> Path:
        from stream.bench.runs import trivial_ir

        return trivial_ir(xml)

    def raw_model(self, model: str, hint: str, seconds: float, device: str,
                  precision: str | None, tool: str) -> Raw:
        from stream.bench.runs import raw_model

        return raw_model(model, hint, seconds, device, precision, tool)

    def decode_fps(self, clip: Path) -> float:
        from stream.bench.runs import decode_fps

        return decode_fps(clip)

    def pipeline(self, name: str, clip: Path, model: str, workdir: Path,
                 **kwargs: Any) -> Run:
        from stream.bench.runs import pipeline

        return pipeline(name, clip, model, workdir, **kwargs)


def run_bench(opts: Options, backend: Backend,
              progress: Callable[[str], None] = lambda _m: None) -> Report:
    """Measure everything ``opts`` asks for, in order; failures become notes."""
    notes: list[str] = []

    def step(what: str, fn: Callable[[], T]) -> T | None:
        progress(what)
        try:
            return fn()
        except Exception as exc:  # one failed measurement must not lose the others
            log.debug("bench step %r failed", what, exc_info=True)
            notes.append(f"{what}: not measured ({type(exc).__name__}: {exc})")
            return None

    o, b = opts, backend
    clip = o.workdir / "bench-clip.mp4"
    clip_text = b.make_clip(clip, o.frames, o.size, o.fps)
    raw_t = b.raw_model(o.model, "THROUGHPUT", o.raw_seconds, o.device, o.precision, o.raw_tool)
    raw_f32 = None
    if o.precision is None and "precision" not in o.skip and not is_f32(raw_t.precision):
        raw_f32 = step("raw model at f32, THROUGHPUT hint", lambda: b.raw_model(
            o.model, "THROUGHPUT", o.raw_seconds, o.device, "f32", o.raw_tool))
    common: dict[str, Any] = {"workers": o.workers, "device": o.device,
                              "precision": o.precision}
    video = decode = tax_l = tax_v = None
    labels = step("pipeline, labels only", lambda: b.pipeline(
        "labels only", clip, o.model, o.workdir, hint="auto", **common))
    if "video" not in o.skip:
        video = step("pipeline, with video", lambda: b.pipeline(
            "with video", clip, o.model, o.workdir, hint="auto", video=True, **common))
    raw_t_end = step("raw model again, THROUGHPUT hint", lambda: b.raw_model(
        o.model, "THROUGHPUT", o.raw_seconds, o.device, o.precision, o.raw_tool))
    live: list[Live] = []
    cams: list[Live] = []
    kinds: list[tuple[str, Callable[[str], Run], list[Live]]] = []
    if "live" not in o.skip:
        kinds.append(("live, realtime file", lambda name: b.pipeline(
            name, clip, o.model, o.workdir, hint="auto", live=True, **common), live))
    if "cameras" not in o.skip and o.cameras > 1:
        small = o.workdir / "bench-clip-small.mp4"
        made: list[str] = []  # the smaller clip, made by the first of these runs

        def several(name: str) -> Run:
            if not made:
                made.append(b.make_clip(small, o.frames, o.camera_size, o.fps))
            return b.pipeline(name, small, o.model, o.workdir, hint="auto", live=True,
                              sources=o.cameras, **common)

        kinds.append((f"{o.cameras} live cameras", several, cams))
    raw_l: list[Raw] = []

    def latency_yardstick() -> Raw | None:
        got = step("raw model, LATENCY hint", lambda: b.raw_model(
            o.model, "LATENCY", o.raw_seconds, o.device, o.precision, o.raw_tool))
        if got is not None:
            raw_l.append(got)
        return got

    before = latency_yardstick() if kinds else None
    for i in range(o.repeat):
        for kind, measure, into in kinds:
            name = kind if o.repeat == 1 else f"{kind} ({i + 1} of {o.repeat})"
            got = step(name, lambda: measure(name))  # noqa: B023 (called at once)
            after = latency_yardstick()
            if got is not None:
                into.append(Live(got, mean_raw(before, after)))
            before = after
    tax_clip, tax_text = clip, f"the clip ({o.frames} frames)"
    if "tax" not in o.skip:
        times = -(-o.tax_frames // o.frames)
        if times > 1:
            failed_before = len(notes)
            longer = step("joining the clip for the framework tax", lambda: b.repeat_clip(
                clip, o.workdir / "bench-clip-tax.mp4", times))
            if longer is not None:
                tax_clip, tax_text = longer[0], f"{longer[1]} ({times * o.frames} frames)"
            elif len(notes) == failed_before:  # no ffmpeg (a failure has its own note)
                notes.append("framework tax: on the clip once (no ffmpeg on PATH to join it "
                             f"to {o.tax_frames} frames); a short run is mostly ramp-up")
        decode = step("OpenCV decode-only", lambda: b.decode_fps(tax_clip))
        trivial = step("trivial IR", lambda: str(b.trivial_ir(o.workdir / "trivial.xml")))
        if trivial is not None:
            tax_l = step("trivial IR, labels only", lambda: b.pipeline(
                "trivial IR, labels only", tax_clip, trivial, o.workdir, hint="auto",
                **common))
            if "video" not in o.skip:
                tax_v = step("trivial IR, with video", lambda: b.pipeline(
                    "trivial IR, with video", tax_clip, trivial, o.workdir, hint="auto",
                    video=True, **common))
    return Report(o.model, clip_text, raw_t, raw_latency=raw_l,
                  labels_only=labels, with_video=video, live=live, decode_fps=decode,
                  source_fps=o.fps, tax_labels=tax_l, tax_video=tax_v, notes=notes,
                  raw_throughput_end=raw_t_end, cameras=cams, tax_clip=tax_text,
                  raw_f32=raw_f32)
