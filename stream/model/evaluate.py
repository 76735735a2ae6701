"""ImageNet-style accuracy of a classifier IR: top-1 / top-5 with the accuracy preprocessing.

Ground truth uses the ImageNet validation list format, one image per line::

    ILSVRC2012_val_00000001.JPEG 65

With the official weights and the 50,000 validation images this reproduces convnext-tiny's
published 82.05% top-1 / 95.86% top-5 (images decoded by OpenCV as BGR, shorter side to
256 with Pillow bicubic, centre crop 224: `stream.preprocess.center_crop_resize`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import openvino as ov

from stream.errors import ConfigError
from stream.model.runtime import compile_classifier
from stream.preprocess import center_crop_resize


@dataclass(frozen=True)
class EvalResult:
    """Counts of an accuracy run; percentages are derived so they are exact."""

    images: int
    top1_correct: int
    top5_correct: int

    @property
    def top1(self) -> float:
        """Top-1 accuracy in percent."""
        return 100.0 * self.top1_correct / self.images if self.images else 0.0

    @property
    def top5(self) -> float:
        """Top-5 accuracy in percent."""
        return 100.0 * self.top5_correct / self.images if self.images else 0.0

    def summary(self) -> str:
        """One line, e.g. `top-1 70.00% (7/10)  top-5 90.00% (9/10)`."""
        return (
            f"top-1 {self.top1:.2f}% ({self.top1_correct}/{self.images})  "
            f"top-5 {self.top5:.2f}% ({self.top5_correct}/{self.images})"
        )


def read_ground_truth(
    path: str | os.PathLike[str], limit: int | None = None
) -> list[tuple[str, int]]:
    """Parse `<file name> <class id>` lines (blank lines ignored).

    Raises:
        ConfigError: unreadable file or a malformed line (named by its number).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read ground truth {str(source)!r} ({exc})") from None
    entries: list[tuple[str, int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise ConfigError(
                f"{str(source)!r} line {number}: expected '<image file> <class id>', "
                f"got {line.strip()[:80]!r}"
            )
        entries.append((parts[0], int(parts[1])))
        if limit is not None and len(entries) >= limit:
            break
    if not entries:
        raise ConfigError(f"ground truth {str(source)!r} lists no images")
    return entries


class _Progress:
    """Plain one-line progress on a terminal stream, redrawn at most ~5 times a second."""

    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total, self.stream = total, stream
        self.start = self.last = time.monotonic()

    def update(self, done: int, top1: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not final and now - self.last < 0.2):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        pct = 100.0 * top1 / done if done else 0.0
        end = "\n" if final else ""
        self.stream.write(
            f"\reval {done}/{self.total} images  {rate:.1f} img/s  top-1 so far {pct:.2f}%{end}"
        )
        self.stream.flush()


def evaluate(
    model: str | os.PathLike[str],
    images: str | os.PathLike[str],
    ground_truth: str | os.PathLike[str],
    limit: int | None = None,
    device: str = "CPU",
    precision: str | None = None,
    progress: TextIO | None = sys.stderr,
    core: ov.Core | None = None,
) -> EvalResult:
    """Top-1 / top-5 accuracy of `model` on the listed images, via AsyncInferQueue.

    Raises:
        ConfigError: bad ground truth, a missing/undecodable image or a class id outside the
            model's range; ModelError: the model cannot be loaded.
    """
    entries = read_ground_truth(ground_truth, limit)
    compiled, info = compile_classifier(model, device=device, precision=precision, core=core)
    for name, label in entries:
        if label >= info.num_classes:
            raise ConfigError(
                f"ground truth class {label} for {name} is outside the model's "
                f"{info.num_classes} classes"
            )
    top5 = np.full((len(entries), 5), -1, np.int64)
    k = min(5, info.num_classes)
    lock = threading.Lock()
    tally = {"done": 0, "top1": 0}

    def done(request: Any, index: int) -> None:
        logits = request.get_output_tensor(0).data.reshape(-1)
        best = np.argpartition(-logits, k - 1)[:k]
        best = best[np.argsort(-logits[best], kind="stable")]
        top5[index, :k] = best
        with lock:
            tally["done"] += 1
            tally["top1"] += int(best[0] == entries[index][1])

    queue = ov.AsyncInferQueue(compiled, 0)
    queue.set_callback(done)
    bar = _Progress(len(entries), progress)
    folder = Path(images)
    for index, (name, _label) in enumerate(entries):
        path = folder / name
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            queue.wait_all()
            raise ConfigError(f"cannot read image {str(path)!r} (missing or not an image)")
        crop = center_crop_resize(bgr, (info.width, info.height))
        queue.start_async({0: crop[np.newaxis]}, index)
        with lock:
            bar.update(tally["done"], tally["top1"])
    queue.wait_all()
    labels = np.array([label for _, label in entries], np.int64)
    result = EvalResult(
        images=len(entries),
        top1_correct=int(np.sum(top5[:, 0] == labels)),
        top5_correct=int(np.sum(np.any(top5 == labels[:, None], axis=1))),
    )
    bar.update(len(entries), result.top1_correct, final=True)
    return result
