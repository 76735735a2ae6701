"""What the sink tells its user: the progress line (stderr) and the summary table (stdout).

The table has one row per stream, in fixed columns other tools parse::

    stream  captured  labelled  dropped  written  fps  p50 ms  p99 ms  drops by reason

``captured`` is the capture's own count (its end-of-stream); ``?`` and a line saying
"captured: unknown, no end-of-stream from capture" when none arrived, never a guess.
``written`` is what the video file output wrote (0 without one: the web view and RTSP
out are listed under the row when they dropped or failed); under a row come only the
lines that have something to say: per-output counts when an output dropped or failed,
the output's error, "ended early: N of M", an error end, the capture's connect failures
and its other non-zero counters (from its last status message: unreadable images skipped,
reconnects, ...), late results and frames.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from stream.sink.stats import StreamStats


@dataclass(frozen=True)
class ProgressRow:
    """One stream on the progress line: seqs done of an announced total (an estimate for
    most files: the container's frame count), at ``fps``."""

    stream: str
    done: int
    total: int | None
    fps: float


def progress_part(row: ProgressRow) -> str:
    """One stream's part of the progress line; never past 100 %, never a negative ETA."""
    fps = f"{row.fps:5.1f} fps"
    if not row.total:
        return f"{row.stream} {row.done} frames {fps}"
    if row.done >= row.total:
        # The total was an estimate and the file is longer (or exactly done): no ETA.
        return f"{row.stream} {row.done}/{row.total} 100% {fps}"
    eta = f"{(row.total - row.done) / row.fps:4.0f}s" if row.fps > 0 else "   ?"
    return (f"{row.stream} {row.done}/{row.total} {100 * row.done / row.total:3.0f}% "
            f"{fps} ETA {eta}")


class Progress:
    """Writes the progress line: in place on a terminal (twice a second), else every 5 s."""

    def __init__(self, err: TextIO, enabled: bool = True) -> None:
        self.err = err
        self.enabled = enabled
        self._tty = enabled and err.isatty()
        self._last = float("-inf")

    def update(self, now: float, rows: Sequence[ProgressRow], final: bool = False) -> None:
        """Write the line if it is time (``final``: always, and end it on a terminal)."""
        if not self.enabled or not rows:
            return
        if not final and now - self._last < (0.5 if self._tty else 5.0):
            return
        self._last = now
        line = " | ".join(progress_part(r) for r in rows)
        if self._tty:
            self.err.write("\r" + line[:200].ljust(80) + ("\n" if final else ""))
        elif not final:
            self.err.write(line + "\n")
        self.err.flush()


@dataclass(frozen=True)
class StreamReport:
    """Everything the summary says about one stream.

    Attributes:
        outputs: per output name, its counts for this stream (``written``, ``queue_full``,
            ``failed``), in output order.
        output_errors: (output name, message) pairs, already redacted.
    """

    stream: str
    stats: StreamStats
    outputs: Mapping[str, Counter[str]] = field(default_factory=dict)
    output_errors: Sequence[tuple[str, str]] = ()


HEAD = (f"{'stream':<16} {'captured':>8} {'labelled':>8} {'dropped':>8} {'written':>7} "
        f"{'fps':>7} {'p50 ms':>7} {'p99 ms':>7}  drops by reason")


def _notes(rep: StreamReport) -> list[str]:
    s = rep.stats
    notes = []
    if s.captured is None:
        notes.append("captured: unknown, no end-of-stream from capture")
    if len(s.sessions) > 1:  # a restarted capture: what each session's own count said
        each = ", ".join("?" if x.captured is None else str(x.captured) for x in s.sessions)
        notes.append(f"capture sessions: {len(s.sessions)}, captured per session: {each}")
    for sess in s.sessions:
        eos, which = sess.eos, f" (session {sess.number})" if len(s.sessions) > 1 else ""
        if eos is not None and eos.reason == "ended_early":
            said = (f"{eos.frames} of {sess.announced} frames" if sess.announced
                    else eos.message or f"after {eos.frames} frames")
            notes.append(f"ended early{which}: {said}")
        elif eos is not None and eos.reason == "error":
            notes.append(f"ended with an error{which}: {eos.message or 'no message'}")
    if s.counters.get("connect_failures"):
        notes.append(f"connect failures: {s.counters['connect_failures']}")
    other = {k: v for k, v in sorted(s.counters.items()) if v and k != "connect_failures"}
    if other:  # e.g. unreadable images skipped, reconnects, stalls, video_busy
        notes.append("capture counters: " + ", ".join(f"{k}={v}" for k, v in other.items()))
    if s.late_frames:
        notes.append(f"frames that came after their seq was released (not written): "
                     f"{s.late_frames}")
    for name, counts in rep.outputs.items():
        if set(counts) - {"written"} or len(rep.outputs) > 1:
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            notes.append(f"output {name}: {detail or 'nothing'}")
    for name, message in rep.output_errors:
        notes.append(f"output {name} failed: {message}")
    return notes


def summary_lines(reports: Sequence[StreamReport], refused: Mapping[str, int]) -> list[str]:
    """The summary table, a row per stream with its notes, and what was refused."""
    lines = [HEAD]
    for rep in reports:
        s = rep.stats
        captured = "?" if s.captured is None else str(s.captured)
        written = rep.outputs.get("video", Counter[str]())["written"]
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(s.dropped.items())) or "-"
        if s.late:
            reasons += f" (late results ignored: {s.late})"
        p50, p99 = (f"{x:>7.0f}" if x is not None else f"{'-':>7}"
                    for x in (s.latency(50), s.latency(99)))
        lines.append(f"{rep.stream:<16} {captured:>8} {s.labelled:>8} "
                     f"{sum(s.dropped.values()):>8} {written:>7} {s.fps():>7.1f} "
                     f"{p50} {p99}  {reasons}")
        lines.extend(f"  {rep.stream}: {note}" for note in _notes(rep))
    total = sum(refused.values())
    if total:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(refused.items()))
        lines.append(f"rejected malformed messages: {total} ({detail})")
    return lines
