"""The sink's web view and metrics against a real pipeline: real processes, sockets, video.

One module-scoped deployment runs the roles standalone (as on several machines): a sink
(``stream sink --forever``, so its HTTP server outlives the streams), one worker on the
colour-oracle IR, and two captures:

- ``live``: a solid red clip replayed for ever at its own rate (``loop`` + ``realtime``), so
  the MJPEG stream always has new frames and its label is known: ``red``;
- ``file``: a short clip of known classes that ends, so its counts are final: the summary
  event a real subscriber received, and the number of frames the test encoded, are the
  oracles ``/metrics`` must equal.

The browser test (tests/test_web_browser.py) uses the same deployment.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from conftest import (
    ORACLE_COLOURS,
    EventLog,
    find_free_port_base,
    make_clip,
    requires_ffmpeg,
    runs_of_classes,
    wait_until,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.timeout(120), requires_ffmpeg]

RED = 2  # ORACLE_NAMES[2]
FILE_CLASSES = runs_of_classes(40, seed=5)


@dataclass
class Deployment:
    host: str
    port: int
    log: EventLog
    procs: dict[str, subprocess.Popen[bytes]]
    logs: Path

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def api(self) -> dict[str, Any]:
        status, _, body = self.get("/api/streams")
        assert status == 200
        return json.loads(body)

    def stream(self, sid: str) -> dict[str, Any] | None:
        return next((s for s in self.api()["streams"] if s["id"] == sid), None)

    def stderr(self, name: str) -> str:
        return (self.logs / f"{name}.err").read_text(errors="replace")


def _start(name: str, logs: Path, *args: str) -> subprocess.Popen[bytes]:
    with (logs / f"{name}.out").open("wb") as out, (logs / f"{name}.err").open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "stream", *args], stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory,
               oracle_model: tuple[Path, Path]) -> Iterator[Deployment]:
    d = tmp_path_factory.mktemp("web")
    live = make_clip(d / "live.mp4", [RED] * 50, size=(640, 360), fps=25)
    file = make_clip(d / "file.mp4", FILE_CLASSES, size=(320, 240), fps=25)
    base = find_free_port_base(5)
    http_port = base + 4
    xml, labels = oracle_model
    cfg = write_config(d / "cfg.yaml", port_base=base, model=xml, labels=labels, top_k=3,
                       sources=[{"id": "live", "url": str(live), "loop": True,
                                 "realtime": True},
                                {"id": "file", "url": str(file)}])
    data = yaml.safe_load(cfg.read_text())
    data["sink"]["http"] = f"127.0.0.1:{http_port}"  # captures send full frames for it
    cfg.write_text(yaml.safe_dump(data))
    log = EventLog(f"tcp://127.0.0.1:{base}")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    dep = Deployment("127.0.0.1", http_port, log, procs, d)
    try:
        procs["sink"] = _start("sink", d, "sink", str(cfg), "--forever")
        procs["worker"] = _start("worker", d, "worker", str(cfg))
        for sid in ("live", "file"):
            procs[sid] = _start(sid, d, "capture", str(cfg), "--source", sid)

        def started() -> bool:
            # The file's capture ends by itself (exit 0); nothing else may end.
            dead = [n for n, p in procs.items() if p.poll() is not None
                    and (n != "file" or p.returncode != 0)]
            assert not dead, f"{dead} exited: {dep.stderr(dead[0])[-3000:]}"
            return bool(log.of("label", "live"))

        wait_until(started, 60, "labels of the live stream")
        yield dep
    finally:
        for name in ("live", "file", "worker", "sink"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


# --------------------------------------------------------------------------- MJPEG


def read_mjpeg(host: str, port: int, path: str, n: int, timeout: float = 30.0
               ) -> tuple[str, list[bytes]]:
    """(Content-Type, the first ``n`` JPEG parts) of a multipart MJPEG response, parsed by
    hand from the part headers (boundary, Content-Length), not by our own code."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 200, r.status
        ctype = r.getheader("Content-Type", "")
        boundary = ctype.split("boundary=", 1)[1].encode()
        parts: list[bytes] = []
        while len(parts) < n:
            line = r.fp.readline()
            if not line.strip():
                continue  # the CRLF that ends a part
            assert line.strip() == b"--" + boundary, line
            headers = {}
            while True:
                h = r.fp.readline().strip()
                if not h:
                    break
                k, v = h.decode().split(":", 1)
                headers[k.lower()] = v.strip()
            assert headers["content-type"] == "image/jpeg"
            parts.append(r.fp.read(int(headers["content-length"])))
        return ctype, parts
    finally:
        conn.close()


def test_mjpeg_client_reads_20_frames_that_decode(deployment: Deployment) -> None:
    ctype, parts = read_mjpeg(deployment.host, deployment.port, "/streams/live.mjpg", 20)
    assert ctype.startswith("multipart/x-mixed-replace")
    assert len(parts) == 20
    assert len(set(parts)) > 10, "the same frame over and over: the stream is not live"
    for jpeg in parts:
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (360, 640, 3)
        # The picture is the clip's red (codec tolerance), the label panel top left is not.
        diff = np.abs(img.astype(int) - ORACLE_COLOURS[RED]).max(axis=2)
        assert np.median(diff[180:, 320:]) <= 20
        assert (diff[:60, :160] > 48).mean() > 0.05, "no overlay drawn"


def test_viewers_are_counted_and_released(deployment: Deployment) -> None:
    conn = http.client.HTTPConnection(deployment.host, deployment.port, timeout=10)
    conn.request("GET", "/streams/live.mjpg")
    r = conn.getresponse()
    r.fp.readline()
    wait_until(lambda: (deployment.stream("live") or {}).get("viewers") == 1, 10,
               "one viewer in /api/streams")
    r.close()
    conn.close()
    wait_until(lambda: (deployment.stream("live") or {}).get("viewers") == 0, 15,
               "the viewer released after it closed")


# --------------------------------------------------------------------------- routes


def test_healthz_and_page(deployment: Deployment) -> None:
    status, headers, body = deployment.get("/healthz")
    assert (status, body) == (200, b"ok\n")
    status, headers, body = deployment.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/api/streams" in body and b"textContent" in body


@pytest.mark.parametrize("path", [
    "/streams/nope.mjpg",  # a valid id the sink never saw
    "/streams/../etc/passwd.mjpg",
    "/streams/%2e%2e%2fsecret.mjpg",
    "/streams/a%00b.mjpg",
    "/streams/" + "x" * 65 + ".mjpg",  # longer than the id rule allows
    "/streams/-live.mjpg",
    "/streams/live.mjpg/extra",
    "/nothing-here",
])
def test_unknown_and_hostile_paths_are_404(deployment: Deployment, path: str) -> None:
    status, _, _ = deployment.get(path)
    assert status == 404
    assert deployment.get("/healthz")[0] == 200  # and the server is still fine


def test_a_foreign_host_header_is_refused(deployment: Deployment) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read streams."""
    status, _, _ = deployment.get("/api/streams", {"Host": f"evil.example:{deployment.port}"})
    assert status == 421
    assert deployment.get("/api/streams", {"Host": f"localhost:{deployment.port}"})[0] == 200
    # An HTTP/1.0 tool that sends no Host at all is not a browser: answered.
    import socket

    with socket.create_connection((deployment.host, deployment.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok\n"), reply


# --------------------------------------------------------------------------- metrics


def scrape(dep: Deployment) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = dep.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_equal_the_summary(deployment: Deployment) -> None:
    n = len(FILE_CLASSES)
    summary = wait_until(lambda: deployment.log.of("summary", "file"), 60,
                         "the file stream's summary event")[-1]
    assert summary["captured"] == n
    wait_until(lambda: scrape(deployment).get(
        ("stream_frames_captured", (("stream", "file"),))) == n, 10, "the final snapshot")
    m = scrape(deployment)
    assert m[("stream_frames_labelled_total", (("stream", "file"),))] == summary["labelled"]
    dropped = {dict(k[1])["reason"]: v for k, v in m.items()
               if k[0] == "stream_frames_dropped_total" and dict(k[1])["stream"] == "file"}
    assert dropped == summary["dropped"]
    # And the independent oracle: the frames this test encoded, each exactly once.
    assert summary["labelled"] + sum(summary["dropped"].values()) == n
    # Every labelled frame has one latency and one inference sample.
    assert m[("stream_latency_seconds_count", (("stream", "file"),))] == summary["labelled"]
    assert m[("stream_inference_seconds_count", (("stream", "file"),))] == summary["labelled"]
    # The web output accounts for every frame it was offered: shown, or skipped because
    # its queue was full (the file runs as fast as it decodes while "live" is watched).
    web = {r: m[("stream_output_frames_total", (("output", "web"), ("result", r),
                                                ("stream", "file")))]
           for r in ("written", "queue_full", "failed")}
    assert sum(web.values()) == n and web["failed"] == 0 and web["written"] > 0, web


def test_live_counters_only_grow_and_agree_with_the_api(deployment: Deployment) -> None:
    key = ("stream_frames_labelled_total", (("stream", "live"),))
    first = scrape(deployment)[key]
    wait_until(lambda: scrape(deployment)[key] > first + 5, 20, "the live counter to grow")
    api = deployment.stream("live")
    assert api is not None and api["labels"][0]["name"] == "red"
    assert api["fps"] > 0 and api["width"] == 640
    m = scrape(deployment)
    assert m[key] >= api["labelled"]  # the snapshot is at most REFRESH_S behind
    assert ("stream_sink_snapshot_age_seconds", ()) in m


def test_metrics_of_two_sinks_in_one_process_do_not_mix() -> None:
    from stream.metrics import SinkMetrics

    a, b = SinkMetrics(), SinkMetrics()
    a.outcome("s", None, 3, 10.0, 5.0)
    b.outcome("s", "busy", 2, None, None)
    assert a.registry.get_sample_value("stream_frames_labelled_total", {"stream": "s"}) == 3
    assert b.registry.get_sample_value("stream_frames_labelled_total", {"stream": "s"}) is None
    assert b.registry.get_sample_value("stream_frames_dropped_total",
                                       {"stream": "s", "reason": "busy"}) == 2


def test_an_address_in_use_is_a_clear_error(deployment: Deployment) -> None:
    from stream.errors import ConfigError
    from stream.sink.http import check_http_free

    with pytest.raises(ConfigError, match=r"already in use.*--http"):
        check_http_free(f"127.0.0.1:{deployment.port}")


def test_stream_sink_refuses_a_public_http_address(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [{"id": "a", "url": "x.mp4"}]}))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "stream", "sink", str(cfg), "--http",
                        "0.0.0.0:8080"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "http_insecure" in r.stderr and time.monotonic() - t0 < 60


def test_an_ended_stream_shows_its_last_frame(deployment: Deployment) -> None:
    """A viewer that joins after the file ended gets the last frame the view took (encoded
    on demand): the one ``/api/streams`` names. (Not always the clip's very last: the view
    is never waited for, so a busy machine may skip the last few frames of a fast file.)"""
    wait_until(lambda: deployment.log.of("summary", "file"), 60, "the file stream's end")
    api = wait_until(lambda: (deployment.stream("file") or {}).get("ended") and
                     deployment.stream("file"), 10, "the file stream ended in the API")
    _, (jpeg,) = read_mjpeg(deployment.host, deployment.port, "/streams/file.mjpg", 1,
                            timeout=10)
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    diff = np.abs(img.astype(int) - ORACLE_COLOURS[FILE_CLASSES[api["seq"]]]).max(axis=2)
    assert np.median(diff[120:, 160:]) <= 20


def test_every_metric_is_documented(deployment: Deployment) -> None:
    status, _, body = deployment.get("/metrics")
    assert status == 200
    docs = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text(encoding="utf-8")
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    assert len(names) >= 12, names
    # ``…_created`` series (one per counter/histogram) are documented as a group.
    missing = sorted(n for n in names if f"`{n}`" not in docs and not n.endswith("_created"))
    assert not missing, f"not in docs/metrics.md: {missing}"


# --------------------------------------------------------------------------- stream run


def test_stream_run_serves_the_web_view_by_default(tmp_path: Path,
                                                  oracle_model: tuple[Path, Path]) -> None:
    """No ``sink.http`` in the config: ``stream run`` serves the view anyway (127.0.0.1:8080,
    or a free port when that is taken) and prints where; Ctrl-C still ends it cleanly."""
    import re

    clip = make_clip(tmp_path / "c.mp4", [RED] * 25, size=(320, 240), fps=25)
    base = find_free_port_base(3)
    xml, labels = oracle_model
    cfg = write_config(tmp_path / "cfg.yaml", port_base=base, model=xml, labels=labels,
                       sources=[{"id": "cam", "url": str(clip), "loop": True,
                                 "realtime": True}])
    err_path = tmp_path / "run.err"
    with err_path.open("wb") as err, (tmp_path / "run.out").open("wb") as out:
        run = subprocess.Popen([sys.executable, "-m", "stream", "run", str(cfg)], stdout=out,
                               stderr=err, stdin=subprocess.DEVNULL)
    try:
        def url() -> re.Match[str] | None:
            assert run.poll() is None, err_path.read_text()[-3000:]
            # The sink's own line: the address it bound (``stream run`` prints the one it
            # chose first; another run starting at the same moment may take it meanwhile).
            return re.search(r"sink\[\d+\] INFO web view on http://127\.0\.0\.1:(\d+)/",
                             err_path.read_text())

        port = int(wait_until(url, 60, "the web view's address")[1])
        dep = Deployment("127.0.0.1", port, EventLog(f"tcp://127.0.0.1:{base}"), {}, tmp_path)
        try:
            def red() -> bool:
                try:
                    s = dep.stream("cam")
                except OSError:
                    return False  # the sink is still starting
                return bool(s and s.get("labels") and s["labels"][0]["name"] == "red")

            wait_until(red, 60, "the label in /api/streams")
            assert dep.get("/healthz")[0] == 200
            _, (jpeg,) = read_mjpeg("127.0.0.1", port, "/streams/cam.mjpg", 1)
            assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (
                240, 320, 3)
        finally:
            dep.log.close()
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 0, err_path.read_text()[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_stream_run_with_an_address_in_use_fails_before_it_starts(
        deployment: Deployment, tmp_path: Path, oracle_model: tuple[Path, Path]) -> None:
    clip = make_clip(tmp_path / "c.mp4", [RED] * 5)
    r = subprocess.run([sys.executable, "-m", "stream", "run", "--source", str(clip),
                        "--model", str(oracle_model[0]), "--events", "auto", "--http",
                        f"127.0.0.1:{deployment.port}"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "already in use" in r.stderr and "--http" in r.stderr
    assert "frames captured" not in r.stderr  # nothing was started
