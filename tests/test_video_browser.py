"""The output MP4 plays in a real browser: Debian's Chromium, headless, over HTTP.

A page with three ``<video>`` elements is served from a localhost ``http.server``: the
file the video output finished (must reach ``readyState >= 2`` with the exact duration,
and show the right picture at a given time, read back through a canvas), the same file
from a path served without byte ranges (the duration must still be exact: it comes from
the header then), and a copy of a file taken while it was still being written (what a
crash or a full disk leaves: it must play too).
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stream.outputs.base import OutputFrame
from stream.outputs.video_file import VideoFileOutput

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FPS = 25
N = 75  # 3.00 s: keyframes (and MP4 fragments) at 0 and 2 s
PARTIAL_AT = 70  # a copy taken after this frame holds the first fragment


def level(i: int) -> int:
    return 60 + (i % 8) * 20


def frame(seq: int) -> OutputFrame:
    """Grey ``level(seq)`` below a band of noise (the noise makes the file big enough that
    the muxer's write buffer reaches the disk while it is written)."""
    image = np.full((240, 320, 3), level(seq), np.uint8)
    image[:120] = np.random.default_rng(seq).integers(0, 256, (120, 320, 3), np.uint8)
    image.flags.writeable = False
    return OutputFrame("cam", 1, seq, seq / FPS, 0.0, image, (("cat", 0.9),), None, None,
                       FPS)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder) of a stdlib HTTP server on 127.0.0.1 that serves byte ranges."""
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """The stdlib file server, quiet, plus single ``Range: bytes=a-b`` requests: without
    them Chromium treats a video as unseekable (setting ``currentTime`` does nothing), as
    it would behind any real web server."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file() or self.path.startswith("/plain/"):
            super().do_GET()
            return
        data = path.read_bytes()
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start > end:
            self.send_error(416)
            return
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start:end + 1])


VIDEO_STATE = """async (id) => {
  const v = document.getElementById(id);
  if (v.readyState < 2) {  // bounded: a file that never loads is a failure, not a hang
    await new Promise((ok) => { v.addEventListener('loadeddata', ok, {once: true});
                                v.addEventListener('error', ok, {once: true});
                                setTimeout(ok, 15000); });
  }
  return {ready: v.readyState, duration: v.duration, error: v.error && v.error.message,
          width: v.videoWidth, height: v.videoHeight};
}"""

PIXEL_AT = """async ([id, t]) => {
  const v = document.getElementById(id);
  v.currentTime = t;
  await new Promise((ok) => { v.addEventListener('seeked', ok, {once: true});
                              setTimeout(ok, 15000); });
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  return Array.from(g.getImageData(250, 200, 1, 1).data.slice(0, 3));
}"""


def test_the_mp4_plays_in_chromium_with_its_exact_duration(served, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    base, folder = served
    out = VideoFileOutput(str(folder / "videos"), draw=True)
    for seq in range(N):
        out.write(frame(seq))
        if seq == PARTIAL_AT:  # a copy as a crash would leave it: fragments so far, no trailer
            shutil.copy(folder / "videos" / "cam.mp4", folder / "partial.mp4")
    out.end_stream("cam")
    out.close()
    (folder / "index.html").write_text(
        '<video id="done" src="videos/cam.mp4" muted preload="auto"></video>'
        '<video id="partial" src="partial.mp4" muted preload="auto"></video>'
        '<video id="plain" src="plain/cam.mp4" muted preload="auto"></video>')
    (folder / "plain").mkdir()
    shutil.copy(folder / "videos" / "cam.mp4", folder / "plain" / "cam.mp4")

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base}/index.html")
            done = page.evaluate(VIDEO_STATE, "done")
            partial = page.evaluate(VIDEO_STATE, "partial")
            plain = page.evaluate(VIDEO_STATE, "plain")
            pixel = page.evaluate(PIXEL_AT, ["done", 1.02])  # inside frame 25
        finally:
            browser.close()

    assert done["error"] is None and done["ready"] >= 2, done
    assert (done["width"], done["height"]) == (320, 240)
    # Exact to half a frame (the header's duration; without it Chromium said 1.96 s).
    assert abs(done["duration"] - N / FPS) < 0.5 / FPS, done
    assert all(abs(c - level(25)) <= 8 for c in pixel), (pixel, level(25))
    # Served without byte ranges (Chromium reads the file once, front to back): the
    # duration comes from the header alone (mp4_duration.py; without it: one frame short).
    assert plain["ready"] >= 2 and abs(plain["duration"] - N / FPS) < 0.5 / FPS, plain
    assert partial["error"] is None and partial["ready"] >= 2, partial
    assert 0 < partial["duration"] <= (PARTIAL_AT + 1) / FPS + 1e-6, partial
