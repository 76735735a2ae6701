"""A generated sample clip, so the demo runs with no camera and no download."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np


def make_sample_clip(path: str | Path, seconds: float = 10.0, fps: float = 30.0,
                     size: tuple[int, int] = (1280, 720)) -> Path:
    """Write a synthetic 720p clip (moving shapes over a drifting gradient) as MPEG-4.

    Written with OpenCV's own encoder (``mp4v``), which every opencv-python wheel has.
    The file is written beside its final name and renamed, so a half-written clip is
    never mistaken for a good one.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    w, h = size
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot write {tmp}: OpenCV has no mp4v encoder here")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    try:
        for i in range(int(seconds * fps)):
            t = i / fps
            frame = np.empty((h, w, 3), np.uint8)
            frame[..., 0] = (127 + 127 * np.sin(xx / 97 + t)).astype(np.uint8)
            frame[..., 1] = (127 + 127 * np.sin(yy / 61 - 1.3 * t)).astype(np.uint8)
            frame[..., 2] = (127 + 127 * np.cos((xx + yy) / 150 + 0.7 * t)).astype(np.uint8)
            cx = int(w / 2 + w / 3 * math.cos(t))
            cy = int(h / 2 + h / 3 * math.sin(1.7 * t))
            cv2.circle(frame, (cx, cy), h // 6, (40, 40, 230), -1)
            cv2.rectangle(frame, (int(w * (0.1 + 0.05 * math.sin(t))), h // 8),
                          (int(w * 0.3), h // 3), (230, 200, 40), -1)
            cv2.putText(frame, f"stream demo {t:5.2f}s", (40, h - 40),
                        cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2, cv2.LINE_AA)
            writer.write(frame)
    finally:
        writer.release()
    tmp.replace(out)
    return out
