"""The sink's HTTP server: the web view, MJPEG, ``/api/streams``, ``/healthz``, ``/metrics``.

Routes (GET; HEAD for the same paths without the body):

    /                      the page (``stream/outputs/web_page.html``: no build step)
    /streams/<id>.mjpg     the stream's overlaid video, ``multipart/x-mixed-replace`` JPEGs
    /api/streams           JSON: per stream its newest labels, fps, counts and drops
    /healthz               200 while the sink loop is alive, 503 when it has been stuck
    /metrics               Prometheus text format (``stream/metrics.py``, docs/metrics.md)

The server is the standard library's ``ThreadingHTTPServer``: a thread per connection.
Why not aiohttp or starlette + uvicorn: the load is a handful of viewers (each MJPEG
viewer is one long response whose frames the web output already encoded, so a thread
sleeps on a condition between frames), a page polled twice a second and a Prometheus
scrape; threads do that on 2 cores with no new dependency and no event loop beside the
sink's own loop. The costs are bounded: at most :data:`MAX_VIEWERS` MJPEG connections
(503 beyond), a request must arrive within :data:`REQUEST_TIMEOUT_S`, and a viewer that
stops reading is dropped after the same timeout.

There is no authentication. The config refuses a non-loopback address unless
``sink.http_insecure`` says so, and on a loopback address the ``Host`` header must name a
loopback host too, so a web page elsewhere cannot read the streams through DNS rebinding.
Stream ids in URLs are checked against the id rule before anything else, and an id the sink
has not seen is a 404 (no state is made for it).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.config.sink import is_loopback, split_http
from stream.errors import ConfigError
from stream.ids import is_stream_id
from stream.metrics import SinkMetrics
from stream.outputs.runner import OutputRunner
from stream.outputs.web import WebOutput

log = logging.getLogger(__name__)

MAX_VIEWERS = 32
"""MJPEG connections at once (each holds a thread); more get 503."""

REQUEST_TIMEOUT_S = 10.0
"""A client must send its request, and keep reading a stream, within this."""

STUCK_S = 10.0
"""``/healthz`` says 503 when the sink loop has not refreshed its numbers for this long."""

BOUNDARY = "frame"

DEFAULT_ADDRESS = "127.0.0.1:8080"
"""Where ``stream run`` serves the web view unless told otherwise (a free port if taken)."""


def _page() -> bytes:
    return resources.files("stream.outputs").joinpath("web_page.html").read_bytes()


class SinkHttp:
    """The sink's HTTP server on its own threads.

    Args:
        address: ``HOST:PORT`` (``sink.http``); the socket is bound here, so an address in
            use fails before the sink starts.
        web: the web output (its newest frames and viewers).
        metrics: the sink's metrics and snapshot.

    Raises:
        ConfigError: the address cannot be bound (in use, not this machine's).
    """

    def __init__(self, address: str, web: WebOutput, metrics: SinkMetrics) -> None:
        host, port = split_http(address)
        self.web = web
        self.metrics = metrics
        self.loopback = is_loopback(host)
        self.page = _page()
        self.viewers = threading.BoundedSemaphore(MAX_VIEWERS)
        self.stopping = threading.Event()
        server_cls = _V6Server if ":" in host else _Server
        try:
            self.server = server_cls((host, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"sink.http {address} is already in use (another `stream "
                                  "run`?): give this sink another port with --http "
                                  "127.0.0.1:PORT or sink.http") from None
            raise ConfigError(f"sink.http: cannot serve on {address}: {exc.strerror}") from None
        self.server.app = self
        self.port = self.server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="sink-http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self) -> None:
        """Serve on a thread of its own."""
        self._thread.start()
        log.info("web view on %s (metrics on %smetrics)", self.url, self.url)

    def close(self) -> None:
        """Stop serving; open MJPEG responses end (the web output closes them)."""
        self.stopping.set()
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    # -- what the routes return ------------------------------------------------------------

    def streams_json(self) -> dict[str, Any]:
        """The body of ``/api/streams``."""
        snap = self.metrics.snapshot
        shown = self.web.shown()
        out = []
        for sid in sorted(set(snap.streams) | set(shown)):
            st, sh = snap.streams.get(sid), shown.get(sid)
            item: dict[str, Any] = {"id": sid, "video": f"/streams/{sid}.mjpg"}
            if sh is not None:
                item.update(seq=sh.seq, session=sh.session, width=sh.width, height=sh.height,
                            ts=sh.ts, viewers=sh.viewers, note=sh.note,
                            labels=[{"name": n, "score": round(s, 4)} for n, s in sh.labels])
            if st is not None:
                item.update(labelled=st.labelled, dropped=dict(st.dropped),
                            captured=st.captured, fps=round(st.fps, 2), pending=st.pending,
                            ended=st.ended, outputs=st.outputs, capture=st.capture)
            out.append(item)
        return {"v": 1, "streams": out, "refused": dict(snap.refused)}

    def known(self, stream: str) -> bool:
        """A stream the sink has seen (only those get an MJPEG channel)."""
        return stream in self.metrics.snapshot.streams or stream in self.web.shown()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: SinkHttp


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    def version_string(self) -> str:
        return "stream"  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: " + format, self.client_address[0], *args)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        app = self.server.app
        if app.loopback and not self._host_is_loopback():
            self._send(421, "text/plain", b"this server answers only to localhost names\n", body)
            return
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, "text/html; charset=utf-8", app.page, body)
        elif path == "/api/streams":
            data = json.dumps(app.streams_json()).encode()
            self._send(200, "application/json", data, body)
        elif path == "/healthz":
            age = app.metrics.age()
            ok = age < STUCK_S
            text = "ok\n" if ok else f"sink loop silent for {age:.0f} s\n"
            self._send(200 if ok else 503, "text/plain", text.encode(), body)
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(app.metrics.registry), body)
        elif path.startswith("/streams/") and path.endswith(".mjpg"):
            stream = path[len("/streams/"):-len(".mjpg")]
            if not is_stream_id(stream) or not app.known(stream):
                self._send(404, "text/plain", b"no such stream\n", body)
            elif not body:
                self._send(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", b"", False)
            else:
                self._mjpeg(app, stream)
        else:
            self._send(404, "text/plain", b"not found\n", body)

    def _host_is_loopback(self) -> bool:
        host = self.headers.get("Host")
        if host is None:
            return True  # an HTTP/1.0 tool; browsers (the DNS-rebinding risk) always send it
        if host.startswith("["):
            name = host[1:].split("]", 1)[0]
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return is_loopback(name)

    def _send(self, code: int, ctype: str, data: bytes, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _mjpeg(self, app: SinkHttp, stream: str) -> None:
        if not app.viewers.acquire(blocking=False):
            self._send(503, "text/plain", f"more than {MAX_VIEWERS} viewers\n".encode(), True)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            # Each part is followed at once by the next boundary: browsers show a part only
            # once they see the boundary after it, not when its Content-Length is in.
            self.wfile.write(f"--{BOUNDARY}\r\n".encode())
            frames = app.web.frames(stream, app.stopping)
            try:
                for jpeg in frames:
                    self.wfile.write(f"Content-Type: image/jpeg\r\nContent-Length: "
                                     f"{len(jpeg)}\r\n\r\n".encode())
                    self.wfile.write(jpeg)
                    self.wfile.write(f"\r\n--{BOUNDARY}\r\n".encode())
                    self.wfile.flush()
            finally:
                frames.close()  # no longer a viewer, now rather than when collected
        except OSError:  # the viewer went away (closed tab, timeout): its stream ends
            pass
        finally:
            app.viewers.release()


@dataclass(frozen=True)
class WebServing:
    """What :func:`start_web` made: the web output's (name, runner) for the sink's outputs,
    the sink's metrics, and the running server (the sink closes it when it stops)."""

    output: tuple[str, OutputRunner]
    metrics: SinkMetrics
    http: SinkHttp


def start_web(address: str, queue_size: int) -> WebServing:
    """Make the web output, the metrics and the server, and start serving on ``address``.

    The default address (:data:`DEFAULT_ADDRESS`, what ``stream run`` picks when nothing is
    said) falls back to a free loopback port, logged, when another process took it between
    ``stream run``'s check and this bind (two runs started at once); any other address in
    use is an error.

    Raises:
        ConfigError: the address cannot be bound.
    """
    web = WebOutput()
    metrics = SinkMetrics()
    metrics.watch_web(web)
    try:
        http = SinkHttp(address, web, metrics)
    except ConfigError:
        if address != DEFAULT_ADDRESS:
            raise
        http = SinkHttp(default_http_address(), web, metrics)
        log.warning("web view: %s was taken meanwhile; serving on %s instead", address,
                    http.url)
    http.start()
    return WebServing((web.name, OutputRunner(web, queue_size=queue_size)), metrics, http)


def check_http_free(address: str) -> None:
    """Bind ``address`` once and let go, so ``stream run`` reports a clash before it starts.

    Raises:
        ConfigError: in use (with the flags that fix it), or not bindable here.
    """
    host, port = split_http(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"web view address {address} is already in use (another "
                                  "`stream run`?): pick another with --http 127.0.0.1:PORT, "
                                  "or --http off") from None
            raise ConfigError(f"web view: cannot serve on {address}: {exc.strerror}") from None


def default_http_address(preferred: str = DEFAULT_ADDRESS) -> str:
    """``preferred`` if it is free now, else a free loopback port the kernel picks: the web
    view of ``stream run`` is on by default, and a second run must not fail for it."""
    try:
        check_http_free(preferred)
        return preferred
    except ConfigError:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return f"127.0.0.1:{s.getsockname()[1]}"


def url_of(address: str) -> str:
    """The page's URL for ``HOST:PORT`` (``[v6]:PORT`` kept as is)."""
    return f"http://{address}/"
