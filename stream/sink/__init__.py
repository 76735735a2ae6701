"""The sink role: join labels to frames, restore order, publish events, feed the outputs.

Everything arrives on one PULL socket: stamps, drops, status and end-of-stream from each
capture's ``control`` socket, full frames from its ``video`` socket, results from workers,
in whatever order the network delivers them. One job per part:

    intake.py     PULL socket → decoded messages; refused ones counted, logged once per peer
    ordering.py   PURE: per-stream join, reorder, timeouts, sessions, accounting (own clock)
    announcements.py  PURE: what the control link said (restart? hold until the hello?)
    stats.py      PURE: the per-stream and per-session counts
    smoothing.py  PURE: smoothed top-k and top-1 change detection
    publisher.py  the one publisher of label/change/status/summary events; redacts them all
    feed.py       released frames → each output's runner (wait for files, never for live)
    report.py     the progress line and the summary table
    http.py       the web view, /api/streams, /healthz and /metrics
    role.py       wiring (Sockets, EventPublisher, OutputRunner per output), loop, exit code

Outputs (the video file, the web view, RTSP out) live in :mod:`stream.outputs`,
each behind its own bounded queue and thread. The memory bound per camera is in
:mod:`stream.sink.role`.
"""

from __future__ import annotations

from stream.sink.ordering import MAX_AHEAD, Ordering, Outcome, SessionEnded
from stream.sink.publisher import Publisher
from stream.sink.role import RCVHWM, Sink, SinkSettings, run_sink
from stream.sink.stats import StreamStats

__all__ = [
    "MAX_AHEAD",
    "RCVHWM",
    "Ordering",
    "Outcome",
    "Publisher",
    "SessionEnded",
    "Sink",
    "SinkSettings",
    "StreamStats",
    "run_sink",
]
