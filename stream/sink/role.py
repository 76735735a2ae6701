"""The sink role: wires intake → ordering → publisher + outputs, and reports.

Each part does one job (see the package docstring); this module only moves what one part
returns to the next, and owns the loop, the shutdown drain and the exit code:

- 0 when all went well;
- 1 when an output failed (a full disk, a codec that refused a frame): the failure is a
  ``status`` event (``state: "output_failed"``) for its stream, a line in the summary, and
  this exit code, while labels go on being published.

Memory per camera (full frames held at most, the bound ``transport.hwm`` is about): the
capture's video PUSH queue (``transport.hwm``, SNDHWM) + this sink's PULL queue for that
capture's video connection (:data:`RCVHWM`: ZMQ bounds each peer's pipe separately) +
the frames the reorder table holds while a label is late (a live stream's frames behind
a missing label, at most ``fps × sink.reorder_timeout_s``; a lossless stream's capture
sends only as many tasks as its workers hold) + the output queue (``QUEUE_SIZE``, shared
by every stream of the sink). With the defaults that is 16 + 32 + 8 frames plus the
reorder term, about 56 full frames (≈ 350 MB at 1080p) when labels keep up.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import zmq

from stream.config import StreamConfig
from stream.health import beat
from stream.protocol import Drop, Eos, Frame, Hello, Message, Result, Status
from stream.runtime import CpuMeter, signal_ready
from stream.sink.feed import OutputFeed, Runner
from stream.sink.intake import Intake, Refusals
from stream.sink.ordering import Ordering, Outcome, Refused, Released, StreamOrder
from stream.sink.publisher import Publisher
from stream.sink.report import Progress, ProgressRow, StreamReport, summary_lines

if TYPE_CHECKING:
    from stream.config.sink import SinkConfig
    from stream.metrics import SinkMetrics
    from stream.outputs.video_file import VideoFileOutput

log = logging.getLogger(__name__)

RCVHWM = 32
"""Messages the sink's PULL socket queues per connected peer. Small: the sink loop only
joins and publishes (encoding happens on the output threads), so it keeps up, and every
queued message may be a full frame."""

QUEUE_SIZE = 8
"""Frames an output's runner queues before live frames are dropped (``queue_full``)."""

SUMMARY_EVERY_S = 10.0


@dataclass(frozen=True)
class SinkSettings:
    """How the sink behaves; built from the config by :func:`run_sink`."""

    expected_streams: tuple[str, ...] = ()  # exit when all of these ended (empty: run forever)
    reorder_timeout_s: float = 5.0
    progress: bool = True


class Sink:
    """Runs until every expected stream has ended and drained, or ``stop`` is set.

    Args:
        intake: the inbox (None in tests that call :meth:`handle` directly).
        outputs: (name, runner) pairs; the sink closes them when :meth:`run` ends.
        out, err: where the summary table and the progress line go (stdout, stderr).
        clock: monotonic seconds (injected so tests drive time).
    """

    def __init__(self, settings: SinkSettings, publisher: Publisher, stop: threading.Event,
                 intake: Intake | None = None, outputs: Sequence[tuple[str, Runner]] = (),
                 out: TextIO | None = None, err: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 metrics: SinkMetrics | None = None) -> None:
        self.s = settings
        self.metrics = metrics  # fed the same outcomes as the summary (stream/metrics.py)
        self.publisher = publisher
        self.stop = stop
        self.intake = intake
        self.refusals = intake.refusals if intake is not None else Refusals()
        self.feed = OutputFeed(outputs)
        self.out = sys.stdout if out is None else out  # (looked up now: tests swap it)
        self.clock = clock
        self.ordering = Ordering(settings.reorder_timeout_s)
        self.progress = Progress(sys.stderr if err is None else err, settings.progress)
        self._last_summary = clock()
        self.cpu = CpuMeter()  # process cpu per frame accounted for, from the first on

    @property
    def streams(self) -> dict[str, StreamOrder]:
        """Every stream seen so far, by id."""
        return self.ordering.streams

    @property
    def rejected(self) -> int:
        """Messages refused so far (malformed, bad stream id, bogus seq)."""
        return self.refusals.count

    def finished(self) -> bool:
        """True when every expected stream has ended and every seq is accounted for."""
        return self.ordering.finished(self.s.expected_streams)

    # -- input ---------------------------------------------------------------------------

    def handle(self, msg: Message, now: float, peer: str = "?") -> None:
        """Fold one decoded message in (outcomes of a restarted session go out at once)."""
        if isinstance(msg, Status):
            self.ordering.stream(msg.stream).take_counters(msg.counters)
            self.publisher.status(msg.stream, msg.state, msg.message, msg.counters, msg.ts)
            return
        if not isinstance(msg, (Frame, Result, Drop, Hello, Eos)):
            self.refusals(peer, "wrong_role", f"a {type(msg).__name__} message is not for "
                          "the sink: is a worker or capture connected to the wrong endpoint?")
            return
        try:
            released = self.ordering.handle(msg, now)
        except Refused as exc:
            self.refusals(peer, "seq_ahead", str(exc))
            return
        if isinstance(msg, Hello):
            log.info("stream %s: %s %s %dx%d @ %.2f fps%s", msg.stream, msg.kind, msg.url,
                     msg.width, msg.height, msg.fps,
                     f", {msg.total_frames} frames" if msg.total_frames else "")
        elif isinstance(msg, Eos) and msg.reason in ("error", "ended_early"):
            log.warning("stream %s ended (%s): %s", msg.stream, msg.reason, msg.message)
        self._emit(released, now)

    def _receive(self, timeout_ms: int) -> None:
        if self.intake is None:
            return
        received = self.intake.receive(timeout_ms)
        now = self.clock()
        for msg, peer in received:
            self.handle(msg, now, peer)

    # -- output --------------------------------------------------------------------------

    def release(self, now: float, force: str | None = None) -> None:
        """Emit, in seq order, everything ready (with ``force``, everything pending)."""
        self._emit(self.ordering.release(now, force), now)

    def _emit(self, released: list[Released], now: float) -> None:
        outcomes = False
        for item in released:
            if isinstance(item, Outcome):
                self._outcome(item, now)
                outcomes = True
                continue
            self.feed.end_stream(item.stream)
            self.publisher.summary(item.stream, self.ordering.stream(item.stream).stats)
            if item.restarted:
                log.info("stream %s: capture restarted: session %d", item.stream,
                         item.session + 1)
                self.publisher.new_session(item.stream)
        if outcomes and self.cpu.at_first is None:
            self.cpu.first(self._resolved())

    def _resolved(self) -> int:
        """Frames accounted for (labelled + dropped), every stream together."""
        return sum(st.stats.resolved for st in self.streams.values())

    def _outcome(self, o: Outcome, now: float) -> None:
        st = self.ordering.stream(o.stream)
        self.feed.tick(o.stream, now)
        if o.result is not None:
            latency, labels = self.publisher.label(o.frame, o.result)
            st.stats.latencies_ms.append(latency)
            note = None
        else:
            labels, note = [], f"no label ({o.reason})"
        if self.metrics is not None:
            self.metrics.outcome(o.stream, o.reason, o.count,
                                 latency if o.result is not None else None,
                                 o.result.infer_ms if o.result is not None else None)
        self.feed.offer(o.frame, o.session, labels, note, st.lossless,
                        st.hello.fps if st.hello is not None else 25.0)

    def check_outputs(self) -> None:
        """Turn new output errors into status events (and, through :attr:`feed`, summary
        lines and the exit code). An error of no stream (the output's ``close``) has no
        status event; the summary and the exit code still say it."""
        for stream, name, message in self.feed.take_errors():
            if stream:
                self.publisher.status(stream, "output_failed", f"output {name}: {message}")

    @property
    def exit_code(self) -> int:
        """0, or 1 when an output failed."""
        return 1 if self.feed.errors else 0

    # -- lifecycle -----------------------------------------------------------------------

    def run(self, drain_s: float = 3.0) -> int:
        """The loop; on stop, waits up to ``drain_s`` for in-flight results, then gives up.

        Returns:
            The exit code (see the module docstring).
        """
        try:
            while not self.stop.is_set() and not self.finished():
                beat()  # `stream health --role sink`: the loop turns
                self._receive(50)
                now = self.clock()
                self.release(now)
                self.check_outputs()
                self.progress.update(now, self._progress_rows())
                self.periodic_summaries(now)
                if self.metrics is not None:
                    self.metrics.refresh(self)
            if self.stop.is_set():
                deadline = self.clock() + drain_s
                while self.clock() < deadline and not self.ordering.all_drained():
                    self._receive(50)
                    self.release(self.clock())
                self.release(self.clock(), force="shutdown")
        finally:
            self.feed.close()
            self.check_outputs()
            self.progress.update(self.clock(), self._progress_rows(), final=True)
            self.summary()
            if self.metrics is not None:
                self.metrics.refresh(self, force=True)
        return self.exit_code

    def _progress_rows(self) -> list[ProgressRow]:
        rows = []
        for st in self.streams.values():
            total = st.hello.total_frames if st.hello is not None else None
            done = st.next_seq - st.session.first_seq if total else st.stats.resolved
            rows.append(ProgressRow(st.stream, done, total, st.stats.fps()))
        return rows

    def periodic_summaries(self, now: float) -> None:
        """Running totals every SUMMARY_EVERY_S for live and long streams."""
        if now - self._last_summary < SUMMARY_EVERY_S:
            return
        self._last_summary = now
        for st in self.streams.values():
            if not st.closed:
                self.publisher.summary(st.stream, st.stats)

    def summary(self) -> None:
        """Print the per-stream table; publish a ``summary`` event for each stream still open
        (drained ones published theirs when they ended)."""
        reports = []
        for st in self.streams.values():
            reports.append(StreamReport(st.stream, st.stats, self.feed.counts(st.stream),
                                        self.feed.errors.get(st.stream, [])))
            if not st.closed:
                self.publisher.summary(st.stream, st.stats)
        if not reports and not self.rejected:
            return
        if report := self.cpu.report(self._resolved()):
            log.info("sink: %s", report)
        self.out.write("\n".join(summary_lines(reports, self.refusals.by_kind)) + "\n")
        for name, message in self.feed.errors.get("", []):
            self.out.write(f"output {name} failed: {message}\n")
        if self.feed.errors:
            self.out.write("an output failed: see the lines above (exit code 1)\n")
        self.out.flush()


def video_output(s: SinkConfig, output_dir: str) -> VideoFileOutput:
    """The video file output the ``sink`` settings ask for, its folder checked first.

    Raises:
        ConfigError: the folder cannot be written or the codec does not fit the container.
    """
    # Imported here: the output modules (and their codecs) load only when video is on.
    from stream.outputs.video_file import VideoFileOutput, check_video_output

    check_video_output(output_dir, s.video_format, s.codec)
    return VideoFileOutput(output_dir, s.video_format, s.codec, s.draw,
                           preset=s.h264_preset, segment_s=s.segment_s)


def run_sink(cfg: StreamConfig, stop: threading.Event, run_forever: bool = False,
             name: str | None = None, ready_fd: int | None = None) -> int:
    """Wire and run the sink (``stream sink``): bind the inbox and the events socket, start
    the outputs, run the loop.

    Args:
        run_forever: do not exit when the configured streams end (a long-lived sink that
            captures on other machines come and go to).
        name: which of the config's ``sinks[]`` this is (None: the only sink); it binds
            that entry's endpoints and waits for the streams it owns.
        ready_fd: a pipe to say "ready" on once the sockets are bound and the outputs
            started (``stream run`` starts the captures only then, so the first labels
            cannot be published before a subscriber that waits for the sink has joined).

    Returns:
        The exit code: 0, or 1 when an output failed.

    Raises:
        ConfigError: an endpoint cannot be bound, or the output folder or codec is unusable.
    """
    from stream.events import EventPublisher
    from stream.model.labels import load_labels
    from stream.security import Curve
    from stream.transport import MAX_MESSAGE_BYTES, Sockets

    s = cfg.sink
    place = cfg.sink_place(name)
    settings = SinkSettings(
        expected_streams=() if run_forever else place.streams,
        reorder_timeout_s=s.reorder_timeout_s)
    labels = load_labels(cfg.model.labels)
    outputs: list[tuple[str, Runner]] = []
    if s.output_dir is not None:
        from stream.outputs.runner import OutputRunner

        video = video_output(s, s.output_dir)
        outputs.append((video.name, OutputRunner(video, queue_size=QUEUE_SIZE)))
    if s.rtsp_out is not None:  # RTSP out: a server that is down is retried, never fatal
        from stream.outputs.rtsp_out import RtspOutput
        from stream.outputs.runner import OutputRunner

        rtsp = RtspOutput(s.rtsp_out, draw=s.draw)
        outputs.append((rtsp.name, OutputRunner(rtsp, queue_size=QUEUE_SIZE)))
    web = None
    if s.http is not None:  # the web view, /metrics: binds now, so a clash fails first
        from stream.sink.http import start_web

        web = start_web(s.http, QUEUE_SIZE)
        outputs.append(web.output)
    # CURVE (security.key): the inbox and the events socket let in only trusted keys.
    with Sockets(curve=Curve.from_config(cfg.security)) as sockets:
        inbox = sockets.socket(zmq.PULL, rcvhwm=RCVHWM, linger_ms=0,
                               max_msg=MAX_MESSAGE_BYTES)
        sockets.bind(inbox, place.bind, "sink")
        pub = EventPublisher.bind(sockets, place.events)
        log.info("label events on %s", place.events)
        publisher = Publisher(pub.publish, labels, s.smoothing, cfg.model.top_k)
        for _, runner in outputs:
            runner.start()
        sink = Sink(settings, publisher, stop, Intake(inbox), outputs,
                    metrics=web.metrics if web is not None else None)
        signal_ready(ready_fd)
        try:
            code = sink.run()
        finally:
            if web is not None:
                web.http.close()
        pub.close(linger_ms=1000)  # the final summaries reach subscribers that keep up
        return code
