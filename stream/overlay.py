"""PURE drawing for the outputs: the label panel (:func:`draw_overlay`) and letterboxing.

Only a small panel in the top-left corner is touched (a translucent box blended over the
region it covers, then text), so drawing costs the same on 720p as on 4K. Text scales with
the frame height so it stays readable on both.

:func:`letterbox` fits a frame of another size into an output's fixed frame size (a video
file has one size; a camera may change resolution mid-stream) keeping its aspect ratio,
with black bars, instead of stretching it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_overlay(
    frame: np.ndarray,
    stream: str,
    labels: Sequence[tuple[str, float]],
    fps: float | None = None,
    note: str | None = None,
) -> np.ndarray:
    """Draw the label panel onto ``frame`` (modified in place and returned).

    Args:
        frame: u8 H×W×3 BGR, writable.
        stream: the stream id, shown in the title line with ``fps``.
        labels: (name, probability) pairs, best first; the first is drawn larger.
        note: an extra line in place of the labels, e.g. ``no label (worker_lost)``.
    """
    h, w = frame.shape[:2]
    scale = max(0.4, h / 720.0 * 0.6)
    thick = max(1, round(scale * 2))
    line_h = int(28 * scale / 0.6)
    title = stream if fps is None else f"{stream}  {fps:5.1f} fps"
    lines: list[tuple[str, float, tuple[int, int, int]]] = [(title, scale, (200, 200, 200))]
    if note:
        lines.append((note, scale, (80, 160, 255)))
    for i, (name, score) in enumerate(labels):
        colour = (80, 255, 80) if i == 0 else (255, 255, 255)
        lines.append((f"{score * 100:5.1f}%  {name}", scale * (1.25 if i == 0 else 1.0), colour))
    widths = [cv2.getTextSize(t, FONT, s, thick)[0][0] for t, s, _ in lines]
    box_w = min(w, max(widths) + 2 * line_h // 2)
    box_h = min(h, int(line_h * (len(lines) + 0.6)))
    roi = frame[0:box_h, 0:box_w]
    # Darken the panel region: cheaper than a full-frame addWeighted, same look.
    cv2.convertScaleAbs(roi, dst=roi, alpha=0.35, beta=0)
    y = int(line_h * 0.9)
    for text, s, colour in lines:
        cv2.putText(frame, text, (line_h // 2, y), FONT, s, colour, thick, cv2.LINE_AA)
        y += int(line_h * (1.25 if s > scale else 1.0))
    return frame


def letterbox(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """A new ``height×width×3`` u8 frame with ``frame`` scaled to fit, centred, black bars.

    The aspect ratio is kept (each side scaled by the same factor, rounded to whole
    pixels), so circles stay circles; area interpolation when shrinking, bilinear when
    growing.

    Args:
        frame: u8 H×W×3, read-only is fine (it is not modified).
        width, height: the output size, at least 1 each.
    """
    h, w = frame.shape[:2]
    scale = min(width / w, height / h)
    new_w = min(width, max(1, round(w * scale)))
    new_h = min(height, max(1, round(h * scale)))
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - new_w) // 2, (height - new_h) // 2
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out[y0:y0 + new_h, x0:x0 + new_w] = cv2.resize(frame, (new_w, new_h), interpolation=interp)
    return out
