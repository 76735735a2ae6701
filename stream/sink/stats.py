"""PURE: what the sink counts per stream and per capture session (read by the summary,
the summary events and the metrics; written only by :mod:`stream.sink.ordering`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from stream.protocol import Eos

LATENCY_SAMPLES = 100_000
"""Latency samples kept per stream for the percentiles (the most recent ones)."""


class LatencyWindow:
    """The most recent ``size`` latency samples (ms) of a stream, in one f64 ring.

    8 bytes a sample in an array reserved once, whose pages the kernel maps as they are
    first written: at most 0.8 MB a stream. A deque of Python floats took ~32 bytes a
    sample (3.2 MB a stream when full) and showed as a sink RSS creeping up for hours in a
    soak (+1.7 MB in 30 min with four cameras).
    """

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self._buf = np.empty(max(1, size), np.float64)
        self._added = 0

    def append(self, ms: float) -> None:
        self._buf[self._added % len(self._buf)] = ms
        self._added += 1

    def __len__(self) -> int:
        return min(self._added, len(self._buf))

    def percentile(self, q: float) -> float | None:
        """The q-th percentile of the samples kept; None before the first."""
        n = len(self)
        return None if n == 0 else float(np.percentile(self._buf[:n], q))


@dataclass
class Session:
    """One capture session of a stream as this sink saw it."""

    number: int
    first_seq: int  # the first seq this sink is responsible for
    eos: Eos | None = None
    announced: int | None = None  # the frame count its hello announced (files; an estimate)

    @property
    def captured(self) -> int | None:
        """Frames the capture issued from ``first_seq`` on, by its own count (eos)."""
        return None if self.eos is None else max(0, self.eos.frames - self.first_seq)


@dataclass
class StreamStats:
    """Per-stream totals over every session; ``labelled + sum(dropped) == captured`` once
    every session has drained and sent its eos."""

    labelled: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    late: int = 0  # results after their seq was released (or for frames never seen)
    late_frames: int = 0  # frames that came after their seq was released
    sessions: list[Session] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # capture's last status counters
    latencies_ms: LatencyWindow = field(default_factory=LatencyWindow)
    first_t: float | None = None
    last_t: float | None = None

    @property
    def resolved(self) -> int:
        """Seqs released so far: labelled + dropped."""
        return self.labelled + sum(self.dropped.values())

    @property
    def captured(self) -> int | None:
        """The capture's own count over all sessions; None unless every one sent an eos."""
        counts = [s.captured for s in self.sessions]
        if not counts or any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    def fps(self) -> float:
        """Seqs released (labelled + dropped) per second, first release to last (0 until
        there is half a second of it: two frames a millisecond apart say nothing)."""
        if self.first_t is None or self.last_t is None or self.last_t - self.first_t < 0.5:
            return 0.0
        return (self.resolved - 1) / (self.last_t - self.first_t)

    def latency(self, q: float) -> float | None:
        """The q-th percentile of capture → publish latency (ms); None before any label."""
        return self.latencies_ms.percentile(q)
