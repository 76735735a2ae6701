"""The capture role: one source session feeding one router, wired from the config.

:class:`Capture` runs a :class:`~stream.capture.session.SourceSession` (open, backoff,
watchdog, read-ahead, pacing, staleness, loop) and hands every frame to a
:class:`~stream.capture.router.Router` (crops to workers, frames and drops to the sink,
the back-pressure policy). It decides the exit status: 0 when the source ended or stop was
asked for, 2 for a source error (the message says what to do), 1 for a crash; whatever
happened, the stream ends with a status ``ended`` and an ``eos``. :func:`run_capture` makes
every socket through one :class:`~stream.transport.Sockets`, so no error path can leave the
context waiting on an open socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from stream.capture.links import CaptureLinks, Link, sink_links
from stream.capture.router import Router
from stream.capture.session import STALL_TIMEOUT_S, CaptureSettings, SourceSession
from stream.config import ModelConfig, StreamConfig
from stream.dispatch import Dispatcher, task_socket
from stream.errors import ConfigError, SourceError
from stream.health import beat
from stream.runtime import CpuMeter
from stream.security import Curve
from stream.sources import FrameSource, ImageFolderSource, OpenCVSource, set_exit_status
from stream.transport import Sockets

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (224, 224)
"""(width, height) of the default model (convnext-tiny), for a capture without the IR."""


def make_source(settings: CaptureSettings, rtsp_transport: str = "tcp",
                fps: float | None = None) -> FrameSource:
    """The FrameSource for a kind of URL."""
    if settings.kind == "images":
        return ImageFolderSource(settings.url, fps or 25.0)
    return OpenCVSource(settings.url, settings.kind, rtsp_transport=rtsp_transport)


class Capture:
    """Runs one source until it ends or ``stop`` is set; see the module docstring."""

    make_source = staticmethod(make_source)

    def __init__(
        self,
        settings: CaptureSettings,
        source: FrameSource,
        links: CaptureLinks,
        stop: threading.Event,
        clock: Callable[[], float] = time.time,
        *,
        worker_timeout_s: float = 5.0,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        self.s = settings
        self.stop = stop
        self.counters: Counter[str] = Counter()
        self.router = Router(settings, Link(links.control, stop), Link(links.video, stop),
                             Dispatcher(links.tasks, worker_timeout_s,
                                        input_size=settings.input_size), stop, self.counters,
                             clock)
        self.session = SourceSession(settings, source, stop, self.router, self.counters,
                                     stall_timeout_s=stall_timeout_s)
        self.cpu = CpuMeter()

    @property
    def seq(self) -> int:
        """Seqs issued so far."""
        return self.router.seq

    def run(self) -> int:
        """Capture until the source ends (files) or stop is set; always sends ``eos``.

        Returns:
            0 (ended or stopped), 2 (source error), 1 (crash: logged with its traceback).
        """
        reason, message, code = "shutdown", "", 1
        try:
            for item in self.session.frames():
                beat()
                self.router.route(item)
                self.cpu.first(self.router.seq)
            (reason, message), code = self.session.end, 0
        except SourceError as exc:
            reason, message, code = "error", str(exc), 2
            log.error("%s: %s", self.s.stream, exc)
        except Exception as exc:  # a bug or a library error: still end the stream honestly
            reason, message = "error", f"{type(exc).__name__}: {exc}"
            log.exception("%s: capture failed", self.s.stream)
        finally:
            # Whatever ended the loop (also an exception we do not catch), the stream ends
            # with its eos; the exit status stays a failure until decided above.
            set_exit_status(code)
            self.session.close()
            self.router.drain(self.router.policy.drain_timeout_s)
            self.router.finish(reason, message)
            self._report()
        return code

    def _report(self) -> None:
        """The closing log lines (`stream bench` parses ``stage ms/frame`` and ``process
        cpu``: per captured frame from the first on, see :class:`~stream.runtime.CpuMeter`)."""
        n = self.router.seq
        cpu = f"; {report}" if (report := self.cpu.report(n)) else ""
        log.info("%s: stage ms/frame: %s%s", self.s.stream, self.router.timing_report(), cpu)
        log.info("%s: %d frames captured (%s)", self.s.stream, n,
                 ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())) or "no drops")


def model_input_size(model_path: str) -> tuple[int, int]:
    """(width, height) of the IR's image input, read from the IR itself."""
    import openvino as ov

    from stream.model.runtime import inspect_classifier

    _, info = inspect_classifier(ov.Core(), model_path)
    return info.width, info.height


def capture_input_size(model: ModelConfig) -> tuple[int, int]:
    """What this capture crops to: ``model.input_size``, else the IR's input when the IR
    is on this machine, else the default model's 224x224 (a camera machine needs no IR).

    Raises:
        ConfigError: a non-default model that is not here and no ``model.input_size``.
    """
    from pathlib import Path

    from stream.model.builder import DEFAULT_OUTPUT

    if model.input_size is not None:
        return model.input_size
    path = Path(model.path)
    if path.is_file():
        return model_input_size(model.path)
    if path.resolve() == DEFAULT_OUTPUT.resolve():
        return DEFAULT_INPUT_SIZE
    raise ConfigError(f"no model at {path} on this machine: set model.input_size: [W, H] "
                      "(what the workers' model takes) or copy the IR here")


def run_capture(cfg: StreamConfig, source_id: str, stop: threading.Event,
                sink_host: str | None = None) -> int:
    """Wire and run the capture of one configured source (``stream capture``).

    Args:
        cfg: the deployment config; ``source_id`` picks the source.
        sink_host: connect to the sink on this host instead of the configured one.
    Returns:
        The exit status (see :meth:`Capture.run`).
    Raises:
        ConfigError: no source with that id, or an endpoint cannot be bound/connected.
    """
    index = next((i for i, s in enumerate(cfg.sources) if s.id == source_id), None)
    if index is None:
        ids = ", ".join(s.id for s in cfg.sources)
        raise ConfigError(f"no source {source_id!r} in the config (sources: {ids})")
    src = cfg.sources[index]
    kind = src.resolved_kind()
    settings = CaptureSettings(
        stream=src.id, url=src.url, kind=kind, policy=src.resolved_policy(),
        loop=src.loop, realtime=src.realtime,
        fps_cap=src.fps if kind in ("rtsp", "camera") else None,
        send_images=cfg.sink.wants_images,
        input_size=capture_input_size(cfg.model),
    )
    source = make_source(settings, src.rtsp_transport, src.fps)
    # CURVE (security.key): workers must be trusted; the sink's public key is checked.
    with Sockets(curve=Curve.from_config(cfg.security)) as sockets:
        tasks = task_socket(sockets)
        sockets.bind(tasks, cfg.frames_bind(index), "frames")
        control, video = sink_links(sockets, cfg.transport.hwm)
        sink = cfg.sink_of(src.id).reach(sink_host)  # the sink that owns this stream
        sink_key = sockets.server_key("sink")
        sockets.connect(control, sink, "sink", sink_key)
        sockets.connect(video, sink, "sink", sink_key)
        return Capture(settings, source, CaptureLinks(tasks, control, video), stop).run()
