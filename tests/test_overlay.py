"""The pure drawing helpers: the label panel and letterboxing (defect 16: no stretching)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream.overlay import draw_overlay, letterbox


def test_the_panel_is_drawn_in_place_in_the_top_left_corner_only() -> None:
    frame = np.full((720, 1280, 3), 150, np.uint8)
    before = frame.copy()
    got = draw_overlay(frame, "cam1", [("tabby cat", 0.91), ("tiger cat", 0.05)], fps=24.5)
    assert got is frame
    changed = np.nonzero((frame != before).any(axis=2))
    assert changed[0].size > 0
    assert changed[0].max() < 720 // 3 and changed[1].max() < 1280 // 2  # a corner panel
    assert frame[300:, 700:].tolist() == before[300:, 700:].tolist()  # the rest untouched


@pytest.mark.parametrize(("h", "w"), [(8, 8), (30, 400), (2160, 3840)])
def test_the_panel_fits_any_frame_size(h: int, w: int) -> None:
    frame = np.full((h, w, 3), 200, np.uint8)
    draw_overlay(frame, "a-very-long-stream-name.example", [("x" * 80, 1.0)], note="busy")
    assert frame.shape == (h, w, 3)
    assert frame[0, 0].max() < 200  # the panel starts at the corner, clipped to the frame


def test_letterbox_keeps_the_aspect_ratio_with_black_bars() -> None:
    square = np.full((300, 300, 3), 90, np.uint8)
    cv2.circle(square, (150, 150), 100, (255, 255, 255), -1)
    square.flags.writeable = False  # outputs hand read-only wire buffers
    out = letterbox(square, 640, 360)
    assert out.shape == (360, 640, 3)
    assert not out[:, :140].any() and not out[:, 500:].any()  # black bars, exactly
    assert out[:, 140:500].min() > 0  # the content fills the middle, 360x360
    ys, xs = np.nonzero(out[..., 0] > 200)
    assert xs.max() - xs.min() == pytest.approx(ys.max() - ys.min(), abs=2)  # still a circle
    assert (xs.max() - xs.min()) == pytest.approx(200 * 360 / 300, abs=3)  # scaled 1.2x


def test_letterbox_of_a_wide_frame_puts_bars_above_and_below() -> None:
    wide = np.full((100, 400, 3), 60, np.uint8)
    out = letterbox(wide, 320, 240)
    assert out.shape == (240, 320, 3)
    assert not out[:80].any() and not out[160:].any()
    assert (out[80:160] == 60).all()


def test_letterbox_of_the_same_aspect_fills_the_frame() -> None:
    small = np.full((180, 320, 3), 77, np.uint8)
    out = letterbox(small, 1280, 720)
    assert out.shape == (720, 1280, 3) and (out == 77).all()
