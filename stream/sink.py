"""The sink role: join labels to frames, restore order, draw, encode, publish, account.

Everything arrives on one PULL socket: stamps and full frames from captures, results from
workers, in whatever order the network delivers them. Per stream the sink keeps a small
table keyed by ``seq`` and releases entries strictly in ``seq`` order (invariant 2):

    frame + result   → labelled: a label event is published, the frame drawn and written
    frame + drop     → dropped with capture's reason (the frame is still written, unlabelled)
    frame, no result → after ``reorder_timeout_s``: dropped as ``worker_lost``
    no frame         → after ``reorder_timeout_s`` with later seqs (or eos) seen: ``lost``

``eos`` tells how many seqs a stream issued, so when the stream is drained every seq has
ended as exactly one of labelled or dropped with a named reason (invariant 1); the summary
printed at the end and the ``summary`` events add up. Results that come after their seq
was given up on are counted as ``late`` and otherwise ignored.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import zmq

from stream import events, transport
from stream.config import StreamConfig
from stream.errors import ProtocolError
from stream.overlay import draw_overlay
from stream.protocol import Drop, Eos, Frame, Hello, Message, Result, Status, decode
from stream.runtime import Rejections, cpu_seconds
from stream.video_out import VideoOut, check_video_output

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 100_000
MAX_AHEAD = 100_000  # a seq this far past the next one expected is refused as bogus
SUMMARY_EVERY_S = 10.0


@dataclass(frozen=True)
class SinkSettings:
    """How the sink behaves; built from SinkConfig in :func:`stream.cli` wiring."""

    expected_streams: tuple[str, ...] = ()  # exit when all of these ended (empty: run forever)
    output_dir: str | None = None
    video_format: str = "mp4"
    codec: str = "mp4v"
    draw: bool = True
    smoothing: int = 1
    top_k: int = 5
    reorder_timeout_s: float = 5.0
    progress: bool = True


@dataclass
class _Entry:
    seen: float
    frame: Frame | None = None
    result: Result | None = None
    drop: str | None = None


@dataclass
class StreamStats:
    """Per-stream accounting; ``labelled + sum(dropped) == captured`` once drained."""

    captured: int | None = None  # from eos
    labelled: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    late: int = 0
    written: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    first_t: float | None = None
    last_t: float | None = None

    @property
    def resolved(self) -> int:
        return self.labelled + sum(self.dropped.values())

    def fps(self) -> float:
        """Frames resolved per second, first to last (0 until there is half a second of it:
        two frames a millisecond apart say nothing about a rate)."""
        if self.first_t is None or self.last_t is None or self.last_t - self.first_t < 0.5:
            return 0.0
        return (self.resolved - 1) / (self.last_t - self.first_t)

    def latency(self, q: float) -> float | None:
        """The q-th percentile of capture → publish latency (ms); None before any label."""
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self.latencies_ms, float), q))


class _StreamState:
    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.next_seq = 0
        self.pending: dict[int, _Entry] = {}
        self.synced = False  # next_seq set from the first stamp this sink saw
        self.hello: Hello | None = None
        self.eos: Eos | None = None
        self.eos_at = 0.0
        self.closed = False  # writer released and final summary published
        self.video_failed = False
        self.stats = StreamStats()
        self.video: VideoOut | None = None
        self.window: deque[np.ndarray] = deque()
        self.window_sum: np.ndarray | None = None
        self.top1: int | None = None
        self.last_labels: list[tuple[str, float]] = []
        self.fps_times: deque[float] = deque(maxlen=30)
        self.sessions = 1  # captures of this stream seen by this sink (restarts)
        self.first_seq = 0  # the first seq of this session this sink is responsible for
        self.captured_before = 0  # frames of earlier sessions, all resolved

    @property
    def done(self) -> bool:
        return self.eos is not None and self.next_seq >= self.eos.frames

    def entry(self, seq: int, now: float) -> _Entry:
        e = self.pending.get(seq)
        if e is None:
            e = self.pending[seq] = _Entry(seen=now)
        return e

    @property
    def lossless(self) -> bool:
        """A ``wait``-policy stream: capture re-sends or drops frames itself, never the sink."""
        return self.hello is not None and self.hello.policy == "wait"

    def next_known(self, seq: int) -> int | None:
        """The first seq after ``seq`` the sink knows of (a pending entry, or the eos end)."""
        later = [s for s in self.pending if s > seq]
        if later:
            return min(later)
        return self.eos.frames if self.eos is not None and seq < self.eos.frames else None

    def known_since(self, seq: int) -> float | None:
        """When the sink first learned that ``seq`` exists (a later seq or eos arrived)."""
        times = [e.seen for s, e in self.pending.items() if s > seq]
        if self.eos is not None and seq < self.eos.frames:
            times.append(self.eos_at)
        return min(times) if times else None


class Sink:
    """Runs until every expected stream has ended and drained, or ``stop`` is set."""

    def __init__(
        self,
        settings: SinkSettings,
        inbox: zmq.Socket[bytes],
        publish: Callable[[Mapping[str, Any]], object],
        labels: list[str],
        stop: threading.Event,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.s = settings
        self.inbox = inbox
        self.publish = publish
        self.labels = labels
        self.stop = stop
        self.out = out
        self.err = err
        self.streams: dict[str, _StreamState] = {}
        self._reject = Rejections(log)
        self.write_s = 0.0  # time spent drawing + encoding output video
        self._last_summary = time.monotonic()
        self._last_progress = 0.0
        self._tty = settings.progress and err.isatty()

    # -- input ---------------------------------------------------------------------------

    def _state(self, stream: str) -> _StreamState:
        st = self.streams.get(stream)
        if st is None:
            st = self.streams[stream] = _StreamState(stream)
        return st

    def handle(self, msg: Message, now: float) -> None:
        """Fold one message into the per-stream tables (no output happens here)."""
        if isinstance(msg, (Frame, Result, Drop)):
            st = self._state(msg.stream)
            if not st.synced and not isinstance(msg, Result):
                # A sink (re)started mid-stream begins where the stream is, instead of
                # declaring every earlier seq lost.
                st.synced = True
                st.next_seq = st.first_seq = min([msg.seq, *st.pending])
            if msg.seq > st.next_seq + MAX_AHEAD:
                self._reject(f"{msg.stream} seq {msg.seq} is more than {MAX_AHEAD} ahead of "
                             f"{st.next_seq}: another deployment on this port?")
                return
            if msg.seq < st.next_seq:
                if isinstance(msg, Result):
                    st.stats.late += 1
                return
            e = st.entry(msg.seq, now)
            if isinstance(msg, Frame):
                # A stamp without image for a known seq: capture re-sent the frame to
                # another worker; restart its reorder clock, keep the image we have.
                e.seen = now
                if e.frame is None or msg.image is not None:
                    e.frame = msg
            elif isinstance(msg, Result):
                e.result = msg
            else:
                e.drop = msg.reason
        elif isinstance(msg, Hello):
            st = self._state(msg.stream)
            seen_up_to = max([st.next_seq, *(k + 1 for k in st.pending)])
            if st.synced and (msg.seq < seen_up_to or st.eos is not None):
                self._new_session(st, msg)
            st.hello = msg
            if not st.synced:
                st.synced = True
                st.next_seq = st.first_seq = min([msg.seq, *st.pending])
            log.info("stream %s: %s %s %dx%d @ %.2f fps%s", msg.stream, msg.kind, msg.url,
                     msg.width, msg.height, msg.fps,
                     f", {msg.total_frames} frames" if msg.total_frames else "")
        elif isinstance(msg, Eos):
            st = self._state(msg.stream)
            st.eos, st.eos_at = msg, now
            # Seqs this sink is responsible for: from where it joined (or the session began)
            # to the end, plus what earlier sessions of the stream captured.
            st.stats.captured = st.captured_before + msg.frames - st.first_seq
            if msg.reason == "error":
                log.error("stream %s ended with an error: %s", msg.stream, msg.message)
        elif isinstance(msg, Status):
            self.publish(events.status_event(stream=msg.stream, ts=msg.ts, state=msg.state,
                                             message=msg.message, counters=dict(msg.counters)))

    @property
    def rejected(self) -> int:
        """Messages refused so far (malformed, unknown version, bogus seq)."""
        return self._reject.count

    def _new_session(self, st: _StreamState, hello: Hello) -> None:
        """The stream's capture restarted (its seq went back, or it had ended): account for
        what the old session left, finish its video, and start counting afresh."""
        log.info("stream %s: capture restarted (seq %d, was at %d): new session",
                 st.stream, hello.seq, st.next_seq)
        self.release(time.monotonic(), force="capture_restarted")
        if not st.closed:
            self._close_stream(st)
        st.sessions += 1
        st.captured_before = st.stats.resolved
        st.next_seq = st.first_seq = hello.seq
        st.pending.clear()
        st.eos, st.closed, st.video_failed = None, False, False
        st.window.clear()
        st.window_sum = None
        st.stats.captured = None

    def _receive(self, timeout_ms: int) -> None:
        if not self.inbox.poll(timeout_ms, zmq.POLLIN):
            return
        now = time.monotonic()
        for _ in range(256):  # drain a burst, then go release what became ready
            try:
                parts = self.inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = decode([p.buffer for p in parts])
            except ProtocolError as exc:
                self._reject(str(exc))
                continue
            self.handle(msg, now)

    # -- output --------------------------------------------------------------------------

    def release(self, now: float, force: str | None = None) -> None:
        """Emit, in seq order, every entry that is ready (or, with ``force``, all of them)."""
        timeout = self.s.reorder_timeout_s
        for st in self.streams.values():
            while not st.done:
                seq = st.next_seq
                e = st.pending.get(seq)
                if e is None:
                    # Seqs whose stamps never came: give up on the whole gap at once, when a
                    # later seq (or the eos) has been known for the timeout.
                    since, nxt = st.known_since(seq), st.next_known(seq)
                    if since is None or nxt is None or (force is None and now - since < timeout):
                        break  # nothing later is known (no eos: the stream goes on)
                    st.stats.dropped[force or "lost"] += nxt - seq
                    self._tick(st)
                    st.next_seq = nxt
                    continue
                if e.drop is not None:
                    self._emit_drop(st, seq, e.frame, e.drop)
                elif e.result is not None and e.frame is not None:
                    self._emit_label(st, e.frame, e.result)
                elif force is not None or (now - e.seen >= timeout and not
                                           (st.lossless and e.result is None)):
                    # (A lossless stream's capture re-sends a lost worker's frames and
                    # drops them itself if it must: the sink never gives up on one.)
                    if e.result is not None:  # the label came but the stamp was lost
                        self._emit_label(st, None, e.result)
                    else:
                        self._emit_drop(st, seq, e.frame, force or "worker_lost")
                else:
                    break
                st.pending.pop(seq, None)
                st.next_seq = seq + 1
            if st.done and not st.closed:
                self._close_stream(st)

    def _close_stream(self, st: _StreamState) -> None:
        """A drained stream: finish its video file (so it plays now) and publish its summary."""
        st.closed = True
        if st.video is not None:
            st.video.close()
            st.video = None
        self._publish_summary(st)

    def _labels(self, ids: Iterable[int], scores: Iterable[float]) -> list[events.LabelEntry]:
        n = len(self.labels)
        return [{"id": i, "name": self.labels[i] if i < n else f"class {i}", "score": s}
                for i, s in zip(ids, scores, strict=True)]

    def _smooth(self, st: _StreamState, res: Result) -> list[events.LabelEntry]:
        """Average the last N probability vectors; returns the smoothed top-k."""
        if res.probs is None:
            return self._labels(res.ids, res.scores)
        p = np.frombuffer(res.probs, dtype="<f4")
        if st.window_sum is None or st.window_sum.shape != p.shape:
            st.window.clear()
            st.window_sum = np.zeros(p.shape, np.float64)
        st.window.append(p)
        st.window_sum += p
        if len(st.window) > self.s.smoothing:
            st.window_sum -= st.window.popleft()
        mean = st.window_sum / len(st.window)
        k = min(self.s.top_k, mean.size)
        top = np.argpartition(-mean, k - 1)[:k]
        top = top[np.argsort(-mean[top], kind="stable")]
        return self._labels((int(i) for i in top), (float(mean[i]) for i in top))

    def _emit_label(self, st: _StreamState, frame: Frame | None, res: Result) -> None:
        wall = time.time()
        latency = (wall - res.ts) * 1000.0
        labels = self._labels(res.ids, res.scores)
        pts = frame.pts if frame is not None else None
        event: dict[str, Any] = dict(events.label_event(
            stream=st.stream, seq=res.seq, pts=pts, ts=res.ts, labels=labels,
            latency_ms=latency))
        shown = labels
        if self.s.smoothing > 1:
            shown = self._smooth(st, res)
            event["smoothed"] = shown
        self.publish(event)
        if shown and shown[0]["id"] != st.top1:
            previous: events.LabelEntry | None = None
            if st.top1 is not None and st.last_labels:
                previous = {"id": st.top1, "name": st.last_labels[0][0],
                            "score": st.last_labels[0][1]}
            self.publish(events.change_event(stream=st.stream, ts=res.ts, seq=res.seq, pts=pts,
                                             previous=previous, current=shown[0]))
            st.top1 = int(shown[0]["id"])
        st.last_labels = [(str(x["name"]), float(x["score"])) for x in shown]
        st.stats.labelled += 1
        st.stats.latencies_ms.append(latency)
        self._tick(st)
        if frame is not None:
            self._write(st, frame, st.last_labels, None)

    def _emit_drop(self, st: _StreamState, seq: int, frame: Frame | None, reason: str) -> None:
        st.stats.dropped[reason] += 1
        self._tick(st)
        if frame is not None:
            self._write(st, frame, [], f"no label ({reason})")

    def _tick(self, st: _StreamState) -> None:
        t = time.monotonic()
        st.stats.first_t = st.stats.first_t if st.stats.first_t is not None else t
        st.stats.last_t = t
        st.fps_times.append(t)

    def _write(self, st: _StreamState, frame: Frame, labels: list[tuple[str, float]],
               note: str | None) -> None:
        if self.s.output_dir is None or frame.image is None:
            return
        if st.video_failed:
            return
        t0 = time.perf_counter()
        try:
            self._draw_and_encode(st, frame, labels, note)
        except (OSError, cv2.error) as exc:
            # A full disk or a codec that refuses this size must not stop the labels.
            st.video_failed = True
            log.error("stream %s: video output stopped: %s", st.stream, exc)
            self.publish(events.status_event(stream=st.stream, state="video_failed",
                                             message=str(exc)))
        finally:
            self.write_s += time.perf_counter() - t0

    def _draw_and_encode(self, st: _StreamState, frame: Frame,
                         labels: list[tuple[str, float]], note: str | None) -> None:
        assert frame.image is not None and self.s.output_dir is not None
        if st.video is None:
            # A restarted capture gets a new file, never overwriting the earlier footage.
            suffix = "" if st.sessions == 1 else f"-{st.sessions}"
            path = Path(self.s.output_dir) / f"{st.stream}{suffix}.{self.s.video_format}"
            st.video = VideoOut(path, st.hello.fps if st.hello is not None else 25.0,
                                self.s.codec)
        img = np.frombuffer(frame.image, np.uint8).reshape(frame.height, frame.width, 3)
        overlay = None
        if self.s.draw:
            fps = None
            if len(st.fps_times) > 1:
                span = st.fps_times[-1] - st.fps_times[0]
                fps = (len(st.fps_times) - 1) / span if span > 0 else None

            def overlay(canvas: np.ndarray) -> None:
                draw_overlay(canvas, st.stream, labels, fps, note)

        st.video.write(img, overlay)
        st.stats.written += 1

    # -- lifecycle -----------------------------------------------------------------------

    def finished(self) -> bool:
        """True when every expected stream has ended and every seq is accounted for."""
        if not self.s.expected_streams:
            return False
        return all(s in self.streams and self.streams[s].done for s in self.s.expected_streams)

    def run(self, drain_s: float = 3.0) -> int:
        """The loop; on stop, waits up to ``drain_s`` for in-flight results, then gives up."""
        try:
            while not self.stop.is_set() and not self.finished():
                self._receive(50)
                now = time.monotonic()
                self.release(now)
                self._progress(now)
                self.periodic_summaries(now)
            if self.stop.is_set():
                deadline = time.monotonic() + drain_s
                while time.monotonic() < deadline and not self._all_ended_and_drained():
                    self._receive(50)
                    self.release(time.monotonic())
                self.release(time.monotonic(), force="shutdown")
        finally:
            for st in self.streams.values():
                if st.video is not None:
                    st.video.close()
                    st.video = None
            self._progress(time.monotonic(), final=True)
            self.summary()
        return 0

    def _all_ended_and_drained(self) -> bool:
        return all(st.done for st in self.streams.values()) and bool(self.streams)

    def _progress(self, now: float, final: bool = False) -> None:
        if not self.s.progress or (now - self._last_progress < (0.5 if self._tty else 5.0)
                                   and not final):
            return
        self._last_progress = now
        parts = []
        for st in self.streams.values():
            total = st.hello.total_frames if st.hello is not None else None
            n = st.stats.resolved
            fps = st.stats.fps()
            if total:
                eta = f"{(total - n) / fps:4.0f}s" if fps > 0 else "   ?"
                parts.append(f"{st.stream} {n}/{total} {100 * n / total:3.0f}% "
                             f"{fps:5.1f} fps ETA {eta}")
            else:
                parts.append(f"{st.stream} {n} frames {fps:5.1f} fps")
        if not parts:
            return
        line = " | ".join(parts)
        if self._tty:
            self.err.write("\r" + line[:200].ljust(80) + ("\n" if final else ""))
        elif not final:
            self.err.write(line + "\n")
        self.err.flush()

    def _publish_summary(self, st: _StreamState) -> None:
        s = st.stats
        captured = s.captured if s.captured is not None else s.resolved
        self.publish(events.summary_event(
            stream=st.stream, ts=time.time(), captured=captured, labelled=s.labelled,
            dropped=dict(s.dropped), fps=s.fps(), latency_p50_ms=s.latency(50),
            latency_p99_ms=s.latency(99)))

    def periodic_summaries(self, now: float) -> None:
        """Running totals every SUMMARY_EVERY_S for live and long streams."""
        if now - self._last_summary < SUMMARY_EVERY_S:
            return
        self._last_summary = now
        for st in self.streams.values():
            if not st.closed:
                self._publish_summary(st)

    def summary(self) -> None:
        """Print the per-stream table and publish one ``summary`` event per stream."""
        if not self.streams:
            return
        head = (f"{'stream':<16} {'captured':>8} {'labelled':>8} {'dropped':>8} {'written':>7} "
                f"{'fps':>7} {'p50 ms':>7} {'p99 ms':>7}  drops by reason")
        lines = [head]
        for st in self.streams.values():
            s = st.stats
            captured = s.captured if s.captured is not None else s.resolved
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(s.dropped.items())) or "-"
            if s.late:
                reasons += f" (late results ignored: {s.late})"
            p50, p99 = (f"{x:>7.0f}" if x is not None else f"{'-':>7}"
                        for x in (s.latency(50), s.latency(99)))
            lines.append(f"{st.stream:<16} {captured:>8} {s.labelled:>8} "
                         f"{sum(s.dropped.values()):>8} {s.written:>7} {s.fps():>7.1f} "
                         f"{p50} {p99}  {reasons}")
            if not st.closed:
                self._publish_summary(st)
        if self.rejected:
            lines.append(f"rejected malformed messages: {self.rejected}")
        resolved = sum(st.stats.resolved for st in self.streams.values())
        log.info("sink: process cpu %.1f ms/frame over %d frames",
                 1000 * cpu_seconds() / max(1, resolved), resolved)
        written = sum(st.stats.written for st in self.streams.values())
        if written:
            log.info("draw + encode: %.1f ms/frame over %d frames",
                     1000 * self.write_s / written, written)
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()


def run_sink(cfg: StreamConfig, stop: threading.Event, run_forever: bool = False) -> int:
    """Wire and run the sink (``stream sink``): bind the inbox and the events socket.

    Args:
        run_forever: do not exit when the configured streams end (a long-lived sink that
            captures on other machines come and go to).
    """
    from stream.model.labels import load_labels

    s = cfg.sink
    settings = SinkSettings(
        expected_streams=() if run_forever else tuple(src.id for src in cfg.sources),
        output_dir=s.output_dir, video_format=s.video_format, codec=s.codec, draw=s.draw,
        smoothing=s.smoothing, top_k=cfg.model.top_k, reorder_timeout_s=s.reorder_timeout_s,
    )
    labels = load_labels(cfg.model.labels)
    if s.output_dir is not None:
        check_video_output(s.output_dir, s.video_format, s.codec)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        inbox = transport.pull_socket(ctx, hwm=256)
        transport.bind(inbox, cfg.transport.sink, "sink")
        try:
            with events.EventPublisher.bind(ctx, s.events) as pub:
                log.info("label events on %s", s.events)
                code = Sink(settings, inbox, pub.publish, labels, stop).run()
                pub.close(linger_ms=1000)
                return code
        finally:
            inbox.close(linger=0)
    finally:
        ctx.term()
