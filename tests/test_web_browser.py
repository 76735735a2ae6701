"""A real browser loads the web view while a pipeline runs: Debian's chromium, headless.

Playwright drives the system's chromium (``/usr/bin/chromium``, installed by ``.ci/run``;
Playwright's own browser downloads are not used). The deployment is the one of
tests/test_web.py: a ``live`` stream of solid red frames (oracle class ``red``) and a short
``file`` stream. The page must show the current label in its text, and its live video must
show the overlaid frame: red pixels, and the label panel in the top-left corner.

Set ``STREAM_WEB_SCREENSHOT=path.png`` to keep a screenshot of the page (docs/web-view.png
was made that way).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import ORACLE_COLOURS, wait_until
from test_web import RED, Deployment
from test_web import deployment as deployment  # the fixture, used by name

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian's chromium (apt-get install chromium; .ci/run "
                              "installs it)"),
]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="needs playwright (pip install -e '.[test]')")
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1100, "height": 640})
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def test_browser_shows_the_label_and_the_overlaid_video(
        page: Any, deployment: Deployment) -> None:
    page.goto(f"http://{deployment.host}:{deployment.port}/", wait_until="domcontentloaded")
    card = "section[data-stream='live']"
    # The page's text: the current label of the live stream is the oracle's class.
    page.wait_for_function(
        "sel => (document.querySelector(sel + ' .top') || {}).textContent?.includes('red')",
        arg=card, timeout=30_000)
    assert "red" in page.inner_text(f"{card} .top")
    assert "fps" in page.inner_text(f"{card} .nums")
    page.wait_for_selector("section[data-stream='file']", timeout=30_000)
    # The live video: an MJPEG <img> that has decoded frames.
    page.wait_for_function("sel => document.querySelector(sel + ' img').naturalWidth > 0",
                           arg=card, timeout=30_000)
    png = page.locator(f"{card} img").screenshot()
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.std() > 10, "a blank image"
    h, w = img.shape[:2]
    diff = np.abs(img.astype(int) - ORACLE_COLOURS[RED]).max(axis=2)
    assert np.median(diff[h // 2:, w // 2:]) <= 24, "the picture is not the clip's red"
    assert (diff[: h // 6, : w // 4] > 48).mean() > 0.05, "no label panel drawn"
    # The file has ended: its card keeps showing its last frame.
    page.wait_for_function("sel => document.querySelector(sel + ' img').naturalWidth > 0",
                           arg="section[data-stream='file']", timeout=30_000)
    assert "ended" in page.inner_text("section[data-stream='file'] .nums")
    keep = os.environ.get("STREAM_WEB_SCREENSHOT")
    if keep:
        page.screenshot(path=keep)

    # Pause the live video (a click on it): the browser closes its MJPEG connection, the
    # viewer is gone, and the sink stops encoding that stream; a second click resumes it.
    def jpegs() -> float:
        _, _, body = deployment.get("/metrics")
        line = next(ln for ln in body.decode().splitlines()
                    if ln.startswith('stream_web_jpeg_frames_total{stream="live"}'))
        return float(line.split()[-1])

    page.click(f"{card} img")
    wait_until(lambda: deployment.stream("live")["viewers"] == 0, 15, "the viewer gone")
    before = jpegs()
    labelled = deployment.stream("live")["labelled"]
    wait_until(lambda: deployment.stream("live")["labelled"] > labelled + 10, 15,
               "more live frames while paused")
    assert jpegs() == before, "frames encoded while nobody watched"
    assert page.is_visible(f"{card} .paused")
    page.click(f"{card} .paused")
    wait_until(lambda: deployment.stream("live")["viewers"] == 1, 15, "the viewer back")
    wait_until(lambda: jpegs() > before + 5, 15, "encoding again")
