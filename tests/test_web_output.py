"""The web output on its own: it encodes only while someone watches, once per frame, and the
sink never waits for it.

Frames are real images; JPEGs are decoded with OpenCV. The viewer is the output's own
``frames`` iterator on a thread (the HTTP layer on top is tested in tests/test_web.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import cv2
import numpy as np
import pytest
from conftest import wait_until

from stream.outputs.base import OutputFrame
from stream.outputs.web import WebOutput
from stream.protocol import Frame
from stream.sink.feed import OutputFeed

pytestmark = pytest.mark.timeout(30)


def out_frame(seq: int, colour: tuple[int, int, int] = (0, 0, 255), labels: bool = True,
              session: int = 1) -> OutputFrame:
    img = np.full((240, 320, 3), colour, np.uint8)
    img.flags.writeable = False  # as the sink hands it: a view of the wire buffer
    return OutputFrame("cam", session, seq, seq / 25, time.time(), img,
                       (("red", 0.9),) if labels else (), None if labels else "no label (busy)",
                       25.0, 25.0)


class Viewer:
    """A viewer on a thread: collects every JPEG the output yields for ``cam``."""

    def __init__(self, web: WebOutput, stream: str = "cam") -> None:
        self.got: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(web, stream), daemon=True)
        self.thread.start()

    def _run(self, web: WebOutput, stream: str) -> None:
        frames = web.frames(stream, self.stop)
        try:
            for jpeg in frames:
                self.got.append(jpeg)
        finally:
            frames.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_nothing_is_encoded_while_nobody_watches() -> None:
    web = WebOutput()
    for seq in range(20):
        web.write(out_frame(seq))
    assert web.encoded == 0
    assert web.shown()["cam"].seq == 19 and web.viewers() == {}


def test_a_viewer_gets_the_newest_frame_overlaid_and_each_frame_is_encoded_once() -> None:
    web = WebOutput()
    web.write(out_frame(0))
    viewers = [Viewer(web), Viewer(web)]
    try:
        wait_until(lambda: web.viewers() == {"cam": 2}, 5, "two viewers")
        wait_until(lambda: all(v.got for v in viewers), 5, "the last frame on joining")
        for seq in range(1, 6):
            web.write(out_frame(seq, colour=(0, 255, 0)))
            wait_until(lambda s=seq: all(len(v.got) >= s + 1 for v in viewers), 5,
                       f"frame {seq} at both viewers")
        # Six frames, two viewers: six encodes, not twelve.
        assert web.encoded == 6
        img = cv2.imdecode(np.frombuffer(viewers[0].got[-1], np.uint8), cv2.IMREAD_COLOR)
        diff = np.abs(img.astype(int) - (0, 255, 0)).max(axis=2)
        assert np.median(diff[120:, 160:]) <= 12  # the picture
        assert (diff[:40, :80] > 48).mean() > 0.05  # the label panel
    finally:
        for v in viewers:
            v.close()
    wait_until(lambda: web.viewers() == {}, 5, "viewers released")
    web.write(out_frame(6))
    assert web.encoded == 6  # nobody watches again: no encoding


def test_a_frame_without_a_label_keeps_the_last_labels_and_says_why() -> None:
    web = WebOutput()
    web.write(out_frame(0))
    web.write(out_frame(1, labels=False))
    shown = web.shown()["cam"]
    assert shown.labels == (("red", 0.9),) and shown.note == "no label (busy)"
    web.write(out_frame(0, labels=False, session=2))  # a new session starts afresh
    assert web.shown()["cam"].labels == ()


def test_close_ends_every_viewer() -> None:
    web = WebOutput()
    web.write(out_frame(0))
    v = Viewer(web)
    wait_until(lambda: v.got, 5, "a frame")
    web.close()
    v.thread.join(5)
    assert not v.thread.is_alive()


class Recorder:
    """A runner at the feed's seam: records the ``wait`` it was offered each frame with."""

    def __init__(self) -> None:
        self.waits: Counter[bool] = Counter()

    def start(self) -> None: ...
    def offer(self, frame: OutputFrame, wait: bool) -> bool:
        self.waits[wait] += 1
        return True
    def end_stream(self, stream: str) -> None: ...
    def take_errors(self) -> list[tuple[str, str]]:
        return []
    def counts(self, stream: str) -> Counter[str]:
        return Counter()
    def depth(self) -> int:
        return 0
    def close(self, timeout_s: float = 10.0) -> None: ...


def test_the_sink_never_waits_for_the_web_view_even_on_a_lossless_stream() -> None:
    video, web = Recorder(), Recorder()
    feed = OutputFeed([("video", video), ("web", web)])
    img = np.zeros((4, 4, 3), np.uint8).tobytes()
    for seq in range(3):
        feed.offer(Frame("cam", seq, None, 1.0, 4, 4, img), 1, [], None, lossless=True,
                   source_fps=25.0)
    feed.offer(Frame("cam", 3, None, 1.0, 4, 4, img), 1, [], None, lossless=False,
               source_fps=25.0)
    assert video.waits == {True: 3, False: 1}
    assert web.waits == {False: 4}
