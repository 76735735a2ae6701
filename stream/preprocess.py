"""The accuracy preprocessing: shorter side to S/0.875 with Pillow bicubic, centre crop S×S.

This is the pipeline that produced convnext-tiny's published 82.05% top-1 (DESIGN.md):
shorter side resized to 256 with Pillow-style (antialiased) bicubic, then a centre crop of
224 taken at offset ``round((side - 224) / 2)``. For an IR with another input size S the
same 0.875 ratio holds (shorter side to ``round(S / 0.875)``).

Why Pillow and not ``cv2.resize``: OpenCV's INTER_CUBIC does not widen its kernel when it
downscales (no antialiasing), so a 720p frame shrunk 2.8× comes out aliased and measurably
different from what the model was trained and evaluated on. Pillow's resampler is exact by
definition, and its ``box`` argument lets us resample *only the crop window*: the source box
that maps onto the crop has the same filter centres and supports as "resize whole, then
crop", at roughly half the work. Measured against that reference (tests/test_preprocess.py):
bit-exact for upscales, at most 1 level off on under 0.1% of values for downscales (the
box coordinates are floats, so a filter weight can round the other way). The result is a
contiguous u8 BGR array ready to hand to OpenVINO as the NHWC tensor; the channel order is
untouched (resampling is per channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

CROP_RATIO = 0.875


@dataclass(frozen=True)
class CropPlan:
    """Where the centre crop of an ``src_w × src_h`` frame lies, in source pixels.

    ``box`` is the (left, top, right, bottom) rectangle of the source that becomes the
    ``out_w × out_h`` crop; computing it once per stream keeps the per-frame work to the
    resample itself.
    """

    src_w: int
    src_h: int
    out_w: int
    out_h: int
    resized_w: int
    resized_h: int
    box: tuple[float, float, float, float]


def plan_crop(src_w: int, src_h: int, out_w: int, out_h: int) -> CropPlan:
    """Work out the resize and crop geometry for one source size.

    Args:
        src_w, src_h: source frame size in pixels (both > 0).
        out_w, out_h: model input size (width, height).

    Returns:
        The plan: intermediate resized size (shorter side ``round(min(out) / 0.875)``,
        the longer side scaled to keep the aspect ratio, as torchvision's ``Resize(int)``
        does) and the source box of the centre crop.
    """
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"frame size must be positive, got {src_w}x{src_h}")
    short = round(min(out_w, out_h) / CROP_RATIO)
    # torchvision Resize(int): the shorter side becomes `short`, the other is truncated
    # (int(short * long / short_side)), which is what the published accuracy used.
    if src_w <= src_h:
        rw, rh = short, int(short * src_h / src_w)
    else:
        rw, rh = int(short * src_w / src_h), short
    rw, rh = max(rw, out_w), max(rh, out_h)
    left = round((rw - out_w) / 2.0)
    top = round((rh - out_h) / 2.0)
    sx, sy = src_w / rw, src_h / rh
    box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
    return CropPlan(src_w, src_h, out_w, out_h, rw, rh, box)


def center_crop_resize(
    bgr: np.ndarray, size: tuple[int, int], plan: CropPlan | None = None
) -> np.ndarray:
    """Resize (shorter side to size/0.875, Pillow bicubic) and centre-crop one frame.

    Args:
        bgr: u8 ``H×W×3`` frame (BGR, as OpenCV decodes it; any channel order works).
        size: ``(width, height)`` of the model input.
        plan: a precomputed :func:`plan_crop` for this frame size (optional; saves a few
            microseconds per frame when the caller keeps one per stream).

    Returns:
        A C-contiguous u8 ``height×width×3`` array in the input's channel order.
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected a u8 HxWx3 frame, got {bgr.dtype} {bgr.shape}")
    h, w = bgr.shape[:2]
    out_w, out_h = size
    if plan is None or (plan.src_w, plan.src_h, plan.out_w, plan.out_h) != (w, h, out_w, out_h):
        plan = plan_crop(w, h, out_w, out_h)
    if plan.resized_w > w or plan.resized_h > h:
        # Upscaling: small sources are cheap to resize whole, exactly as the reference.
        left = round((plan.resized_w - out_w) / 2.0)
        top = round((plan.resized_h - out_h) / 2.0)
        full = Image.fromarray(np.ascontiguousarray(bgr)).resize(
            (plan.resized_w, plan.resized_h), Image.Resampling.BICUBIC)
        out = full.crop((left, top, left + out_w, top + out_h))
    else:
        # Two explicit passes, horizontal first, as Pillow's whole-image resize does (its
        # box path may pick the vertical pass first, which rounds differently between
        # passes: up to 25 levels off on some portrait sizes). Only the rows the vertical
        # filter can reach are touched.
        x0, y0, x1, y1 = plan.box
        reach = 2.0 * (y1 - y0) / out_h + 1.0  # bicubic support (2) × scale, plus a pixel
        r0, r1 = max(0, int(y0 - reach)), min(h, int(np.ceil(y1 + reach)))
        rows = Image.fromarray(np.ascontiguousarray(bgr[r0:r1]))
        wide = rows.resize((out_w, r1 - r0), Image.Resampling.BICUBIC,
                           box=(x0, 0, x1, r1 - r0))
        out = wide.resize((out_w, out_h), Image.Resampling.BICUBIC,
                          box=(0, y0 - r0, out_w, y1 - r0))
    return np.asarray(out)
