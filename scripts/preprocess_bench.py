#!/usr/bin/env python3
"""CPU per frame of the accuracy crop (stream.preprocess) against Pillow, with its fidelity.

For each source size it prints the CPU milliseconds per frame (process time, so other
load on a shared machine inflates it less than wall time) of:
  - ``stream``: stream.preprocess.center_crop_resize with a per-stream plan (what capture
    runs per frame);
  - ``pillow whole``: Pillow resizing the whole frame then cropping (the reference);
  - ``pillow box``: the previous capture path (Pillow's ``box`` resize of only the rows
    and columns the crop needs, two passes), replaced in issue 8;
and the fidelity of ``stream`` against the reference on a noise frame: the largest
difference in levels and the share of values that differ.

Usage:  python scripts/preprocess_bench.py [--frames 200] [--sizes 1280x720,1920x1080]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from stream.preprocess import _geometry, center_crop_resize, plan_crop


def pillow_whole(bgr: np.ndarray, size: int = 224) -> np.ndarray:
    """The reference: Pillow resizes the whole frame, then the centre crop."""
    h, w = bgr.shape[:2]
    rw, rh, left, top = _geometry(w, h, size, size)
    img = Image.fromarray(bgr).resize((rw, rh), Image.Resampling.BICUBIC)
    return np.asarray(img.crop((left, top, left + size, top + size)))


def pillow_box(bgr: np.ndarray, size: int = 224) -> np.ndarray:
    """The previous capture path: Pillow ``box`` resizes of the crop window, two passes."""
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = _box(w, h, size)
    reach = 2.0 * (y1 - y0) / size + 1.0
    r0, r1 = max(0, int(y0 - reach)), min(h, int(np.ceil(y1 + reach)))
    rows = Image.fromarray(np.ascontiguousarray(bgr[r0:r1]))
    wide = rows.resize((size, r1 - r0), Image.Resampling.BICUBIC, box=(x0, 0, x1, r1 - r0))
    return np.asarray(wide.resize((size, size), Image.Resampling.BICUBIC,
                                  box=(0, y0 - r0, size, y1 - r0)))


def _box(w: int, h: int, size: int) -> tuple[float, float, float, float]:
    rw, rh, left, top = _geometry(w, h, size, size)
    sx, sy = w / rw, h / rh
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def cpu_ms(fn: Callable[[], object], frames: int) -> float:
    for _ in range(max(1, frames // 10)):  # warm up: first-touched buffers, caches
        fn()
    t0 = time.process_time()
    for _ in range(frames):
        fn()
    return (time.process_time() - t0) / frames * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--sizes", default="1280x720,1920x1080,640x360")
    args = ap.parse_args()
    for spec in args.sizes.split(","):
        w, h = (int(v) for v in spec.split("x"))
        img = np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)
        t0 = time.perf_counter()
        plan = plan_crop(w, h, 224, 224)
        plan_ms = (time.perf_counter() - t0) * 1000
        ours = cpu_ms(lambda i=img, p=plan: center_crop_resize(i, (224, 224), p), args.frames)
        ref_ms = cpu_ms(lambda i=img: pillow_whole(i), max(10, args.frames // 4))
        box_ms = cpu_ms(lambda i=img: pillow_box(i), max(10, args.frames // 4))
        diff = np.abs(center_crop_resize(img, (224, 224), plan).astype(np.int16)
                      - pillow_whole(img).astype(np.int16))
        print(f"{w}x{h}: stream {ours:.2f} ms/frame CPU (plan {plan_ms:.0f} ms once, "
              f"{'vertical' if plan.vertical_first else 'horizontal'} pass first), "
              f"pillow whole {ref_ms:.2f} ms = {ref_ms / ours:.1f}x, pillow box {box_ms:.2f} ms = "
              f"{box_ms / ours:.1f}x; fidelity: max "
              f"{int(diff.max())} level(s), {(diff > 0).mean():.1e} of values differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
